"""JAX backend: Flax Linen layers, Optax optimizers, one jit-compiled train step per cell.

Why Linen rather than NNX: a Linen model is a pure function of two plain pytrees, ``params`` and
``batch_stats``. That makes the three things this benchmark must control explicit and easy to
check: the train step is a hand-written ``jax.jit`` whose parameter, BatchNorm and optimizer
buffers are donated (``donate_argnums``), the number of compilations is a counter in the traced
Python body (it runs only when JAX traces), and the canonical weight list maps onto the pytrees by
name with no object graph in between. NNX would need ``nnx.split``/``nnx.merge`` around every step
to get the same functional form.

Fairness (design.md): weights come from ``bench.weights`` (NumPy glorot_uniform), every optimizer,
BatchNorm and activation hyperparameter is passed from the TrainSpec, matmuls and convolutions run
at "highest" precision in fp32, the dropout key is folded with the step count so masks change every
step, and the training arrays live on the device; each step gathers its rows inside the jit.
"""

from __future__ import annotations

import functools
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import flax
import flax.linen as nn
import flax.serialization
import jax
import jax.numpy as jnp
import jaxlib
import numpy as np
import optax
from jax import lax

from backends.base import Backend, BackendInfo, EpochResult, MemoryReading, Unsupported
from bench.shapes import ParamSpec, param_specs, same_padding
from bench.spec import (
    Activation,
    AvgPool2D,
    BatchNorm,
    Conv2D,
    Dense,
    Dropout,
    Flatten,
    MaxPool2D,
    ModelSpec,
    TrainSpec,
)
from bench.weights import canonical_weights

Tree = dict[str, dict[str, jax.Array]]

# Canonical parameter name -> (Linen collection, leaf name inside the layer's scope).
_LEAVES = {
    "kernel": ("params", "kernel"),
    "bias": ("params", "bias"),
    "gamma": ("params", "scale"),
    "beta": ("params", "bias"),
    "moving_mean": ("batch_stats", "mean"),
    "moving_variance": ("batch_stats", "var"),
}
WEIGHTS_FILE = "model.msgpack"
RMSPROP_EPS = "outside the square root: g / (sqrt(v) + eps) (optax eps_in_sqrt=False, the PyTorch form; Keras adds eps inside)"


def layer_scope(index: int) -> str:
    """Linen scope name of spec layer ``index``: the bridge between the spec and the pytrees."""
    return f"layer_{index}"


def activation_fn(name: str, leaky_slope: float) -> Callable[[jax.Array], jax.Array]:
    if name == "relu":
        return nn.relu
    if name == "leaky_relu":
        return lambda x: nn.leaky_relu(x, negative_slope=leaky_slope)
    if name == "tanh":
        return jnp.tanh
    if name == "sigmoid":
        return nn.sigmoid
    if name == "linear":
        return lambda x: x
    raise ValueError(f"unknown activation {name!r}")


class SpecNet(nn.Module):
    """A resolved ModelSpec as one Linen module; every framework default is overridden explicitly."""

    layers: tuple[Any, ...]
    leaky_slope: float
    bn_momentum: float  # Keras sense (weight of the old statistic), which is Flax's sense too
    bn_epsilon: float
    dtype: Any  # compute dtype: float32, or bfloat16 with float32 parameters
    precision: lax.Precision

    @nn.compact
    def __call__(self, x: jax.Array, training: bool) -> jax.Array:
        x = x.astype(self.dtype)
        for i, layer in enumerate(self.layers):
            name = layer_scope(i)
            if isinstance(layer, Flatten):
                x = x.reshape(x.shape[0], -1)  # NHWC flattens in H, W, C order: the canonical order
            elif isinstance(layer, Dense):
                x = nn.Dense(layer.units, dtype=self.dtype, precision=self.precision, name=name)(x)
                x = activation_fn(layer.activation, self.leaky_slope)(x)
            elif isinstance(layer, Conv2D):
                if layer.padding == "same":  # TF 'same': the extra pixel goes after, spelled out
                    padding: Any = [same_padding(s, layer.kernel, layer.stride) for s in x.shape[1:3]]
                else:
                    padding = "VALID"
                x = nn.Conv(
                    layer.filters,
                    (layer.kernel, layer.kernel),
                    strides=(layer.stride, layer.stride),
                    padding=padding,
                    dtype=self.dtype,
                    precision=self.precision,
                    name=name,
                )(x)
                x = activation_fn(layer.activation, self.leaky_slope)(x)
            elif isinstance(layer, (MaxPool2D, AvgPool2D)):
                pool = nn.max_pool if isinstance(layer, MaxPool2D) else nn.avg_pool
                x = pool(x, (layer.size, layer.size), strides=(layer.size, layer.size), padding="VALID")
            elif isinstance(layer, BatchNorm):
                x = nn.BatchNorm(
                    use_running_average=not training,
                    momentum=self.bn_momentum,
                    epsilon=self.bn_epsilon,
                    dtype=self.dtype,
                    use_fast_variance=False,  # two-pass biased variance, as Keras and the reference
                    name=name,
                )(x)
            elif isinstance(layer, Dropout):
                x = nn.Dropout(layer.rate, deterministic=not training, name=name)(x)
            elif isinstance(layer, Activation):
                x = activation_fn(layer.activation, self.leaky_slope)(x)
            else:
                raise ValueError(f"layer type {layer.type!r} has no JAX translation")
        return x.astype(jnp.float32)  # logits and loss always in fp32


def loss_fn(name: str) -> Callable[[jax.Array, jax.Array], jax.Array]:
    """The spec's losses on logits, mean over the batch, as ``backends.base.numpy_loss``."""

    def cce(z: jax.Array, y: jax.Array) -> jax.Array:
        return optax.softmax_cross_entropy_with_integer_labels(z, y).mean()

    def mse(z: jax.Array, y: jax.Array) -> jax.Array:
        return jnp.mean((jax.nn.softmax(z) - jax.nn.one_hot(y, z.shape[1])) ** 2)

    def mae(z: jax.Array, y: jax.Array) -> jax.Array:
        return jnp.mean(jnp.abs(jax.nn.softmax(z) - jax.nn.one_hot(y, z.shape[1])))

    def bce(z: jax.Array, y: jax.Array) -> jax.Array:
        return optax.sigmoid_binary_cross_entropy(z, jax.nn.one_hot(y, z.shape[1])).mean()

    def hinge(z: jax.Array, y: jax.Array) -> jax.Array:
        t = 2.0 * jax.nn.one_hot(y, z.shape[1]) - 1.0
        return jnp.mean(jnp.maximum(0.0, 1.0 - t * z))

    losses = {"cce": cce, "mse": mse, "mae": mae, "bce": bce, "hinge": hinge}
    if name not in losses:
        raise ValueError(f"unknown loss {name!r}")
    return losses[name]


def make_optimizer(train: TrainSpec) -> optax.GradientTransformation:
    """Optax chain with every hyperparameter explicit; decoupled weight decay before the lr scale.

    Equal to optax.sgd / sgd(momentum=) / rmsprop / adam, written as their parts so that weight
    decay (when on) sits between the direction and the learning rate, as in adamw: the update is
    -lr * (direction + wd * p) for every optimizer, like Keras' and torch's AdamW decoupled form.
    """
    if train.optimizer == "sgd":
        direction: list[optax.GradientTransformation] = []
    elif train.optimizer == "momentum":
        direction = [optax.trace(decay=train.momentum, nesterov=False)]  # buf = m*buf + g: torch form
    elif train.optimizer == "rmsprop":
        direction = [
            optax.scale_by_rms(decay=train.rho, eps=train.epsilon, initial_scale=0.0, eps_in_sqrt=False, bias_correction=False)
        ]
    elif train.optimizer == "adam":
        direction = [optax.scale_by_adam(b1=train.beta1, b2=train.beta2, eps=train.epsilon, eps_root=0.0)]
    else:
        raise ValueError(f"unknown optimizer {train.optimizer!r}")
    decay = [optax.add_decayed_weights(train.weight_decay)] if train.weight_decay > 0 else []
    return optax.chain(*direction, *decay, optax.scale_by_learning_rate(train.lr))


def pick_device(device: str) -> jax.Device:
    """'cpu', or 'gpu'/'cuda' (Unsupported if JAX sees none), or 'auto' (a GPU when there is one)."""
    if device not in ("cpu", "gpu", "cuda", "auto"):
        raise Unsupported(f"jax has no device {device!r}; valid: cpu, gpu, auto")
    if device != "cpu":
        try:
            return jax.devices("gpu")[0]
        except RuntimeError as exc:
            if device != "auto":
                raise Unsupported(f"no GPU visible to JAX ({exc})") from exc
    return jax.devices("cpu")[0]


def affinity_cores() -> int:
    """Cores this process may run on: XLA's CPU thread pool is sized from them, not from a setting."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 0


class JaxBackend(Backend):
    """The spec on JAX: Flax Linen model, Optax optimizer, one donated jit step (or eager ops)."""

    name = "jax"
    framework = "jax+flax+optax"
    modes = ("jit", "eager")

    def __init__(self) -> None:
        self._device: jax.Device | None = None
        self.compile_count = 0
        """Times the train step was traced (its Python body runs only then): 1 per cell in jit mode."""
        self.compile_seconds: float | None = None
        """Lowering + XLA compilation time of the train step, measured apart from any step."""

    # -- process ---------------------------------------------------------------------------------
    def setup(self, threads: int, device: str = "cpu") -> BackendInfo:
        """JAX has no thread-count knob after import: threads come from XLA_FLAGS and CPU affinity,
        which the worker sets before importing this module; we record what is in force."""
        jax.config.update("jax_enable_x64", False)
        jax.config.update("jax_default_matmul_precision", "highest")
        self._device = pick_device(device)
        jax.config.update("jax_default_device", self._device)
        return BackendInfo(
            framework=self.framework,
            versions={"jax": jax.__version__, "jaxlib": jaxlib.__version__, "flax": flax.__version__, "optax": optax.__version__},
            device=str(self._device),
            threads={"requested": threads, "affinity_cores": affinity_cores(), "xla_flags": os.environ.get("XLA_FLAGS", "")},
        )

    @property
    def device(self) -> jax.Device:
        if self._device is None:
            raise RuntimeError("JaxBackend.setup() must run before build()")
        return self._device

    # -- model -----------------------------------------------------------------------------------
    def build(self, model: ModelSpec, train: TrainSpec, input_shape: tuple[int, ...], num_classes: int) -> None:
        self._mode = self.resolve_mode(train.mode)
        self._train = train
        model = model.resolve(train.activation)  # no-op for a model the harness already resolved
        self._specs: list[ParamSpec] = param_specs(model, input_shape, num_classes)
        dtype, precision = self._precision(train.precision)
        self._net = SpecNet(
            layers=model.layers,
            leaky_slope=train.leaky_relu_slope,
            bn_momentum=train.bn_momentum,
            bn_epsilon=train.bn_epsilon,
            dtype=dtype,
            precision=precision,
        )
        self._check_layout(input_shape)
        self._has_bn = model.has_batchnorm
        self._loss = loss_fn(train.loss)
        self._tx = make_optimizer(train)
        self._key = jax.device_put(jax.random.key(train.seed), self.device)
        self._compiled: dict[tuple[int, ...], Any] = {}
        self.compile_count = 0
        self.compile_seconds = None
        self._losses: list[jax.Array] = []
        self._x: jax.Array | None = None
        self._y: jax.Array | None = None
        self._jit_step = jax.jit(self._counted_step, donate_argnums=(0, 1, 2, 3))
        self._logits_fn = self._compiled_or_eager(self._eval_logits)
        self._grads_fn = self._compiled_or_eager(self._loss_and_grads)
        self.set_weights(canonical_weights(model, input_shape, num_classes, train.seed))

    def _precision(self, precision: str) -> tuple[Any, lax.Precision]:
        """(compute dtype, matmul/conv precision), passed to every Dense and Conv explicitly."""
        if precision == "fp32":
            return jnp.float32, lax.Precision.HIGHEST
        if precision == "tf32":
            if self.device.platform != "gpu":
                raise Unsupported("tf32 needs an NVIDIA GPU")
            return jnp.float32, lax.Precision.DEFAULT  # XLA's default fp32 precision on NVIDIA is TF32
        if precision == "bf16":
            return jnp.bfloat16, lax.Precision.DEFAULT  # bf16 compute, float32 master parameters
        raise Unsupported(f"jax has no precision {precision!r}")

    def _check_layout(self, input_shape: tuple[int, ...]) -> None:
        """Fail at build, not at the first step, if Flax's parameter tree disagrees with the spec."""
        init = functools.partial(self._net.init, training=False)
        shapes = jax.eval_shape(init, jax.random.key(0), jax.ShapeDtypeStruct((1, *input_shape), jnp.float32))
        for p in self._specs:
            collection, leaf = _LEAVES[p.name]
            actual = tuple(shapes[collection][layer_scope(p.layer)][leaf].shape)
            if actual != p.shape:
                raise AssertionError(f"Flax {collection}/{layer_scope(p.layer)}/{leaf} has shape {actual}, spec {p.shape}")

    def _compiled_or_eager(self, fn: Callable) -> Callable:
        if self._mode == "jit":
            return jax.jit(fn)

        def eager(*args: Any) -> Any:
            with jax.disable_jit():
                return fn(*args)

        return eager

    # -- weights ---------------------------------------------------------------------------------
    def set_weights(self, weights: list[np.ndarray]) -> None:
        if len(weights) != len(self._specs):
            raise ValueError(f"expected {len(self._specs)} canonical arrays, got {len(weights)}")
        trees: dict[str, Tree] = {"params": {}, "batch_stats": {}}
        for p, w in zip(self._specs, weights):
            if tuple(w.shape) != p.shape:
                raise ValueError(f"weight {p.key} has shape {tuple(w.shape)}, expected {p.shape}")
            collection, leaf = _LEAVES[p.name]
            trees[collection].setdefault(layer_scope(p.layer), {})[leaf] = jax.device_put(
                np.asarray(w, np.float32), self.device
            )
        self._params, self._stats = trees["params"], trees["batch_stats"]
        self.reset_optimizer()

    def get_weights(self) -> list[np.ndarray]:
        trees = {"params": self._params, "batch_stats": self._stats}
        out = []
        for p in self._specs:
            collection, leaf = _LEAVES[p.name]
            out.append(np.array(trees[collection][layer_scope(p.layer)][leaf], dtype=np.float32, copy=True))
        return out

    def reset_optimizer(self) -> None:
        """Fresh Optax state of the same structure, shapes and dtypes, so the compiled step is reused.

        The step counter that seeds dropout restarts too: training after a warm-up draws the same
        masks as training without one.
        """
        self._opt_state = jax.device_put(self._tx.init(self._params), self.device)
        self._step_no = jax.device_put(np.int32(0), self.device)

    # -- the pure functions the step and evaluation are made of ----------------------------------
    def _variables(self, params: Tree, stats: Tree) -> dict[str, Tree]:
        return {"params": params, "batch_stats": stats} if self._has_bn else {"params": params}

    def _train_loss(self, params: Tree, stats: Tree, x: jax.Array, y: jax.Array, key: jax.Array) -> tuple[jax.Array, Tree]:
        """Training-mode loss and the BatchNorm statistics this batch would leave behind."""
        z, updates = self._net.apply(
            self._variables(params, stats), x, training=True, rngs={"dropout": key}, mutable=["batch_stats"]
        )
        return self._loss(z, y), updates.get("batch_stats", stats)

    def _step(
        self, params: Tree, stats: Tree, opt_state: Any, step_no: jax.Array, key: jax.Array,
        x_all: jax.Array, y_all: jax.Array, idx: jax.Array,
    ) -> tuple[Tree, Tree, Any, jax.Array, jax.Array]:
        rng = jax.random.fold_in(key, step_no)  # a new dropout stream every step
        (loss, stats), grads = jax.value_and_grad(self._train_loss, has_aux=True)(params, stats, x_all[idx], y_all[idx], rng)
        updates, opt_state = self._tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), stats, opt_state, step_no + 1, loss

    def _counted_step(self, *args: Any) -> Any:
        self.compile_count += 1  # Python body: runs only while JAX traces
        return self._step(*args)

    def _eval_logits(self, params: Tree, stats: Tree, x: jax.Array) -> jax.Array:
        return self._net.apply(self._variables(params, stats), x, training=False)

    def _loss_and_grads(self, params: Tree, stats: Tree, x: jax.Array, y: jax.Array, key: jax.Array) -> tuple[jax.Array, Tree]:
        (loss, _), grads = jax.value_and_grad(self._train_loss, has_aux=True)(params, stats, x, y, key)
        return loss, grads

    # -- training --------------------------------------------------------------------------------
    def load_data(self, x: np.ndarray, y: np.ndarray) -> None:
        self._x = jax.device_put(np.asarray(x, np.float32), self.device)
        self._y = jax.device_put(np.asarray(y, np.int32), self.device)
        self._losses = []

    def train_step(self, batch: np.ndarray) -> None:
        if self._x is None:
            raise RuntimeError("load_data() must run before train_step()")
        idx = np.asarray(batch, np.int32)
        args = (self._params, self._stats, self._opt_state, self._step_no, self._key, self._x, self._y, idx)
        if self._mode == "eager":
            with jax.disable_jit():
                out = self._step(*args)
        else:
            out = self._executable(idx.shape)(*args)
        self._params, self._stats, self._opt_state, self._step_no, loss = out
        self._losses.append(loss)

    def _executable(self, batch_shape: tuple[int, ...]) -> Any:
        """The compiled step for this batch shape, compiled ahead of time on first use and timed."""
        if batch_shape not in self._compiled:
            args = (self._params, self._stats, self._opt_state, self._step_no, self._key, self._x, self._y,
                    jax.ShapeDtypeStruct(batch_shape, jnp.int32))
            start = time.perf_counter()
            self._compiled[batch_shape] = self._jit_step.lower(*args).compile()
            self.compile_seconds = time.perf_counter() - start
        return self._compiled[batch_shape]

    def finish_epoch(self) -> EpochResult:
        self.synchronize()
        losses = np.asarray(jax.device_get(self._losses), dtype=np.float32).reshape(-1)
        self._losses = []
        return EpochResult(losses=losses)

    def synchronize(self) -> None:
        jax.block_until_ready((self._losses[-1:], self._params, self._stats, self._opt_state))

    # -- inference -------------------------------------------------------------------------------
    def logits(self, x: np.ndarray) -> np.ndarray:
        out = self._logits_fn(self._params, self._stats, jax.device_put(np.asarray(x, np.float32), self.device))
        return np.asarray(out, dtype=np.float32)

    def loss_and_gradients(self, x: np.ndarray, y: np.ndarray) -> tuple[float, list[np.ndarray]]:
        """Functional: the stored parameters and statistics are read, never replaced. Dropout uses the
        fixed key of step 0."""
        key = jax.random.fold_in(self._key, 0)
        loss, grads = self._grads_fn(
            self._params, self._stats, jax.device_put(np.asarray(x, np.float32), self.device),
            jax.device_put(np.asarray(y, np.int32), self.device), key,
        )
        out = []
        for p in self._specs:
            if p.trainable:
                _, leaf = _LEAVES[p.name]
                out.append(np.asarray(grads[layer_scope(p.layer)][leaf], dtype=np.float32))
        return float(loss), out

    # -- measurement and artifacts ---------------------------------------------------------------
    def peak_memory(self) -> MemoryReading:
        if self.device.platform == "cpu":
            return MemoryReading(None, "none (cpu)")
        stats = self.device.memory_stats() or {}
        peak = stats.get("peak_bytes_in_use")
        return MemoryReading(
            int(peak) if peak is not None else None,
            "jax device.memory_stats()['peak_bytes_in_use']: per-process peak, JAX cannot reset it",
        )

    def save_native(self, directory: Path) -> Path:
        """Flax's own format: ``flax.serialization.to_bytes`` (msgpack) of the Linen variables
        ``{"params", "batch_stats"}``, which ``SpecNet.apply`` takes as they are. No pickle."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        path = directory / WEIGHTS_FILE
        path.write_bytes(flax.serialization.to_bytes(self._native_tree()))
        return path

    def load_native(self, path: Path) -> None:
        """msgpack into the current trees as the target: structure and shapes must match the spec."""
        target = self._native_tree()
        restored = flax.serialization.from_bytes(target, Path(path).read_bytes())
        if jax.tree.map(np.shape, restored) != jax.tree.map(np.shape, target):
            raise ValueError(f"{path} holds arrays of other shapes than this model's")
        restored = jax.device_put(jax.tree.map(lambda a: np.asarray(a, np.float32), restored), self.device)
        self._params, self._stats = restored["params"], restored["batch_stats"]
        self.reset_optimizer()

    def _native_tree(self) -> dict[str, Tree]:
        return {"params": self._params, "batch_stats": self._stats}

    def semantics(self) -> dict[str, str]:
        t = self._train
        return {
            "mode": f"{self._mode} ({'jax.jit train step' if self._mode == 'jit' else 'jax.disable_jit, op by op'})",
            "precision": f"{t.precision}: dot/conv precision {self._net.precision.name}, compute {jnp.dtype(self._net.dtype).name}, params float32",
            "optimizer": f"{t.optimizer} lr={t.lr} as an optax chain of parts",
            "momentum": f"{t.momentum}, trace form buf = m*buf + g (the PyTorch form)",
            "rmsprop_epsilon": f"{t.epsilon}, {RMSPROP_EPS}; rho={t.rho}, v starts at 0, not centered",
            "adam_epsilon": f"{t.epsilon}, added to sqrt of the bias-corrected v (= torch); betas {t.beta1}/{t.beta2}",
            "weight_decay": f"{t.weight_decay}, decoupled: add_decayed_weights before the lr scale, on every trainable array",
            "bn_momentum": f"{t.bn_momentum} (Keras sense: weight of the old statistic; Flax uses the same sense)",
            "bn_epsilon": f"{t.bn_epsilon}",
            "bn_running_variance": "biased (divide by n), two-pass (use_fast_variance=False)",
            "dropout_rng": f"jax.random.key({t.seed}) folded with the step count: new masks every step, restart on reset_optimizer",
            "leaky_relu_slope": f"{t.leaky_relu_slope}",
            "leaky_relu_grad_at_zero": "one: jax.nn.leaky_relu is where(x >= 0, x, slope * x); torch and TF give the slope",
            "init": "canonical numpy glorot_uniform",
            "donation": "params, batch_stats, opt_state and step count donated to the jit step" if self._mode == "jit" else "none (eager)",
            "data": "train arrays on the device once; rows gathered inside the step",
        }

    @property
    def loss_name(self) -> str:
        return self._train.loss

"""JAX backend: Flax Linen layers, Optax optimizers, one jit-compiled train step per cell.

Why Linen rather than NNX: a Linen model is a pure function of two plain pytrees, ``params`` and
``batch_stats``. That makes the three things this benchmark must control explicit and easy to
check: the train step is a hand-written ``jax.jit`` whose parameter, BatchNorm and optimizer
buffers are donated (``donate_argnums``), the number of compilations is a counter in the traced
Python body (it runs only when JAX traces), and the canonical weight list maps onto the pytrees by
name with no object graph in between. NNX would need ``nnx.split``/``nnx.merge`` around every step
to get the same functional form.

Fairness (docs/architecture.md): weights are the canonical NumPy arrays the harness loads, every optimizer,
BatchNorm and activation hyperparameter is passed from the TrainSpec, matmuls and convolutions run
at "highest" precision in fp32, the dropout key is folded with the step count so masks change every
step, and the training arrays live on the device; each step gathers its rows inside the jit. Each
step's learning rate (the spec's schedule, ``Backend.step_lr``) is an argument of that one compiled
step, never an Optax schedule. The layers themselves, and where each canonical array sits in Flax's
variables, are backends/jax_layers.py.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import flax
import flax.serialization
import flax.traverse_util
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax import lax

from backends import REGISTRY, jax_augment, jax_compile_cache, jax_layers, jax_runtime
from backends.base import Backend
from backends.jax_layers import LEAVES, SpecNet, layer_scope
from bench.spec.augment import Params
from bench.spec.model import walk
from bench.spec.rules import Rules
from bench.spec.semantics import Native
from bench.spec.train import TrainSpec

Tree = dict[str, Any]
WEIGHTS_FILE = "model.msgpack"


@functools.lru_cache(maxsize=64)
def _jitted_logits(net: SpecNet, has_bn: bool) -> Callable:
    """One compiled eval forward per distinct network (model, activation, precision): cells that
    differ only in optimizer or learning rate reuse it rather than tracing and compiling it again."""

    def logits(params: Tree, stats: Tree, x: jax.Array) -> jax.Array:
        return net.apply({"params": params, "batch_stats": stats} if has_bn else {"params": params}, x, training=False)

    return jax.jit(logits)


@dataclass(frozen=True)
class Slot:
    """One canonical array's place in Flax's variables: collection, flattened keys and Flax's shape."""

    collection: str
    keys: tuple[str, ...]
    shape: tuple[int, ...]


def _sgd(t: TrainSpec, momentum: bool) -> list[optax.GradientTransformation]:
    return [optax.trace(decay=t.momentum, nesterov=False)] if momentum else []  # buf = m*buf + g: torch form


def _adam(t: TrainSpec, rules: Rules) -> list[optax.GradientTransformation]:
    return [optax.scale_by_adam(b1=t.beta1, b2=t.beta2, eps=t.epsilon, eps_root=0.0)]


class JaxBackend(jax_runtime.JaxHosted, Backend):
    """The spec on JAX: Flax Linen model, Optax optimizer, one donated jit step (or eager ops)."""

    name = "jax"
    framework = "jax+flax+optax"
    modes = REGISTRY[name].modes
    RULES = Rules(leaky_relu_grad_at_zero="one")  # jax.nn.leaky_relu is where(x >= 0, x, slope * x)
    NATIVE = Native(
        # optax.adam eps 1e-8; optax.rmsprop decay 0.9, eps 1e-8 inside the root (eps_in_sqrt=True);
        # flax BatchNorm momentum 0.99, epsilon 1e-5; flax/jax leaky_relu slope 0.01; flax LayerNorm epsilon 1e-6
        overrides={"epsilon": 1e-8, "rho": 0.9, "bn_momentum": 0.99, "bn_epsilon": 1e-5, "leaky_relu_slope": 0.01},
        init="lecun_normal",
        rules=Rules(leaky_relu_grad_at_zero="one", rmsprop_eps="inside_sqrt"),
        layers={"LayerNorm": {"epsilon": 1e-6}},
    )
    PAD_EVAL_BATCHES = True
    TRANSLATIONS = {
        "layer": jax_layers.LAYERS,  # (SpecNet, spec layer, path, x, training) -> x
        "activation": jax_layers.ACTIVATIONS,
        # loss: (logits, integer labels) -> mean loss, as bench.spec.losses defines it
        "loss": {
            "cce": lambda z, y: optax.softmax_cross_entropy_with_integer_labels(z, y).mean(),
            "mse": lambda z, y: jnp.mean((jax.nn.softmax(z) - jax.nn.one_hot(y, z.shape[1])) ** 2),
            "mae": lambda z, y: jnp.mean(jnp.abs(jax.nn.softmax(z) - jax.nn.one_hot(y, z.shape[1]))),
            "bce": lambda z, y: optax.sigmoid_binary_cross_entropy(z, jax.nn.one_hot(y, z.shape[1])).mean(),
            "hinge": lambda z, y: jnp.mean(jnp.maximum(0.0, 1.0 - (2.0 * jax.nn.one_hot(y, z.shape[1]) - 1.0) * z)),
        },
        # optimizer: (train spec, rules) -> the direction transforms of an optax chain (see make_optimizer)
        "optimizer": {
            "sgd": lambda t, rules: _sgd(t, momentum=False),
            "momentum": lambda t, rules: _sgd(t, momentum=True),
            "rmsprop": lambda t, rules: [optax.scale_by_rms(decay=t.rho, eps=t.epsilon, initial_scale=0.0, bias_correction=False,
                                                            eps_in_sqrt=rules.rmsprop_eps == "inside_sqrt")],
            "adam": _adam,
            "adamw": _adam,  # its decoupled decay is make_optimizer's, as for every optimizer with weight_decay > 0
        },
        "augment": {
            "hflip": jax_augment.flip(2),
            "vflip": jax_augment.flip(1),
            "crop": jax_augment.crop,
            "rotate": jax_augment.rotate,
            "zoom": jax_augment.zoom,
            "brightness": lambda x, delta, a: jnp.clip(x + delta[:, None, None, None], 0.0, 1.0),
            "noise": lambda x, noise, a: jnp.clip(x + noise, 0.0, 1.0),
        },
    }
    PRECISIONS = {  # (compute dtype, matmul/conv precision), passed to every Dense and Conv explicitly
        "fp32": (jnp.float32, lax.Precision.HIGHEST),
        "tf32": (jnp.float32, lax.Precision.DEFAULT),  # XLA's default fp32 precision on NVIDIA is TF32
        "bf16": (jnp.bfloat16, lax.Precision.DEFAULT),  # bf16 compute, float32 master parameters
    }

    # -- process ---------------------------------------------------------------------------------
    def _library_versions(self) -> dict[str, str]:
        return {"flax": flax.__version__, "optax": optax.__version__}

    # -- model -----------------------------------------------------------------------------------
    def _build(self) -> None:
        train = self.train
        dtype, precision = self.PRECISIONS[train.precision]
        for _, layer in walk(self.model.layers):  # an unknown name fails here, naming the valid ones
            self.translate("layer", layer.type)
            if hasattr(layer, "activation"):
                self.translate("activation", layer.activation)
        self._net = SpecNet(layers=self.model.layers, leaky_slope=train.leaky_relu_slope, bn_momentum=train.bn_momentum,
                            bn_epsilon=train.bn_epsilon, dtype=dtype, precision=precision)
        by_path = dict(walk(self.model.layers))
        self._slots = [Slot(leaf.collection, (layer_scope(p.layer), *leaf.keys), leaf.native_shape(p.shape, by_path.get(p.layer)))
                       for p, leaf in ((p, LEAVES[p.name]) for p in self.specs)]
        self._check_layout()
        self._has_bn = self.model.has_batchnorm
        self._loss = self.translate("loss", train.loss)
        self._tx = make_optimizer(train, self.translate("optimizer", train.optimizer)(train, self.rules()))
        self._key = jax.device_put(jax.random.key(train.seed), self.device)
        self.compile_count = 0
        self._cache_misses = jax_compile_cache.CacheEvents.misses
        self._x: jax.Array | None = None
        self._y: jax.Array | None = None
        self._jit_step = jax.jit(self._counted_step, donate_argnums=(0, 1, 2, 3))
        self._logits_fn = _jitted_logits(self._net, self._has_bn) if self.mode == "jit" else self._compiled_or_eager(self._eval_logits)
        self._augment_fn = self._compiled_or_eager(self._augment)
        self._grads_fn = self._compiled_or_eager(self._loss_and_grads)
        self._set_weights([np.zeros(p.shape, np.float32) for p in self.specs])  # state exists; the caller loads weights

    def _check_layout(self) -> None:
        """Fail at build, not at the first step, if Flax's variables are not exactly the spec's arrays
        (every one where ``LEAVES`` puts it, in its Flax shape, and nothing else)."""
        init = functools.partial(self._net.init, training=False)
        shapes = jax.eval_shape(init, jax.random.key(0), jax.ShapeDtypeStruct((1, *self.input_shape), jnp.float32))
        flax_has = {(c, *keys): a.shape for c, tree in shapes.items() for keys, a in flax.traverse_util.flatten_dict(tree).items()}
        spec_has = {(s.collection, *s.keys): s.shape for s in self._slots}
        if flax_has != spec_has:
            differ = sorted(set(flax_has.items()) ^ set(spec_has.items()))
            raise AssertionError(f"Flax's variables disagree with the spec's arrays at {differ}")

    def _compiled_or_eager(self, fn: Callable) -> Callable:
        if self.mode == "jit":
            return jax.jit(fn)

        def eager(*args: Any) -> Any:
            with jax.disable_jit():
                return fn(*args)

        return eager

    # -- weights ---------------------------------------------------------------------------------
    def _set_weights(self, weights: list[np.ndarray]) -> None:
        flat: dict[str, dict[tuple[str, ...], jax.Array]] = {"params": {}, "batch_stats": {}}
        for slot, w in zip(self._slots, weights, strict=True):
            flat[slot.collection][slot.keys] = jax.device_put(w.reshape(slot.shape), self.device)
        self._params, self._stats = (flax.traverse_util.unflatten_dict(flat[c]) for c in ("params", "batch_stats"))
        self._reset_optimizer()

    def _initialise_natively(self) -> None:
        """``SpecNet.init`` with ``jax.random.key(seed)``: Flax's lecun_normal kernels, zero biases,
        BatchNorm scale 1, bias 0, mean 0, variance 1."""
        x = jnp.zeros((1, *self.input_shape), jnp.float32)
        variables = jax.device_put(self._net.init(jax.random.key(self.train.seed), x, training=False), self.device)
        self._params, self._stats = variables["params"], variables.get("batch_stats", {})
        self._reset_optimizer()

    def get_weights(self) -> list[np.ndarray]:
        flat = {c: flax.traverse_util.flatten_dict(tree) for c, tree in self._native_tree().items()}
        return [np.array(flat[slot.collection][slot.keys], dtype=np.float32).reshape(p.shape)
                for p, slot in zip(self.specs, self._slots, strict=True)]

    def _reset_optimizer(self) -> None:
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

    def _train_step(
        self, params: Tree, stats: Tree, opt_state: Any, step_no: jax.Array, key: jax.Array,
        x_all: jax.Array, y_all: jax.Array, idx: jax.Array, lr: jax.Array, augment: dict[str, jax.Array] | None,
    ) -> tuple[Tree, Tree, Any, jax.Array, jax.Array]:
        """One step at rate ``lr``; ``augment`` is None or a dict of fixed-shape arrays, so either way it compiles
        once per cell. The rate is an argument, a traced scalar like the batch indices: the schedule's rate
        of every step (``Backend.step_lr``) runs through the one compiled step, never retracing it."""
        rng = jax.random.fold_in(key, step_no)  # a new dropout stream every step
        x = x_all[idx] if augment is None else self._augment(x_all[idx], augment)
        (loss, stats), grads = jax.value_and_grad(self._train_loss, has_aux=True)(params, stats, x, y_all[idx], rng)
        direction, opt_state = self._tx.update(grads, opt_state, params)
        updates = jax.tree.map(lambda d: -lr * d, direction)  # what optax.scale_by_learning_rate(lr) does
        return optax.apply_updates(params, updates), stats, opt_state, step_no + 1, loss

    def _counted_step(self, *args: Any) -> Any:
        self.compile_count += 1  # Python body: runs only while JAX traces
        return self._train_step(*args)

    def _eval_logits(self, params: Tree, stats: Tree, x: jax.Array) -> jax.Array:
        return self._net.apply(self._variables(params, stats), x, training=False)

    def _loss_and_grads(self, params: Tree, stats: Tree, x: jax.Array, y: jax.Array, key: jax.Array) -> tuple[jax.Array, Tree]:
        (loss, _), grads = jax.value_and_grad(self._train_loss, has_aux=True)(params, stats, x, y, key)
        return loss, grads

    # -- training --------------------------------------------------------------------------------
    def _place_data(self, x: np.ndarray, y: np.ndarray) -> None:
        self._x = jax.device_put(np.asarray(x, np.float32), self.device)
        self._y = jax.device_put(np.asarray(y, np.int32), self.device)

    def _step(self, batch: np.ndarray, augment: Params | None) -> jax.Array:
        args = (self._params, self._stats, self._opt_state, self._step_no, self._key, self._x, self._y, batch.astype(np.int32),
                np.float32(self.step_lr), augment)
        if self.mode == "eager":
            with jax.disable_jit():
                out = self._train_step(*args)
        else:
            out = self._jit_step(*args)
        self._params, self._stats, self._opt_state, self._step_no, loss = out
        return loss

    def _training_state(self) -> tuple:
        return self._params, self._stats, self._opt_state

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
        flat = flax.traverse_util.flatten_dict(grads)
        return float(loss), [np.asarray(flat[slot.keys], dtype=np.float32).reshape(p.shape)
                             for p, slot in zip(self.specs, self._slots, strict=True) if p.trainable]

    # -- artifacts -------------------------------------------------------------------------------
    def save_native(self, directory: Path) -> Path:
        """Flax's own format: ``flax.serialization.to_bytes`` (msgpack) of the Linen variables
        ``{"params", "batch_stats"}``, which ``SpecNet.apply`` takes as they are. No pickle."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        path = directory / WEIGHTS_FILE
        path.write_bytes(flax.serialization.to_bytes(self._native_tree()))
        return path

    def _load_native(self, path: Path) -> None:
        """msgpack into the current trees as the target: structure and shapes must match the spec."""
        target = self._native_tree()
        restored = flax.serialization.from_bytes(target, Path(path).read_bytes())
        if jax.tree.map(np.shape, restored) != jax.tree.map(np.shape, target):
            raise ValueError(f"{path} holds arrays of other shapes than this model's")
        restored = jax.device_put(jax.tree.map(lambda a: np.asarray(a, np.float32), restored), self.device)
        self._params, self._stats = restored["params"], restored["batch_stats"]

    def _native_tree(self) -> dict[str, Tree]:
        return {"params": self._params, "batch_stats": self._stats}


def make_optimizer(train: TrainSpec, direction: list[optax.GradientTransformation]) -> optax.GradientTransformation:
    """Optax chain with every hyperparameter explicit: the direction, then decoupled weight decay; the
    step scales it by -lr_t, the schedule's rate of that step (``JaxBackend._train_step``).

    Equal to optax.sgd / sgd(momentum=) / rmsprop / adam / adamw, written as their parts so that weight
    decay (when on) sits between the direction and the learning rate, as in ``optax.adamw``: the update is
    -lr_t * (direction + wd * p) for every optimizer, i.e. p -= lr_t * wd * p before the direction's step,
    torch's and Keras' decoupled AdamW form and the oracle's (docs/architecture.md, "Framework rules").
    """
    decay = [optax.add_decayed_weights(train.weight_decay)] if train.weight_decay > 0 else []
    parts = [*direction, *decay]
    return optax.chain(*parts) if parts else optax.identity()  # plain SGD: the gradient itself

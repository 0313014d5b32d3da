"""Keras 3 on TensorFlow: the spec as a Keras model, trained by a hand-written step.

Why a hand-written step rather than ``model.fit``: the harness owns the batch order and the clock
(``train_step(batch)`` per step, ``finish_epoch()`` as the one synchronisation), so every backend
trains on the same batches and is timed the same way. The step is what ``fit`` runs inside
(``GradientTape``, Keras loss, ``optimizer.apply``), compiled per execution mode:

- ``graph`` (default): ``tf.function`` without XLA;
- ``eager``: plain Python, op by op (Keras' ``run_eagerly=True``);
- ``xla``: ``tf.function(jit_compile=True)``.

Fairness (design.md): canonical weights are loaded into the Keras variables, every optimizer and
BatchNorm hyperparameter is passed explicitly (Keras' own defaults never apply), the LeakyReLU slope
is explicit (Keras' ``"leaky_relu"`` string would mean 0.2), losses take logits
(``from_logits=True``), and the training flag is always given.
"""

from __future__ import annotations

import gc
import logging
import os
import warnings

# Both must be set before TensorFlow/Keras are imported. Level 2 hides TF's INFO and WARNING lines
# (CPU-feature banners, retracing notes) but keeps ERROR.
os.environ["KERAS_BACKEND"] = "tensorflow"
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from collections.abc import Callable  # noqa: E402
from pathlib import Path  # noqa: E402

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

# Each cell builds its own tf.function by design (one trace per cell); TF's Python logger would warn
# about "excessive retracing" after five cells. Errors still show.
tf.get_logger().setLevel(logging.ERROR)

from backends.base import Backend, BackendInfo, EpochResult, MemoryReading, Unsupported  # noqa: E402
from bench.shapes import ParamSpec, param_specs  # noqa: E402
from bench.spec import (  # noqa: E402
    HIDDEN,
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

if keras.backend.backend() != "tensorflow":  # keras was imported earlier with another backend
    raise ImportError(f"keras is already running on {keras.backend.backend()!r}; the tf backend needs a fresh process")

INTER_OP_THREADS = 1
"""TF's inter-op pool runs independent ops side by side; one thread keeps the total worker threads
equal to ``threads`` (intra-op), as ``torch.set_num_threads`` does for PyTorch."""

EPSILON_PLACEMENT = {
    "sgd": "none",
    "momentum": "none",
    "rmsprop": "inside the square root: w -= lr * g / sqrt(v + eps) (Keras 3 RMSprop)",
    "adam": "added to the uncorrected sqrt(v): w -= lr * sqrt(1 - b2^t) / (1 - b1^t) * m / (sqrt(v) + eps) (Keras 3 Adam)",
}

MODE_DESCRIPTIONS = {
    "graph": "graph: tf.function, no XLA",
    "eager": "eager: op by op (run_eagerly)",
    "xla": "xla: tf.function(jit_compile=True)",
}


class KerasBackend(Backend):
    name = "tf"
    framework = "tensorflow+keras"
    modes = ("graph", "eager", "xla")

    def __init__(self) -> None:
        self._gpu = False
        self._threads: dict[str, int | str] = {}
        self._model: keras.Model | None = None
        self._train: TrainSpec | None = None
        self._mode = "graph"
        self._specs: list[ParamSpec] = []
        self._params: list[keras.Variable] = []
        self._trainable: list[keras.Variable] = []
        self._optimizer: keras.optimizers.Optimizer | None = None
        self._fresh_optimizer: list[np.ndarray] = []
        self._loss: Callable[[tf.Tensor, tf.Tensor], tf.Tensor] | None = None
        self._step: Callable | None = None
        self._forward: Callable | None = None
        self._forward_rows = 0  # largest batch the forward ran on (XLA compiled shape)
        self._x: tf.Tensor | None = None
        self._y: tf.Tensor | None = None
        self._pending: list[tf.Tensor] = []

    # -- process ---------------------------------------------------------------------------------
    def setup(self, threads: int, device: str = "cpu") -> BackendInfo:
        if device not in ("cpu", "gpu", "auto"):
            raise Unsupported(f"unknown device {device!r}; valid: cpu, gpu, auto")
        gpus = tf.config.list_physical_devices("GPU")  # does not start the runtime
        if device == "gpu" and not gpus:
            raise Unsupported("device 'gpu' requested but TensorFlow sees no GPU")
        use_gpu = device != "cpu" and bool(gpus)
        knobs: list[tuple[str, Callable[[], None]]] = [
            ("intra_op threads", lambda: tf.config.threading.set_intra_op_parallelism_threads(threads)),
            ("inter_op threads", lambda: tf.config.threading.set_inter_op_parallelism_threads(INTER_OP_THREADS)),
            ("GPU visibility", lambda: tf.config.set_visible_devices(gpus if use_gpu else [], "GPU")),
        ]
        # Allocate on demand, so the peak-memory reading means what the model used.
        knobs += [(f"memory growth of {g.name}", lambda g=g: tf.config.experimental.set_memory_growth(g, True)) for g in gpus if use_gpu]
        kept = []  # each knob is fixed once TensorFlow's runtime has started (a second setup in one process)
        for what, action in knobs:
            try:
                action()
            except RuntimeError:
                kept.append(what)
        self._gpu = bool(tf.config.list_logical_devices("GPU"))  # what TF will really use
        if device == "gpu" and not self._gpu:
            raise Unsupported("device 'gpu' requested but TensorFlow's runtime already started without it")
        # TF and Keras leave ~500k objects alive from import on; freezing them keeps the gc.collect
        # in every cell's clear_session at milliseconds instead of ~0.3 s (measured, 2 cores).
        gc.collect()
        gc.freeze()
        self._threads = {
            "intra_op": tf.config.threading.get_intra_op_parallelism_threads(),
            "inter_op": tf.config.threading.get_inter_op_parallelism_threads(),
        }
        if kept:
            self._threads["note"] = f"runtime already started; kept the existing {', '.join(kept)}"
        name = "cpu"
        if self._gpu:
            name = tf.config.experimental.get_device_details(gpus[0]).get("device_name", gpus[0].name)
        return BackendInfo(
            framework=self.framework,
            versions={"tensorflow": tf.__version__, "keras": keras.__version__},
            device=name,
            threads=dict(self._threads),
        )

    # -- model -----------------------------------------------------------------------------------
    def build(self, model: ModelSpec, train: TrainSpec, input_shape: tuple[int, ...], num_classes: int) -> None:
        mode = self.resolve_mode(train.mode)
        self._check_precision(train.precision)
        keras.backend.clear_session()  # drop the previous cell's model, layers and kernel caches
        self._model, self._train, self._mode = None, train, mode
        self._specs = param_specs(model, tuple(input_shape), num_classes)
        policy = "mixed_bfloat16" if train.precision == "bf16" else "float32"
        holders: list[keras.layers.Layer | None] = []  # per spec layer: the Keras layer holding its parameters
        layers: list[keras.layers.Layer] = []
        for index, layer in enumerate(model.layers):
            translated = _translate(layer, index, train, policy)
            holders.append(translated[0] if isinstance(layer, (Dense, Conv2D, BatchNorm)) else None)
            layers += translated
        if policy != "float32":  # logits leave the model in float32, whatever the compute dtype
            layers.append(keras.layers.Activation("linear", dtype="float32"))
        self._model = keras.Sequential([keras.Input(shape=tuple(input_shape)), *layers], name=model.name)
        # Named explicitly per canonical role (kernel, bias, gamma, ...), never by Keras' variable order.
        self._params = [getattr(holders[p.layer], p.name) for p in self._specs]
        for p, v in zip(self._specs, self._params):
            if tuple(v.shape) != p.shape:
                raise AssertionError(f"Keras variable {v.path} has shape {tuple(v.shape)}, canonical {p.shape}")
        self._trainable = [v for p, v in zip(self._specs, self._params) if p.trainable]
        self._optimizer = _optimizer(train)
        self._optimizer.build(self._trainable)  # slot variables exist before tracing
        self._fresh_optimizer = [v.value.numpy() for v in self._optimizer.variables]
        self._loss = _loss(train.loss, num_classes)
        images = tf.TensorSpec([None, *input_shape], tf.float32)
        self._step = self._compile(self._train_step_fn, [images, tf.TensorSpec([None], tf.int64), tf.TensorSpec([None], tf.int32)])
        self._forward = self._compile(self._forward_fn, [images])
        self._forward_rows = 0
        self._pending = []

    def _check_precision(self, precision: str) -> None:
        if precision == "tf32" and not self._gpu:
            raise Unsupported("tf32 needs an NVIDIA GPU")
        if self._gpu:  # fp32 means full fp32: TF enables TF32 on Ampere+ by default
            tf.config.experimental.enable_tensor_float_32_execution(precision == "tf32")

    def _compile(self, fn: Callable, signature: list[tf.TensorSpec]) -> Callable:
        """The function as the execution mode runs it.

        The signature leaves the batch dimension open, so tf.function traces once per cell; XLA
        still compiles once per concrete shape, which the fixed batch size keeps to one.
        """
        if self._mode == "eager":
            return fn
        return tf.function(fn, input_signature=signature, jit_compile=self._mode == "xla")

    def set_weights(self, weights: list[np.ndarray]) -> None:
        if len(weights) != len(self._params):
            raise ValueError(f"expected {len(self._params)} canonical arrays, got {len(weights)}")
        for p, v, w in zip(self._specs, self._params, weights):
            if tuple(np.shape(w)) != p.shape:
                raise ValueError(f"weight {p.key} has shape {np.shape(w)}, expected {p.shape}")
            v.assign(np.asarray(w, dtype=np.float32))

    def get_weights(self) -> list[np.ndarray]:
        return [np.array(v.value.numpy(), dtype=np.float32) for v in self._params]

    def reset_optimizer(self) -> None:
        """Assign the optimizer's fresh values (iteration 0, zero slots) in place: nothing is retraced."""
        for v, value in zip(self._optimizer.variables, self._fresh_optimizer):
            v.assign(value)

    # -- training --------------------------------------------------------------------------------
    def load_data(self, x: np.ndarray, y: np.ndarray) -> None:
        with tf.device(self._device_name()):  # tf.identity copies onto the device once
            self._x = tf.identity(tf.convert_to_tensor(np.asarray(x, dtype=np.float32)))
            self._y = tf.identity(tf.convert_to_tensor(np.asarray(y, dtype=np.int64)))

    def _device_name(self) -> str:
        return "/GPU:0" if self._gpu else "/CPU:0"

    def _train_step_fn(self, x_all: tf.Tensor, y_all: tf.Tensor, rows: tf.Tensor) -> tf.Tensor:
        x, y = tf.gather(x_all, rows), tf.gather(y_all, rows)
        with tf.GradientTape() as tape:
            loss = self._loss(y, self._model(x, training=True))
        grads = tape.gradient(loss, self._trainable)
        # Applied in cross-replica context: Keras then skips its replica all-reduce, an identity on one
        # device whose custom_gradient registers a global gradient function per trace and so keeps
        # every cell's graph alive (~2 MB per cell, measured; tensorflow/tensorflow#62854).
        tf.distribute.get_replica_context().merge_call(lambda _: self._optimizer.apply(grads, self._trainable))
        return loss

    def _forward_fn(self, x: tf.Tensor) -> tf.Tensor:
        return self._model(x, training=False)

    def train_step(self, batch: np.ndarray) -> None:
        rows = tf.convert_to_tensor(np.asarray(batch, dtype=np.int32))
        self._pending.append(self._step(self._x, self._y, rows))

    def finish_epoch(self) -> EpochResult:
        losses = tf.stack(self._pending).numpy() if self._pending else np.zeros(0)
        self._pending = []
        self.synchronize()  # the last step's parameter updates, not only its loss
        return EpochResult(losses=np.asarray(losses, dtype=np.float64))

    def synchronize(self) -> None:
        """Reading a value back waits for every op queued before it (TF has no explicit barrier)."""
        if self._params:
            float(tf.reshape(self._params[-1].value, [-1])[0])

    @property
    def keras_model(self) -> keras.Model:
        """The built Keras model, for inspection and for benchmarks/keras_vs_fit.py."""
        return self._model

    def trace_count(self) -> int:
        """How many times the step was traced (0 in eager mode); one per cell is the goal."""
        return 0 if self._mode == "eager" else self._step.experimental_get_tracing_count()

    # -- inference -------------------------------------------------------------------------------
    def logits(self, x: np.ndarray) -> np.ndarray:
        """Eval-mode logits; under XLA a smaller (last) batch is zero-padded to the compiled shape.

        Padding rows cannot change the real rows in eval mode (BatchNorm uses its moving
        statistics), and it spares an XLA compilation for the last partial batch of ``evaluate``.
        """
        x = np.asarray(x, dtype=np.float32)
        rows = len(x)
        if self._mode == "xla" and 0 < rows < self._forward_rows:
            x = np.concatenate([x, np.zeros((self._forward_rows - rows, *x.shape[1:]), np.float32)])
        self._forward_rows = max(self._forward_rows, len(x))
        out = self._forward(tf.convert_to_tensor(x))
        return np.asarray(out.numpy()[:rows], dtype=np.float32)

    def loss_and_gradients(self, x: np.ndarray, y: np.ndarray) -> tuple[float, list[np.ndarray]]:
        """Eager training-mode loss and gradients; BatchNorm statistics and RNG states are put back."""
        state = [(v, v.value.numpy()) for v in self._model.non_trainable_variables]
        with tf.GradientTape() as tape:
            loss = self._loss(tf.constant(y, dtype=tf.int64), self._model(tf.constant(x, dtype=tf.float32), training=True))
        grads = tape.gradient(loss, self._trainable)
        for v, value in state:
            v.assign(value)
        return float(loss.numpy()), [np.asarray(g.numpy(), dtype=np.float32) for g in grads]

    # -- measurement and artifacts ---------------------------------------------------------------
    def reset_peak_memory(self) -> None:
        if self._gpu:
            tf.config.experimental.reset_memory_stats("GPU:0")

    def peak_memory(self) -> MemoryReading:
        if not self._gpu:
            return MemoryReading(None, "none (cpu)")
        return MemoryReading(int(tf.config.experimental.get_memory_info("GPU:0")["peak"]), "tf.config.experimental.get_memory_info")

    def save_native(self, directory: Path) -> Path:
        """A ``.keras`` archive (config JSON + weights); ``keras.models.load_model`` reads it anywhere."""
        path = Path(directory) / "model.keras"
        path.parent.mkdir(parents=True, exist_ok=True)
        with warnings.catch_warnings():  # Keras 3.15's saver calls np.array(variable): NumPy 2 deprecation, harmless
            warnings.filterwarnings("ignore", message="__array__ implementation", category=DeprecationWarning)
            self._model.save(path)
        return path

    def load_native(self, path: Path) -> None:
        """The archive's weights only, into this model's variables: the compiled step keeps using them,
        and no saved config or code is deserialised."""
        self._model.load_weights(Path(path))
        self.reset_optimizer()

    def semantics(self) -> dict[str, str]:
        t = self._train
        threads = ", ".join(f"{k}={v}" for k, v in self._threads.items()) or "not set (setup not called)"
        return {
            "mode": MODE_DESCRIPTIONS[self._mode],
            "training_loop": "hand-written GradientTape step + optimizer.apply (what model.fit runs), not model.fit",
            "optimizer": f"keras.optimizers.{type(self._optimizer).__name__}, every hyperparameter explicit",
            "optimizer_epsilon": EPSILON_PLACEMENT[t.optimizer],
            "momentum_form": "m = mu*m - lr*g; w += m (equals torch's for constant lr)" if t.optimizer == "momentum" else "none",
            "weight_decay": f"decoupled {t.weight_decay}: w -= lr*wd*w before the update" if t.weight_decay else "off",
            "bn_momentum": f"{t.bn_momentum} (Keras sense: weight of the old statistic)",
            "bn_epsilon": str(t.bn_epsilon),
            "bn_variance": "biased",
            "leaky_relu_slope": str(t.leaky_relu_slope),
            "dropout": "keras.layers.Dropout (inverted), seeded from the train seed, training flag explicit",
            "init": "canonical numpy glorot_uniform",
            "loss": "from_logits=True, mean over batch",
            "precision": t.precision + (" (mixed_bfloat16 per layer, float32 variables and logits)" if t.precision == "bf16" else ""),
            "tf32": ("enabled" if t.precision == "tf32" else "disabled") if self._gpu else "n/a (cpu)",
            "threads": threads,
        }

    @property
    def loss_name(self) -> str:
        return self._train.loss


def _activation(name: str, train: TrainSpec, policy: str) -> list[keras.layers.Layer]:
    """The activation as layers; leaky_relu gets its own layer so the slope is explicit and saved."""
    name = train.activation if name == HIDDEN else name
    if name == "linear":
        return []
    if name == "leaky_relu":
        return [keras.layers.LeakyReLU(negative_slope=train.leaky_relu_slope, dtype=policy)]
    return [keras.layers.Activation(name, dtype=policy)]


def _translate(layer, index: int, train: TrainSpec, policy: str) -> list[keras.layers.Layer]:
    """One spec layer as Keras layers; the first one holds the parameters, if the layer has any."""
    if isinstance(layer, Flatten):
        return [keras.layers.Flatten(dtype=policy)]
    if isinstance(layer, Dense):
        return [keras.layers.Dense(layer.units, dtype=policy)] + _activation(layer.activation, train, policy)
    if isinstance(layer, Conv2D):
        conv = keras.layers.Conv2D(
            layer.filters, layer.kernel, strides=layer.stride, padding=layer.padding, data_format="channels_last", dtype=policy
        )
        return [conv] + _activation(layer.activation, train, policy)
    if isinstance(layer, MaxPool2D):
        return [keras.layers.MaxPooling2D(layer.size, strides=layer.size, padding="valid", dtype=policy)]
    if isinstance(layer, AvgPool2D):
        return [keras.layers.AveragePooling2D(layer.size, strides=layer.size, padding="valid", dtype=policy)]
    if isinstance(layer, BatchNorm):
        return [keras.layers.BatchNormalization(momentum=train.bn_momentum, epsilon=train.bn_epsilon, dtype=policy)]
    if isinstance(layer, Dropout):
        # One seed per layer from (train seed, layer index): equal seeds would correlate the masks.
        seed = int(np.random.SeedSequence([train.seed, index]).generate_state(1)[0] >> 1)
        return [keras.layers.Dropout(layer.rate, seed=seed, dtype=policy)]
    if isinstance(layer, Activation):
        return _activation(layer.activation, train, policy)
    raise Unsupported(f"layer {layer.type} has no Keras translation")


def _optimizer(train: TrainSpec) -> keras.optimizers.Optimizer:
    lr, wd = float(train.lr), train.weight_decay or None
    if train.optimizer in ("sgd", "momentum"):
        momentum = train.momentum if train.optimizer == "momentum" else 0.0
        return keras.optimizers.SGD(learning_rate=lr, momentum=momentum, nesterov=False, weight_decay=wd)
    if train.optimizer == "rmsprop":
        return keras.optimizers.RMSprop(
            learning_rate=lr, rho=train.rho, momentum=0.0, epsilon=train.epsilon, centered=False, weight_decay=wd
        )
    return keras.optimizers.Adam(
        learning_rate=lr, beta_1=train.beta1, beta_2=train.beta2, epsilon=train.epsilon, amsgrad=False, weight_decay=wd
    )


def _loss(name: str, num_classes: int) -> Callable[[tf.Tensor, tf.Tensor], tf.Tensor]:
    """The spec's loss as Keras computes it (mean over the batch), from integer labels and logits.

    Matches ``backends.base.numpy_loss``: mse/mae compare softmax(logits) with one-hot targets, bce
    is per-class sigmoid cross-entropy on the logits, hinge uses targets in {-1, +1} on raw logits.
    """
    if name == "cce":
        cce = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
        return lambda y, z: cce(y, tf.cast(z, tf.float32))

    def onehot(y: tf.Tensor) -> tf.Tensor:
        return tf.one_hot(y, num_classes, dtype=tf.float32)

    if name in ("mse", "mae"):
        fn = keras.losses.MeanSquaredError() if name == "mse" else keras.losses.MeanAbsoluteError()
        return lambda y, z: fn(onehot(y), tf.nn.softmax(tf.cast(z, tf.float32)))
    if name == "bce":
        bce = keras.losses.BinaryCrossentropy(from_logits=True)
        return lambda y, z: bce(onehot(y), tf.cast(z, tf.float32))
    if name == "hinge":
        hinge = keras.losses.Hinge()
        return lambda y, z: hinge(2.0 * onehot(y) - 1.0, tf.cast(z, tf.float32))
    raise Unsupported(f"loss {name!r} has no Keras translation")

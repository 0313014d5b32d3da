"""Keras 3 on TensorFlow: the spec as a Keras model, trained by a hand-written step.

Why a hand-written step rather than ``model.fit``: the harness owns the batch order and the clock
(``train_step(batch)`` per step, ``finish_epoch()`` as the one synchronisation), so every backend
trains on the same batches and is timed the same way. The step is what ``fit`` runs inside
(``GradientTape``, Keras loss, ``optimizer.apply``), compiled per execution mode:

- ``graph`` (default): ``tf.function`` without XLA;
- ``eager``: plain Python, op by op (Keras' ``run_eagerly=True``);
- ``xla``: ``tf.function(jit_compile=True)``.

Fairness (docs/architecture.md): canonical weights are loaded into the Keras variables, every optimizer and
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

from backends import REGISTRY  # noqa: E402
from backends.base import Backend, BackendInfo, MemoryReading, Unsupported  # noqa: E402
from bench.spec.augment import Params, param_shapes  # noqa: E402
from bench.spec.rules import Rules  # noqa: E402
from bench.spec.semantics import Native  # noqa: E402
from bench.spec.train import Augment, TrainSpec  # noqa: E402

if keras.backend.backend() != "tensorflow":  # keras was imported earlier with another backend
    raise ImportError(f"keras is already running on {keras.backend.backend()!r}; the tf backend needs a fresh process")

INTER_OP_THREADS = 1
"""TF's inter-op pool runs independent ops side by side; one thread keeps the total worker threads
equal to ``threads`` (intra-op), as ``torch.set_num_threads`` does for PyTorch."""

def _activation(name: str, train: TrainSpec, policy: str) -> list[keras.layers.Layer]:
    """The activation as layers; leaky_relu gets its own layer so the slope is explicit and saved."""
    return KerasBackend.translate("activation", name)(train.leaky_relu_slope, policy)


def _conv(layer, index: int, train: TrainSpec, policy: str) -> list[keras.layers.Layer]:
    conv = keras.layers.Conv2D(layer.filters, layer.kernel, strides=layer.stride, padding=layer.padding,
                               data_format="channels_last", dtype=policy)
    return [conv] + _activation(layer.activation, train, policy)


def _dropout(layer, index: int, train: TrainSpec, policy: str) -> list[keras.layers.Layer]:
    # One seed per layer from (train seed, layer index): equal seeds would correlate the masks.
    seed = int(np.random.SeedSequence([train.seed, index]).generate_state(1)[0] >> 1)
    return [keras.layers.Dropout(layer.rate, seed=seed, dtype=policy)]


def _onehot(y: tf.Tensor, z: tf.Tensor) -> tf.Tensor:
    return tf.one_hot(y, tf.shape(z)[1], dtype=tf.float32)


def _on_probabilities(fn: keras.losses.Loss) -> Callable[[tf.Tensor, tf.Tensor], tf.Tensor]:
    return lambda y, z: fn(_onehot(y, z), tf.nn.softmax(z))


def _sgd(train: TrainSpec, momentum: float) -> keras.optimizers.Optimizer:
    return keras.optimizers.SGD(learning_rate=float(train.lr), momentum=momentum, nesterov=False, weight_decay=train.weight_decay or None)


# -- augmentation on NHWC tensors, inside the step's tf.function (bench/spec/augment.py is the reference) ----
def _flip(axis: int):
    return lambda x, flip, a: tf.where(flip[:, None, None, None], tf.reverse(x, [axis]), x)


def _crop(x: tf.Tensor, offsets: tf.Tensor, a: Augment) -> tf.Tensor:
    """Zero-pad, then per image the H x W window at its (row, column) offset: two batched gathers."""
    pad = [[0, 0], [a.crop, a.crop], [a.crop, a.crop], [0, 0]]
    rows = offsets[:, :1] + tf.range(x.shape[1])
    cols = offsets[:, 1:] + tf.range(x.shape[2])
    return tf.gather(tf.gather(tf.pad(x, pad), rows, axis=1, batch_dims=1), cols, axis=2, batch_dims=1)


def _project(x: tf.Tensor, a0, a1, b0, b1) -> tf.Tensor:
    """Resample with output (col, row) -> input (a0 col + a1 row + a2, b0 col + b1 row + b2) about the centre
    (a2, b2 keep the centre fixed), bilinear, 0 outside: TF's own op (Keras' affine_transform uses it too)."""
    cy, cx = (x.shape[1] - 1) / 2, (x.shape[2] - 1) / 2
    zero = tf.zeros_like(a0)
    transforms = tf.stack([a0, a1, cx - a0 * cx - a1 * cy, b0, b1, cy - b0 * cx - b1 * cy, zero, zero], -1)
    return tf.raw_ops.ImageProjectiveTransformV3(images=x, transforms=transforms, output_shape=list(x.shape[1:3]),
                                                 fill_value=0.0, interpolation="BILINEAR", fill_mode="CONSTANT")


def _rotate(x: tf.Tensor, angle: tf.Tensor, a: Augment) -> tf.Tensor:
    c, s = tf.cos(angle), tf.sin(angle)
    return _project(x, c, -s, s, c)


def _zoom(x: tf.Tensor, scale: tf.Tensor, a: Augment) -> tf.Tensor:
    inverse = 1.0 / scale
    return _project(x, inverse, tf.zeros_like(inverse), tf.zeros_like(inverse), inverse)


RESAMPLING = ("rotate", "zoom")
"""Transforms built on ImageProjectiveTransformV3, which has no XLA kernel."""


class KerasBackend(Backend):
    name = "tf"
    framework = "tensorflow+keras"
    modes = REGISTRY[name].modes
    RULES = Rules(rmsprop_eps="inside_sqrt", adam_eps="uncorrected", momentum_form="velocity")
    NATIVE = Native(
        # Adam and RMSprop epsilon 1e-7, RMSprop rho 0.9, BatchNorm momentum 0.99 and epsilon 1e-3: Keras'
        # defaults, equal to the suite's. LeakyReLU 0.3: the adapter builds leaky_relu as a
        # ``keras.layers.LeakyReLU`` layer, and ``LeakyReLU()`` defaults to 0.3 (the string
        # activation "leaky_relu" would be the op's 0.2).
        overrides={"epsilon": 1e-7, "rho": 0.9, "bn_momentum": 0.99, "bn_epsilon": 1e-3, "leaky_relu_slope": 0.3},
        init="glorot_uniform",
        rules=RULES,
    )
    TRANSLATIONS = {
        # layer: (spec layer, index, train spec, dtype policy) -> Keras layers, the first holding the parameters
        "layer": {
            "Flatten": lambda layer, i, t, policy: [keras.layers.Flatten(dtype=policy)],
            "Dense": lambda layer, i, t, policy: [keras.layers.Dense(layer.units, dtype=policy)]
            + _activation(layer.activation, t, policy),
            "Conv2D": _conv,
            "MaxPool2D": lambda layer, i, t, policy: [keras.layers.MaxPooling2D(layer.size, strides=layer.size, padding="valid", dtype=policy)],
            "AvgPool2D": lambda layer, i, t, policy: [keras.layers.AveragePooling2D(layer.size, strides=layer.size, padding="valid", dtype=policy)],
            "BatchNorm": lambda layer, i, t, policy: [keras.layers.BatchNormalization(momentum=t.bn_momentum, epsilon=t.bn_epsilon, dtype=policy)],
            "Dropout": _dropout,
            "Activation": lambda layer, i, t, policy: _activation(layer.activation, t, policy),
        },
        "activation": {
            "relu": lambda slope, policy: [keras.layers.Activation("relu", dtype=policy)],
            "leaky_relu": lambda slope, policy: [keras.layers.LeakyReLU(negative_slope=slope, dtype=policy)],
            "tanh": lambda slope, policy: [keras.layers.Activation("tanh", dtype=policy)],
            "sigmoid": lambda slope, policy: [keras.layers.Activation("sigmoid", dtype=policy)],
            "linear": lambda slope, policy: [],
        },
        # loss: () -> fn(integer labels, float32 logits), mean over the batch as bench.spec.losses defines it
        "loss": {
            "cce": lambda: keras.losses.SparseCategoricalCrossentropy(from_logits=True),
            "mse": lambda: _on_probabilities(keras.losses.MeanSquaredError()),
            "mae": lambda: _on_probabilities(keras.losses.MeanAbsoluteError()),
            "bce": lambda: (lambda fn: lambda y, z: fn(_onehot(y, z), z))(keras.losses.BinaryCrossentropy(from_logits=True)),
            "hinge": lambda: (lambda fn: lambda y, z: fn(2.0 * _onehot(y, z) - 1.0, z))(keras.losses.Hinge()),
        },
        "optimizer": {
            "sgd": lambda t: _sgd(t, 0.0),
            "momentum": lambda t: _sgd(t, t.momentum),
            "rmsprop": lambda t: keras.optimizers.RMSprop(learning_rate=float(t.lr), rho=t.rho, momentum=0.0, epsilon=t.epsilon,
                                                          centered=False, weight_decay=t.weight_decay or None),
            "adam": lambda t: keras.optimizers.Adam(learning_rate=float(t.lr), beta_1=t.beta1, beta_2=t.beta2, epsilon=t.epsilon,
                                                    amsgrad=False, weight_decay=t.weight_decay or None),
        },
        "augment": {
            "hflip": _flip(2),
            "vflip": _flip(1),
            "crop": _crop,
            "rotate": _rotate,
            "zoom": _zoom,
            "brightness": lambda x, delta, a: tf.clip_by_value(x + delta[:, None, None, None], 0.0, 1.0),
            "noise": lambda x, noise, a: tf.clip_by_value(x + noise, 0.0, 1.0),
        },
    }

    def __init__(self) -> None:
        self._threads: dict[str, int | str] = {}
        self._model: keras.Model | None = None
        self._params: list[keras.Variable] = []
        self._x: tf.Tensor | None = None
        self._y: tf.Tensor | None = None

    # -- process ---------------------------------------------------------------------------------
    def _gpu_visible(self) -> bool:
        return bool(tf.config.list_physical_devices("GPU"))  # does not start the runtime

    def _setup(self, threads: int) -> BackendInfo:
        gpus = tf.config.list_physical_devices("GPU")
        knobs: list[tuple[str, Callable[[], None]]] = [
            ("intra_op threads", lambda: tf.config.threading.set_intra_op_parallelism_threads(threads)),
            ("inter_op threads", lambda: tf.config.threading.set_inter_op_parallelism_threads(INTER_OP_THREADS)),
            ("GPU visibility", lambda: tf.config.set_visible_devices(gpus if self.on_gpu else [], "GPU")),
        ]
        # Allocate on demand, so the peak-memory reading means what the model used.
        knobs += [(f"memory growth of {g.name}", lambda g=g: tf.config.experimental.set_memory_growth(g, True))
                  for g in gpus if self.on_gpu]
        kept = []  # each knob is fixed once TensorFlow's runtime has started (a second setup in one process)
        for what, action in knobs:
            try:
                action()
            except RuntimeError:
                kept.append(what)
        wanted, self.on_gpu = self.on_gpu, bool(tf.config.list_logical_devices("GPU"))  # what TF will really use
        if wanted and not self.on_gpu:
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
        name = tf.config.experimental.get_device_details(gpus[0]).get("device_name", gpus[0].name) if self.on_gpu else "cpu"
        return BackendInfo(
            framework=self.framework,
            versions={"tensorflow": tf.__version__, "keras": keras.__version__},
            device=name,
            threads=dict(self._threads),
        )

    # -- model -----------------------------------------------------------------------------------
    def _build(self) -> None:
        train = self.train
        if self.on_gpu:  # fp32 means full fp32: TF enables TF32 on Ampere+ by default
            tf.config.experimental.enable_tensor_float_32_execution(train.precision == "tf32")
        keras.backend.clear_session()  # drop the previous cell's model, layers and kernel caches
        if self.native:  # as a user seeds Keras: initialisers take their seeds when the layers are made
            keras.utils.set_random_seed(train.seed)
        policy = "mixed_bfloat16" if train.precision == "bf16" else "float32"
        holders: list[keras.layers.Layer | None] = []  # per spec layer: the Keras layer holding its parameters
        layers: list[keras.layers.Layer] = []
        for index, layer in enumerate(self.model.layers):
            translated = self.translate("layer", layer.type)(layer, index, train, policy)
            holders.append(translated[0] if translated else None)
            layers += translated
        if policy != "float32":  # logits leave the model in float32, whatever the compute dtype
            layers.append(keras.layers.Activation("linear", dtype="float32"))
        self._model = keras.Sequential([keras.Input(shape=self.input_shape), *layers], name=self.model.name)
        # Named explicitly per canonical role (kernel, bias, gamma, ...), never by Keras' variable order.
        self._params = [getattr(holders[p.layer], p.name) for p in self.specs]
        self._initializers = [getattr(holders[p.layer], f"{p.name}_initializer") for p in self.specs]
        for p, v in zip(self.specs, self._params):
            if tuple(v.shape) != p.shape:
                raise AssertionError(f"Keras variable {v.path} has shape {tuple(v.shape)}, canonical {p.shape}")
        self._trainable = [v for p, v in zip(self.specs, self._params) if p.trainable]
        self._optimizer = self.translate("optimizer", train.optimizer)(train)
        self._optimizer.build(self._trainable)  # slot variables exist before tracing
        self._fresh_optimizer = [v.value.numpy() for v in self._optimizer.variables]
        loss = self.translate("loss", train.loss)()
        self._loss = lambda y, z: loss(y, tf.cast(z, tf.float32))
        images = tf.TensorSpec([None, *self.input_shape], tf.float32)
        augment = self._augment_signature()
        self._train_fn = None  # compiled by load_data, around the arrays it places
        self._augment_fn = self._compile(self._augment, [images] + augment) if augment else None
        self._forward = self._compile(self._forward_fn, [images])
        self._forward_rows = 0  # largest batch the forward ran on (XLA compiled shape)

    def _augment_signature(self) -> list[dict[str, tf.TensorSpec]]:
        """The augmentation function's extra argument: each transform's parameters, batch dimension open."""
        if not self._augmentations:
            return []
        if self.mode == "xla" and set(self.train.augment.names) & set(RESAMPLING):
            raise Unsupported("rotate/zoom use TensorFlow's ImageProjectiveTransformV3, which has no XLA kernel; "
                              "use the graph or eager mode")
        shapes = param_shapes(self.train.augment, self.input_shape)
        return [{name: tf.TensorSpec([None, *shape], tf.as_dtype(dtype)) for name, (shape, dtype) in shapes.items()}]

    def _compile(self, fn: Callable, signature: list[tf.TensorSpec] | None) -> Callable:
        """The function as the execution mode runs it.

        A signature leaves the batch dimension open, so tf.function traces once per cell whatever the
        batch (evaluation's last batch is smaller); XLA still compiles once per concrete shape. The
        train step has none: it is traced once per batch shape, which a cell's fixed batch size keeps
        to one, and its graph then needs no run-time shape ops (3% of an mlp step, measured).
        """
        if self.mode == "eager":
            return fn
        # Traced through a closure, not as the bound method: TF runs a tf.function made from a bound
        # method 3-4% slower per call than one made from a function, with identical graphs (measured on
        # the mlp step against benchmarks/plain_loops.py, in both creation orders).
        return tf.function(lambda *args: fn(*args), input_signature=signature, jit_compile=self.mode == "xla")

    def _set_weights(self, weights: list[np.ndarray]) -> None:
        for v, w in zip(self._params, weights):
            v.assign(w)

    def _initialise_natively(self) -> None:
        """Each layer's own initialiser (Dense/Conv2D glorot_uniform kernels and zero biases, BatchNorm
        ones and zeros). Their seeds were drawn when ``_build`` made the layers after
        ``keras.utils.set_random_seed(seed)``, so this redraws what Keras built, on demand."""
        for v, initializer in zip(self._params, self._initializers):
            v.assign(initializer(v.shape, dtype=v.dtype))

    def get_weights(self) -> list[np.ndarray]:
        return [np.array(v.value.numpy(), dtype=np.float32) for v in self._params]

    def _reset_optimizer(self) -> None:
        """Assign the optimizer's fresh values (iteration 0, zero slots) in place: nothing is retraced."""
        for v, value in zip(self._optimizer.variables, self._fresh_optimizer):
            v.assign(value)

    # -- training --------------------------------------------------------------------------------
    def _place_data(self, x: np.ndarray, y: np.ndarray) -> None:
        with tf.device("/GPU:0" if self.on_gpu else "/CPU:0"):  # tf.identity copies onto the device once
            self._x = tf.identity(tf.convert_to_tensor(np.asarray(x, dtype=np.float32)))
            self._y = tf.identity(tf.convert_to_tensor(np.asarray(y, dtype=np.int64)))
        # The step captures the placed arrays rather than taking them as arguments: each argument costs
        # tf.function's call path ~0.08 ms per step, 13% of an mlp step on 2 cores (measured against
        # the plain loop of benchmarks/plain_loops.py). New arrays mean a new function, traced once.
        self._train_fn = self._compile(self._train_step_fn, None)

    def _train_step_fn(self, rows: tf.Tensor, augment: dict | None = None) -> tf.Tensor:
        x, y = tf.gather(self._x, rows), tf.gather(self._y, rows)
        if augment is not None:
            x = self._augment(x, augment)
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

    def _step(self, batch: np.ndarray, augment: Params | None) -> tf.Tensor:
        rows = tf.convert_to_tensor(np.asarray(batch, dtype=np.int32))
        if augment is None:
            return self._train_fn(rows)
        return self._train_fn(rows, {name: tf.convert_to_tensor(p) for name, p in augment.items()})

    def _augmented(self, x: np.ndarray, params: Params) -> np.ndarray:
        return self._augment_fn(tf.convert_to_tensor(x), params).numpy()

    def _read_losses(self, pending: list[tf.Tensor]) -> np.ndarray:
        return tf.stack(pending).numpy()

    def _synchronize(self, pending: list[tf.Tensor]) -> None:
        """Reading a value back waits for every op queued before it (TF has no explicit barrier)."""
        if self._params:
            float(tf.reshape(self._params[-1].value, [-1])[0])

    @property
    def keras_model(self) -> keras.Model:
        """The built Keras model, for inspection and for benchmarks/keras_vs_fit.py."""
        return self._model

    def trace_count(self) -> int:
        """How many times the step was traced (0 in eager mode); one per cell is the goal."""
        return 0 if self.mode == "eager" or self._train_fn is None else self._train_fn.experimental_get_tracing_count()

    # -- inference -------------------------------------------------------------------------------
    def logits(self, x: np.ndarray) -> np.ndarray:
        """Eval-mode logits; under XLA a smaller (last) batch is zero-padded to the compiled shape.

        Padding rows cannot change the real rows in eval mode (BatchNorm uses its moving
        statistics), and it spares an XLA compilation for the last partial batch of ``evaluate``.
        """
        x = np.asarray(x, dtype=np.float32)
        rows = len(x)
        if self.mode == "xla" and 0 < rows < self._forward_rows:
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
        if self.on_gpu:
            tf.config.experimental.reset_memory_stats("GPU:0")

    def peak_memory(self) -> MemoryReading:
        if not self.on_gpu:
            return super().peak_memory()
        return MemoryReading(int(tf.config.experimental.get_memory_info("GPU:0")["peak"]), "tf.config.experimental.get_memory_info")

    def save_native(self, directory: Path) -> Path:
        """A ``.keras`` archive (config JSON + weights); ``keras.models.load_model`` reads it anywhere."""
        path = Path(directory) / "model.keras"
        path.parent.mkdir(parents=True, exist_ok=True)
        with warnings.catch_warnings():  # Keras 3.15's saver calls np.array(variable): NumPy 2 deprecation, harmless
            warnings.filterwarnings("ignore", message="__array__ implementation", category=DeprecationWarning)
            self._model.save(path)
        return path

    def _load_native(self, path: Path) -> None:
        """The archive's weights only, into this model's variables: the compiled step keeps using them,
        and no saved config or code is deserialised."""
        self._model.load_weights(Path(path))

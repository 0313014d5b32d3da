"""Keras 3 on TensorFlow (the ``tf`` backend): the shared Keras model, trained by a hand-written step.

The model, its tables, rules and weights are ``keras_base``'s, shared with Keras on JAX and on torch;
this module is what TensorFlow does differently (docs/architecture.md, "Keras engines").

Why a hand-written step rather than ``model.fit``: the harness owns the batch order and the clock
(``train_step(batch)`` per step, ``finish_epoch()`` as the one synchronisation), so every backend
trains on the same batches and is timed the same way. The step is what ``fit`` runs inside
(``GradientTape``, Keras loss, ``optimizer.apply``), compiled per execution mode:

- ``graph`` (default): ``tf.function`` without XLA;
- ``eager``: plain Python, op by op (Keras' ``run_eagerly=True``);
- ``xla``: ``tf.function(jit_compile=True)``.
"""

from __future__ import annotations

import gc
import logging
from collections.abc import Callable

from backends import keras_engine

keras = keras_engine.start("tf")  # KERAS_BACKEND before Keras is imported anywhere

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

# Each cell builds its own tf.function by design (one trace per cell); TF's Python logger would warn
# about "excessive retracing" after five cells. Errors still show.
tf.get_logger().setLevel(logging.ERROR)

from backends import REGISTRY, tf_runtime  # noqa: E402
from backends.base import BackendInfo, Unsupported  # noqa: E402
from backends.keras_base import RESAMPLING, KerasBase  # noqa: E402
from bench.spec.augment import Params, param_shapes  # noqa: E402

INTER_OP_THREADS = 1
"""TF's inter-op pool runs independent ops side by side; one thread keeps the total worker threads
equal to ``threads`` (intra-op), as ``torch.set_num_threads`` does for PyTorch."""


class KerasBackend(KerasBase):
    name = "tf"
    framework = "tensorflow+keras"
    modes = REGISTRY[name].modes

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
        if self.on_gpu and not wanted:  # never a CPU cell measured on the GPU (the worker hides GPUs before the import)
            raise RuntimeError("device 'cpu' requested but TensorFlow's runtime already started with the GPU visible; "
                               "start the process with CUDA_VISIBLE_DEVICES='' (backends/device.py environment)")
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
        return BackendInfo(
            framework=self.framework,
            versions={"tensorflow": tf.__version__, "keras": keras.__version__},
            device=tf_runtime.gpu_name() if self.on_gpu else "cpu",
            threads=dict(self._threads),
        )

    def _device_ops(self) -> tf_runtime.Ops:
        return tf_runtime.Ops(self.on_gpu)

    # -- model -----------------------------------------------------------------------------------
    def _build(self) -> None:
        if self.on_gpu:  # fp32 means full fp32: TF enables TF32 on Ampere+ by default
            tf.config.experimental.enable_tensor_float_32_execution(self.train.precision == "tf32")
        super()._build()

    def _compile_functions(self) -> None:
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

    def _numpy(self, tensor: tf.Tensor | tf.Variable) -> np.ndarray:
        return tensor.numpy()  # np.array() of a TF tensor or variable warns under NumPy 2 (no copy keyword)

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
        self._feed_rate()
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
        return float(loss.numpy()), self._canonical_gradients([self._numpy(g) for g in grads])

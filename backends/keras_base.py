"""The spec in Keras 3 terms, shared by the adapters of its three engines (tf, keras-jax, keras-torch).

Keras 3 is one API over TensorFlow, JAX and PyTorch: its layers, losses, optimizers and ``keras.ops``
are the same code on every engine. So the translation tables, the rules Keras follows, its native
defaults, the model build, weight loading and the native file live here once, and each engine's
adapter holds only what differs: the training step as Keras' own trainer runs it on that engine,
threads and devices, and how state is read back (docs/architecture.md, "Keras engines"). A new
layer is one row per table here; the three Keras backends pick it up together.

Import this module through an engine's adapter: each calls ``keras_engine.start`` first, which sets
``KERAS_BACKEND`` before Keras is imported.

Fairness (docs/architecture.md): canonical weights are loaded into the Keras variables, every
optimizer and BatchNorm hyperparameter is passed explicitly (Keras' own defaults never apply), the
LeakyReLU slope is explicit (Keras' ``"leaky_relu"`` string would mean 0.2), losses take logits
(``from_logits=True``), and the training flag is always given.
"""

from __future__ import annotations

import warnings
from abc import abstractmethod
from collections.abc import Callable
from pathlib import Path
from typing import Any

import keras
import numpy as np
from keras import ops

from backends.base import Backend
from backends.keras_layers import LAYERS, Graph, initializer, variable
from bench.spec.rules import Rules
from bench.spec.semantics import Native
from bench.spec.train import Augment, TrainSpec

RULES = Rules(rmsprop_eps="inside_sqrt", adam_eps="uncorrected", momentum_form="velocity")
"""What Keras 3 does where frameworks differ, on TensorFlow's kernels. Its optimizers and BatchNorm
are ``keras.ops`` code, the same on every engine; an engine whose kernels change a rule (JAX's
``leaky_relu``) declares that one field differently in its adapter."""
NATIVE_OVERRIDES = {"epsilon": 1e-7, "rho": 0.9, "bn_momentum": 0.99, "bn_epsilon": 1e-3, "leaky_relu_slope": 0.3}
"""Keras' own defaults, on every engine: Adam and RMSprop epsilon 1e-7, RMSprop rho 0.9, BatchNorm
momentum 0.99 and epsilon 1e-3 (equal to the suite's); LeakyReLU 0.3, because leaky_relu is built
as a ``keras.layers.LeakyReLU`` layer, whose default is 0.3 (the string activation would be 0.2)."""
NATIVE_LAYERS = {"LayerNorm": {"epsilon": 1e-3}}
"""``LayerNormalization``'s own epsilon (the suite's is 1e-5, torch's): what a LayerNorm that leaves its
epsilon to the default gets under the native policy; an epsilon the spec names stays under every policy."""


def native(rules: Rules) -> Native:
    """Keras' defaults, glorot_uniform initialisers, and the rules of the engine it runs on."""
    return Native(overrides=NATIVE_OVERRIDES, init="glorot_uniform", rules=rules, layers=NATIVE_LAYERS)


def _onehot(y: Any, z: Any) -> Any:
    return ops.one_hot(y, z.shape[-1], dtype="float32")


def _on_probabilities(fn: keras.losses.Loss) -> Callable[[Any, Any], Any]:
    return lambda y, z: fn(_onehot(y, z), ops.softmax(z))


def _sgd(train: TrainSpec, momentum: float) -> keras.optimizers.Optimizer:
    return keras.optimizers.SGD(learning_rate=float(train.lr), momentum=momentum, nesterov=False, weight_decay=train.weight_decay or None)


# -- augmentation on NHWC tensors in keras.ops, inside each engine's step (bench/spec/augment.py is the reference) --
def _flip(axis: int):
    return lambda x, flip, a: ops.where(flip[:, None, None, None], ops.flip(x, axis), x)


def _crop(x: Any, offsets: Any, a: Augment) -> Any:
    """Zero-pad, then per image the H x W window at its (row, column) offset: two batched gathers."""
    padded = ops.pad(x, [[0, 0], [a.crop, a.crop], [a.crop, a.crop], [0, 0]])
    rows = offsets[:, :1] + ops.arange(x.shape[1], dtype="int32")
    cols = offsets[:, 1:] + ops.arange(x.shape[2], dtype="int32")
    padded = ops.take_along_axis(padded, rows[:, :, None, None], axis=1)
    return ops.take_along_axis(padded, cols[:, None, :, None], axis=2)


def _project(x: Any, a0: Any, a1: Any, b0: Any, b1: Any) -> Any:
    """Resample with output (col, row) -> input (a0 col + a1 row + a2, b0 col + b1 row + b2) about the
    centre (a2, b2 keep it fixed), bilinear, 0 outside: ``keras.ops.image.affine_transform``, which is
    TensorFlow's ImageProjectiveTransformV3 on tf and a bilinear ``map_coordinates`` on JAX and torch."""
    cy, cx = (x.shape[1] - 1) / 2, (x.shape[2] - 1) / 2
    zero = ops.zeros_like(a0)
    transforms = ops.stack([a0, a1, cx - a0 * cx - a1 * cy, b0, b1, cy - b0 * cx - b1 * cy, zero, zero], axis=-1)
    return ops.image.affine_transform(x, transforms, interpolation="bilinear", fill_mode="constant", fill_value=0.0,
                                      data_format="channels_last")


def _rotate(x: Any, angle: Any, a: Augment) -> Any:
    c, s = ops.cos(angle), ops.sin(angle)
    return _project(x, c, -s, s, c)


def _zoom(x: Any, scale: Any, a: Augment) -> Any:
    inverse = 1.0 / scale
    return _project(x, inverse, ops.zeros_like(inverse), ops.zeros_like(inverse), inverse)


RESAMPLING = ("rotate", "zoom")
"""Transforms built on ``affine_transform`` (on TensorFlow: ImageProjectiveTransformV3, no XLA kernel)."""

TRANSLATIONS = {
    # layer: (spec layer, index, train spec, dtype policy, activate) -> Keras layers, the first holding the parameters
    # layer: (spec layer, path, input tensor, graph) -> output tensor, in backends/keras_layers.py
    "layer": LAYERS,
    # activation: (leaky slope, dtype policy) -> layers; leaky_relu is a layer so the slope is explicit and saved
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
        # Keras' AdamW is Adam with a required decay: variable -= variable * wd * lr before the update
        "adamw": lambda t: keras.optimizers.AdamW(learning_rate=float(t.lr), weight_decay=t.weight_decay, beta_1=t.beta1,
                                                  beta_2=t.beta2, epsilon=t.epsilon, amsgrad=False),
    },
    "augment": {
        "hflip": _flip(2),
        "vflip": _flip(1),
        "crop": _crop,
        "rotate": _rotate,
        "zoom": _zoom,
        "brightness": lambda x, delta, a: ops.clip(x + delta[:, None, None, None], 0.0, 1.0),
        "noise": lambda x, noise, a: ops.clip(x + noise, 0.0, 1.0),
    },
}


class KerasBase(Backend):
    """Everything a Keras model is, whatever engine runs it: the model built from the tables, its
    canonical parameters, the optimizer and its fresh state, the loss, and the ``.keras`` file.

    An engine's adapter implements the step, the forward pass, gradients and the process hooks. Where
    it keeps the model's state outside the Keras variables while training (JAX: arrays threaded
    through a pure step), it overrides ``_sync_variables`` (state -> variables, before they are read)
    and ``_variables_changed`` (variables -> state, after they are written).
    """

    RULES = RULES
    NATIVE = native(RULES)
    TRANSLATIONS = TRANSLATIONS

    # -- model -----------------------------------------------------------------------------------
    def _build(self) -> None:
        train = self.train
        keras.backend.clear_session()  # drop the previous cell's model, layers and kernel caches
        if self.native:  # as a user seeds Keras: initialisers take their seeds when the layers are made
            keras.utils.set_random_seed(train.seed)
        policy = "mixed_bfloat16" if train.precision == "bf16" else "float32"

        def activate(name: str) -> list[keras.layers.Layer]:
            return self.translate("activation", name)(train.leaky_relu_slope, policy)

        graph = Graph(train, policy, activate, lambda kind: self.translate("layer", kind))
        inputs = keras.Input(shape=self.input_shape)
        outputs = graph.stack(self.model.layers, "", inputs)
        if policy != "float32":  # logits leave the model in float32, whatever the compute dtype
            outputs = keras.layers.Activation("linear", dtype="float32")(outputs)
        self._model = keras.Model(inputs, outputs, name=self.model.name)
        # Named explicitly per canonical role (kernel, bias, gamma, query_kernel, ...), never by Keras'
        # variable order; each Keras array is its canonical array reshaped (keras_layers ``ROUTES``).
        self._params = [variable(graph.holders[p.layer], p.name) for p in self.specs]
        self._initializers = [initializer(graph.holders[p.layer], p.name) for p in self.specs]
        for p, v in zip(self.specs, self._params):
            if int(np.prod(v.shape)) != int(np.prod(p.shape)):
                raise AssertionError(f"Keras variable {v.path} has shape {tuple(v.shape)}, canonical {p.shape}")
        # The step works in the model's own variable order, as Keras' trainers do; gradients are
        # handed out in canonical order through this index.
        self._trainable = list(self._model.trainable_variables)
        position = {id(v): i for i, v in enumerate(self._trainable)}
        self._canonical_grads = [position[id(v)] for p, v in zip(self.specs, self._params) if p.trainable]
        if len(self._canonical_grads) != len(self._trainable):
            raise AssertionError(f"Keras trains {len(self._trainable)} variables, the spec {len(self._canonical_grads)}")
        self._optimizer = self.translate("optimizer", train.optimizer)(train)
        self._optimizer.build(self._trainable)  # slot variables exist before the step is traced
        self._fresh_optimizer = [self._numpy(v.value) for v in self._optimizer.variables]
        loss = self.translate("loss", train.loss)()
        self._loss = lambda y, z: loss(y, ops.cast(z, "float32"))
        self._compile_functions()

    @abstractmethod
    def _compile_functions(self) -> None:
        """The engine's forward (and augmentation) functions for the built model, in ``self.mode``;
        the train step itself may wait for ``_place_data``."""

    def _sync_variables(self) -> None:
        """Write state the engine holds outside the Keras variables back into them (JAX)."""

    def _variables_changed(self) -> None:
        """The Keras variables were written (weights loaded): take them as the engine's state (JAX)."""

    def _set_weights(self, weights: list[np.ndarray]) -> None:
        for v, w in zip(self._params, weights):
            v.assign(np.reshape(w, v.shape))
        self._variables_changed()

    def _initialise_natively(self) -> None:
        """Each layer's own initialiser (Dense/Conv2D glorot_uniform kernels and zero biases, BatchNorm
        ones and zeros). Their seeds were drawn when ``_build`` made the layers after
        ``keras.utils.set_random_seed(seed)``, so this redraws what Keras built, on demand."""
        for v, draw in zip(self._params, self._initializers):
            v.assign(draw(v.shape, dtype=v.dtype))
        self._variables_changed()

    def get_weights(self) -> list[np.ndarray]:
        self._sync_variables()
        return [np.array(self._numpy(v.value), dtype=np.float32).reshape(p.shape) for p, v in zip(self.specs, self._params)]

    def _reset_optimizer(self) -> None:
        """Assign the optimizer's fresh values (iteration 0, zero slots, the base rate) in place: nothing is retraced."""
        for v, value in zip(self._optimizer.variables, self._fresh_optimizer):
            v.assign(value)
        self._rate_fed = float(self.train.lr)

    def _feed_rate(self) -> None:
        """Give the optimizer the schedule's rate of the step about to run (``step_lr``), as a value in
        its learning-rate variable, which the compiled steps read like any other state: a new rate is
        an assignment, never a retrace. Assigned only when it changes, so a constant schedule costs
        nothing per step; each engine's ``_step`` calls this first."""
        if self.step_lr != self._rate_fed:
            self._assign_rate(self.step_lr)
            self._rate_fed = self.step_lr

    def _assign_rate(self, rate: float) -> None:
        """Write the rate into the optimizer's ``learning_rate`` variable (``keras.Variable.assign``)."""
        self._optimizer.learning_rate.assign(rate)

    def _numpy(self, tensor: Any) -> np.ndarray:
        """A tensor (or a variable's value) of this engine as a NumPy copy: never a view of a buffer the
        engine may write again (torch's slots are updated in place, JAX's donated)."""
        return np.array(ops.convert_to_numpy(tensor))

    def _canonical_gradients(self, grads: list[np.ndarray]) -> list[np.ndarray]:
        """Gradients in the model's variable order (as the step computes them) in canonical order."""
        shapes = [p.shape for p in self.specs if p.trainable]
        return [np.asarray(grads[i], dtype=np.float32).reshape(shape) for i, shape in zip(self._canonical_grads, shapes)]

    @property
    def keras_model(self) -> keras.Model:
        """The built Keras model, for inspection and for benchmarks/keras_vs_fit.py."""
        return self._model

    # -- artifacts -------------------------------------------------------------------------------
    def save_native(self, directory: Path) -> Path:
        """A ``.keras`` archive (config JSON + weights): ``keras.models.load_model`` reads it on any engine."""
        self._sync_variables()
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
        self._variables_changed()

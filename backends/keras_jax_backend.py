"""Keras 3 on JAX (the ``keras-jax`` backend): the shared Keras model, trained by Keras' own JAX step.

The model, its tables, rules and weights are ``keras_base``'s, shared with Keras on TensorFlow and on
torch; this module is what JAX does differently (docs/architecture.md, "Keras engines"). The step is
the one Keras' JAX trainer (``keras/src/backend/jax/trainer.py``) runs inside ``fit``: the model's
state as plain arrays, ``model.stateless_call`` under ``jax.value_and_grad``, then
``optimizer.stateless_apply``, all under ``jax.jit`` with the state donated (``jit_compile=True``,
Keras' default on JAX), or the same function op by op (``eager``: ``run_eagerly=True``). As in
Keras' trainer, the state lives outside the Keras variables while training and is written back
into them only when they are read (``_sync_variables``; Keras' ``jax_state_sync``).

As the JAX adapter, the training arrays live on the device and each step gathers its rows inside
the jitted function, and the step's Python body counts its traces (``compile_count``).
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from backends import keras_engine

keras = keras_engine.start("keras-jax")  # KERAS_BACKEND before Keras is imported anywhere

import jax  # noqa: E402
import numpy as np  # noqa: E402

from backends import REGISTRY, jax_compile_cache, jax_runtime  # noqa: E402
from backends.keras_base import RULES, KerasBase, native  # noqa: E402
from bench.spec.augment import Params  # noqa: E402

State = list[jax.Array]


class KerasJaxBackend(jax_runtime.JaxHosted, KerasBase):
    name = "keras-jax"
    framework = "jax+keras"
    modes = REGISTRY[name].modes
    RULES = replace(RULES, leaky_relu_grad_at_zero="one")
    """Keras' rules, except that its ``leaky_relu`` is ``jax.nn.leaky_relu`` here, where(x >= 0, x,
    slope*x), whose derivative at exactly 0 is 1 (the parity ladder's gradient rung shows it)."""
    NATIVE = native(RULES)
    PAD_EVAL_BATCHES = True

    # -- process ---------------------------------------------------------------------------------
    def _library_versions(self) -> dict[str, str]:
        return {"keras": keras.__version__}

    # -- model -----------------------------------------------------------------------------------
    def _build(self) -> None:
        # fp32 matmuls in full precision (XLA's default on NVIDIA is TF32); tf32 and bf16 take the default
        jax.config.update("jax_default_matmul_precision", "highest" if self.train.precision == "fp32" else "default")
        super()._build()

    def _compile_functions(self) -> None:
        self.compile_count = 0
        self._cache_misses = jax_compile_cache.CacheEvents.misses
        self._x: jax.Array | None = None
        self._y: jax.Array | None = None
        jit = self.mode == "jit"
        self._train_fn = jax.jit(self._counted_step, donate_argnums=(0, 1, 2)) if jit else self._train_step
        self._forward = jax.jit(self._forward_fn) if jit else self._forward_fn
        self._augment_fn = jax.jit(self._augment) if jit else self._augment
        self._grads_fn = jax.jit(self._loss_and_grads) if jit else self._loss_and_grads
        self._variables_changed()

    def _sync_variables(self) -> None:
        for v, value in zip(self._trainable + self._model.non_trainable_variables, self._trainable_state + self._non_trainable_state):
            v.assign(value)

    def _variables_changed(self) -> None:
        self._trainable_state = [v.value for v in self._trainable]
        self._non_trainable_state = [v.value for v in self._model.non_trainable_variables]

    def _reset_optimizer(self) -> None:
        """Fresh optimizer arrays of the same shapes and dtypes: the compiled step is reused."""
        self._optimizer_state = [jax.device_put(value, self.device) for value in self._fresh_optimizer]
        self._rate_fed = float(self.train.lr)

    def _assign_rate(self, rate: float) -> None:
        """The rate is one of the optimizer arrays the pure step takes (Keras' ``stateless_apply`` reads
        its ``learning_rate`` variable from them): a new float32 scalar there, the same compiled step."""
        slot = [id(v) for v in self._optimizer.variables].index(id(self._optimizer.learning_rate))
        self._optimizer_state[slot] = jax.device_put(np.float32(rate), self.device)

    # -- the pure functions the step and evaluation are made of ----------------------------------
    def _loss_and_state(self, trainable: State, non_trainable: State, x: jax.Array, y: jax.Array) -> tuple[jax.Array, State]:
        """Training-mode loss and the non-trainable state (BatchNorm statistics, dropout seeds) it leaves."""
        z, non_trainable = self._model.stateless_call(trainable, non_trainable, x, training=True)
        return self._loss(y, z), non_trainable

    def _train_step(
        self, trainable: State, non_trainable: State, optimizer: State, x_all: jax.Array, y_all: jax.Array,
        rows: jax.Array, augment: dict[str, jax.Array] | None,
    ) -> tuple[State, State, State, jax.Array]:
        x = x_all[rows] if augment is None else self._augment(x_all[rows], augment)
        grad_fn = jax.value_and_grad(self._loss_and_state, has_aux=True)
        (loss, non_trainable), grads = grad_fn(trainable, non_trainable, x, y_all[rows])
        trainable, optimizer = self._optimizer.stateless_apply(optimizer, grads, trainable)
        return trainable, non_trainable, optimizer, loss

    def _counted_step(self, *args: Any) -> Any:
        self.compile_count += 1  # Python body: runs only while JAX traces
        return self._train_step(*args)

    def _forward_fn(self, trainable: State, non_trainable: State, x: jax.Array) -> jax.Array:
        return self._model.stateless_call(trainable, non_trainable, x, training=False)[0]

    def _loss_and_grads(self, trainable: State, non_trainable: State, x: jax.Array, y: jax.Array) -> tuple[jax.Array, State]:
        (loss, _), grads = jax.value_and_grad(self._loss_and_state, has_aux=True)(trainable, non_trainable, x, y)
        return loss, grads

    # -- training --------------------------------------------------------------------------------
    def _place_data(self, x: np.ndarray, y: np.ndarray) -> None:
        self._x = jax.device_put(np.asarray(x, np.float32), self.device)
        self._y = jax.device_put(np.asarray(y, np.int32), self.device)

    def _step(self, batch: np.ndarray, augment: Params | None) -> jax.Array:
        self._feed_rate()
        out = self._train_fn(self._trainable_state, self._non_trainable_state, self._optimizer_state,
                             self._x, self._y, batch.astype(np.int32), augment)
        self._trainable_state, self._non_trainable_state, self._optimizer_state, loss = out
        return loss

    def _training_state(self) -> tuple:
        return self._trainable_state, self._non_trainable_state, self._optimizer_state

    # -- inference -------------------------------------------------------------------------------
    def logits(self, x: np.ndarray) -> np.ndarray:
        out = self._forward(self._trainable_state, self._non_trainable_state, jax.device_put(np.asarray(x, np.float32), self.device))
        return np.asarray(out, dtype=np.float32)

    def loss_and_gradients(self, x: np.ndarray, y: np.ndarray) -> tuple[float, list[np.ndarray]]:
        """Functional: the state is read, never replaced; dropout draws from the current seed state."""
        loss, grads = self._grads_fn(self._trainable_state, self._non_trainable_state,
                                     jax.device_put(np.asarray(x, np.float32), self.device),
                                     jax.device_put(np.asarray(y, np.int32), self.device))
        return float(loss), self._canonical_gradients([np.asarray(g) for g in grads])

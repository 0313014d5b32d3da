"""Plain, idiomatic hand-written training loops: what a careful user of each framework writes.

They are the yardstick of ``suite_vs_plain.py``: the mlp (Flatten -> Dense 128 relu -> Dense 10)
with Adam and cross-entropy from logits, the suite's canonical weights, data placed once, and each
step reading the rows the suite's batch order names. Every trainer is ``(step, sync)``: ``step(rows)``
dispatches one optimizer step and returns its loss as the framework holds it, ``sync(losses)``
waits for the device and reads the losses back (the same one read-back per epoch as the suite).
``keras_fit_epochs`` is the other Keras idiom, ``model.fit``, timed per epoch by a callback.

Each framework is imported inside its function, so a process imports only the one it measures.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable

import numpy as np

from bench.spec.train import TrainSpec

Trainer = tuple[Callable[[np.ndarray], object], Callable[[list], np.ndarray]]


def torch_trainer(x: np.ndarray, y: np.ndarray, train: TrainSpec, weights: list[np.ndarray]) -> Trainer:
    """``nn.Sequential``, ``torch.optim.Adam``, ``F.cross_entropy``; tensors in memory, rows indexed per step."""
    import torch
    import torch.nn.functional as F
    from torch import nn

    model = nn.Sequential(nn.Flatten(), nn.Linear(x[0].size, 128), nn.ReLU(), nn.Linear(128, 10))
    with torch.no_grad():
        model[1].weight.copy_(torch.from_numpy(weights[0].T.copy()))
        model[1].bias.copy_(torch.from_numpy(weights[1]))
        model[3].weight.copy_(torch.from_numpy(weights[2].T.copy()))
        model[3].bias.copy_(torch.from_numpy(weights[3]))
    optimizer = torch.optim.Adam(model.parameters(), lr=train.lr, betas=(train.beta1, train.beta2), eps=train.epsilon)
    x_all, y_all = torch.from_numpy(x), torch.from_numpy(y.astype(np.int64))
    model.train()

    def step(rows: np.ndarray) -> torch.Tensor:
        index = torch.from_numpy(rows)
        optimizer.zero_grad(set_to_none=True)
        loss = F.cross_entropy(model(x_all[index]), y_all[index])
        loss.backward()
        optimizer.step()
        return loss.detach()

    return step, lambda losses: torch.stack(losses).numpy()


def _keras_mlp(x: np.ndarray, train: TrainSpec, weights: list[np.ndarray]):
    os.environ.setdefault("KERAS_BACKEND", "tensorflow")
    import keras

    model = keras.Sequential([keras.Input(shape=x.shape[1:]), keras.layers.Flatten(),
                              keras.layers.Dense(128, activation="relu"), keras.layers.Dense(10)])
    model.set_weights(weights)
    optimizer = keras.optimizers.Adam(learning_rate=train.lr, beta_1=train.beta1, beta_2=train.beta2,
                                      epsilon=train.epsilon)
    return model, optimizer, keras.losses.SparseCategoricalCrossentropy(from_logits=True)


def tf_function_trainer(x: np.ndarray, y: np.ndarray, train: TrainSpec, weights: list[np.ndarray]) -> Trainer:
    """A Keras model trained by a hand-written ``tf.function`` step (GradientTape, ``apply_gradients``);
    the arrays are tensors placed once and the step gathers its rows."""
    import tensorflow as tf

    model, optimizer, loss_fn = _keras_mlp(x, train, weights)
    x_all, y_all = tf.constant(x), tf.constant(y.astype(np.int64))

    @tf.function
    def train_step(rows: tf.Tensor) -> tf.Tensor:
        xb, yb = tf.gather(x_all, rows), tf.gather(y_all, rows)
        with tf.GradientTape() as tape:
            loss = loss_fn(yb, model(xb, training=True))
        grads = tape.gradient(loss, model.trainable_variables)
        optimizer.apply_gradients(zip(grads, model.trainable_variables))
        return loss

    def step(rows: np.ndarray) -> tf.Tensor:
        return train_step(tf.constant(rows.astype(np.int32)))

    return step, lambda losses: tf.stack(losses).numpy()


def jax_trainer(x: np.ndarray, y: np.ndarray, train: TrainSpec, weights: list[np.ndarray]) -> Trainer:
    """Two ``jnp.dot`` layers at "highest" precision, ``optax.adam``, one ``jax.jit`` step with donated
    parameters and optimizer state; data on the device, rows gathered inside the step."""
    import jax
    import jax.numpy as jnp
    import optax

    highest = jax.lax.Precision.HIGHEST
    params = [jnp.asarray(w) for w in weights]
    tx = optax.adam(train.lr, b1=train.beta1, b2=train.beta2, eps=train.epsilon)
    state = {"params": params, "opt": tx.init(params)}
    x_all, y_all = jnp.asarray(x), jnp.asarray(y, jnp.int32)

    def loss_fn(p, xb, yb):
        h = jax.nn.relu(jnp.dot(xb.reshape(xb.shape[0], -1), p[0], precision=highest) + p[1])
        z = jnp.dot(h, p[2], precision=highest) + p[3]
        return optax.softmax_cross_entropy_with_integer_labels(z, yb).mean()

    def step_fn(p, opt, idx):
        loss, grads = jax.value_and_grad(loss_fn)(p, x_all[idx], y_all[idx])
        updates, opt = tx.update(grads, opt, p)
        return optax.apply_updates(p, updates), opt, loss

    step_jit = jax.jit(step_fn, donate_argnums=(0, 1))

    def step(rows: np.ndarray) -> jax.Array:
        state["params"], state["opt"], loss = step_jit(state["params"], state["opt"], np.asarray(rows, np.int32))
        return loss

    def sync(losses: list) -> np.ndarray:
        jax.block_until_ready((losses[-1:], state["params"], state["opt"]))
        return np.asarray(jax.device_get(losses), np.float32)

    return step, sync


TRAINERS: dict[str, Callable[..., Trainer]] = {"torch": torch_trainer, "tf": tf_function_trainer, "jax": jax_trainer}


def keras_fit_epochs(x: np.ndarray, y: np.ndarray, train: TrainSpec, weights: list[np.ndarray], order: np.ndarray,
                     on_epoch: Callable[[float, int], bool]) -> None:
    """``model.fit`` as people use it: compiled once, one call for all epochs, no shuffling of its own.

    The rows are put in the suite's batch order of the first epoch (``order``, whole batches only),
    and a callback times each epoch; ``on_epoch(seconds, samples)`` returns False to stop.
    """
    import keras

    model, optimizer, loss_fn = _keras_mlp(x, train, weights)
    model.compile(optimizer=optimizer, loss=loss_fn, jit_compile=False)
    xs, ys = x[order], y[order].astype(np.int64)

    class Timer(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            self.start = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            if epoch > 0 and not on_epoch(time.perf_counter() - self.start, len(xs)):  # epoch 0: warm-up
                self.model.stop_training = True

    model.fit(xs, ys, batch_size=train.batch_size, epochs=10_000, shuffle=False, verbose=0, callbacks=[Timer()])

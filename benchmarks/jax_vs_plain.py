"""Does the JAX backend cost speed against a plain hand-written ``jax.jit`` + Optax loop?

The backend runs a generic Flax Linen model through the harness's ``train_step(batch)``. A reader may
fairly ask what that adapter layer costs. This script trains, in one process, on the same data
(mnist-sample), canonical weights, batches, precision ("highest") and Adam settings:

- the backend (``mlp``, Adam, batch 128, jit mode);
- a plain loop: two ``jnp.dot`` layers, ``optax.adam``, one ``jax.jit`` step with donated
  parameters and optimizer state, data on the device and rows gathered inside the step.

Epochs alternate (backend, plain, backend, plain, ...) so machine noise hits both; the first epoch
of each is warm-up (compilation) and is not counted, and it doubles as a check that both compute the
same losses. Figures are medians of steady-state samples/s. It also reports the per-cell
overhead the sweep pays before steady state (build, weights and data, XLA compilation of the step:
the first step's excess over the second, as the harness reports ``compile_seconds``) for the mlp
and cnn models. Run it on a quiet machine; the numbers mean nothing while other jobs share the cores:

    python benchmarks/jax_vs_plain.py --epochs 6
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax

from backends.jax_backend import JaxBackend
from bench import training
from bench.data import epoch_batches, load_dataset
from bench.spec import SEED_MODELS, TrainSpec
from bench.weights import canonical_weights

HIGHEST = jax.lax.Precision.HIGHEST


def plain_trainer(weights: list[np.ndarray], x: np.ndarray, y: np.ndarray, train: TrainSpec) -> tuple[Callable, Callable]:
    """A hand-written Flatten -> Dense 128 relu -> Dense 10 trainer: (step(rows) -> loss, sync(losses))."""
    params = [jnp.asarray(w) for w in weights]  # kernel1, bias1, kernel2, bias2 in canonical layout
    tx = optax.adam(train.lr, b1=train.beta1, b2=train.beta2, eps=train.epsilon)
    state = {"params": params, "opt": tx.init(params)}
    x_all, y_all = jnp.asarray(x), jnp.asarray(y, jnp.int32)

    def loss_fn(p, xb, yb):
        h = jax.nn.relu(jnp.dot(xb.reshape(xb.shape[0], -1), p[0], precision=HIGHEST) + p[1])
        z = jnp.dot(h, p[2], precision=HIGHEST) + p[3]
        return optax.softmax_cross_entropy_with_integer_labels(z, yb).mean()

    def step_fn(p, opt, idx):
        loss, grads = jax.value_and_grad(loss_fn)(p, x_all[idx], y_all[idx])
        updates, opt = tx.update(grads, opt, p)
        return optax.apply_updates(p, updates), opt, loss

    step_jit = jax.jit(step_fn, donate_argnums=(0, 1))

    def step(rows: np.ndarray) -> jax.Array:
        state["params"], state["opt"], loss = step_jit(state["params"], state["opt"], np.asarray(rows, np.int32))
        return loss

    def sync(losses: list[jax.Array]) -> np.ndarray:
        jax.block_until_ready((losses[-1:], state["params"], state["opt"]))
        return np.asarray(jax.device_get(losses), np.float32)

    return step, sync


def steady_state(data, train: TrainSpec, epochs: int) -> dict:
    model = SEED_MODELS["mlp"].resolve(train.activation)
    weights = canonical_weights(model, data.input_shape, data.num_classes, train.seed)
    backend = JaxBackend()
    backend.setup(threads=0, device="cpu")
    training.prepare(backend, model, train, data.x_train, data.y_train, data.num_classes, weights)
    plain_step, plain_sync = plain_trainer(weights, data.x_train, data.y_train, train)

    seconds: dict[str, list[float]] = {"backend": [], "plain": []}
    first_losses: dict[str, np.ndarray] = {}
    for epoch in range(epochs):
        batches = epoch_batches(len(data.x_train), train.batch_size, train.seed, epoch)
        for name in ("backend", "plain"):
            if name == "backend":  # the suite's loop, as the harness runs it
                result, elapsed = training.run_steps(backend, batches)
                losses = result.losses
            else:
                start = time.perf_counter()
                losses = plain_sync([plain_step(rows) for rows in batches])
                elapsed = time.perf_counter() - start
            if epoch == 0:
                first_losses[name] = losses
            else:
                seconds[name].append(elapsed)
    samples = len(batches) * train.batch_size
    rates = {name: [samples / s for s in values] for name, values in seconds.items()}
    per_epoch_ratio = [b / p for b, p in zip(rates["backend"], rates["plain"])]
    return {
        "samples_per_epoch": samples,
        "backend_samples_per_s": statistics.median(rates["backend"]),
        "plain_samples_per_s": statistics.median(rates["plain"]),
        "backend_over_plain": statistics.median(per_epoch_ratio),
        "ratio_min_max": [min(per_epoch_ratio), max(per_epoch_ratio)],
        "first_epoch_max_loss_diff": float(np.abs(first_losses["backend"] - first_losses["plain"]).max()),
    }


def cell_overhead(data, name: str, train: TrainSpec) -> dict:
    """What one sweep cell pays before its steady state: build, weights and data on device (prepare),
    then the first step (XLA compilation of the step included) against the second."""
    backend = JaxBackend()
    backend.setup(threads=0, device="cpu")
    start = time.perf_counter()
    training.prepare(backend, SEED_MODELS[name], train, data.x_train, data.y_train, data.num_classes)
    prepared = time.perf_counter() - start
    first, second = epoch_batches(len(data.x_train), train.batch_size, train.seed, 0)[:2]
    first_s, second_s = training.run_steps(backend, [first])[1], training.run_steps(backend, [second])[1]
    return {"model": name, "prepare_s": prepared, "first_step_s": first_s, "second_step_s": second_s,
            "compile_s": max(first_s - second_s, 0.0)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=6, help="epochs per variant, the first one is warm-up")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--json", type=str, default="", help="also write the figures to this file")
    args = parser.parse_args()
    data = load_dataset("mnist-sample")
    train = TrainSpec(optimizer="adam", batch_size=args.batch_size)
    result = {
        "device": str(jax.devices()[0]),
        "versions": {"jax": jax.__version__, "optax": optax.__version__},
        "steady_state_mlp_adam": steady_state(data, train, args.epochs),
        "cell_overhead": [cell_overhead(data, name, train) for name in ("mlp", "cnn")],
    }
    print(json.dumps(result, indent=2))
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(result, handle, indent=2)


if __name__ == "__main__":
    main()

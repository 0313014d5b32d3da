"""Does the suite's hand-written Keras step cost or gain speed against a plain ``model.fit``?

The Keras backend trains through ``train_step(batch)`` (GradientTape + ``optimizer.apply`` inside a
``tf.function``), because the harness must own the batch order and the clock. A reader may fairly
ask whether that makes Keras look slower or faster than Keras as people use it. This script times,
on the same model, weights, data and optimizer:

- the backend in each execution mode (graph, eager, xla), one epoch = the harness's batches;
- ``model.fit`` compiled three ways (graph, run_eagerly=True, jit_compile=True), shuffle on, the
  same number of samples per epoch (the partial last batch is cut, as the suite does);

and, per cell, the overhead the sweep pays before steady state (build, weights, data, first step).
The first epoch of every variant is warm-up and is not counted; figures are medians over the other
epochs. Run it on a quiet machine; the numbers mean nothing while other jobs share the cores:

    python benchmarks/keras_vs_fit.py --threads 2 --epochs 4
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

os.environ.setdefault("KERAS_BACKEND", "tensorflow")  # before keras is imported, as the backend module does

import keras  # noqa: E402

from backends.keras_backend import KerasBackend  # noqa: E402
from bench.measure import training  # noqa: E402
from bench.spec.data import epoch_batches, load_dataset  # noqa: E402
from bench.spec.model import SEED_MODELS  # noqa: E402
from bench.spec.train import TrainSpec  # noqa: E402
from bench.spec.weights import canonical_weights  # noqa: E402

FIT_MODES = {
    "graph": {"jit_compile": False},
    "eager": {"run_eagerly": True, "jit_compile": False},
    "xla": {"jit_compile": True},
}


def backend_epochs(backend: KerasBackend, data, train: TrainSpec, epochs: int) -> list[float]:
    """Seconds per epoch of the suite's own loop, ``bench.measure.training`` as the harness runs it (first
    epoch included; the caller drops it)."""
    train = train.model_copy(update={"epochs": epochs})
    training.prepare(backend, SEED_MODELS["mlp"], train, data.x_train, data.y_train, data.num_classes)
    return [epoch.seconds for epoch in training.epochs(backend, len(data.x_train), train)]


def fit_epochs(backend: KerasBackend, data, train: TrainSpec, epochs: int, mode: str) -> list[float]:
    """Seconds per epoch of model.fit on the same Keras model, weights and optimizer settings."""
    model = SEED_MODELS["mlp"].resolve(train.activation)
    backend.build(model, train, data.input_shape, data.num_classes)  # the same translated model
    backend.set_weights(canonical_weights(model, data.input_shape, data.num_classes, train.seed))
    net = backend.keras_model
    net.compile(
        optimizer=keras.optimizers.Adam(
            learning_rate=train.lr, beta_1=train.beta1, beta_2=train.beta2, epsilon=train.epsilon
        ),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        **FIT_MODES[mode],
    )
    n = len(data.x_train) // train.batch_size * train.batch_size
    x, y = data.x_train[:n], data.y_train[:n]
    seconds = []
    for _ in range(epochs):
        start = time.perf_counter()
        net.fit(x, y, batch_size=train.batch_size, epochs=1, shuffle=True, verbose=0)
        seconds.append(time.perf_counter() - start)
    return seconds


def cell_overhead(backend: KerasBackend, data, name: str, mode: str) -> dict[str, float]:
    """What one sweep cell pays before steady state: build (+ clear_session), weights, data, first step."""
    train = TrainSpec(optimizer="adam", batch_size=128, mode=mode)
    start = time.perf_counter()
    training.prepare(backend, SEED_MODELS[name], train, data.x_train, data.y_train, data.num_classes)
    built = time.perf_counter() - start
    first, second = epoch_batches(len(data.x_train), 128, 0, 0)[:2]
    return {"build_s": built, "first_step_s": training.run_steps(backend, [first])[1],
            "second_step_s": training.run_steps(backend, [second])[1]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=4, help="epochs per variant; the first is warm-up")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--dataset", default="mnist-sample")
    parser.add_argument("--json", type=Path, help="also write the figures to this file")
    args = parser.parse_args()
    if args.epochs < 2:
        parser.error("--epochs must be at least 2 (the first is warm-up)")

    backend = KerasBackend()
    info = backend.setup(args.threads, "cpu")
    data = load_dataset(args.dataset, val_split=0.0)
    train = TrainSpec(optimizer="adam", batch_size=args.batch_size)
    samples = len(data.x_train) // args.batch_size * args.batch_size
    print(f"tensorflow {info.versions['tensorflow']}, keras {info.versions['keras']}, threads {info.threads}")
    print(f"mlp, adam, batch {args.batch_size}, {args.dataset}: {samples} samples/epoch, {args.epochs - 1} timed epochs")

    results: dict[str, dict] = {"threads": info.threads, "versions": info.versions, "throughput": {}, "overhead": {}}
    for mode in KerasBackend.modes:
        variants = {
            f"suite step, {mode}": backend_epochs(backend, data, train.model_copy(update={"mode": mode}), args.epochs),
            f"model.fit, {mode}": fit_epochs(backend, data, train, args.epochs, mode),
        }
        for label, seconds in variants.items():
            timed = seconds[1:]
            rate = samples / statistics.median(timed)
            spread = (samples / max(timed), samples / min(timed))
            results["throughput"][label] = {"samples_per_s": rate, "min": spread[0], "max": spread[1], "epoch_seconds": seconds}
            print(f"  {label:<22} {rate:>10.0f} samples/s  (range {spread[0]:.0f}-{spread[1]:.0f}, warm-up epoch {seconds[0]:.2f} s)")

    print("per-cell overhead (build + weights + data, first step, second step):")
    for name in ("mlp", "cnn"):
        for mode in KerasBackend.modes:
            figures = cell_overhead(backend, data, name, mode)
            results["overhead"][f"{name}, {mode}"] = figures
            print(f"  {name:<4} {mode:<6} " + "  ".join(f"{k} {v:.3f}" for k, v in figures.items()))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()

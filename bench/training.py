"""The training loop, written once: how any backend is prepared and trained on the suite's batches.

The harness, the parity ladder, the statistical rung, the tests and the benchmarks all train through
these functions, so every one of them runs the same lifecycle (build -> canonical weights -> fresh
optimizer -> data on the device -> epochs of ``begin_epoch``, steps, ``finish_epoch``) and times it
the same way: wall clock around a whole epoch, whose one synchronisation is ``finish_epoch``;
given a ``bench.load.LoadMonitor``, other processes' use of the cores is read over the same span.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import numpy as np

from backends.base import Backend, EpochResult
from bench.data import epoch_batches
from bench.load import LoadMonitor, LoadReading
from bench.spec import ModelSpec, TrainSpec
from bench.weights import canonical_weights


@dataclass
class Epoch:
    """One trained epoch: its index, the backend's per-step losses and device time, its wall time,
    and the other load on the cores meanwhile (when a monitor was given)."""

    index: int
    result: EpochResult
    seconds: float
    load: LoadReading | None = None
    batch_size: int = 0

    @property
    def samples(self) -> int:
        """Samples trained: one loss per step, ``batch_size`` rows each."""
        return self.batch_size * int(self.result.losses.size)


def prepare(
    backend: Backend, model: ModelSpec, train: TrainSpec, x: np.ndarray, y: np.ndarray,
    num_classes: int, weights: list[np.ndarray] | None = None,
) -> list[np.ndarray]:
    """Build ``model`` for ``train``, load ``weights`` (default: the canonical ones of the train seed),
    start a fresh optimizer and place the training arrays; returns the weights loaded."""
    model = model.resolve(train.activation)
    input_shape = tuple(x.shape[1:])
    backend.build(model, train, input_shape, num_classes)
    weights = canonical_weights(model, input_shape, num_classes, train.seed) if weights is None else weights
    restart(backend, weights)
    backend.load_data(x, y)
    return weights


def restart(backend: Backend, weights: list[np.ndarray]) -> None:
    """Back to ``weights`` and a fresh optimizer, keeping compiled code (undoes a warm-up)."""
    backend.set_weights(weights)
    backend.reset_optimizer()


def run_steps(backend: Backend, batches: Iterable[np.ndarray]) -> tuple[EpochResult, float]:
    """Train on each batch of row indices; the result and the wall time including the one sync."""
    backend.begin_epoch()
    start = time.perf_counter()
    for rows in batches:
        backend.train_step(rows)
    result = backend.finish_epoch()
    return result, time.perf_counter() - start


def epoch(backend: Backend, n_train: int, train: TrainSpec, index: int, monitor: LoadMonitor | None = None) -> Epoch:
    """Epoch ``index`` of the seed's batch order (the same on every backend), timed."""
    start = monitor.snapshot() if monitor else None
    result, seconds = run_steps(backend, epoch_batches(n_train, train.batch_size, train.seed, index))
    return Epoch(index, result, seconds, monitor.since(start) if monitor else None, train.batch_size)


def epochs(backend: Backend, n_train: int, train: TrainSpec, monitor: LoadMonitor | None = None) -> Iterator[Epoch]:
    """``train.epochs`` epochs, one at a time."""
    for index in range(train.epochs):
        yield epoch(backend, n_train, train, index, monitor)


def fit(backend: Backend, n_train: int, train: TrainSpec) -> list[Epoch]:
    """Every epoch of ``train`` at once, for callers that only need the trained model."""
    return list(epochs(backend, n_train, train))

"""The training loop, written once: how any backend is prepared and trained on the suite's batches.

The harness, the parity ladder, the statistical rung, the tests and the benchmarks all train through
these functions, so every one of them runs the same lifecycle (build -> initial weights -> fresh
optimizer -> data on the device -> epochs of ``begin_epoch``, steps, ``finish_epoch``) and times it
the same way: wall clock around a whole epoch, whose one synchronisation is ``finish_epoch``;
given a ``bench.measure.load.LoadMonitor``, other processes' use of the cores is read over the same span.
When the train spec augments, each epoch's augmentation parameters are drawn with its batch order,
before its clock starts, and handed to the backend step by step.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import numpy as np

from backends.base import Backend, EpochResult
from bench.measure.load import LoadMonitor, LoadReading
from bench.spec.augment import EpochAugment, Params, draw_epoch
from bench.spec.data import epoch_batches
from bench.spec.model import ModelSpec
from bench.spec.train import TrainSpec
from bench.spec.weights import canonical_weights


@dataclass
class Epoch:
    """One trained epoch: its index, the backend's per-step losses and device time, its wall time,
    and the other load on the cores meanwhile (when a monitor was given)."""

    index: int
    result: EpochResult
    seconds: float
    load: LoadReading | None = None
    batch_size: int = 0
    step_seconds: np.ndarray | None = None
    """Each step's wall time (end to end of consecutive steps). A step's own time only where the
    backend's steps are synchronous (``Backend.synchronous_steps``); elsewhere it is dispatch time."""

    @property
    def samples(self) -> int:
        """Samples trained: one loss per step, ``batch_size`` rows each."""
        return self.batch_size * int(self.result.losses.size)


def prepare(
    backend: Backend, model: ModelSpec, train: TrainSpec, x: np.ndarray, y: np.ndarray,
    num_classes: int, weights: list[np.ndarray] | None = None,
) -> list[np.ndarray]:
    """Build ``model`` for ``train``, load ``weights``, start a fresh optimizer and place the training
    arrays; returns the weights loaded, which ``restart`` takes to undo a warm-up.

    Default weights: the canonical ones of the train seed, or under the native policy the ones the
    framework's own initialisers draw (so native runs of two frameworks never start alike).
    """
    model = model.resolve(train.activation)
    input_shape = tuple(x.shape[1:])
    backend.build(model, train, input_shape, num_classes)
    if weights is None:
        native = train.semantics == "native"
        weights = backend.initialise_natively() if native else canonical_weights(model, input_shape, num_classes, train.seed)
    restart(backend, weights)
    backend.load_data(x, y)
    return weights


def restart(backend: Backend, weights: list[np.ndarray]) -> None:
    """Back to ``weights`` and a fresh optimizer, keeping compiled code (undoes a warm-up)."""
    backend.set_weights(weights)
    backend.reset_optimizer()


def schedule(n_train: int, train: TrainSpec, input_shape: tuple[int, ...], epoch: int) -> tuple[np.ndarray, EpochAugment | None]:
    """One epoch's batches of row indices and, when ``train`` augments, every step's augmentation
    parameters (both from the seed alone: the same on every backend)."""
    batches = epoch_batches(n_train, train.batch_size, train.seed, epoch)
    if not train.augment.active:
        return batches, None
    return batches, draw_epoch(train.augment, input_shape, len(batches), train.batch_size, train.seed, epoch)


def run_steps(backend: Backend, batches: Iterable[np.ndarray], augment: Iterable[Params] | None = None,
              step_ends: list[float] | None = None) -> tuple[EpochResult, float]:
    """Train on each batch of row indices (with its step's augmentation parameters, when given); the
    result and the wall time including the one sync. ``step_ends`` (when given) collects the clock,
    relative to the epoch's start, as each step returns: one clock read a step, no synchronisation."""
    backend.begin_epoch()
    start = time.perf_counter()
    for rows, params in zip(batches, itertools.repeat(None) if augment is None else augment):
        backend.train_step(rows, params)
        if step_ends is not None:
            step_ends.append(time.perf_counter() - start)
    result = backend.finish_epoch()
    return result, time.perf_counter() - start


def epoch(backend: Backend, n_train: int, train: TrainSpec, index: int, monitor: LoadMonitor | None = None) -> Epoch:
    """Epoch ``index`` of the seed's batch order (the same on every backend), with its augmentation, timed."""
    batches, augment = schedule(n_train, train, backend.input_shape, index)
    start = monitor.snapshot() if monitor else None
    ends: list[float] = []
    result, seconds = run_steps(backend, batches, augment, ends)
    return Epoch(index, result, seconds, monitor.since(start) if monitor else None, train.batch_size,
                 np.diff(ends, prepend=0.0))


def epochs(backend: Backend, n_train: int, train: TrainSpec, monitor: LoadMonitor | None = None) -> Iterator[Epoch]:
    """``train.epochs`` epochs, one at a time."""
    for index in range(train.epochs):
        yield epoch(backend, n_train, train, index, monitor)


def fit(backend: Backend, n_train: int, train: TrainSpec) -> list[Epoch]:
    """Every epoch of ``train`` at once, for callers that only need the trained model."""
    return list(epochs(backend, n_train, train))

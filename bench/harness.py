"""Run one cell (backend x model x training spec x repeat) and measure it the same way on every backend.

The protocol (docs/architecture.md, "Measuring"):
1. canonical NumPy weights are loaded (native policy: the framework draws its own, once), the
   training arrays placed once (off the clock);
2. warm-up: the first step runs alone, synchronised and timed -- it carries tracing and
   compilation, reported as ``compile_seconds`` (its excess over a steady-state step), never inside
   the steady state;
3. a probe of individually synchronised steps gives step-time percentiles (optional: quick runs skip it);
4. the model is reset to those initial weights and a fresh optimizer (compiled code is kept), so
   warm-up never changes what is trained;
5. steady state: whole epochs of the seed's batch order, one synchronisation per epoch (reading the
   losses back); validation after each epoch is off the clock;
6. test loss/accuracy and inference throughput, off the training clock.
"""

from __future__ import annotations

import math
import threading
import time
import traceback
from dataclasses import dataclass, field
from datetime import UTC, datetime

import numpy as np
import psutil

from backends.base import Backend, Unsupported
from bench import training
from bench.augment import EpochAugment, record_fields
from bench.cost import forward_flops, train_flops
from bench.data import Dataset
from bench.errors import BenchError
from bench.record import ResultRecord
from bench.shapes import check_fits, parameter_count
from bench.spec import ModelSpec, TrainSpec
from bench.stats import percentiles

EVAL_BATCH = 500
TIMING_METHOD = "wall clock (perf_counter) over whole epochs, one synchronisation per epoch"


@dataclass(frozen=True)
class Cell:
    """One point of the sweep grid; ``repeat`` r trains from seed ``train.seed`` (already offset)."""

    backend: str
    model: ModelSpec
    train: TrainSpec
    dataset: str
    repeat: int = 0
    target_accuracy: float = 0.9
    probe_steps: int = 20
    """Individually synchronised steps timed after warm-up for step-time percentiles (0: none)."""

    @property
    def cell_id(self) -> str:
        """Unaugmented cells keep the id they had before augmentation existed, so old runs still resume."""
        t = self.train
        policy = [] if t.semantics == "harmonised" else [t.semantics]  # harmonised ids stay as they were
        return "|".join(
            [self.backend, self.model.name, t.optimizer, t.activation, t.loss, f"bs{t.batch_size}",
             f"ep{t.epochs}", f"lr{t.lr:g}", t.precision, t.mode, self.dataset, *policy]
            + ([f"aug={t.augment.label}"] if t.augment.active else [])
        )

    @staticmethod
    def refused_id(backend: str, model: str) -> str:
        """The id of a model refused before any of its cells was built (it does not fit the data)."""
        return f"{backend}|{model}|refused"

    def config(self) -> dict:
        """The record fields that describe this cell (bench/record.py declares them)."""
        t = self.train
        return {
            "cell_id": self.cell_id, "repeat": self.repeat, "backend": self.backend, "model": self.model.name,
            "optimizer": t.optimizer, "activation": t.activation, "loss": t.loss, "batch_size": t.batch_size,
            "epochs": t.epochs, "learning_rate": t.lr, "seed": t.seed, "precision": t.precision,
            "requested_mode": t.mode, "mode": t.mode, "semantics_policy": t.semantics,
        } | hyperparameters(t) | {"target_accuracy": self.target_accuracy} | record_fields(t.augment)


def hyperparameters(t: TrainSpec) -> dict:
    """The values a semantics policy may change, as a record states them (the effective ones once built)."""
    return {
        "momentum": t.momentum if t.optimizer == "momentum" else 0.0,
        "rho": t.rho, "beta1": t.beta1, "beta2": t.beta2, "epsilon": t.epsilon, "weight_decay": t.weight_decay,
        "bn_momentum": t.bn_momentum, "bn_epsilon": t.bn_epsilon, "leaky_relu_slope": t.leaky_relu_slope,
    }


def refused_record(backend: str, model: str, dataset: str, reason: str) -> ResultRecord:
    """The one record of a model left out of a sweep because it cannot fit the data."""
    return ResultRecord.build(cell_id=Cell.refused_id(backend, model), repeat=0, backend=backend, model=model,
                              dataset=dataset, status="skipped", reason=reason)


class PeakRssSampler:
    """Peak resident memory of this process while a block runs, sampled every ``interval`` seconds.

    ru_maxrss is a lifetime peak and a worker runs many cells, so a sampler gives the per-cell peak.
    """

    def __init__(self, interval: float = 0.02) -> None:
        self.interval = interval
        self.process = psutil.Process()
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self.process.memory_info().rss)
            self._stop.wait(self.interval)

    def __enter__(self) -> PeakRssSampler:
        self.peak = self.process.memory_info().rss
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self.process.memory_info().rss)


class Diverged(Exception):
    """The training loss became NaN or infinite."""


@dataclass
class _Measurements:
    epoch_train_loss: list[float] = field(default_factory=list)
    epoch_val_loss: list[float] = field(default_factory=list)
    epoch_val_accuracy: list[float] = field(default_factory=list)
    epoch_seconds: list[float] = field(default_factory=list)
    device_seconds: list[float] = field(default_factory=list)
    time_to_target: float | None = None


def _timed_step(backend: Backend, batches: np.ndarray, augment: EpochAugment | None, step: int) -> float:
    """Step ``step`` of an epoch (cycling), synchronised and timed."""
    step %= len(batches)
    start = time.perf_counter()
    backend.train_step(batches[step], None if augment is None else augment[step])
    backend.synchronize()
    return time.perf_counter() - start


def _warm_up(backend: Backend, n_train: int, train: TrainSpec, probe_steps: int) -> dict:
    """Compile on the first batch, then time ``probe_steps`` steps one by one for step-time percentiles.

    The caller undoes these steps (canonical weights, fresh optimizer) before the timed epochs.
    """
    batches, augment = training.schedule(n_train, train, backend.input_shape, 0)
    first = _timed_step(backend, batches, augment, 0)
    probe = np.asarray([_timed_step(backend, batches, augment, step) for step in range(probe_steps)]) * 1e3
    backend.finish_epoch()
    p50, p90, p99 = percentiles(probe) if probe.size else (None, None, None)
    return {
        "first_step_seconds": first,
        "warmup_seconds": first + float(probe.sum()) / 1e3,
        "step_time_ms_p50": p50, "step_time_ms_p90": p90, "step_time_ms_p99": p99,
        "step_time_samples": int(probe.size),
    }


def _train(backend: Backend, cell: Cell, data: Dataset) -> _Measurements:
    m = _Measurements()
    elapsed = 0.0
    for epoch in training.epochs(backend, len(data.x_train), cell.train):
        result = epoch.result
        elapsed += epoch.seconds
        m.epoch_seconds.append(epoch.seconds)
        if result.device_seconds is not None:
            m.device_seconds.append(result.device_seconds)
        bad = np.flatnonzero(~np.isfinite(result.losses))
        if bad.size:
            m.epoch_train_loss.append(float("nan"))
            raise Diverged(f"training loss became {result.losses[bad[0]]} at epoch {epoch.index + 1}, step {bad[0] + 1}")
        m.epoch_train_loss.append(float(result.losses.mean()))
        if len(data.x_val):
            val_loss, val_acc = backend.evaluate(data.x_val, data.y_val, EVAL_BATCH)
            m.epoch_val_loss.append(val_loss)
            m.epoch_val_accuracy.append(val_acc)
            if m.time_to_target is None and val_acc >= cell.target_accuracy:
                m.time_to_target = elapsed
    return m


def _inference_throughput(backend: Backend, x: np.ndarray) -> float:
    backend.predict(x[:EVAL_BATCH], EVAL_BATCH)  # compile/warm the inference path off the clock
    start = time.perf_counter()
    backend.predict(x, EVAL_BATCH)
    return len(x) / (time.perf_counter() - start)


def run_cell(backend: Backend, cell: Cell, data: Dataset, peak_gflops: float | None = None) -> ResultRecord:
    """Train and measure one cell; always returns a record (status ok, skipped, failed or diverged)."""
    record = data.describe() | {
        "framework": backend.framework, "status": "ok", "reason": None, "error": None,
        "started_at": datetime.now(UTC).isoformat(timespec="seconds"), "timing_method": TIMING_METHOD,
    }
    began = time.perf_counter()
    model = cell.model.resolve(cell.train.activation)
    shape, k = data.input_shape, data.num_classes
    try:
        check_fits(model, shape, k)
        fwd = forward_flops(model, shape, k)
        record |= {
            "param_count": parameter_count(model, shape, k),
            "flops_per_sample_forward": fwd,
            "flops_per_sample_train": train_flops(model, shape, k),
        }
        weights = training.prepare(backend, model, cell.train, data.x_train, data.y_train, k)
        record["mode"] = backend.mode
        record |= hyperparameters(backend.train) | backend.facts()  # the values it runs (native: its framework's)
        record |= _warm_up(backend, len(data.x_train), cell.train, cell.probe_steps)
        training.restart(backend, weights)
        backend.reset_peak_memory()
        cpu_start = time.process_time()
        with PeakRssSampler() as rss:
            try:
                m = _train(backend, cell, data)
            finally:
                cpu_seconds = time.process_time() - cpu_start
                record["peak_rss_bytes"] = rss.peak
        steps = len(data.x_train) // cell.train.batch_size * cell.train.epochs
        samples = steps * cell.train.batch_size
        train_seconds = float(sum(m.epoch_seconds))
        # Compilation = what the first step cost beyond a steady-state step (mean over all timed steps).
        record["compile_seconds"] = max(record["first_step_seconds"] - train_seconds / steps, 0.0)
        record |= {
            "epoch_train_loss": m.epoch_train_loss, "epoch_val_loss": m.epoch_val_loss,
            "epoch_val_accuracy": m.epoch_val_accuracy, "epoch_seconds": m.epoch_seconds,
            "final_train_loss": m.epoch_train_loss[-1],
            "val_accuracy": m.epoch_val_accuracy[-1] if m.epoch_val_accuracy else None,
            "train_seconds": train_seconds, "train_samples_per_s": samples / train_seconds,
            "cpu_seconds_per_sample": cpu_seconds / samples,
            "time_to_target_seconds": m.time_to_target,
            "device_seconds": float(sum(m.device_seconds)) if m.device_seconds else None,
            "device_time_method": "cuda events around each epoch" if m.device_seconds else None,
        }
        record["achieved_gflops"] = record["flops_per_sample_train"] * record["train_samples_per_s"] / 1e9
        if peak_gflops:
            record["peak_fraction"] = record["achieved_gflops"] / peak_gflops
        record["test_loss"], record["test_accuracy"] = backend.evaluate(data.x_test, data.y_test, EVAL_BATCH)
        if not math.isfinite(record["test_loss"]):
            raise Diverged(f"test loss is {record['test_loss']}")
        record["inference_samples_per_s"] = _inference_throughput(backend, data.x_test)
        memory = backend.peak_memory()
        record["peak_device_bytes"], record["memory_method"] = memory.device_peak_bytes, (
            f"host: psutil RSS sampled every 20 ms; device: {memory.method}"
        )
    except Diverged as exc:
        record |= {"status": "diverged", "reason": str(exc)}
    except (Unsupported, BenchError) as exc:
        record |= {"status": "skipped", "reason": str(exc)}
    except Exception as exc:  # a backend bug must not stop the sweep: record it and go on
        record |= {"status": "failed", "error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc()}
    record["duration_seconds"] = time.perf_counter() - began
    return ResultRecord.for_cell(cell, **record)

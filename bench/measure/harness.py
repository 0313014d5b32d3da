"""Run one cell (backend x model x training spec x repeat) and measure it the same way on every backend.

The protocol (docs/architecture.md, "Measuring"), each phase timed into a ``time_*_seconds`` field:
1. build (``time_build_seconds``): the model is translated, canonical NumPy weights loaded (native
   policy: the framework draws its own, once) and the training arrays placed once;
2. warm-up (``time_compile_seconds``): the first step runs alone, synchronised and timed -- it
   carries tracing and compilation, reported as ``compile_seconds`` (its excess over a steady-state
   step); the model is reset to those initial weights and a fresh optimizer (compiled code is
   kept), so warm-up never changes what is trained;
3. accuracy epochs (``time_train_seconds``): ``train.epochs`` whole epochs of the seed's batch order,
   one synchronisation each; validation after each epoch is off the clock (``time_eval_seconds``);
4. test loss/accuracy, then inference throughput (bench.measure.inference: windows of prediction
   passes, like training's) on the model exactly as the accuracy epochs left it;
5. throughput windows (bench.measure.throughput): the accuracy epochs are steady state, so they are the first
   windows; when they do not give enough windows of at least the minimum length, training goes on
   for further epochs of the same batch order, timed only for throughput
   (``time_window_seconds``). These epochs come after the test evaluation, so they never change an
   accuracy. While every epoch is timed, other load on the cores is read (bench.measure.load); disturbed
   windows are re-measured or the record is marked ``noisy``. ``cpu_seconds_per_sample`` is the
   CPU time of the windows' epochs alone (bench.measure.load: the RSS sampler's own CPU left out);
6. step times (``step_time_source`` says which): where the backend's steps are synchronous
   (``Backend.synchronous_steps``: torch and NumPy on a CPU), the clock read as each accuracy-epoch
   step returns already times that step, so the percentiles come from those steps when there are at
   least ``probe_steps`` of them, at no cost. Elsewhere a probe (``time_window_seconds`` too):
   ``probe_steps`` individually synchronised steps, when they fit the cell's window budget at the
   windows' steady step. It runs after the windows because a per-step synchronisation inside them
   would change what they measure, and because only then is the steady step known, so an
   unaffordable probe costs nothing. Its steps, like the extra epochs', are undone: the model goes
   back to what the accuracy epochs left. No percentile comes from fewer than
   bench.results.stats ``MIN_STEP_SAMPLES`` steps.

Every epoch's losses go through one divergence rule and the accuracy curve through one convergence
rule (bench.measure.verdicts), and the peak host memory is sampled around the timed epochs
(bench.measure.memory); this module keeps the protocol that applies them.
"""

from __future__ import annotations

import math
import time
import traceback
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime

import numpy as np

from backends.base import Backend, Unsupported
from bench.errors import BenchError
from bench.measure import inference, training
from bench.measure.inference import EVAL_BATCH
from bench.measure.load import LoadMonitor
from bench.measure.memory import SAMPLE_SECONDS, PeakRssSampler
from bench.measure.peaks import MatmulPeaks
from bench.measure.throughput import Windows
from bench.measure.verdicts import Diverged, check_losses, convergence
from bench.results.phases import PHASES
from bench.results.record import ResultRecord, Status
from bench.results.stats import percentiles
from bench.spec.augment import EpochAugment
from bench.spec.cell import Cell, hyperparameters
from bench.spec.cost import forward_flops, train_flops
from bench.spec.data import Dataset
from bench.spec.model import ModelSpec
from bench.spec.shapes import check_fits, parameter_count
from bench.spec.train import TrainSpec

TIMING_METHOD = ("wall clock (perf_counter) over whole epochs, one synchronisation per epoch; throughput is the "
                 "median of auto-ranged windows of whole epochs")


class PhaseClock:
    """Wall seconds per phase of a cell (``PHASES``)."""

    def __init__(self) -> None:
        self.seconds = dict.fromkeys(PHASES, 0.0)

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] += time.perf_counter() - start

    def add(self, name: str, seconds: float) -> None:
        """Time measured elsewhere (an epoch's own clock)."""
        self.seconds[name] += seconds

    def record(self) -> dict[str, float]:
        return {f"time_{name}_seconds": value for name, value in self.seconds.items()}


@dataclass
class _Measurements:
    epoch_train_loss: list[float] = field(default_factory=list)
    epoch_val_loss: list[float] = field(default_factory=list)
    epoch_val_accuracy: list[float] = field(default_factory=list)
    epoch_seconds: list[float] = field(default_factory=list)
    device_seconds: list[float] = field(default_factory=list)
    step_seconds: list[float] = field(default_factory=list)
    time_to_target: float | None = None
    first_loss: float | None = None


def _timed_step(backend: Backend, batches: np.ndarray, augment: EpochAugment | None, step: int) -> float:
    """Step ``step`` of an epoch (cycling), synchronised and timed."""
    step %= len(batches)
    start = time.perf_counter()
    backend.train_step(batches[step], None if augment is None else augment[step])
    backend.synchronize()
    return time.perf_counter() - start


def _warm_up(backend: Backend, n_train: int, train: TrainSpec) -> float:
    """The first step on the first batch, synchronised and timed: it traces and compiles. The caller
    undoes it (canonical weights, fresh optimizer) before the timed epochs."""
    batches, augment = training.schedule(n_train, train, backend.input_shape, 0)
    first = _timed_step(backend, batches, augment, 0)
    backend.finish_epoch()
    return first


def _warm_again(backend: Backend, model: ModelSpec, train: TrainSpec, data: Dataset, weights: list[np.ndarray]) -> float | None:
    """The first step once more, from the persistent caches the cold compile just filled: the
    compiled code in memory is dropped, the model rebuilt, and the first step timed again. None when
    the caches did not serve all of it (the figure would not be a warm one)."""
    backend.forget_compiled(disk=False)
    training.prepare(backend, model, train, data.x_train, data.y_train, data.num_classes, weights)
    first = _warm_up(backend, len(data.x_train), train)
    return first if backend.compile_cache() == "warm" else None


def _probe(backend: Backend, n_train: int, train: TrainSpec, steps: int, budget: float, steady_step: float) -> list[float]:
    """``steps`` individually synchronised step times, when they fit in ``budget`` seconds at the
    windows' steady step (the probe runs after the windows, so it knows: a CNN step of 50 ms cannot
    give 100 steps in a quick cell, an MLP's can); none when they do not, fewer when the budget cuts
    them short. The caller undoes these steps."""
    probe: list[float] = []
    if steps * steady_step <= budget:
        batches, augment = training.schedule(n_train, train, backend.input_shape, 0)
        while len(probe) < steps and sum(probe) <= budget:
            probe.append(_timed_step(backend, batches, augment, len(probe)))
        backend.finish_epoch()
    return probe


def _step_times(steps: list[float], source: str) -> dict:
    """Step-time percentiles and their sample (none from fewer than ``MIN_STEP_SAMPLES`` steps)."""
    p50, p90, p99 = percentiles(np.asarray(steps) * 1e3)
    return {"step_time_ms_p50": p50, "step_time_ms_p90": p90, "step_time_ms_p99": p99,
            "step_time_samples": len(steps), "step_time_source": source if steps else None}


def _train(backend: Backend, cell: Cell, data: Dataset, clock: PhaseClock, monitor: LoadMonitor,
           windows: Windows) -> _Measurements:
    """The accuracy epochs: each timed, checked for divergence, fed to the windows, then validated."""
    m = _Measurements()
    elapsed = 0.0
    for epoch in training.epochs(backend, len(data.x_train), cell.train, monitor):
        clock.add("train", epoch.seconds)
        result = epoch.result
        elapsed += epoch.seconds
        m.epoch_seconds.append(epoch.seconds)
        if result.device_seconds is not None:
            m.device_seconds.append(result.device_seconds)
        if backend.synchronous_steps:
            m.step_seconds.extend(epoch.step_seconds)
        if m.first_loss is None and result.losses.size:
            m.first_loss = float(result.losses[0])
        m.epoch_train_loss.append(float(result.losses.mean()) if np.isfinite(result.losses).all() else float("nan"))
        check_losses(result.losses, m.first_loss, epoch.index)
        windows.add(epoch.seconds, epoch.samples, epoch.load)
        if len(data.x_val):
            with clock.phase("eval"):
                val_loss, val_acc = backend.evaluate(data.x_val, data.y_val, EVAL_BATCH)
            m.epoch_val_loss.append(val_loss)
            m.epoch_val_accuracy.append(val_acc)
            if m.time_to_target is None and val_acc >= cell.target_accuracy:
                m.time_to_target = elapsed
    return m


def _more_windows(backend: Backend, cell: Cell, n_train: int, monitor: LoadMonitor, windows: Windows,
                  first_loss: float | None) -> int:
    """Further epochs of the seed's batch order, timed only for throughput, until the windows suffice;
    returns how many were trained."""
    index = cell.train.epochs
    while windows.wants_more():
        epoch = training.epoch(backend, n_train, cell.train, index, monitor)
        check_losses(epoch.result.losses, first_loss, index)
        windows.add(epoch.seconds, epoch.samples, epoch.load)
        index += 1
    return index - cell.train.epochs


def run_cell(backend: Backend, cell: Cell, data: Dataset, peaks: MatmulPeaks = MatmulPeaks()) -> ResultRecord:
    """Train and measure one cell; always returns a record (status ok, skipped, failed or diverged).

    Besides the configuration and the figures of earlier versions, a record holds: the throughput
    window fields of ``bench.measure.throughput.Windows.record`` (``train_samples_per_s`` is their median),
    the phase times ``time_{build,compile,train,eval,window}_seconds``, ``compile_cache`` (whether the
    training step's compiled code came from a persistent cache: off, cold or warm; under
    ``--compile-cache cold`` every cell starts from empty caches and, where it stored code, times
    its first step again from them: ``warm_first_step_seconds``), what the compiler captured
    (``graphs``, ``graph_breaks``), and ``converged``/``convergence_note``. Device time and peak
    device memory are the backend's readings (docs/architecture.md, "Devices"), null on the CPU with
    their method fields saying why; ``peak_fraction`` divides by the peak of the cell's own device and
    precision (``peaks``).
    """
    data = data.head(*cell.sizes)
    record = data.describe() | {
        "framework": backend.framework, "status": Status.OK, "reason": None, "error": None,
        "started_at": datetime.now(UTC).isoformat(timespec="seconds"), "timing_method": TIMING_METHOD,
    }
    began = time.perf_counter()
    clock = PhaseClock()
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
        with clock.phase("build"):
            if backend.cache_policy != "warm":
                backend.forget_compiled(disk=True)
            weights = training.prepare(backend, model, cell.train, data.x_train, data.y_train, k)
        record["mode"] = backend.mode
        record |= hyperparameters(backend.train) | backend.facts()  # the values it runs (native: its framework's)
        with clock.phase("compile"):
            record["first_step_seconds"] = record["warmup_seconds"] = _warm_up(backend, len(data.x_train), cell.train)
            record |= backend.compiled_graphs() | {"compile_cache": backend.compile_cache()}
            if backend.cache_policy == "cold" and record["compile_cache"] == "cold":
                record["warm_first_step_seconds"] = _warm_again(backend, model, cell.train, data, weights)
            training.restart(backend, weights)
        backend.reset_peak_memory()
        rss = PeakRssSampler()
        monitor, windows = LoadMonitor(helper_cpu=lambda: rss.cpu_seconds), Windows(cell.window)
        with rss:
            try:
                m = _train(backend, cell, data, clock, monitor, windows)
            finally:
                record["peak_rss_bytes"] = rss.peak
        train_seconds = float(sum(m.epoch_seconds))
        record |= {
            "epoch_train_loss": m.epoch_train_loss, "epoch_val_loss": m.epoch_val_loss,
            "epoch_val_accuracy": m.epoch_val_accuracy, "epoch_seconds": m.epoch_seconds,
            "final_train_loss": m.epoch_train_loss[-1],
            "val_accuracy": m.epoch_val_accuracy[-1] if m.epoch_val_accuracy else None,
            "train_seconds": train_seconds,
            "time_to_target_seconds": m.time_to_target,
            "device_seconds": float(sum(m.device_seconds)) if m.device_seconds else None,
            "device_time_method": backend.device_time_method(),
        }
        with clock.phase("eval"):
            record["test_loss"], record["test_accuracy"] = backend.evaluate(data.x_test, data.y_test, EVAL_BATCH)
            if not math.isfinite(record["test_loss"]):
                raise Diverged(f"test loss is {record['test_loss']}")
            measured, inference_noise = inference.measure(backend, data.x_test, cell.window, monitor)
            record |= measured
        record["converged"], record["convergence_note"] = convergence(
            m.epoch_val_accuracy, m.epoch_train_loss, record["test_accuracy"], k)
        with clock.phase("window"):
            evaluated = backend.get_weights()  # the model the accuracy figures describe (and --save keeps)
            trained_more = _more_windows(backend, cell, len(data.x_train), monitor, windows, m.first_loss)
            record |= windows.record()
            steady_step = cell.train.batch_size / record["train_samples_per_s"]
            if cell.probe_steps and len(m.step_seconds) >= cell.probe_steps:  # the steps already ran
                record |= _step_times(m.step_seconds, "accuracy epochs (synchronous steps)")
            else:
                probe = _probe(backend, len(data.x_train), cell.train, cell.probe_steps, cell.window.budget_seconds,
                               steady_step)
                record |= _step_times(probe, "probe (each step synchronised)")
                trained_more += len(probe)
            if trained_more:
                training.restart(backend, evaluated)
        if inference_noise and not record["noisy"]:
            record |= {"noisy": True, "noise_reason": f"inference: {inference_noise}"}
        # Compilation = what the first step cost beyond a steady-state step (from the windows' median).
        record["compile_seconds"] = max(record["first_step_seconds"] - steady_step, 0.0)
        if record.get("warm_first_step_seconds") is not None:
            record["warm_compile_seconds"] = max(record["warm_first_step_seconds"] - steady_step, 0.0)
        record["achieved_gflops"] = record["flops_per_sample_train"] * record["train_samples_per_s"] / 1e9
        peak, record["peak_method"] = peaks.for_cell(backend.on_gpu, record["engine"], backend.train.precision)
        if peak:
            record["peak_gflops"], record["peak_fraction"] = peak, record["achieved_gflops"] / peak
        memory = backend.peak_memory()
        record |= {"peak_device_bytes": memory.device_peak_bytes, "device_memory_method": memory.method,
                   "memory_method": f"host: psutil RSS sampled every {SAMPLE_SECONDS * 1e3:g} ms; device: {memory.method}"}
    except Diverged as exc:
        record |= {"status": Status.DIVERGED, "reason": str(exc)}
    except (Unsupported, BenchError) as exc:
        record |= {"status": Status.SKIPPED, "reason": str(exc)}
    except Exception as exc:  # a backend bug must not stop the sweep: record it and go on
        record |= {"status": Status.FAILED, "error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc()}
    record |= clock.record()
    record["duration_seconds"] = time.perf_counter() - began
    return ResultRecord.for_cell(cell, **record)

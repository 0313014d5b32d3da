"""``--executor local``: the grid on this machine, each backend in its own worker, one backend at a time.

Only one worker runs at a time so no backend's figures are measured while another competes for the
cores. Every worker gets the same CPU set and intra-op thread count (``process.isolate``, before its
framework is imported); it records what it got. A worker that crashes or outruns ``cell_timeout``
is killed and replaced; its cell is recorded as failed or timeout and the sweep goes on. A worker
that dies while starting is started again (``STARTUP_ATTEMPTS``) before its cells are recorded
failed. A cell's clock starts when the worker says the cell began (framework imported, dataset
loaded), so ``cell_timeout`` never counts a fresh worker's start-up. A worker whose framework cannot
reset its peak device memory (JAX on a GPU) says so when ready and runs one cell only, so each of
its cells' readings is that cell's (docs/architecture.md, "Devices").

The process plumbing (spawn, isolation, parent death, messages) is ``process.py``'s; this module is
the scheduling and the cell loop a sweep worker runs (docs/architecture.md, "Run lifecycle").
"""

from __future__ import annotations

import argparse
import os
import socket
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import backends
from backends import compile_cache, device
from backends.base import Unsupported
from bench.errors import BenchError
from bench.measure.harness import run_cell
from bench.measure.load import usable_cores
from bench.measure.peaks import MatmulPeaks
from bench.models.saved import save_trained_model
from bench.results.record import ResultRecord, Status
from bench.run.executors.process import STARTUP_TIMEOUT, Kind, Message, Worker, WorkerWatch
from bench.spec.cell import Cell
from bench.spec.data import load_dataset

STARTUP_ATTEMPTS = 3
"""A worker that dies while starting (killed, out of memory) is started again twice, then its cells fail."""


@dataclass(frozen=True)
class WorkerSettings:
    threads: int
    cpu_set: tuple[int, ...]
    device: str
    """``cpu`` or ``gpu``: resolved by the driver before anything is written (backends/device.py ``resolve``)."""
    data_dir: str | None
    val_split: float
    train_size: int | None
    test_size: int | None
    peaks: MatmulPeaks = MatmulPeaks()
    """The run's matmul peaks, per device and precision (bench/measure/peaks.py)."""
    gpu: int = 0
    """The one GPU the worker sees (``--gpu``; under Ray, the one Ray gave the task)."""
    save_models_in: str | None = None
    """Run folder under whose ``models/`` each ok cell's trained model is saved (``bench run --save``)."""
    compile_cache: str = compile_cache.POLICIES[0]
    """The run's ``--compile-cache`` policy (backends/compile_cache.py)."""
    compile_cache_dir: str | None = None
    """Folder of the persistent compilation caches (None: the warm policy's shared folder)."""


def _worker_main(conn, backend_name: str, settings: WorkerSettings) -> None:
    """A sweep worker, isolated already: set up the backend, then run each cell it is sent until None."""
    started = time.perf_counter()
    caches = Path(settings.compile_cache_dir) if settings.compile_cache_dir else compile_cache.warm_folder()
    os.environ.update(compile_cache.environment(backend_name, settings.compile_cache, caches))  # before the import
    try:
        backend = backends.load(backend_name)
        info = backend.setup(settings.threads, settings.device)
    except (BenchError, Unsupported) as exc:  # cannot run here (not installed, no such device): cells skipped
        conn.send(Message(Kind.UNAVAILABLE, str(exc)))
        return
    except Exception as exc:  # a framework bug: its cells are recorded failed
        conn.send(Message(Kind.ERROR, f"{type(exc).__name__}: {exc}"))
        return
    facts = {
        "threads": settings.threads,
        "cpu_set": list(usable_cores()),  # what isolation gave this process
        "device": info.device,
        "backend_threads": info.threads,
        "framework_versions": info.versions,
        "worker_pid": os.getpid(),
        "host": socket.gethostname(),
        "niceness": os.nice(0) if hasattr(os, "nice") else None,  # a deprioritised worker measures less
        "device_kind": "gpu" if backend.on_gpu else "cpu",
        "device_environment": {name: os.environ.get(name, "") for name in device.environment(settings.device)},
        "fresh_worker_per_cell": backend.fresh_worker_per_cell,
        "worker_setup_seconds": time.perf_counter() - started,  # framework import and setup, once per worker
    }
    conn.send(Message(Kind.READY, facts))
    datasets = {}
    while True:
        cell = conn.recv()
        if cell is None:
            return
        try:
            if cell.dataset not in datasets:
                datasets[cell.dataset] = load_dataset(
                    cell.dataset, settings.data_dir, settings.val_split, settings.train_size, settings.test_size
                )
            conn.send(Message(Kind.STARTED))  # the cell's clock starts here, after the data is in memory
            record = run_cell(backend, cell, datasets[cell.dataset], settings.peaks)
            if settings.save_models_in and record.status == Status.OK:  # after evaluation, off the clock
                # the model as the backend built it: resolved, and under --semantics native with its layer defaults
                saved = save_trained_model(backend, record.to_json_dict() | facts, backend.model, Path(settings.save_models_in))
                record = record.with_fields(**saved)
        except Exception as exc:
            record = ResultRecord.for_cell(cell, status=Status.FAILED, error=f"{type(exc).__name__}: {exc}",
                                           traceback=traceback.format_exc())
        conn.send(Message(Kind.ANSWER, record.with_fields(**facts)))


class CellWorker(Worker):
    """A sweep worker for one backend: it runs cells and answers each with its record."""

    def __init__(self, backend: str, settings: WorkerSettings, watch: WorkerWatch | None = None) -> None:
        super().__init__(backend, settings, _worker_main, watch)

    def run(self, cell: Cell, timeout: float | None) -> tuple[ResultRecord, bool]:
        """The cell's record, and whether this worker is still usable.

        ``timeout`` counts from the worker's STARTED: loading the dataset is start-up, not the cell.
        """
        message = self.ask(cell, STARTUP_TIMEOUT)
        if message.kind is Kind.STARTED:
            message = self.receive(timeout)
        if message.kind is Kind.ANSWER:
            return message.payload, True
        status = Status.TIMEOUT if message.kind is Kind.TIMEOUT else Status.FAILED  # CRASHED or TIMEOUT: the worker is stopped
        record = ResultRecord.for_cell(cell, **self.facts, status=status,
                                       error=message.payload if status == Status.FAILED else None,
                                       reason=message.payload if status == Status.TIMEOUT else None)
        return record, False


def start_worker(backend: str, settings: WorkerSettings, watch: WorkerWatch | None = None) -> tuple[CellWorker | None, dict]:
    """A ready worker, or None and the record fields saying why this backend's cells cannot run.

    A framework that is not installed (or a device that is not there) is ``skipped``; a worker that
    dies or hangs while starting is started again, up to ``STARTUP_ATTEMPTS`` in all, then ``failed``
    -- never skipped, so a rerun tries those cells again.
    """
    reason = backends.unavailable_reason(backend)
    if reason is not None:
        return None, {"status": Status.SKIPPED, "reason": reason}
    deaths = []
    for _ in range(STARTUP_ATTEMPTS):
        worker = CellWorker(backend, settings, watch)
        message = worker.wait_ready()
        if message.kind is Kind.READY:
            return worker, {}
        if message.kind is Kind.UNAVAILABLE:
            return None, {"status": Status.SKIPPED, "reason": message.payload}
        if message.kind is Kind.ERROR:
            return None, {"status": Status.FAILED, "error": f"worker could not set up {backend}: {message.payload}"}
        deaths.append(str(message.payload))  # CRASHED or TIMEOUT: try a fresh one
    return None, {"status": Status.FAILED, "error": f"worker did not start in {STARTUP_ATTEMPTS} attempts: {'; '.join(deaths)}"}


def run_sweep(
    grid: list[Cell],
    settings: WorkerSettings,
    record_sink: Callable[[ResultRecord], None],
    done: set[tuple[str, int]] = frozenset(),
    cell_timeout: float | None = None,
    on_cell_start: Callable[[Cell, int | None], None] | None = None,
    watch: WorkerWatch | None = None,
) -> None:
    """Run every cell not in ``done``, backend by backend, handing each record to ``record_sink``.

    On an interrupt (Ctrl-C) the running worker is killed at once; the records already handed on stay.
    """
    for backend in dict.fromkeys(cell.backend for cell in grid):
        todo = [c for c in grid if c.backend == backend and (c.cell_id, c.repeat) not in done]
        worker, failure = None, {}
        try:
            for cell in todo:
                if worker is None and not failure:
                    worker, failure = start_worker(backend, settings, watch)
                if failure:
                    record_sink(ResultRecord.for_cell(cell, **failure))
                    continue
                if on_cell_start:
                    on_cell_start(cell, worker.pid)
                record, alive = worker.run(cell, cell_timeout)
                record_sink(record)
                if alive and worker.facts.get("fresh_worker_per_cell"):
                    worker.stop()
                    alive = False
                if not alive:
                    worker = None
        except BaseException:
            if worker is not None:
                worker.stop(graceful=False)
            raise
        if worker is not None:
            worker.stop()


class LocalExecutor:
    """The default executor: ``run_sweep`` here, its workers watched by the run lock."""

    description = "one worker process at a time on this machine"
    flags: dict[str, dict] = {}

    def check(self, options: argparse.Namespace) -> None:
        """Nothing beyond the run flags: this machine is where the driver already runs."""

    def run(self, cells: list[Cell], settings: WorkerSettings, sink: Callable[[ResultRecord], None],
            done: set[tuple[str, int]], options: argparse.Namespace, watch: WorkerWatch) -> None:
        run_sweep(cells, settings, sink, done, options.cell_timeout, watch=watch)

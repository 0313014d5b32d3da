"""Run the grid with each backend in its own worker process, one backend at a time.

Frameworks never share a process (their thread pools and allocators would interfere), and only one
worker runs at a time so no backend's figures are measured while another competes for the cores.
Every worker gets the same CPU set and intra-op thread count, applied before its framework is
imported; it records what it got. A worker that crashes or outruns ``cell_timeout`` is killed and
replaced; its cell is recorded as failed or timeout and the sweep goes on. A worker that dies while
starting is started again (``STARTUP_ATTEMPTS``) before its cells are recorded failed.

A cell's clock starts when the worker says the cell began (framework imported, dataset loaded), so
``cell_timeout`` never counts a fresh worker's start-up. Workers die with their driver: on Linux the
kernel kills them when the driver dies (``PR_SET_PDEATHSIG``), even on SIGKILL; elsewhere the run
lock's list of worker pids lets the next driver stop leftovers (``bench/run/lock.py``).
"""

from __future__ import annotations

import ctypes
import multiprocessing as mp
import os
import signal
import socket
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import backends
from backends.base import Unsupported
from bench.errors import BenchError
from bench.measure.harness import run_cell
from bench.models.saved import save_trained_model
from bench.results.record import ResultRecord, Status
from bench.spec.cell import Cell
from bench.spec.data import load_dataset

STARTUP_TIMEOUT = 600.0
"""Seconds a worker may take to import its framework, or to load a dataset before a cell."""
STARTUP_ATTEMPTS = 3
"""A worker that dies while starting (killed, out of memory) is started again twice, then its cells fail."""
POLL_SECONDS = 0.05
PR_SET_PDEATHSIG = 1


@dataclass(frozen=True)
class WorkerSettings:
    threads: int
    cpu_set: tuple[int, ...]
    device: str
    data_dir: str | None
    val_split: float
    train_size: int | None
    test_size: int | None
    peak_gflops: float | None
    save_models_in: str | None = None
    """Run folder under whose ``models/`` each ok cell's trained model is saved (``bench run --save``)."""


WorkerWatch = Callable[[int, bool], None]
"""Told ``(pid, True)`` when a worker process starts and ``(pid, False)`` when it is gone."""


def isolate(threads: int, cpu_set: tuple[int, ...]) -> None:
    """Pin this process to the shared CPU set and cap every thread pool before a framework loads."""
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, cpu_set)
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "TF_NUM_INTRAOP_THREADS"):
        os.environ[var] = str(threads)
    os.environ["TF_NUM_INTEROP_THREADS"] = "1"
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    os.environ["XLA_PYTHON_CLIENT_PREALLOCATE"] = "false"  # so JAX's device-memory peak means something
    os.environ["TF_FORCE_GPU_ALLOW_GROWTH"] = "true"


def die_with_parent(parent_pid: int) -> None:
    """Make the kernel kill this process when its parent dies, so no worker outlives a killed driver.

    Linux only (prctl); the parent-pid check closes the race where the parent died before prctl ran.
    Ctrl-C is the driver's to handle: the terminal sends SIGINT to the whole process group.
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent_pid:
        os._exit(1)


def _worker_main(conn, backend_name: str, settings: WorkerSettings, parent_pid: int) -> None:
    die_with_parent(parent_pid)
    isolate(settings.threads, settings.cpu_set)
    started = time.perf_counter()
    try:
        backend = backends.load(backend_name)
        info = backend.setup(settings.threads, settings.device)
    except (BenchError, Unsupported) as exc:  # cannot run here (not installed, no such device): cells skipped
        conn.send(("unavailable", str(exc)))
        return
    except Exception as exc:  # a framework bug: its cells are recorded failed
        conn.send(("error", f"{type(exc).__name__}: {exc}"))
        return
    facts = {
        "threads": settings.threads,
        "cpu_set": sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "device": info.device,
        "backend_threads": info.threads,
        "framework_versions": info.versions,
        "worker_pid": os.getpid(),
        "host": socket.gethostname(),
        "niceness": os.nice(0) if hasattr(os, "nice") else None,  # a deprioritised worker measures less
        "worker_setup_seconds": time.perf_counter() - started,  # framework import and setup, once per worker
    }
    conn.send(("ready", facts))
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
            conn.send(("started", None))  # the cell's clock starts here, after the data is in memory
            record = run_cell(backend, cell, datasets[cell.dataset], settings.peak_gflops)
            if settings.save_models_in and record.status == Status.OK:  # after evaluation, off the clock
                model = cell.model.resolve(cell.train.activation)
                saved = save_trained_model(backend, record.to_json_dict() | facts, model, cell.train, Path(settings.save_models_in))
                record = record.with_fields(**saved)
        except Exception as exc:
            record = ResultRecord.for_cell(cell, status=Status.FAILED, error=f"{type(exc).__name__}: {exc}",
                                           traceback=traceback.format_exc())
        conn.send(("record", record.with_fields(**facts)))


class Worker:
    """A live worker process for one backend; replaced after a crash or timeout.

    ``main(conn, backend, settings, parent_pid)`` is what the process runs (default: the sweep's cell loop; the
    parity ladder passes its own); it answers ("ready", facts) or ("error", why) first, then one
    reply per message until it receives None.
    """

    def __init__(self, backend: str, settings: Any, watch: WorkerWatch | None = None,
                 main: Callable[[Any, str, Any, int], None] = _worker_main) -> None:
        self.backend = backend
        self.watch = watch
        context = mp.get_context("spawn")  # a clean interpreter: no framework state inherited
        self.conn, child = context.Pipe()
        self.process = context.Process(target=main, args=(child, backend, settings, os.getpid()), daemon=True)
        self.process.start()
        child.close()
        if watch:
            watch(self.process.pid, True)
        self.facts: dict = {}

    @property
    def pid(self) -> int | None:
        return self.process.pid

    def wait_ready(self) -> tuple[str, object]:
        """("ready", facts), or why not: ("unavailable" | "error" | "crashed" | "timeout", message)."""
        kind, payload = self._receive(STARTUP_TIMEOUT)
        if kind == "ready":
            self.facts = payload
        else:
            self.stop()
        return kind, payload

    def _receive(self, timeout: float | None) -> tuple[str, object]:
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            try:
                if self.conn.poll(POLL_SECONDS):
                    return self.conn.recv()
            except (EOFError, OSError):  # the worker's end closed: it died
                self.process.join(timeout=5)
                return "crashed", f"worker process died with exit code {self.process.exitcode}"
            if not self.process.is_alive():
                return "crashed", f"worker process died with exit code {self.process.exitcode}"
            if deadline is not None and time.monotonic() > deadline:
                return "timeout", f"no result within {timeout:g} s"

    def ask(self, message: object, timeout: float | None) -> tuple[str, object]:
        """Send one message and wait for its reply: (kind, payload), or ("crashed" | "timeout", why)."""
        try:
            self.conn.send(message)
        except OSError:  # the worker's end closed before the message went out: it died
            self.process.join(timeout=5)
            return "crashed", f"worker process died with exit code {self.process.exitcode}"
        return self._receive(timeout)

    def run(self, cell: Cell, timeout: float | None) -> tuple[ResultRecord, bool]:
        """The cell's record, and whether this worker is still usable.

        ``timeout`` counts from the worker's "started": loading the dataset is start-up, not the cell.
        """
        kind, payload = self.ask(cell, STARTUP_TIMEOUT)
        if kind == "started":
            kind, payload = self._receive(timeout)
        if kind == "record":
            return payload, True
        self.stop(graceful=False)
        status = Status.TIMEOUT if kind == "timeout" else Status.FAILED
        record = ResultRecord.for_cell(cell, **self.facts, status=status,
                                       error=payload if status == Status.FAILED else None,
                                       reason=payload if status == Status.TIMEOUT else None)
        return record, False

    def stop(self, graceful: bool = True) -> None:
        """End the process: asked to exit when idle (``graceful``), killed otherwise or if it does not."""
        if graceful and self.process.is_alive():
            try:
                self.conn.send(None)
            except OSError:
                pass
            self.process.join(timeout=5)
        if self.process.is_alive():
            self.process.kill()
            self.process.join()
        if self.watch:
            self.watch(self.process.pid, False)
            self.watch = None


def start_worker(backend: str, settings: WorkerSettings, watch: WorkerWatch | None = None) -> tuple[Worker | None, dict]:
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
        worker = Worker(backend, settings, watch)
        kind, payload = worker.wait_ready()
        if kind == "ready":
            return worker, {}
        if kind == "unavailable":
            return None, {"status": Status.SKIPPED, "reason": payload}
        if kind == "error":
            return None, {"status": Status.FAILED, "error": f"worker could not set up {backend}: {payload}"}
        deaths.append(str(payload))
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
                if not alive:
                    worker = None
        except BaseException:
            if worker is not None:
                worker.stop(graceful=False)
            raise
        if worker is not None:
            worker.stop()

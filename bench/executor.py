"""Run the grid with each backend in its own worker process, one backend at a time.

Frameworks never share a process (their thread pools and allocators would interfere), and only one
worker runs at a time so no backend's figures are measured while another competes for the cores.
Every worker gets the same CPU set and intra-op thread count, applied before its framework is
imported; it records what it got. A worker that crashes or outruns ``cell_timeout`` is killed and
replaced; its cell is recorded as failed or timeout and the sweep goes on.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass

import backends
from bench.data import load_dataset
from bench.errors import BenchError
from bench.harness import Cell, run_cell

STARTUP_TIMEOUT = 600.0
POLL_SECONDS = 0.05


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


def _worker_main(conn, backend_name: str, settings: WorkerSettings) -> None:
    isolate(settings.threads, settings.cpu_set)
    started = time.perf_counter()
    try:
        backend = backends.load(backend_name)
        info = backend.setup(settings.threads, settings.device)
    except Exception as exc:  # reported to the parent, which records every cell of this backend
        conn.send(("error", f"{type(exc).__name__}: {exc}" if not isinstance(exc, BenchError) else str(exc)))
        return
    facts = {
        "threads": settings.threads,
        "cpu_set": sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "device": info.device,
        "backend_threads": info.threads,
        "framework_versions": info.versions,
        "worker_pid": os.getpid(),
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
            record = run_cell(backend, cell, datasets[cell.dataset], settings.peak_gflops)
        except Exception as exc:
            record = cell.config() | {"status": "failed", "error": f"{type(exc).__name__}: {exc}",
                                      "traceback": traceback.format_exc()}
        conn.send(("record", record | facts))


class Worker:
    """A live worker process for one backend; replaced after a crash or timeout."""

    def __init__(self, backend: str, settings: WorkerSettings) -> None:
        self.backend = backend
        context = mp.get_context("spawn")  # a clean interpreter: no framework state inherited
        self.conn, child = context.Pipe()
        self.process = context.Process(target=_worker_main, args=(child, backend, settings), daemon=True)
        self.process.start()
        child.close()
        self.facts: dict = {}

    @property
    def pid(self) -> int | None:
        return self.process.pid

    def wait_ready(self) -> str | None:
        """None once ready, else why the backend cannot run here."""
        kind, payload = self._receive(STARTUP_TIMEOUT)
        if kind == "ready":
            self.facts = payload
            return None
        self.stop()
        return payload if kind == "error" else f"worker did not start ({payload})"

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

    def run(self, cell: Cell, timeout: float | None) -> tuple[dict, bool]:
        """The cell's record, and whether this worker is still usable."""
        self.conn.send(cell)
        kind, payload = self._receive(timeout)
        if kind == "record":
            return payload, True
        self.stop()
        status = "timeout" if kind == "timeout" else "failed"
        record = cell.config() | self.facts | {"status": status, "error": payload if status == "failed" else None,
                                               "reason": payload if status == "timeout" else None}
        return record, False

    def stop(self) -> None:
        if self.process.is_alive():
            try:
                self.conn.send(None)
            except OSError:
                pass
            self.process.join(timeout=5)
        if self.process.is_alive():
            self.process.kill()
            self.process.join()


def run_sweep(
    grid: list[Cell],
    settings: WorkerSettings,
    record_sink: Callable[[dict], None],
    done: set[tuple[str, int]] = frozenset(),
    cell_timeout: float | None = None,
    on_cell_start: Callable[[Cell, int | None], None] | None = None,
) -> None:
    """Run every cell not in ``done``, backend by backend, handing each record to ``record_sink``."""
    for backend in dict.fromkeys(cell.backend for cell in grid):
        todo = [c for c in grid if c.backend == backend and (c.cell_id, c.repeat) not in done]
        if not todo:
            continue
        reason = backends.unavailable_reason(backend)
        worker = None
        for cell in todo:
            if reason is None and worker is None:
                worker = Worker(backend, settings)
                reason = worker.wait_ready()
                if reason is not None:
                    worker = None
            if reason is not None:
                record_sink(cell.config() | {"status": "skipped", "reason": reason})
                continue
            if on_cell_start:
                on_cell_start(cell, worker.pid)
            record, alive = worker.run(cell, cell_timeout)
            record_sink(record)
            if not alive:
                worker = None
        if worker is not None:
            worker.stop()

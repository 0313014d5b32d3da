"""``--executor ray``: fan the sweep's cells out over a Ray cluster, one Ray task per cell.

Each task asks Ray for ``threads`` CPUs (and GPUs: ``--gpus-per-cell``, by default one on a GPU
run, since Ray hides every GPU from a task that asks for none), claims that many cores of
its node (per-core lock files, so no two cells on one machine ever share a core, whoever started
them), and runs its cell in a worker process exactly as the local executor does
(``local.CellWorker`` on ``process.py``: the same affinity and thread settings applied before the
framework loads, the same start-up retries, a timeout that starts with the cell, a worker that dies
with its parent). A Ray worker keeps its last worker process warm for the next cell of the same
backend, as the local executor keeps one per backend, so frameworks never share a process and are
not imported once per cell (except JAX on a GPU, whose peak memory needs a fresh worker per cell).
The worker sees the GPU Ray gave the task (``ray.get_gpu_ids``) as its one device.

Ray retries a task whose Ray worker or node was lost (``MAX_RETRIES``); records come back as
cells finish (``ray.wait``) and the driver appends them to the run's one store. Without
``--ray-address`` a local Ray is started with as many CPUs as the run's CPU set, so with the default
thread count it runs one cell at a time on the same cores as the local executor would.

Ray starts its workers at niceness 15, and a worker process inherits it: the local Ray is started
with ``RAY_worker_niceness=0``, and a cluster's ``ray start`` needs the same (README), else every
record says so (``niceness``). Ray is an optional extra, imported only here, only when chosen:
importing this module (the executor registry does) imports no Ray.
"""

from __future__ import annotations

import argparse
import fcntl
import importlib.util
import logging
import math
import os
import shlex
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path

import bench
from bench.errors import BenchError
from bench.measure.load import usable_cores
from bench.results.record import ResultRecord, Status
from bench.run.executors.local import CellWorker, WorkerSettings, start_worker
from bench.run.executors.process import WorkerWatch
from bench.spec.cell import Cell

MAX_RETRIES = 2
"""Times Ray reruns a cell whose Ray worker process or node died (the cell's own failures are records)."""
INSTALL = "pip install -e '.[ray]'"
WORKER_NICENESS = "RAY_worker_niceness"
"""Ray starts workers at niceness 15 (behind its own daemons); a measured cell must not run deprioritised."""
CORE_LOCKS = Path(tempfile.gettempdir()) / "bench-cores"
CLAIM_POLL = 0.2
CONNECT_TIMEOUT = 30.0
"""Seconds a cluster named by ``--ray-address`` has to answer before the run stops (exit 2, nothing written)."""
CONNECT_TIMEOUT_VARIABLE = "BENCH_RAY_CONNECT_TIMEOUT"
"""Environment variable that sets another connection timeout (tests use a short one)."""
PROBE = ("import logging, sys, ray; ray.init(address=sys.argv[1], logging_level=logging.ERROR, log_to_driver=False); "
         "ray.shutdown()")
"""What ``reach`` runs in a child process: connect to the cluster, and leave."""


def require() -> None:
    """BenchError (one line, exit 2) when Ray is not installed: checked before a run writes anything."""
    if importlib.util.find_spec("ray") is None:
        raise BenchError(f"--executor ray needs Ray, which is not installed ({INSTALL})")


def connect_timeout() -> float:
    """Seconds a cluster has to answer (``CONNECT_TIMEOUT``, or ``$BENCH_RAY_CONNECT_TIMEOUT``)."""
    text = os.environ.get(CONNECT_TIMEOUT_VARIABLE, str(CONNECT_TIMEOUT))
    try:
        seconds = float(text)
    except ValueError:
        seconds = math.nan
    if not (math.isfinite(seconds) and seconds > 0):
        raise BenchError(f"{CONNECT_TIMEOUT_VARIABLE}={text!r}: valid: a finite number of seconds > 0")
    return seconds


def reach(address: str) -> None:
    """BenchError (one line naming the address, exit 2) unless a Ray cluster answers at ``address``
    within ``connect_timeout()``.

    ``ray.init`` on an address where nothing answers retries for minutes inside Ray's C++ client,
    where no Python timeout reaches it, so the connection is tried in a child process that is
    killed (its whole session) when the time is up. The run's own ``ray.init`` follows once it
    answered; nothing has been written before.
    """
    shown = shlex.quote(address)
    if not address.strip():
        raise BenchError(f"--ray-address {shown}: empty; valid: auto, HOST:PORT or ray://HOST:PORT, or leave it out "
                         "to start a local Ray")
    timeout = connect_timeout()
    probe = subprocess.Popen([sys.executable, "-c", PROBE, address], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                             text=True, start_new_session=True)
    try:
        _, stderr = probe.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(probe.pid, signal.SIGKILL)
        probe.wait()
        raise BenchError(f"--ray-address {shown}: no Ray cluster answered within {timeout:g} s "
                         f"(${CONNECT_TIMEOUT_VARIABLE} sets the limit); check the address, or start the cluster "
                         "(ray start --head)") from None
    if probe.returncode != 0:
        reason = next((line.strip() for line in reversed(stderr.splitlines()) if line.strip()), f"exit status {probe.returncode}")
        raise BenchError(f"--ray-address {shown}: cannot connect to a Ray cluster ({reason})")


@contextmanager
def claim_cores(threads: int) -> Iterator[tuple[int, ...]]:
    """``threads`` cores of this machine that no other bench cell holds, held for the block.

    One lock file per core; a claim takes all it needs or none and tries again, so claims never
    deadlock. Ray's CPU accounting is logical: this is what keeps concurrent cells on one node apart.
    """
    cores = usable_cores()
    if threads > len(cores):
        raise BenchError(f"a cell asks for {threads} cores and this node has {len(cores)}")
    try:
        CORE_LOCKS.mkdir()
        os.chmod(CORE_LOCKS, 0o1777)  # shared by every user's cells on this machine, like /tmp
    except FileExistsError:
        pass
    while True:
        held: list[tuple[int, int]] = []
        for core in cores:
            fd = os.open(CORE_LOCKS / f"core-{core}.lock", os.O_RDONLY | os.O_CREAT, 0o644)  # flock needs no write access
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                continue
            held.append((core, fd))
            if len(held) == threads:
                break
        if len(held) == threads:
            break
        for _, fd in held:
            os.close(fd)
        time.sleep(CLAIM_POLL)
    try:
        yield tuple(core for core, _ in held)
    finally:
        for _, fd in held:
            os.close(fd)


_warm: dict[tuple, CellWorker] = {}
"""The last worker process of this Ray worker, by (backend, settings, GPU ids): reused by the next cell."""


def _worker_for(key: tuple, settings: WorkerSettings) -> tuple[CellWorker | None, dict]:
    for old_key, worker in list(_warm.items()):
        del _warm[old_key]
        if old_key == key and worker.process.is_alive():
            return worker, {}
        worker.stop()
    return start_worker(key[0], settings)


def _run_cell_task(cell: Cell, settings: WorkerSettings, cell_timeout: float | None) -> ResultRecord:
    """One cell on whichever node Ray chose, on cores claimed there."""
    import ray

    with claim_cores(settings.threads) as cpu_set:
        given = ray.get_gpu_ids()
        local = replace(settings, cpu_set=cpu_set, gpu=int(given[0]) if given else settings.gpu)
        key = (cell.backend, local, tuple(given))
        worker, failure = _worker_for(key, local)
        if worker is None:
            return ResultRecord.for_cell(cell, **failure)
        record, alive = worker.run(cell, cell_timeout)
        if alive and not worker.facts.get("fresh_worker_per_cell"):
            _warm[key] = worker
        elif alive:
            worker.stop()
        return record


def _runtime_env() -> dict:
    """Ray workers import the driver's copy of the suite wherever its folder exists (this machine, a
    checkout on a shared file system), else the copy installed on their node."""
    root = str(Path(bench.__file__).resolve().parents[1])  # the folder that holds bench/, wherever this module sits
    return {"env_vars": {"PYTHONPATH": os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")]))}}


def _lost(cell: Cell, exc: Exception) -> ResultRecord:
    """A failed record for a task Ray could not complete; the cause, not Ray's wrapper, names the problem."""
    cause = getattr(exc, "cause", None) or exc
    return ResultRecord.for_cell(cell, status=Status.FAILED, error=f"ray task failed: {type(cause).__name__}: {cause}",
                                 traceback=str(exc))


def gpus_per_cell(requested: float | None, device: str) -> float:
    """GPUs each task asks Ray for: ``--gpus-per-cell`` where given, else one on a GPU run and none on
    the CPU (Ray hides the GPUs from a task that asks for none, so a GPU run needs at least a share)."""
    if requested is not None:
        return requested
    return 1.0 if device == "gpu" else 0.0


def run_sweep(
    grid: list[Cell],
    settings: WorkerSettings,
    record_sink: Callable[[ResultRecord], None],
    done: set[tuple[str, int]] = frozenset(),
    cell_timeout: float | None = None,
    address: str | None = None,
    gpus: float = 0.0,
) -> None:
    """Run every cell not in ``done`` as a Ray task and hand each record to ``record_sink`` as it arrives."""
    require()
    import ray

    todo = [c for c in grid if (c.cell_id, c.repeat) not in done]
    if not todo:
        return
    started_here = not ray.is_initialized()
    if started_here and address is not None:
        ray.init(address=address, runtime_env=_runtime_env(), logging_level=logging.WARNING)
    elif started_here:
        os.environ.setdefault(WORKER_NICENESS, "0")  # read by the raylet this starts
        ray.init(num_cpus=len(settings.cpu_set), include_dashboard=False, runtime_env=_runtime_env(),
                 logging_level=logging.WARNING)
    task = ray.remote(_run_cell_task).options(num_cpus=settings.threads, num_gpus=gpus, max_retries=MAX_RETRIES)
    cells = {task.remote(cell, settings, cell_timeout): cell for cell in todo}
    pending = list(cells)
    try:
        while pending:
            ready, pending = ray.wait(pending, num_returns=1)
            for ref in ready:
                try:
                    record = ray.get(ref)
                except ray.exceptions.RayError as exc:
                    record = _lost(cells[ref], exc)
                record_sink(record)
    finally:
        for ref in pending:
            ray.cancel(ref, force=True)
        if started_here:
            ray.shutdown()


class RayExecutor:
    """``--executor ray``: ``run_sweep`` over a Ray cluster; its two flags are read by no other executor."""

    description = "one Ray task per cell"
    flags: dict[str, dict] = {
        "--ray-address": {"help": "Ray cluster to join (e.g. auto, or HOST:6379); default: start a local Ray"},
        "--gpus-per-cell": {"type": float, "default": None,
                            "help": "GPUs each Ray task requests (--executor ray; default 1 with --device gpu, else 0)"},
    }

    def check(self, options: argparse.Namespace) -> None:
        """Ray installed, a sane GPU request, and the cluster of ``--ray-address`` answering, before anything is written."""
        require()
        if options.gpus_per_cell is not None and not (math.isfinite(options.gpus_per_cell) and options.gpus_per_cell >= 0):
            raise BenchError(f"--gpus-per-cell must be a finite number, 0 or more, got {options.gpus_per_cell:g}")
        if options.ray_address is not None:
            reach(options.ray_address)

    def run(self, cells: list[Cell], settings: WorkerSettings, sink: Callable[[ResultRecord], None],
            done: set[tuple[str, int]], options: argparse.Namespace, watch: WorkerWatch) -> None:
        """``watch`` is unused: the worker processes are children of Ray's workers, not of this driver."""
        run_sweep(cells, settings, sink, done, options.cell_timeout, options.ray_address,
                  gpus_per_cell(options.gpus_per_cell, settings.device))

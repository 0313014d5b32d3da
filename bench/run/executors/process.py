"""A backend in its own worker process: spawn, isolation, parent death, and the one message type.

Frameworks never share a process (their thread pools and allocators would interfere), so the sweep
(``local.py``, ``ray.py``) and the parity ladder (``bench/parity/worker.py``) both run a backend in
a ``Worker`` built here. Every worker is started the same way: a fresh spawned interpreter (no
framework state inherited) that first makes the kernel kill it with its parent
(``die_with_parent``), then pins itself to its CPU set, caps every thread pool and takes its
device environment (``isolate``: exactly one GPU visible, or none; backends/device.py), and only
then runs its ``main``, which imports the framework. Whatever a worker says, and whatever
the parent concludes when it says nothing (it died, it hung), is one ``Message``.

Workers die with their driver: on Linux the kernel kills them when the driver dies
(``PR_SET_PDEATHSIG``), even on SIGKILL; elsewhere the run lock's list of worker pids lets the next
driver stop leftovers, each proven one by the mark its environment was started with
(``bench/run/lock.py``; docs/architecture.md, "Run lifecycle").
"""

from __future__ import annotations

import ctypes
import multiprocessing as mp
import os
import signal
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from enum import Enum
from typing import Any, Protocol

from backends import device
from bench.errors import BenchError
from bench.measure.load import usable_cores

OMP_WAIT_POLICY = "PASSIVE"
"""How idle OpenMP threads wait in every worker: they sleep at once instead of spinning first (libgomp's
default spins ~300,000 iterations). torch runs its intra-op pool (and MKL) on libgomp; with both
threads of a 2-core set spinning, any other runnable thread makes a step wait for a descheduled
partner, and torch's MLP fell to 0.8k-5k samples/s beside ~1.5 cores of other work, against
12k-23k with passive waiting (benchmarks/torch_modes.py; README, "Torch's two modes"). TF's and
XLA's own thread pools do not read it."""
STARTUP_TIMEOUT = 600.0
"""Seconds a worker may take to import its framework, or to load a dataset before a cell."""
POLL_SECONDS = 0.05
PR_SET_PDEATHSIG = 1


class Kind(Enum):
    """What a message from (or about) a worker says."""

    READY = "ready"
    """Set up: the payload is the worker's facts (pid, versions, threads, ...)."""
    UNAVAILABLE = "unavailable"
    """The backend cannot run this here (framework missing, no such device, an unsupported
    configuration): its cells or jobs are skipped, not failed. The payload says why."""
    ERROR = "error"
    """The backend raised while setting up or answering: a failure. The payload says what."""
    STARTED = "started"
    """A sweep cell's data is in memory and its clock starts now (no payload)."""
    ANSWER = "answer"
    """The reply to a request: a sweep cell's record, a parity job's value."""
    CRASHED = "crashed"
    """Said by the parent: the worker process died. The worker has been stopped."""
    TIMEOUT = "timeout"
    """Said by the parent: no reply in time. The worker has been stopped."""

    @property
    def worker_gone(self) -> bool:
        """Whether the worker behind this message is stopped, so the next request needs a fresh one."""
        return self in (Kind.CRASHED, Kind.TIMEOUT)


@dataclass(frozen=True)
class Message:
    """One message over a worker's pipe, or the parent's verdict on a worker that said nothing."""

    kind: Kind
    payload: Any = None


class Isolation(Protocol):
    """What every worker's settings carry: the thread count, the CPU set it is pinned to, and its
    device (``cpu`` or ``gpu``, resolved by the driver) with the index of its one GPU."""

    threads: int
    cpu_set: tuple[int, ...]
    device: str
    gpu: int


WorkerMain = Callable[[Any, str, Any], None]
"""What a worker runs once isolated, as ``main(conn, backend_name, settings)``: it sends
``Message(READY, facts)`` (or UNAVAILABLE / ERROR and returns), then one reply per request until it
receives None."""
class WorkerWatch(Protocol):
    """Who keeps the list of a driver's live workers (the run lock): told ``(pid, True)`` when a
    worker process starts and ``(pid, False)`` when it is gone. ``mark`` is set in each worker's
    environment at spawn, so that a later driver can prove a listed pid is one of these workers
    before it signals it (bench/run/lock.py)."""

    mark: Mapping[str, str]

    def __call__(self, pid: int, alive: bool) -> None: ...


@contextmanager
def _environment(variables: Mapping[str, str]) -> Iterator[None]:
    """``variables`` in this process's environment for the block: a spawned child starts with the
    parent's environment (multiprocessing has no per-process env), and the kernel keeps that
    initial environment in /proc/PID/environ for the child's life."""
    before = {name: os.environ.get(name) for name in variables}
    os.environ.update(variables)
    try:
        yield
    finally:
        for name, value in before.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def worker_cpu_set(threads: int | None = None) -> tuple[int, ...]:
    """The CPU set every worker is pinned to: the first ``threads`` cores this process may use (all
    of them by default); BenchError (one line, exit 2) when there are not that many."""
    cores = usable_cores()
    if threads is None:
        return cores
    if not 1 <= threads <= len(cores):
        raise BenchError(f"--threads {threads}: valid: 1 to {len(cores)} (the cores this process may use)")
    return cores[:threads]


def isolate(threads: int, cpu_set: tuple[int, ...], device_environment: Mapping[str, str]) -> None:
    """Pin this process to the shared CPU set, cap every thread pool and set the device variables
    (backends/device.py ``environment``) before a framework loads."""
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, cpu_set)
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "TF_NUM_INTRAOP_THREADS"):
        os.environ[var] = str(threads)
    os.environ["OMP_WAIT_POLICY"] = OMP_WAIT_POLICY
    os.environ["TF_NUM_INTEROP_THREADS"] = "1"
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    os.environ.update(device_environment)


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


def _child(main: WorkerMain, conn, backend_name: str, settings: Isolation, parent_pid: int) -> None:
    """Every worker's first steps, in this order, before its ``main`` imports a framework."""
    die_with_parent(parent_pid)
    isolate(settings.threads, settings.cpu_set, device.environment(settings.device, settings.gpu))
    main(conn, backend_name, settings)


def _died(process) -> Message:
    return Message(Kind.CRASHED, f"worker process died with exit code {process.exitcode}")


class Worker:
    """A live worker process for one backend, running ``main`` isolated by ``settings``.

    ``wait_ready`` and ``ask`` return its messages; when it dies or goes silent they return CRASHED
    or TIMEOUT and the worker is stopped (killed), so the caller only has to start a fresh one.
    """

    def __init__(self, backend: str, settings: Isolation, main: WorkerMain, watch: WorkerWatch | None = None) -> None:
        self.backend = backend
        self.watch = watch
        context = mp.get_context("spawn")  # a clean interpreter: no framework state inherited
        self.conn, child = context.Pipe()
        self.process = context.Process(target=_child, args=(main, child, backend, settings, os.getpid()), daemon=True)
        with _environment(watch.mark if watch else {}):
            self.process.start()
        child.close()
        if watch:
            watch(self.process.pid, True)
        self.facts: dict = {}

    @property
    def pid(self) -> int | None:
        return self.process.pid

    def wait_ready(self) -> Message:
        """READY with the worker's facts (kept as ``facts``), or why not (the worker is then stopped)."""
        message = self.receive(STARTUP_TIMEOUT)
        if message.kind is Kind.READY:
            self.facts = message.payload
        else:
            self.stop()
        return message

    def receive(self, timeout: float | None) -> Message:
        """The worker's next message, or CRASHED / TIMEOUT (the worker then stopped)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            try:
                if self.conn.poll(POLL_SECONDS):
                    return self.conn.recv()
            except (EOFError, OSError):  # the worker's end closed: it died
                self.process.join(timeout=5)
                return self._gone(_died(self.process))
            if not self.process.is_alive():
                return self._gone(_died(self.process))
            if deadline is not None and time.monotonic() > deadline:
                return self._gone(Message(Kind.TIMEOUT, f"no result within {timeout:g} s"))

    def ask(self, request: object, timeout: float | None) -> Message:
        """Send one request and wait for its reply (or CRASHED / TIMEOUT)."""
        try:
            self.conn.send(request)
        except OSError:  # the worker's end closed before the request went out: it died
            self.process.join(timeout=5)
            return self._gone(_died(self.process))
        return self.receive(timeout)

    def _gone(self, message: Message) -> Message:
        self.stop(graceful=False)
        return message

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

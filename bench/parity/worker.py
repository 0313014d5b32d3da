"""Where a backend answers the ladder: its own worker process, as in ``bench run``, or this one (tests).

Frameworks never share a process: each loads in a fresh spawned interpreter, pinned to the CPU set
and thread count before its import, exactly as a sweep's worker (``bench/run/executors/process.py``,
whose ``Message`` carries every reply), and answers ``measure`` and the statistical rung's
``final_accuracy`` there. Only NumPy arrays, the typed ``Rules`` value and accuracies come back over
the pipe; the oracle and every comparison stay in the parent. A worker that dies or goes silent
fails the job it was on, with the reason, and the next job gets a fresh worker.

Both kinds of session raise only ``Unsupported`` (the backend cannot run this configuration: the
backend is skipped) and ``JobFailed`` (this job has no answer), so the runner treats them alike.
"""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import backends
from backends.base import Backend, Unsupported
from bench.errors import BenchError
from bench.parity import equivalence
from bench.parity.measure import Batch, Measured, measure
from bench.parity.plan import Job
from bench.run.executors.process import Kind, Message, Worker

JOB_TIMEOUT = 900.0
"""Seconds a worker may stay silent on one request: a job takes seconds, so silence this long is a hang."""


class JobFailed(Exception):
    """A job raised in the backend, or its worker died or hung; the message says which and why."""


@dataclass(frozen=True)
class ParitySettings:
    """What a parity worker needs besides its backend's name: isolation and the ladder's inputs."""

    threads: int
    cpu_set: tuple[int, ...]
    batch: Batch
    epsilon: float
    mode: str
    device: str = "cpu"
    """The ladder runs on the CPU: its tolerances are fp32's, which a GPU's TF32 or kernels need not meet."""
    gpu: int = 0


def _measure(backend: Backend, settings: ParitySettings, job: Job) -> Measured:
    return measure(backend, job, settings.batch, settings.epsilon, settings.mode)


def _accuracy(backend: Backend, settings: ParitySettings, seed: int, epochs: int) -> float:
    return equivalence.final_accuracy(backend, seed, epochs)


REQUESTS: dict[str, Callable[..., Any]] = {"measure": _measure, "accuracy": _accuracy}
"""What a session can be asked, by request kind: the same functions in a worker and in-process."""


def _error(exc: BaseException) -> str:
    return str(exc) if isinstance(exc, BenchError) else f"{type(exc).__name__}: {exc}"


def _answer(backend: Backend, settings: ParitySettings, request: tuple) -> Message:
    """One request's reply: ANSWER with the value, UNAVAILABLE (this configuration cannot run) or ERROR."""
    kind, *args = request
    try:
        return Message(Kind.ANSWER, REQUESTS[kind](backend, settings, *args))
    except Unsupported as exc:
        return Message(Kind.UNAVAILABLE, str(exc))
    except Exception as exc:  # noqa: BLE001 - a crash fails this job; the ladder goes on with the next
        return Message(Kind.ERROR, _error(exc))


class Session(ABC):
    """One backend answering the ladder's requests, wherever it runs."""

    def measure(self, job: Job) -> Measured:
        return self._ask(("measure", job))

    def accuracy(self, seed: int, epochs: int) -> float:
        return self._ask(("accuracy", seed, epochs))

    @abstractmethod
    def _ask(self, request: tuple) -> Any:
        """The request's answer; Unsupported or JobFailed otherwise."""

    def close(self) -> None:
        """Release what the session holds."""

    @staticmethod
    def _unpack(message: Message) -> Any:
        """The answer; UNAVAILABLE raises Unsupported, anything else (ERROR, CRASHED, TIMEOUT) JobFailed."""
        if message.kind is Kind.ANSWER:
            return message.payload
        raise Unsupported(message.payload) if message.kind is Kind.UNAVAILABLE else JobFailed(message.payload)


class InProcess(Session):
    """A backend set up already in this process (tests plant buggy backends this way)."""

    def __init__(self, backend: Backend, settings: ParitySettings) -> None:
        self.backend, self.settings = backend, settings

    def _ask(self, request: tuple) -> Any:
        return self._unpack(_answer(self.backend, self.settings, request))


def serve(conn, backend_name: str, settings: ParitySettings) -> None:
    """The worker process, isolated already: load and set up the backend, then answer requests until None."""
    try:
        backend = backends.load(backend_name)
        info = backend.setup(settings.threads, settings.device)
    except (BenchError, Unsupported) as exc:  # not installed, or no such device here: the backend is skipped
        conn.send(Message(Kind.UNAVAILABLE, str(exc)))
        return
    except Exception as exc:  # noqa: BLE001 - an installed framework that cannot start is a failure
        conn.send(Message(Kind.ERROR, _error(exc)))
        return
    conn.send(Message(Kind.READY, {"pid": os.getpid(), "versions": info.versions, "threads": info.threads}))
    while (request := conn.recv()) is not None:
        conn.send(_answer(backend, settings, request))


class InWorker(Session):
    """A backend in its own spawned process; a fresh one replaces a worker that died or hung."""

    def __init__(self, name: str, settings: ParitySettings) -> None:
        self.name, self.settings = name, settings
        self.worker: Worker | None = None
        self.facts: dict = {}
        self.broken: str | None = None  # why a replacement worker could not start

    def start(self) -> Message | None:
        """Start the worker; None once ready, else the message saying why not (UNAVAILABLE: the
        backend cannot run here and is skipped; anything else: it failed)."""
        self.worker = Worker(self.name, self.settings, serve)
        message = self.worker.wait_ready()
        if message.kind is not Kind.READY:
            self.worker = None
            return message
        self.facts = self.worker.facts
        return None

    def _ask(self, request: tuple) -> Any:
        if self.worker is None and self.broken is None:
            failed = self.start()
            self.broken = None if failed is None else str(failed.payload)
        if self.broken is not None:
            raise JobFailed(f"no worker: {self.broken}")
        message = self.worker.ask(request, JOB_TIMEOUT)
        if message.kind.worker_gone:  # the next request starts a fresh worker
            self.worker = None
        return self._unpack(message)

    def close(self) -> None:
        if self.worker is not None:
            self.worker.stop()
            self.worker = None

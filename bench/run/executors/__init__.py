"""Executors: how a sweep's cells reach isolated worker processes (docs/architecture.md, "Run lifecycle").

``EXECUTORS`` is the one list of them: ``bench run --executor`` accepts its names, its help and the
flags each executor alone reads are taken from its entries, and the CLI dispatches through it. Each
entry is an ``Executor``; ``process.py`` holds what they share (spawn, isolation, parent death, the
worker message type). Registering an executor imports its module but not its optional extra: Ray is
imported only when ``--executor ray`` runs.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Protocol

from bench.errors import BenchError, unknown
from bench.results.record import ResultRecord
from bench.run.executors.local import LocalExecutor, WorkerSettings
from bench.run.executors.process import WorkerWatch
from bench.run.executors.ray import RayExecutor
from bench.spec.cell import Cell


class Executor(Protocol):
    """One way to run a sweep's cells; the run has checked its flags with ``check`` before it writes anything."""

    description: str
    """One line for ``bench run --help``."""
    flags: dict[str, dict]
    """The ``bench run`` flags only this executor reads, as ``{flag: argparse keywords}``; giving one
    with another executor is an error."""

    def check(self, options: argparse.Namespace) -> None:
        """BenchError (one line, exit 2) when this executor cannot run with these ``bench run`` options."""

    def run(self, cells: list[Cell], settings: WorkerSettings, sink: Callable[[ResultRecord], None],
            done: set[tuple[str, int]], options: argparse.Namespace, watch: WorkerWatch) -> None:
        """Run every cell not in ``done`` and hand each record to ``sink`` as it finishes; ``watch`` (the
        run lock) is told of each worker process this driver starts and gives the mark to start it with."""


EXECUTORS: dict[str, Executor] = {"local": LocalExecutor(), "ray": RayExecutor()}
DEFAULT_EXECUTOR = "local"


def _dest(flag: str) -> str:
    return flag.removeprefix("--").replace("-", "_")


def check(options: argparse.Namespace) -> None:
    """Stop a run whose executor cannot work, before it writes anything: an unknown name (a recorded
    run's, say), a flag of another executor, or what the chosen executor's own ``check`` refuses is
    a BenchError (one line, exit 2)."""
    if options.executor not in EXECUTORS:
        raise BenchError(unknown("executor", options.executor, EXECUTORS))
    for name, other in EXECUTORS.items():
        given = name != options.executor and any(getattr(options, _dest(flag)) != keywords.get("default")
                                                 for flag, keywords in other.flags.items())
        if given:
            raise BenchError(f"{' and '.join(other.flags)} apply to --executor {name} only")
    EXECUTORS[options.executor].check(options)


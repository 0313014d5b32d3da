"""Is something else using the cores? Other load measured over a timed span, so a busy machine is detected.

A throughput figure taken while another process held the cores measures that process as much as the
framework (on a shared 2-core machine the same torch cell has measured 387 and 40,238 samples/s).
So while training is timed, this module reads, for the cores of this process's CPU set:

- ``foreign_cpu_cores``: busy CPU time of those cores (every process, from ``psutil.cpu_times``)
  minus this process's own CPU time (all its threads and waited-for children), divided by wall
  time: how many cores' worth of other work ran beside the measurement. ``foreign_cpu_fraction`` is
  the same per core of the set (0 on a quiet machine, 1 when other work kept every core busy).
- ``steal_fraction``: time the hypervisor ran other guests on those cores, per core of the set
  (None where the kernel does not report steal).
- ``load_average``: the 1-minute load average at the end. Recorded, never a trigger: it lags by a
  minute and counts this process's own threads.

Each snapshot also reads the CPU time of this process's own work (``Snapshot.work``): the process's
CPU clock (every thread, nanosecond resolution, ``time.process_time``) less the CPU its helper
threads have used (the RSS sampler, bench.measure.memory), so ``cpu_seconds_per_sample`` is the
training's CPU and nothing else's (docs/architecture.md, "Measuring").

A span is *disturbed* when ``foreign_cpu_cores > FOREIGN_CPU_LIMIT`` or ``steal_fraction >
STEAL_LIMIT``. The foreign limit is in cores, not per core of the set, because a training step is
as slow as its slowest thread: one other process spinning on one core of a 2-core set takes about
0.7 of that core (0.35 per core of the set), and it cut a torch MLP's throughput from 47k to 10k
samples/s. On a 16-core set the same process would read 0.04 per core, yet every step would still
wait for the thread that shares its core.

The kernel counts CPU time in 10 ms ticks, so every pair of reads is off by up to a tick per core.
A window is therefore read once, from the start of its first epoch to the end of its last
(``LoadReading.through``), not as a sum of per-epoch readings whose tick errors would add up. On a
quiet 2-core machine, 0.25 s windows read at most about 0.15 core of foreign CPU.

Framework-free (psutil only): the harness uses it on every backend the same way.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass

import psutil

FOREIGN_CPU_LIMIT = 0.25
"""Other processes using more than a quarter of a core (summed over the set) disturb a measurement."""
STEAL_LIMIT = 0.10
"""Hypervisor steal above a tenth of each core of the set disturbs a measurement."""


@dataclass(frozen=True)
class Snapshot:
    """Cumulative counters at one instant (seconds)."""

    wall: float
    busy: float
    steal: float | None
    own: float
    work: float = 0.0
    """CPU seconds of this process's work so far: every thread's, less its helper threads'."""


@dataclass(frozen=True)
class LoadReading:
    """Other load on ``cores`` cores between two snapshots."""

    start: Snapshot
    end: Snapshot
    cores: int
    load_average: float | None = None

    @property
    def seconds(self) -> float:
        return self.end.wall - self.start.wall

    @property
    def foreign_cpu_seconds(self) -> float:
        """Busy CPU time of the set that was not this process's (never below 0: ticks can overshoot)."""
        return max((self.end.busy - self.start.busy) - (self.end.own - self.start.own), 0.0)

    @property
    def foreign_cpu_cores(self) -> float:
        return self.foreign_cpu_seconds / self.seconds if self.seconds > 0 else 0.0

    @property
    def foreign_cpu_fraction(self) -> float:
        return self.foreign_cpu_cores / self.cores

    @property
    def work_cpu_seconds(self) -> float:
        """CPU seconds this process's own work used in the span (its helper threads left out)."""
        return self.end.work - self.start.work

    @property
    def steal_fraction(self) -> float | None:
        if self.start.steal is None or self.end.steal is None:
            return None
        return (self.end.steal - self.start.steal) / (self.seconds * self.cores) if self.seconds > 0 else 0.0

    @property
    def disturbance(self) -> str | None:
        """Why this span is disturbed (the figure that tripped it), or None when it is clean."""
        if self.foreign_cpu_cores > FOREIGN_CPU_LIMIT:
            return (f"foreign CPU {self.foreign_cpu_cores:.2f} core(s) of the {self.cores}-core set "
                    f"(limit {FOREIGN_CPU_LIMIT})")
        steal = self.steal_fraction
        if steal is not None and steal > STEAL_LIMIT:
            return f"CPU steal {steal:.2f} of each of {self.cores} core(s) (limit {STEAL_LIMIT})"
        return None

    def through(self, later: LoadReading) -> LoadReading:
        """One reading from this one's start to ``later``'s end (a window of several epochs): one
        difference of the counters, so the tick error is paid once, not once per epoch."""
        return LoadReading(self.start, later.end, self.cores, later.load_average)


def usable_cores() -> tuple[int, ...]:
    """The cores this process may run on, in order: its affinity where the OS has one, else every core.

    The one reading of it in ``bench``: the load monitor watches these cores, a worker's CPU set is
    taken from them (``bench/run/executors/process.py``) and ``bench predict`` sizes its threads by them.
    It lives on this floor, the lowest whose modules need it (docs/architecture.md, "Floors").
    """
    if hasattr(os, "sched_getaffinity"):
        return tuple(sorted(os.sched_getaffinity(0)))
    return tuple(range(os.cpu_count() or 1))


class LoadMonitor:
    """Reads other load on this process's CPU set (fixed at creation: the worker is already pinned),
    and the CPU time of this process's own work: ``helper_cpu`` says how much CPU its helper threads
    (the RSS sampler) have used, which the work's CPU leaves out."""

    def __init__(self, cpu_set: list[int] | None = None, helper_cpu: Callable[[], float] | None = None) -> None:
        self.cpus = sorted(cpu_set if cpu_set is not None else usable_cores())
        self.process = psutil.Process()
        self.helper_cpu = helper_cpu or (lambda: 0.0)

    def snapshot(self) -> Snapshot:
        work = time.process_time() - self.helper_cpu()
        per_cpu = psutil.cpu_times(percpu=True)
        mine = [per_cpu[i] for i in self.cpus if i < len(per_cpu)]
        # guest time is already inside user/nice on Linux; idle and iowait are not busy.
        busy = sum(t.user + t.nice + t.system + getattr(t, "irq", 0.0) + getattr(t, "softirq", 0.0) for t in mine)
        steal = sum(t.steal for t in mine) if mine and hasattr(mine[0], "steal") else None
        own = self.process.cpu_times()
        return Snapshot(time.perf_counter(), busy, steal,
                        own.user + own.system + own.children_user + own.children_system, work)

    def since(self, start: Snapshot) -> LoadReading:
        """Other load from ``start`` until now."""
        end = self.snapshot()
        try:
            load = os.getloadavg()[0]
        except (AttributeError, OSError):
            load = None
        return LoadReading(start, end, len(self.cpus), load)

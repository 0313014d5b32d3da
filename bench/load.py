"""Is something else using the cores? Other load measured over a timed span, so a busy machine is detected.

A throughput figure taken while another process held the cores measures that process as much as the
framework (on a shared 2-core machine the same torch cell has measured 387 and 40,238 samples/s).
So while training is timed, this module reads, for the cores of this process's CPU set:

- ``foreign_cpu_fraction``: busy CPU time of those cores (every process, from ``psutil.cpu_times``)
  minus this process's own CPU time (all its threads and waited-for children), divided by wall time x
  cores. 0 on a quiet machine; 1 when other work kept every core of the set busy the whole time.
- ``steal_fraction``: time the hypervisor ran other guests on those cores, same unit (None where the
  kernel does not report steal).
- ``load_average``: the 1-minute load average at the end. Recorded, never a trigger: it lags by a
  minute and counts this process's own threads.

A span is *disturbed* when ``foreign_cpu_fraction > FOREIGN_CPU_LIMIT`` or ``steal_fraction >
STEAL_LIMIT``. The kernel counts CPU time in 10 ms ticks, so a 0.25 s span on 2 cores reads
foreign time to about +-0.04 of a core: the limits sit well above that.

Framework-free (psutil only): the harness uses it on every backend the same way.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass

import psutil

FOREIGN_CPU_LIMIT = 0.25
"""Foreign CPU time above a quarter of each core of the set disturbs a measurement."""
STEAL_LIMIT = 0.10
"""Hypervisor steal above a tenth of each core of the set disturbs a measurement."""


@dataclass(frozen=True)
class Snapshot:
    """Cumulative counters at one instant (seconds)."""

    wall: float
    busy: float
    steal: float | None
    own: float


@dataclass(frozen=True)
class LoadReading:
    """Other load over a span of ``seconds`` on ``cores`` cores."""

    seconds: float
    cores: int
    foreign_cpu_seconds: float
    steal_seconds: float | None
    load_average: float | None

    @property
    def foreign_cpu_fraction(self) -> float:
        return max(self.foreign_cpu_seconds, 0.0) / (self.seconds * self.cores) if self.seconds > 0 else 0.0

    @property
    def steal_fraction(self) -> float | None:
        if self.steal_seconds is None:
            return None
        return self.steal_seconds / (self.seconds * self.cores) if self.seconds > 0 else 0.0

    @property
    def disturbance(self) -> str | None:
        """Why this span is disturbed (the figure that tripped it), or None when it is clean."""
        if self.foreign_cpu_fraction > FOREIGN_CPU_LIMIT:
            return (f"foreign CPU {self.foreign_cpu_fraction:.2f} of each of {self.cores} core(s) "
                    f"(limit {FOREIGN_CPU_LIMIT})")
        steal = self.steal_fraction
        if steal is not None and steal > STEAL_LIMIT:
            return f"CPU steal {steal:.2f} of each of {self.cores} core(s) (limit {STEAL_LIMIT})"
        return None

    def __add__(self, other: LoadReading) -> LoadReading:
        """Two spans together (a window made of several timed epochs)."""
        steal = None if self.steal_seconds is None or other.steal_seconds is None else self.steal_seconds + other.steal_seconds
        return LoadReading(self.seconds + other.seconds, self.cores, self.foreign_cpu_seconds + other.foreign_cpu_seconds,
                           steal, other.load_average)


def _cpu_set() -> list[int]:
    if hasattr(os, "sched_getaffinity"):
        return sorted(os.sched_getaffinity(0))
    return list(range(psutil.cpu_count() or 1))


class LoadMonitor:
    """Reads other load on this process's CPU set (fixed at creation: the worker is already pinned)."""

    def __init__(self, cpu_set: list[int] | None = None) -> None:
        self.cpus = sorted(cpu_set) if cpu_set is not None else _cpu_set()
        self.process = psutil.Process()

    def snapshot(self) -> Snapshot:
        per_cpu = psutil.cpu_times(percpu=True)
        mine = [per_cpu[i] for i in self.cpus if i < len(per_cpu)]
        # guest time is already inside user/nice on Linux; idle and iowait are not busy.
        busy = sum(t.user + t.nice + t.system + getattr(t, "irq", 0.0) + getattr(t, "softirq", 0.0) for t in mine)
        steal = sum(t.steal for t in mine) if mine and hasattr(mine[0], "steal") else None
        own = self.process.cpu_times()
        return Snapshot(time.perf_counter(), busy, steal,
                        own.user + own.system + own.children_user + own.children_system)

    def since(self, start: Snapshot) -> LoadReading:
        """Other load from ``start`` until now."""
        end = self.snapshot()
        try:
            load = os.getloadavg()[0]
        except (AttributeError, OSError):
            load = None
        steal = None if start.steal is None or end.steal is None else end.steal - start.steal
        return LoadReading(end.wall - start.wall, len(self.cpus), (end.busy - start.busy) - (end.own - start.own),
                           steal, load)

"""Steady-state throughput from auto-ranged windows of whole epochs, each checked for other load.

A throughput figure from a handful of steps (an 8 ms window) means nothing; timeit and
pytest-benchmark grow the measured block until it lasts long enough. Here a *window* is a run of
consecutive whole training epochs (each timed with its one synchronisation, evaluation off the
clock) that lasts at least ``min_seconds``. The first window grows one epoch at a time until it is
long enough, and its epoch count becomes the least size of every later window (so windows do equal
work unless a window runs faster than the first and must grow to reach the minimum). Growing by
one epoch rather than doubling overshoots the minimum by less than an epoch: each epoch is already
timed on its own, so nothing is lost by checking after each one (timeit doubles because it can only
time a block of loops as a whole).

Windows come first from the accuracy epochs (they are steady state: compilation happened in the
warm-up) and then, if more are needed, from further epochs the harness trains only for this.
Several windows are taken: at least ``MIN_WINDOWS``, and more (up to ``max_windows``) while all
windows so far plus one more fit in ``budget_seconds``. The figure is the median; the per-window
figures are recorded, so the spread is visible.

A window during which other processes used the cores (bench.measure.load) is re-measured: a new window
replaces it, at most ``MAX_REMEASURES`` times per cell. When that bound is reached, a disturbed
window is kept and the record says ``noisy`` with the figure that tripped it.

The CPU time per training sample comes from the same windows: each epoch's own span (validation
between epochs left out) of this process's CPU clock, less its helper threads' (bench.measure.load).
Inference throughput (bench.measure.inference) is measured by the same windows, of passes over the
test set instead of epochs.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field

from bench.measure.load import LoadReading
from bench.spec.cell import WindowPlan

MIN_WINDOWS = 2
MAX_REMEASURES = 3


@dataclass(frozen=True)
class Window:
    """Consecutive timed units (training epochs, or inference passes over the test set)."""

    epochs: int
    seconds: float
    samples: int
    load: LoadReading | None
    cpu_seconds: float | None = None
    """CPU time of this process's work while the units ran (their own spans only, helpers left out)."""

    @property
    def samples_per_s(self) -> float:
        return self.samples / self.seconds

    @property
    def disturbance(self) -> str | None:
        return self.load.disturbance if self.load is not None else None


@dataclass
class Windows:
    """Collects timed epochs into windows; says when enough clean windows have been measured.

    ``least`` is how many clean windows are always taken (``MIN_WINDOWS`` for training).
    """

    plan: WindowPlan
    least: int = MIN_WINDOWS
    kept: list[Window] = field(default_factory=list)
    replaced: list[Window] = field(default_factory=list)
    _open: list[tuple[float, int, LoadReading | None]] = field(default_factory=list)

    @property
    def epochs_per_window(self) -> int:
        return self.kept[0].epochs if self.kept else (self.replaced[0].epochs if self.replaced else 1)

    def add(self, seconds: float, samples: int, load: LoadReading | None) -> None:
        """One timed epoch; closes the open window once it is long enough."""
        self._open.append((seconds, samples, load))
        total = sum(s for s, _, _ in self._open)
        sized = self.kept or self.replaced
        if total < self.plan.min_seconds or (sized and len(self._open) < self.epochs_per_window):
            return
        loads = [reading for _, _, reading in self._open]
        combined = cpu = None
        if None not in loads:
            combined = loads[0].through(loads[-1])
            cpu = sum(reading.work_cpu_seconds for reading in loads)  # each epoch's own span: gaps left out
        window = Window(len(self._open), total, sum(n for _, n, _ in self._open), combined, cpu)
        self._open = []
        if window.disturbance and len(self.replaced) < MAX_REMEASURES:
            self.replaced.append(window)
        else:
            self.kept.append(window)

    def wants_more(self) -> bool:
        n = len(self.kept)
        if n < self.least:
            return True
        if n >= self.plan.max_windows:
            return False
        spent = sum(w.seconds for w in self.kept + self.replaced) + sum(s for s, _, _ in self._open)
        return spent + statistics.median(w.seconds for w in self.kept) <= self.plan.budget_seconds

    @property
    def rates(self) -> list[float]:
        """Samples/s of each kept window."""
        return [w.samples_per_s for w in self.kept]

    @property
    def noisy(self) -> list[Window]:
        """Kept windows that other load disturbed (kept once the re-measuring bound was reached)."""
        return [w for w in self.kept if w.disturbance]

    def cpu_seconds_per_sample(self) -> float | None:
        """CPU seconds of this process's work per sample over the kept windows (None: not read)."""
        cpus = [w.cpu_seconds for w in self.kept]
        return None if None in cpus else sum(cpus) / sum(w.samples for w in self.kept)

    def record(self) -> dict:
        """The record's training-throughput fields (bench.measure.harness documents them)."""
        rates = self.rates
        median = statistics.median(rates)
        noisy = self.noisy
        readings = [w.load for w in self.kept if w.load is not None]
        steals = [r.steal_fraction for r in readings if r.steal_fraction is not None]
        worst = max(readings, key=lambda r: r.foreign_cpu_cores, default=None)
        return {
            "train_samples_per_s": median,
            "throughput_window_seconds": min(w.seconds for w in self.kept),
            "throughput_window_epochs": self.epochs_per_window,
            "throughput_windows": len(self.kept),
            "throughput_window_samples_per_s": rates,
            "throughput_spread": (max(rates) - min(rates)) / median,
            "throughput_remeasured": len(self.replaced),
            "cpu_seconds_per_sample": self.cpu_seconds_per_sample(),
            "noisy": bool(noisy),
            "noise_reason": noisy[0].disturbance if noisy else None,
            "foreign_cpu_cores": worst.foreign_cpu_cores if worst else None,
            "foreign_cpu_fraction": worst.foreign_cpu_fraction if worst else None,
            "steal_fraction": max(steals) if steals else None,
            "load_average": readings[-1].load_average if readings else None,
        }

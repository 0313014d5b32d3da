"""Medians with bootstrap 95% intervals, for one sample and for the ratio or difference of two.

Every figure in a report is a median over repeats with its spread (design.md, "Measuring"), and
a run-to-run comparison calls something a change only when the interval of the ratio excludes 1,
so noise is not reported as a speed-up. The resampling is vectorised NumPy (a report computes
thousands of intervals) and seeded with the suite's fixed seed, so a rebuilt report is identical.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Callable

import numpy as np
from scipy import stats

from bench.stats import BOOTSTRAP_SEED, CONFIDENCE

RESAMPLES = 2000


@dataclass(frozen=True)
class Estimate:
    """A median (or a ratio or difference of medians) with its bootstrap interval and sample size.

    ``n`` is the smaller sample size for two-sample estimates: an interval from fewer than two
    values per side says nothing about noise.
    """

    value: float
    low: float
    high: float
    n: int

    @property
    def ok(self) -> bool:
        return math.isfinite(self.value)

    def excludes(self, point: float) -> bool:
        """True when the whole interval lies on one side of ``point`` (and it rests on n >= 2)."""
        return self.n >= 2 and self.ok and (self.low > point or self.high < point)


MISSING = Estimate(math.nan, math.nan, math.nan, 0)


def finite(values: Iterable) -> np.ndarray:
    """The finite numbers among ``values`` (None, NaN, inf and non-numbers dropped) as float64."""
    out = []
    for v in values:
        try:
            f = float(v)
        except (TypeError, ValueError):
            continue
        if math.isfinite(f):
            out.append(f)
    return np.asarray(out, dtype=np.float64)


def _resampled_medians(data: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    idx = rng.integers(0, data.size, size=(RESAMPLES, data.size))
    return np.median(data[idx], axis=1)


def _bounds(samples: np.ndarray) -> tuple[float, float]:
    tail = (1 - CONFIDENCE) / 2 * 100
    low, high = np.percentile(samples, [tail, 100 - tail])
    return float(low), float(high)


def median_interval(values: Iterable) -> Estimate:
    """Median of the finite values with a percentile-bootstrap interval (a point when n < 2)."""
    data = finite(values)
    if data.size == 0:
        return MISSING
    median = float(np.median(data))
    if data.size < 2 or np.all(data == data[0]):
        return Estimate(median, median, median, int(data.size))
    low, high = _bounds(_resampled_medians(data, np.random.default_rng(BOOTSTRAP_SEED)))
    return Estimate(median, low, high, int(data.size))


def _two_sample(new: Iterable, old: Iterable, combine: Callable[[np.ndarray, np.ndarray], np.ndarray]) -> Estimate:
    a, b = finite(new), finite(old)
    if a.size == 0 or b.size == 0:
        return MISSING
    with np.errstate(divide="ignore", invalid="ignore"):
        value = float(combine(np.median(a), np.median(b)))
        if not math.isfinite(value):
            return MISSING
        rng = np.random.default_rng(BOOTSTRAP_SEED)
        samples = combine(_resampled_medians(a, rng), _resampled_medians(b, rng))
    samples = samples[np.isfinite(samples)]
    if samples.size == 0:
        return MISSING
    low, high = _bounds(samples)
    return Estimate(value, low, high, int(min(a.size, b.size)))


def ratio_interval(new: Iterable, old: Iterable) -> Estimate:
    """median(new) / median(old), each side resampled independently; MISSING if old's median is 0."""
    return _two_sample(new, old, np.divide)


def difference_interval(new: Iterable, old: Iterable) -> Estimate:
    """median(new) - median(old), each side resampled independently (for accuracies)."""
    return _two_sample(new, old, np.subtract)


def welch_p(new: Iterable, old: Iterable, log: bool) -> float:
    """Two-sided p-value of Welch's t-test between two samples (NaN with fewer than 2 values a side).

    The bootstrap interval of a median is too narrow with three repeats (it is about [min, max]),
    so a comparison also asks this small-sample test. ``log`` compares log values: timings
    vary multiplicatively, and the test then speaks about the ratio, like the interval.
    """
    a, b = finite(new), finite(old)
    if log:
        a, b = np.log(a[a > 0]), np.log(b[b > 0])
    if a.size < 2 or b.size < 2:
        return math.nan
    if np.ptp(a) == 0 and np.ptp(b) == 0:  # both exact (e.g. a deterministic accuracy)
        return 1.0 if a[0] == b[0] else 0.0
    return float(stats.ttest_ind(a, b, equal_var=False).pvalue)


def benjamini_hochberg(pvalues: Iterable[float]) -> np.ndarray:
    """False-discovery-rate adjusted p-values (NaN stays NaN): a run pair compares hundreds of
    cells and metrics, and without the adjustment a few would look changed by chance alone."""
    p = np.asarray(list(pvalues), dtype=np.float64)
    out = np.full(p.shape, np.nan)
    valid = np.flatnonzero(np.isfinite(p))
    if valid.size:
        out[valid] = stats.false_discovery_control(p[valid], method="bh")
    return out

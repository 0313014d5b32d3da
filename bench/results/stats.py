"""The suite's statistics: step-time percentiles, medians with bootstrap intervals, and tests of change.

The suite never reports a single run: every figure is a median over repeats with its spread, and
a run-to-run comparison calls something a change only when the interval of the ratio excludes 1,
so noise is not reported as a speed-up. A history of runs asks another question, whether one run
left the level of the runs before it (``step_test``). The harness uses the percentiles; the reports
use the intervals and tests (a pandas Series is one of the iterables they take). Resampling is vectorised
NumPy (a report computes thousands of intervals) and seeded with a fixed seed, so a report
rebuilt from the same records is identical. SciPy is imported only by the tests that need it, so
a worker that imports the harness does not load it.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import numpy as np

CONFIDENCE = 0.95
BOOTSTRAP_SEED = 12345
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


def _nonempty(groups: Iterable[Iterable]) -> list[np.ndarray]:
    return [d for d in (finite(g) for g in groups) if d.size]


def _estimate(value: float, samples: np.ndarray | None, n: int) -> Estimate:
    if not math.isfinite(value):
        return MISSING
    if samples is None:
        return Estimate(value, value, value, n)
    samples = samples[np.isfinite(samples)]
    if samples.size == 0:
        return MISSING
    low, high = _bounds(samples)
    return Estimate(value, min(low, value), max(high, value), n)


def _constant(groups: list[np.ndarray]) -> bool:
    return all(g.size < 2 or np.ptp(g) == 0 for g in groups)


def grouped_median_interval(groups: Iterable[Iterable]) -> Estimate:
    """The median over groups (configurations) of each group's median, with a stratified bootstrap.

    Pooling different configurations (sgd and adam, relu and tanh) into one sample would make the
    interval measure how much configurations differ; resampling within each group keeps it about
    the repeats. With one group this is the plain median and its interval.
    """
    data = _nonempty(groups)
    if not data:
        return MISSING
    value = float(np.median([np.median(d) for d in data]))
    n = min(d.size for d in data)
    if _constant(data):
        return _estimate(value, None, n)
    rng = np.random.default_rng(BOOTSTRAP_SEED)
    return _estimate(value, np.median(np.stack([_resampled_medians(d, rng) for d in data]), axis=0), n)


def median_interval(values: Iterable) -> Estimate:
    """Median of the finite values with a percentile-bootstrap interval (a point when n < 2)."""
    return grouped_median_interval([values])


Combine = Callable[[np.ndarray, np.ndarray], np.ndarray]


def grouped_comparison(new: list[Iterable], old: list[Iterable], combine: Combine, paired: bool) -> Estimate:
    """Compare two sets of groups with a stratified bootstrap, each group resampled independently.

    ``paired``: group i of ``new`` and of ``old`` are the same configuration, so the estimate is
    the median over configurations of combine(median new_i, median old_i). Unpaired groups are
    summarised first (median of group medians per side), then combined.
    """
    if paired:
        pairs = [(a, b) for a, b in zip((finite(g) for g in new), (finite(g) for g in old)) if a.size and b.size]
        a_groups, b_groups = [a for a, _ in pairs], [b for _, b in pairs]
    else:
        a_groups, b_groups = _nonempty(new), _nonempty(old)
    if not a_groups or not b_groups:
        return MISSING
    n = min(g.size for g in a_groups + b_groups)
    rng = np.random.default_rng(BOOTSTRAP_SEED)
    with np.errstate(divide="ignore", invalid="ignore"):
        a_point = np.array([np.median(g) for g in a_groups])
        b_point = np.array([np.median(g) for g in b_groups])
        if paired:
            value = float(np.median(combine(a_point, b_point)))
        else:
            value = float(combine(np.median(a_point), np.median(b_point)))
        if _constant(a_groups) and _constant(b_groups):
            return _estimate(value, None, n)
        a_boot = np.stack([_resampled_medians(g, rng) for g in a_groups])
        b_boot = np.stack([_resampled_medians(g, rng) for g in b_groups])
        if paired:
            samples = np.median(combine(a_boot, b_boot), axis=0)
        else:
            samples = combine(np.median(a_boot, axis=0), np.median(b_boot, axis=0))
    return _estimate(value, samples, n)


def ratio_interval(new: Iterable, old: Iterable) -> Estimate:
    """median(new) / median(old), each side resampled independently; MISSING if old's median is 0."""
    return grouped_comparison([new], [old], np.divide, paired=True)


def difference_interval(new: Iterable, old: Iterable) -> Estimate:
    """median(new) - median(old), each side resampled independently (for accuracies)."""
    return grouped_comparison([new], [old], np.subtract, paired=True)


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
    from scipy import stats

    return float(stats.ttest_ind(a, b, equal_var=False).pvalue)


@dataclass(frozen=True)
class StepTest:
    """Whether one run left the level of the earlier runs: the difference, its standard error and p-value."""

    difference: float
    """Mean of the new run minus the mean of the earlier runs' means (log values: a log ratio)."""
    standard_error: float
    df: float
    """Degrees of freedom of the standard error: earlier runs - 1, or the repeats' when they say more noise."""
    p_value: float
    earlier: int
    """How many earlier runs the level came from."""
    basis: str
    """'runs' (the earlier runs' spread of means) or 'repeats' (the repeats' spread) set the standard error."""

    def detectable(self, alpha: float) -> float:
        """The smallest |difference| this test calls significant at ``alpha`` (before any correction)."""
        from scipy import stats

        return float(stats.t.isf(alpha / 2, self.df) * self.standard_error) if self.df > 0 else math.inf


def step_test(new: Iterable, earlier: list[Iterable], log: bool) -> StepTest:
    """A lookback t-test of one run (its repeats, ``new``) against earlier runs (each its repeats).

    The repeats of one run share that run's machine state (another tenant, the clock, the cache), so
    they are not independent of each other the way runs are: pooling earlier runs' repeats into one
    sample and testing the new run's repeats against it (Welch, Mann-Whitney) calls ordinary
    run-to-run drift a change. The unit here is the run. Under a one-way random-effects model
    (value = level + run effect + repeat noise) the new run's mean minus the mean of the k earlier
    runs' means has variance sb2 (1 + 1/k) + sw2 (1/n_new + mean(1/n_j) / k); the earlier means' sample
    variance estimates sb2 + sw2 mean(1/n_j), the repeats' pooled variance estimates sw2 (from every
    run with two or more repeats, the new one too). With sb2 estimated as zero when the means spread
    no more than their repeats explain, the estimate is the larger of the two forms below, and the
    t distribution takes the degrees of freedom of the estimate that set it: k - 1 when runs drift
    (Conbench's lookback z-score, with its reference distribution made exact), the repeats' when
    they do not (then it is Student's t on all repeats). ``log`` tests log values, so the difference
    is a log ratio: timings vary multiplicatively. Needs two or more earlier runs and one new value.
    Values that are all equal (a deterministic accuracy) give p = 1 if they agree, else 0.
    """
    def values(group: Iterable) -> np.ndarray:
        data = finite(group)
        return np.log(data[data > 0]) if log else data

    runs = [g for g in (values(g) for g in earlier) if g.size]
    fresh = values(new)
    if len(runs) < 2 or fresh.size == 0:
        raise ValueError("a step test needs two or more earlier runs and a new run with values")
    k = len(runs)
    means = np.array([g.mean() for g in runs])
    difference = float(fresh.mean() - means.mean())
    groups = [g for g in [*runs, fresh] if g.size > 1]
    df_within = sum(g.size - 1 for g in groups)
    within = sum(float(((g - g.mean()) ** 2).sum()) for g in groups) / df_within if df_within else 0.0
    inverse = float(np.mean([1 / g.size for g in runs]))
    between_form = float(means.var(ddof=1)) * (1 + 1 / k) + within * (1 / fresh.size - inverse)
    within_form = within * (1 / fresh.size + inverse / k)
    variance, df, basis = ((between_form, k - 1, "runs") if between_form >= within_form
                           else (within_form, df_within, "repeats"))
    if variance <= 0:
        return StepTest(difference, 0.0, df, 1.0 if difference == 0 else 0.0, k, basis)
    from scipy import stats

    error = math.sqrt(variance)
    p_value = float(2 * stats.t.sf(abs(difference) / error, df))
    return StepTest(difference, error, df, p_value, k, basis)


def benjamini_hochberg(pvalues: Iterable[float]) -> np.ndarray:
    """False-discovery-rate adjusted p-values (NaN stays NaN): a run pair compares hundreds of
    cells and metrics, and without the adjustment a few would look changed by chance alone."""
    p = np.asarray(list(pvalues), dtype=np.float64)
    out = np.full(p.shape, np.nan)
    valid = np.flatnonzero(np.isfinite(p))
    if valid.size:
        from scipy import stats

        out[valid] = stats.false_discovery_control(p[valid], method="bh")
    return out


STEP_TIME_QUANTILES = (50, 90, 99)
"""The step-time percentiles a record gives."""
MIN_STEP_SAMPLES = 100
"""The one rule for step-time percentiles: each is given from at least this many timed steps, or not
at all. The 99th percentile of fewer than 100 steps is the largest step (of 20, it is the maximum
within interpolation), so it would report one outlier as a tail; p50 and p90 are held to the same
floor so the three printed beside one sample count come from the same steps. The harness records
none below it, and the reports hide older records' percentiles below it (reports/metrics.py)."""


def percentiles(values, qs=STEP_TIME_QUANTILES) -> list[float | None]:
    """The ``qs`` percentiles of ``values``; None for each when there are fewer than ``MIN_STEP_SAMPLES``."""
    data = np.asarray(values, dtype=np.float64)
    if data.size < MIN_STEP_SAMPLES:
        return [None] * len(qs)
    return [float(np.percentile(data, q)) for q in qs]

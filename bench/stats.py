"""Summary statistics for repeated measurements: median with a bootstrap 95% interval.

The suite never reports a single run (design.md, "Measuring"); SciPy's bootstrap gives the
interval of the median with a fixed seed so a report rebuilt from the same records is identical.
"""

from __future__ import annotations

import numpy as np
from scipy import stats

CONFIDENCE = 0.95
BOOTSTRAP_SEED = 12345


def median_interval(values) -> tuple[float, float, float]:
    """(median, low, high) of the finite values; the interval collapses to the median for n < 2."""
    data = np.asarray([v for v in values if v is not None and np.isfinite(v)], dtype=np.float64)
    if data.size == 0:
        return (float("nan"),) * 3
    median = float(np.median(data))
    if data.size < 2 or np.all(data == data[0]):
        return median, median, median
    result = stats.bootstrap(
        (data,), np.median, confidence_level=CONFIDENCE, n_resamples=2000,
        method="percentile", random_state=np.random.default_rng(BOOTSTRAP_SEED),
    )
    return median, float(result.confidence_interval.low), float(result.confidence_interval.high)


def percentiles(values, qs=(50, 90, 99)) -> list[float]:
    data = np.asarray(values, dtype=np.float64)
    return [float(np.percentile(data, q)) for q in qs] if data.size else [float("nan")] * len(qs)

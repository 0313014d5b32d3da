"""Statistics shared by the harness and the reports: step-time percentiles and the bootstrap settings.

The suite never reports a single run (design.md, "Measuring"); reports compute bootstrap intervals
with this fixed seed so a report rebuilt from the same records is identical.
"""

from __future__ import annotations

import numpy as np

CONFIDENCE = 0.95
BOOTSTRAP_SEED = 12345


def percentiles(values, qs=(50, 90, 99)) -> list[float]:
    data = np.asarray(values, dtype=np.float64)
    return [float(np.percentile(data, q)) for q in qs] if data.size else [float("nan")] * len(qs)

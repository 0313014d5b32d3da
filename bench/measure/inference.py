"""Inference throughput from auto-ranged windows of whole prediction passes, like training's.

One pass over the test set took about 5 ms for the MLPs (one torch cell took 124 ms for the same
work), so a single pass is a figure of nothing. Here a *pass* is ``Backend.predict`` over the whole
test set in batches of ``EVAL_BATCH`` (eval mode, class probabilities back in NumPy: what a user's
prediction costs), timed on its own, and passes are gathered into windows by the same rules as
training epochs (bench.measure.throughput): each window lasts at least ``--min-window`` seconds, a
window beside other load is measured again (or kept and marked noisy), and the figure is the
median window. ``INFERENCE_WINDOWS`` clean windows are taken, never more: the test set and the
model do not change between them, so more windows buy only time, and the default sweep's 240 cells
cannot afford them (each costs a quarter second a cell, a minute a sweep; docs/architecture.md,
"Measuring").

The harness calls this right after the test evaluation, which ran the same batches, so the
inference path is compiled and warm before the first timed pass.
"""

from __future__ import annotations

import time
from dataclasses import replace

import numpy as np

from backends.base import Backend
from bench.measure.load import LoadMonitor
from bench.measure.throughput import Windows
from bench.spec.cell import WindowPlan

EVAL_BATCH = 500
"""Rows per batch of evaluation and prediction (the last batch of a pass may be smaller)."""
INFERENCE_WINDOWS = 1
"""Clean windows of prediction passes per cell (disturbed ones are measured again on top)."""


def measure(backend: Backend, x: np.ndarray, plan: WindowPlan, monitor: LoadMonitor) -> tuple[dict, str | None]:
    """The record's inference fields (the median window's samples/s, every window's, the shortest
    window's length, passes per window, windows measured again, the batch size), and what disturbed
    a kept window (None when none was)."""
    windows = Windows(replace(plan, budget_seconds=0.0), least=INFERENCE_WINDOWS)
    while windows.wants_more():
        start = monitor.snapshot()
        began = time.perf_counter()
        backend.predict(x, EVAL_BATCH)
        windows.add(time.perf_counter() - began, len(x), monitor.since(start))
    rates = windows.rates
    noisy = windows.noisy
    return {
        "inference_samples_per_s": float(np.median(rates)),
        "inference_window_seconds": min(w.seconds for w in windows.kept),
        "inference_window_samples_per_s": rates,
        "inference_window_passes": windows.epochs_per_window,
        "inference_remeasured": len(windows.replaced),
        "inference_batch_size": min(EVAL_BATCH, len(x)),
    }, noisy[0].disturbance if noisy else None

"""Where a run's time went, per backend: worker start-up, then each cell's phases (bench.measure.harness.PHASES).

A sweep of small cells is dominated by fixed costs (building, compiling, evaluating), not by the
training it reports on; this table makes that visible, so a slow run can be traced to its phase.
Worker start-up (framework import and setup) is paid once per worker process, counted once per
``worker_pid``.
"""

from __future__ import annotations

import pandas as pd

PHASE_COLUMNS = {
    "time_build_seconds": "build",
    "time_compile_seconds": "compile / warm-up",
    "time_train_seconds": "train (accuracy epochs)",
    "time_window_seconds": "throughput windows",
    "time_eval_seconds": "evaluate",
}
"""Record field -> label, in the order a cell runs them."""


def time_breakdown(frame: pd.DataFrame) -> pd.DataFrame:
    """One row per backend: cells, seconds in worker start-up, in each phase, in the rest of the cells
    (``other``: records, load readings, divergence checks), the total, and the compile-cache states."""
    rows = []
    for backend, group in frame.groupby("backend", sort=False):
        timed = group[group["duration_seconds"].notna()] if "duration_seconds" in group else group.iloc[0:0]
        if timed.empty:
            continue
        row: dict = {"backend": backend, "cells": len(timed)}
        setup = _column(group, "worker_setup_seconds")
        pids = _column(group, "worker_pid")
        row["worker start-up"] = float(setup.groupby(pids).first().sum()) if setup.notna().any() else 0.0
        phases = 0.0
        for field, label in PHASE_COLUMNS.items():
            row[label] = float(_column(timed, field).fillna(0).sum())
            phases += row[label]
        cells = float(timed["duration_seconds"].sum())
        row["other"] = max(cells - phases, 0.0)
        row["total"] = cells + row["worker start-up"]
        states = _column(timed, "compile_cache").dropna().value_counts()
        row["compile cache"] = (str(states.index[0]) if len(states) == 1
                                else ", ".join(f"{state} ({n} cells)" for state, n in states.items()) or "—")
        rows.append(row)
    return pd.DataFrame(rows)


def _column(frame: pd.DataFrame, name: str) -> pd.Series:
    return frame[name] if name in frame else pd.Series([None] * len(frame), index=frame.index, dtype=object)

"""Where a run's time went, per backend: worker start-up, then each cell's phases (bench.results.phases).

A sweep of small cells is dominated by fixed costs (building, compiling, evaluating), not by the
training it reports on; this table makes that visible, so a slow run can be traced to its phase.
Worker start-up (framework import and setup) is paid once per worker process, counted once per
``worker_pid``.
"""

from __future__ import annotations

import pandas as pd

from bench.results.phases import PHASES
from reports.metrics import CELL_DURATION

START_UP = "worker start-up"
OTHER = "other"
PARTS = (START_UP, *(phase.label for phase in PHASES), OTHER)
"""The columns that add up to a backend's total, in order: start-up, each phase by its label, the rest."""


def time_breakdown(frame: pd.DataFrame) -> pd.DataFrame:
    """One row per backend: cells, seconds in worker start-up, in each phase, in the rest of the cells
    (``other``: records, load readings, divergence checks), the total, and the compile-cache states."""
    rows = []
    for backend, group in frame.groupby("backend", sort=False):
        timed = group[group[CELL_DURATION.field].notna()] if CELL_DURATION.field in group else group.iloc[0:0]
        if timed.empty:
            continue
        row: dict = {"backend": backend, "cells": len(timed)}
        setup = _column(group, "worker_setup_seconds")
        pids = _column(group, "worker_pid")
        row[START_UP] = float(setup.groupby(pids).first().sum()) if setup.notna().any() else 0.0
        phases = 0.0
        for phase in PHASES:
            row[phase.label] = float(_column(timed, phase.field).fillna(0).sum())
            phases += row[phase.label]
        cells = float(timed[CELL_DURATION.field].sum())
        row[OTHER] = max(cells - phases, 0.0)
        row["total"] = cells + row[START_UP]
        states = _column(timed, "compile_cache").dropna().value_counts()
        row["compile cache"] = (str(states.index[0]) if len(states) == 1
                                else ", ".join(f"{state} ({n} cells)" for state, n in states.items()) or "—")
        rows.append(row)
    return pd.DataFrame(rows)


def _column(frame: pd.DataFrame, name: str) -> pd.Series:
    return frame[name] if name in frame else pd.Series([None] * len(frame), index=frame.index, dtype=object)

"""Where a run's time went, per backend: worker start-up, then each cell's phases (bench.results.phases);
and what compiling cost, cold and warm.

A sweep of small cells is dominated by fixed costs (building, compiling, evaluating), not by the
training it reports on; this table makes that visible, so a slow run can be traced to its phase.
Worker start-up (framework import and setup) is paid once per worker process, counted once per
``worker_pid``. The compile table sets each compiled mode's compile time and first-step latency
from empty caches beside the same from warm ones (backends/compile_cache.py), per model.
"""

from __future__ import annotations

import pandas as pd

from bench.results.phases import PHASES
from bench.results.record import Status
from reports.metrics import (
    CELL_DURATION,
    COMPILE_CACHE,
    COMPILE_TIME,
    FIRST_STEP,
    GRAPH_BREAKS,
    GRAPHS,
    WARM_COMPILE_TIME,
    WARM_FIRST_STEP,
)

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
        states = _column(timed, COMPILE_CACHE).dropna().value_counts()
        row["compile cache"] = (str(states.index[0]) if len(states) == 1
                                else ", ".join(f"{state} ({n} cells)" for state, n in states.items()) or "—")
        rows.append(row)
    return pd.DataFrame(rows)


def _column(frame: pd.DataFrame, name: str) -> pd.Series:
    return frame[name] if name in frame else pd.Series([None] * len(frame), index=frame.index, dtype=object)


COMPILE_COLUMNS = ("compile cold", "compile warm", "compile off", "first step cold", "first step warm",
                   "first step off", "graphs", "graph breaks")
"""The compile table's figures, each a median over the cells behind it (seconds; graphs as counted)."""


def compile_table(frame: pd.DataFrame) -> pd.DataFrame:
    """One row per backend, mode and model that compiled: median compile time and first step with the
    caches cold, warm and off. A warm figure comes from cells whose code the cache served, and from
    a cold cell's second compile (``--compile-cache cold``); graphs and graph breaks where counted."""
    ok = frame[(frame["status"] == Status.OK) & _column(frame, COMPILE_CACHE).notna()]
    rows = []
    for (backend, mode, model), group in ok.groupby(["backend", "mode", "model"], sort=False):
        state = group[COMPILE_CACHE]

        def median(values: pd.Series) -> float:
            values = values.dropna()
            return float(values.median()) if len(values) else float("nan")

        warm = state == "warm"
        rows.append({
            "backend": backend, "mode": mode, "model": model, "cells": len(group),
            "compile cold": median(group.loc[state == "cold", COMPILE_TIME.field]),
            "compile warm": median(pd.concat([group.loc[warm, COMPILE_TIME.field], _column(group, WARM_COMPILE_TIME.field)])),
            "compile off": median(group.loc[state == "off", COMPILE_TIME.field]),
            "first step cold": median(group.loc[state == "cold", FIRST_STEP.field]),
            "first step warm": median(pd.concat([group.loc[warm, FIRST_STEP.field], _column(group, WARM_FIRST_STEP.field)])),
            "first step off": median(group.loc[state == "off", FIRST_STEP.field]),
            "graphs": median(_column(group, GRAPHS.field)), "graph breaks": median(_column(group, GRAPH_BREAKS.field)),
        })
    return pd.DataFrame(rows, columns=["backend", "mode", "model", "cells", *COMPILE_COLUMNS])

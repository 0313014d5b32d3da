"""summary.csv: one row per backend, mode and configuration, with the median and interval of every metric.

Repeats of a cell collapse to a median and its bootstrap 95% interval (never one run). Only
records with status ok feed the metrics; the other statuses are counted and their first reason
is kept, so a row of a cell that never finished still says why.
"""

from __future__ import annotations

import pandas as pd

from bench.results.record import Status
from bench.results.stats import median_interval
from reports.metrics import METRICS
from reports.records import CONFIG_AXES, VARIANT_AXES, unconverged

CELL_KEYS = ("variant", *VARIANT_AXES, *CONFIG_AXES)


def first_line(text: str | None) -> str | None:
    """The first non-empty line of a reason or error message (tracebacks stay in results.csv)."""
    if not text:
        return None
    return next((line.strip() for line in str(text).splitlines() if line.strip()), None)


def _why(group: pd.DataFrame) -> str | None:
    problems = group[group["status"] != Status.OK]
    for text in list(problems["reason"]) + list(problems["error"]):
        line = first_line(text)
        if line:
            return line
    return None


def _status_text(counts: dict[str, int], n: int) -> str:
    """'ok' when every repeat finished, else e.g. 'ok 2, diverged 1'."""
    if counts[Status.OK] == n:
        return Status.OK.value
    return ", ".join(f"{s} {c}" for s, c in counts.items() if c)


def summary_table(frame: pd.DataFrame) -> pd.DataFrame:
    """One row per cell (backend x mode x configuration) with counts, status and metric intervals."""
    rows = []
    for keys, group in frame.groupby(list(CELL_KEYS), dropna=False, sort=True):
        ok = group[group["status"] == Status.OK]
        counts = {s: int((group["status"] == s).sum()) for s in Status}
        row = dict(zip(CELL_KEYS, keys))
        row["framework"] = next(iter(group["framework"].dropna()), None)
        row |= {"n_records": len(group)} | {f"n_{s}": c for s, c in counts.items()}
        row |= {"status": _status_text(counts, len(group)), "reason": _why(group),
                "n_unconverged": int(unconverged(ok).sum()), "n_noisy": int(ok["noisy"].map(lambda v: v is True).sum())}
        for metric in METRICS:
            est = median_interval(ok[metric.field])
            name = metric.field
            row |= {f"{name}_median": est.value, f"{name}_ci_low": est.low, f"{name}_ci_high": est.high}
        rows.append(row)
    return pd.DataFrame(rows)

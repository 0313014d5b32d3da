"""summary.csv: one row per backend, mode and configuration, with the median and interval of every metric.

Repeats of a cell collapse to a median and its bootstrap 95% interval (never one run). Only
records with status ok feed the metrics; the other statuses are counted and their first reason
is kept, so a row of a cell that never finished still says why.
"""

from __future__ import annotations

import pandas as pd

from reports.records import CONFIG_AXES, STATUSES, unconverged
from reports.stats import median_interval

METRICS = (
    "test_accuracy", "test_loss", "final_train_loss", "val_accuracy",
    "train_samples_per_s", "train_seconds", "step_time_ms_p50", "step_time_ms_p90", "step_time_ms_p99",
    "compile_seconds", "first_step_seconds", "warmup_seconds", "inference_samples_per_s",
    "time_to_target_seconds", "device_seconds", "cpu_seconds_per_sample",
    "peak_rss_bytes", "peak_device_bytes", "peak_memory_bytes", "param_count",
    "flops_per_sample_forward", "flops_per_sample_train", "achieved_gflops", "peak_fraction",
    "duration_seconds", "throughput_window_seconds", "throughput_windows", "throughput_spread",
    "foreign_cpu_fraction", "time_build_seconds", "time_compile_seconds", "time_train_seconds",
    "time_eval_seconds", "time_window_seconds",
)
CELL_KEYS = ("variant", "backend", "mode") + CONFIG_AXES


def first_line(text: str | None) -> str | None:
    """The first non-empty line of a reason or error message (tracebacks stay in results.csv)."""
    if not text:
        return None
    return next((line.strip() for line in str(text).splitlines() if line.strip()), None)


def _why(group: pd.DataFrame) -> str | None:
    problems = group[group["status"] != "ok"]
    for text in list(problems["reason"]) + list(problems["error"]):
        line = first_line(text)
        if line:
            return line
    return None


def _status_text(counts: dict[str, int], n: int) -> str:
    """'ok' when every repeat finished, else e.g. 'ok 2, diverged 1'."""
    if counts.get("ok", 0) == n:
        return "ok"
    return ", ".join(f"{s} {c}" for s, c in counts.items() if c)


def summary_table(frame: pd.DataFrame) -> pd.DataFrame:
    """One row per cell (backend x mode x configuration) with counts, status and metric intervals."""
    rows = []
    for keys, group in frame.groupby(list(CELL_KEYS), dropna=False, sort=True):
        ok = group[group["status"] == "ok"]
        counts = {s: int((group["status"] == s).sum()) for s in STATUSES}
        row = dict(zip(CELL_KEYS, keys))
        row["framework"] = next(iter(group["framework"].dropna()), None)
        row |= {"n_records": len(group)} | {f"n_{s}": c for s, c in counts.items()}
        row |= {"status": _status_text(counts, len(group)), "reason": _why(group),
                "n_unconverged": int(unconverged(ok).sum()), "n_noisy": int(ok["noisy"].map(lambda v: v is True).sum())}
        for metric in METRICS:
            est = median_interval(ok[metric])
            row |= {f"{metric}_median": est.value, f"{metric}_ci_low": est.low, f"{metric}_ci_high": est.high}
        rows.append(row)
    return pd.DataFrame(rows)

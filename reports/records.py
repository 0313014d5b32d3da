"""Read a run folder into a pandas frame, robust to old records, missing fields and a crash's last line.

Reading parses ``results.jsonl`` with the json module line by line (never unpickles): a record
cut short by a crash is skipped and counted, not fatal. Fields absent from older records become
empty columns, so every later step can rely on the full schema.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from bench.errors import BenchError
from bench.store import ENVIRONMENT, RESULTS, read_records

TEXT_FIELDS = (
    "run_id", "cell_id", "status", "reason", "error", "backend", "framework", "model", "optimizer",
    "activation", "loss", "precision", "mode", "dataset", "timing_method", "memory_method", "started_at",
    "noise_reason", "compile_cache", "convergence_note",
)
NUMBER_FIELDS = (
    "repeat", "batch_size", "epochs", "learning_rate", "seed", "n_train", "n_val", "n_test",
    "momentum", "rho", "beta1", "beta2", "epsilon", "weight_decay", "bn_momentum", "bn_epsilon",
    "leaky_relu_slope", "threads", "test_accuracy", "test_loss", "final_train_loss", "val_accuracy",
    "train_samples_per_s", "train_seconds", "step_time_ms_p50", "step_time_ms_p90", "step_time_ms_p99",
    "compile_seconds", "first_step_seconds", "warmup_seconds", "inference_samples_per_s",
    "target_accuracy", "time_to_target_seconds", "device_seconds", "cpu_seconds_per_sample",
    "peak_rss_bytes", "peak_device_bytes", "param_count", "flops_per_sample_forward",
    "flops_per_sample_train", "achieved_gflops", "peak_fraction", "duration_seconds",
    "throughput_window_seconds", "throughput_window_epochs", "throughput_windows", "throughput_spread",
    "throughput_remeasured", "foreign_cpu_fraction", "steal_fraction", "load_average", "min_window_seconds",
    "window_budget_seconds", "time_build_seconds", "time_compile_seconds", "time_train_seconds",
    "time_eval_seconds", "time_window_seconds", "worker_setup_seconds",
)
FLAG_FIELDS = ("noisy", "converged")
"""True/False, or None where a record (an older one, or one that did not finish) does not say."""
CURVE_FIELDS = ("epoch_train_loss", "epoch_val_loss", "epoch_val_accuracy", "epoch_seconds")
NESTED_FIELDS = ("input_shape", "semantics", "throughput_window_samples_per_s") + CURVE_FIELDS
"""Lists and dicts: kept as Python objects in memory, written to CSV as JSON text."""

SCHEMA = (TEXT_FIELDS[:3] + ("repeat",) + TEXT_FIELDS[3:] + tuple(f for f in NUMBER_FIELDS if f != "repeat")
          + FLAG_FIELDS + NESTED_FIELDS)

CONFIG_AXES = ("model", "optimizer", "activation", "loss", "batch_size", "epochs", "learning_rate",
               "precision", "dataset")
"""What makes two cells the same experiment on different backends (the seed varies per repeat)."""

def config_keys(frame: pd.DataFrame, columns: tuple[str, ...] = CONFIG_AXES) -> pd.Series:
    """One string per row naming its configuration, so rows can be matched across backends and runs."""
    if frame.empty:
        return pd.Series([], index=frame.index, dtype=object)
    return pd.Series(["|".join(map(str, values)) for values in frame[list(columns)].itertuples(index=False)],
                     index=frame.index, dtype=object)


STATUSES = ("ok", "skipped", "failed", "diverged", "timeout")
PROBLEM_STATUSES = STATUSES[1:]


@dataclass
class Run:
    """One run folder, read: its records (one row each, full schema) and its environment."""

    folder: Path
    records: pd.DataFrame
    environment: dict
    skipped_lines: int
    notes: list[str] = field(default_factory=list)
    """Problems found while reading that the report should mention (e.g. an unreadable environment)."""

    @property
    def name(self) -> str:
        """The run's name: its most common run_id, else the folder's name."""
        ids = self.records["run_id"].dropna()
        return str(ids.mode().iloc[0]) if len(ids) else self.folder.name

    @property
    def ok(self) -> pd.DataFrame:
        return self.records[self.records["status"] == "ok"]


def _status(record: dict) -> str:
    status = record.get("status")
    if status in STATUSES:
        return status
    if status is None:  # records older than the status field: an error means it failed
        return "failed" if record.get("error") else "ok"
    return str(status)


def _variant_labels(frame: pd.DataFrame) -> pd.Series:
    """'torch' where a backend ran one execution mode, 'torch (compiled)' where it ran several.

    Only modes that actually trained count: a cell skipped before its mode was resolved keeps the
    requested name ('default', or a mode the backend does not have), which is not a mode it ran.
    """
    real = frame[frame["status"].isin(("ok", "diverged")) & frame["mode"].notna()]
    several = {b for b, modes in real.groupby("backend")["mode"].unique().items() if len(modes) > 1}
    return pd.Series(
        [f"{b} ({m})" if b in several else str(b) for b, m in zip(frame["backend"], frame["mode"])],
        index=frame.index, dtype=object,
    )


def records_frame(records: list[dict]) -> pd.DataFrame:
    """Records as a frame with every schema column (missing ones empty), numbers as floats.

    Adds two derived columns for the report: ``variant`` (backend, plus mode where a backend ran
    several) and ``peak_memory_bytes`` (device peak where measured, else host RSS).
    """
    frame = pd.DataFrame.from_records([{**r, "status": _status(r)} for r in records])
    for name in SCHEMA:
        if name not in frame.columns:
            frame[name] = None
    extras = [c for c in frame.columns if c not in SCHEMA]
    frame = frame[list(SCHEMA) + extras]
    for name in NUMBER_FIELDS:
        frame[name] = pd.to_numeric(frame[name], errors="coerce").astype("float64")
    for name in TEXT_FIELDS:
        frame[name] = frame[name].astype(object).where(frame[name].notna(), None)
    for name in FLAG_FIELDS:
        frame[name] = pd.Series([v if isinstance(v, bool) else None for v in frame[name]], index=frame.index, dtype=object)
    frame["backend"] = frame["backend"].fillna("unknown")
    frame["variant"] = _variant_labels(frame)
    frame["peak_memory_bytes"] = frame["peak_device_bytes"].fillna(frame["peak_rss_bytes"])
    return frame


def unconverged(frame: pd.DataFrame) -> pd.Series:
    """Rows whose record says its training budget was too short to converge (bench.harness.convergence).
    Records that do not say (older ones) count as converged: nothing marks them."""
    return frame["converged"].map(lambda v: v is False).astype(bool)


def _json_cell(value) -> str | None:
    if isinstance(value, (list, tuple, dict)):
        return json.dumps(value)
    return None if value is None or (isinstance(value, float) and math.isnan(value)) else value


def results_table(frame: pd.DataFrame) -> pd.DataFrame:
    """results.csv: one row per record, the stored fields only, lists and dicts as JSON text."""
    table = frame.drop(columns=["variant", "peak_memory_bytes"])
    for name in table.columns:
        if table[name].dtype == object:
            table[name] = table[name].map(_json_cell)
    return table


def curves_table(frame: pd.DataFrame) -> pd.DataFrame:
    """Per-epoch curves in long form: one row per record and epoch (empty when no curves were recorded)."""
    keys = ["variant", "backend", "mode", "cell_id", "repeat", *CONFIG_AXES]
    rows = []
    for rec in frame[frame["status"].isin(["ok", "diverged"])].to_dict("records"):
        curves = {name: rec[name] if isinstance(rec[name], list) else [] for name in CURVE_FIELDS}
        for epoch in range(max(len(c) for c in curves.values())):
            row = {k: rec[k] for k in keys} | {"epoch": epoch + 1}
            for name, values in curves.items():
                value = values[epoch] if epoch < len(values) else None
                row[name.removeprefix("epoch_")] = math.nan if value is None else float(value)
            rows.append(row)
    columns = keys + ["epoch"] + [name.removeprefix("epoch_") for name in CURVE_FIELDS]
    return pd.DataFrame(rows, columns=columns)


def _read_environment(path: Path, notes: list[str]) -> dict:
    if not path.exists():
        notes.append(f"{path.name} is missing: the environment is unknown.")
        return {}
    try:
        environment = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        notes.append(f"{path.name} could not be read ({exc}); the environment is unknown.")
        return {}
    if not isinstance(environment, dict):
        notes.append(f"{path.name} does not hold a JSON object; the environment is unknown.")
        return {}
    return environment


def load_run(folder: Path) -> Run:
    """Read a run folder; a missing folder, missing results.jsonl or no complete record is a BenchError."""
    folder = Path(folder)
    if not folder.is_dir():
        raise BenchError(f"run folder {folder} does not exist or is not a folder")
    path = folder / RESULTS
    if not path.is_file():
        raise BenchError(f"{folder} has no {RESULTS}: is it a run folder written by `bench run`?")
    try:
        records, skipped = read_records(path)
    except OSError as exc:
        raise BenchError(f"cannot read {path}: {exc.strerror or exc}") from None
    if not records:
        raise BenchError(f"{path} holds no complete record ({skipped} unreadable line(s)): nothing to report")
    notes: list[str] = []
    environment = _read_environment(folder / ENVIRONMENT, notes)
    if skipped:
        notes.append(f"{skipped} incomplete or unreadable line(s) of {RESULTS} were skipped.")
    unknown = Counter(r["status"] for r in records if r.get("status") not in (None, *STATUSES))
    if unknown:
        notes.append("Unknown statuses: " + ", ".join(f"{s} ({n})" for s, n in sorted(unknown.items())) + ".")
    return Run(folder, records_frame(records), environment, skipped, notes)

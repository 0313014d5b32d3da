"""Read a run folder into a pandas frame, robust to missing fields and a crash's last line.

Reading parses ``results.jsonl`` with the json module line by line (never unpickles): a record
cut short by a crash is skipped and counted, not fatal. The store's reader hands over current
records only (bench/results/upgrades.py upgrades older ones and refuses newer ones), so nothing
here knows history. The columns are the fields bench/results/record.py declares: fields a record
lacks become empty columns, so every later step can rely on the full schema; fields the schema
does not declare are kept as extra columns.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from bench.errors import BenchError
from bench.results.record import FIELD_KINDS, FIELDS, PER_EPOCH_FIELDS, Status
from bench.results.stats import MIN_STEP_SAMPLES
from bench.results.store import ENVIRONMENT, RESULTS, latest, read_records, read_small
from bench.spec.cell import AXES
from bench.spec.semantics import HARMONISED
from reports.metrics import BY_FIELD, SAMPLED

SCHEMA = FIELDS
"""Every field a record may hold (bench/results/record.py), in order: the leading columns of results.csv."""
TEXT_FIELDS = tuple(name for name in SCHEMA if FIELD_KINDS[name] == "text")
NUMBER_FIELDS = tuple(name for name in SCHEMA if FIELD_KINDS[name] == "number")
NESTED_FIELDS = tuple(name for name in SCHEMA if FIELD_KINDS[name] == "nested")
FLAG_FIELDS = tuple(name for name in SCHEMA if FIELD_KINDS[name] == "flag")
"""True/False, or None where a record (an older one, or one that did not finish) does not say."""
"""Lists and dicts: kept as Python objects in memory, written to CSV as JSON text."""
CURVE_FIELDS = PER_EPOCH_FIELDS
DERIVED_FIELDS = ("variant",)
"""Columns the reader adds to every frame (see records_frame); not stored in results.csv."""

VARIANT_AXES = tuple(axis.field for axis in AXES if axis.backend_specific)
"""The axes whose values belong to one backend (backend, mode): together they name a variant."""
CONFIG_AXES = tuple(axis.field for axis in AXES if not axis.backend_specific)
"""What makes two cells the same experiment on different backends (the seed varies per repeat)."""


def config_axes_but(axis: str) -> tuple[str, ...]:
    """CONFIG_AXES less ``axis``: what a cell shares with its twin on that axis (an augmented cell
    and its plain twin, a native one and its harmonised twin). A name that is no axis is an error."""
    if axis not in CONFIG_AXES:
        raise ValueError(f"{axis!r} is not one of the configuration axes: {', '.join(CONFIG_AXES)}")
    return tuple(name for name in CONFIG_AXES if name != axis)


def config_keys(frame: pd.DataFrame, columns: tuple[str, ...] = CONFIG_AXES) -> pd.Series:
    """One string per row naming its configuration, so rows can be matched across backends and runs."""
    if frame.empty:
        return pd.Series([], index=frame.index, dtype=object)
    return pd.Series(["|".join(map(str, values)) for values in frame[list(columns)].itertuples(index=False)],
                     index=frame.index, dtype=object)


PROBLEM_STATUSES = tuple(status for status in Status if status.problem)
"""Statuses the report lists as problems, in the order Status declares them."""
TRAINED_STATUSES = tuple(status for status in Status if status.trained)
"""Statuses whose records ran training: they name the mode that ran and hold curves."""


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
        return self.records[self.records["status"] == Status.OK]


def _variant_labels(frame: pd.DataFrame) -> pd.Series:
    """'torch' where a backend ran one execution mode, 'torch (compiled)' where it ran several, and
    ', native' added for the native semantics policy ('torch (native)', 'torch (compiled, native)').

    Only modes that actually trained count: a cell skipped before its mode was resolved keeps the
    requested name ('default', or a mode the backend does not have), which is not a mode it ran.
    """
    real = frame[frame["status"].isin(TRAINED_STATUSES) & frame["mode"].notna()]
    several = {b for b, modes in real.groupby("backend")["mode"].unique().items() if len(modes) > 1}

    def label(backend, mode, policy) -> str:
        parts = ([str(mode)] if backend in several else []) + ([str(policy)] if policy != HARMONISED else [])
        return f"{backend} ({', '.join(parts)})" if parts else str(backend)

    return pd.Series([label(*values) for values in zip(frame["backend"], frame["mode"], frame["semantics_policy"])],
                     index=frame.index, dtype=object)


def records_frame(records: list[dict]) -> pd.DataFrame:
    """Current records (as the store's reader gives them) as a frame with every schema column
    (missing ones empty), numbers as floats.

    Adds a derived column for the report: ``variant`` (backend, plus mode where a backend ran several).
    A figure taken from too few samples (``SAMPLED``: step-time percentiles of fewer than
    ``MIN_STEP_SAMPLES`` steps, as older records hold) is emptied, so no view prints it.
    """
    frame = pd.DataFrame.from_records(records)
    extras = [c for c in frame.columns if c not in SCHEMA]
    frame = frame.reindex(columns=list(SCHEMA) + extras)  # missing fields become empty columns, in one step
    for name in NUMBER_FIELDS:
        frame[name] = pd.to_numeric(frame[name], errors="coerce").astype("float64")
    for name in TEXT_FIELDS:
        frame[name] = frame[name].astype(object).where(frame[name].notna(), None)
    for name in FLAG_FIELDS:
        frame[name] = pd.Series([v if isinstance(v, bool) else None for v in frame[name]], index=frame.index, dtype=object)
    for metric in SAMPLED:
        frame.loc[~(frame[metric.sampled_by] >= MIN_STEP_SAMPLES), metric.field] = float("nan")
    frame = frame.copy()  # one block per dtype again after the per-column conversions (pandas' advice)
    frame["variant"] = _variant_labels(frame)
    return frame


def plain_records(frame: pd.DataFrame) -> pd.DataFrame:
    """The unaugmented records, for the headline and its figures (the augmentation section compares
    the rest with them); all records when nothing ran plain."""
    plain = frame[frame["augment"] == "none"]
    return plain if (plain["status"] == Status.OK).any() else frame


def unconverged(frame: pd.DataFrame) -> pd.Series:
    """Rows whose record says its training budget was too short to converge (bench.measure.verdicts.convergence).
    Records that do not say (older ones) count as converged: nothing marks them."""
    return frame["converged"].map(lambda v: v is False).astype(bool)


def throughput_only(frame: pd.DataFrame) -> pd.Series:
    """Rows measured for speed only (bench/run/grid.py ``Sweep.throughput_only``): their accuracy was
    never meant to be a result."""
    return frame["throughput_only"].map(lambda v: v is True).astype(bool)


def counted(frame: pd.DataFrame, field: str) -> pd.Series:
    """A field's values as every table and comparison counts them: for a metric that only converged
    training measures (``Metric.converged_only``: the test accuracy), the value of an unconverged or a
    throughput-only record is no result and reads as NaN, which the statistics leave out
    (bench/results/stats.py)."""
    metric = BY_FIELD.get(field)
    values = frame[field]
    if metric is None or not metric.converged_only:
        return values
    return values.where(~unconverged(frame) & ~throughput_only(frame))


def _json_cell(value) -> str | None:
    if isinstance(value, (list, tuple, dict)):
        return json.dumps(value)
    return None if value is None or (isinstance(value, float) and math.isnan(value)) else value


def results_table(frame: pd.DataFrame) -> pd.DataFrame:
    """results.csv: one row per record, the stored fields only, lists and dicts as JSON text."""
    table = frame.drop(columns=list(DERIVED_FIELDS))
    for name in table.columns:
        if table[name].dtype == object:
            table[name] = table[name].map(_json_cell)
    return table


def curves_table(frame: pd.DataFrame) -> pd.DataFrame:
    """Per-epoch curves in long form: one row per record and epoch (empty when no curves were recorded)."""
    keys = ["variant", *VARIANT_AXES, "cell_id", "repeat", *CONFIG_AXES]
    rows = []
    for rec in frame[frame["status"].isin(TRAINED_STATUSES)].to_dict("records"):
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
        environment = json.loads(read_small(path, path.name).decode("utf-8"))
    except (BenchError, OSError, json.JSONDecodeError, UnicodeDecodeError) as exc:
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
    current = latest(records)
    if len(current) < len(records):
        notes.append(f"{len(records) - len(current)} record(s) of cells that were run again (after a failure or "
                     "timeout) are superseded by their latest record and not counted.")
    records = current
    unknown = Counter(str(r["status"]) for r in records if r.get("status") not in tuple(Status))
    if unknown:
        notes.append("Unknown statuses: " + ", ".join(f"{s} ({n})" for s, n in sorted(unknown.items())) + ".")
    return Run(folder, records_frame(records), environment, skipped, notes)

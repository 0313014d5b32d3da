"""From filed runs to chains of points: one chain per series, cell and metric, one point per run.

A series is one machine running one sweep (reports/history/intake.py says why exactly that). In a
series, each cell (``cell_id``: backend, model and training axes) and each headline metric of
reports/metrics.py (train and inference throughput, compile time, accuracy, peak memory) is a
*chain*: its points are the runs in date order, each point holding that run's repeats of the
metric. Accuracies count only where training converged, as in the run's own report. A point also
keeps what may explain a step: the framework version of the cell's backend and the measuring
code's hash; where either differs from the point before, the trend marks it (``Chain.marks``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

import numpy as np
import pandas as pd

from bench.errors import BenchError
from bench.results.record import Status
from bench.results.stats import Estimate, finite, median_interval
from bench.results.store import RESULTS, latest, read_records
from reports.history.archive import Filed, History
from reports.metrics import HEADLINE, Metric
from reports.records import CONFIG_AXES, records_frame, unconverged

LABEL_AXES = ("model", "optimizer", "activation")
"""Axes every cell label names; the other configuration axes are named only where they vary in a series."""


@dataclass
class Series:
    """One machine running one sweep: its runs in date order."""

    key: str
    number: int
    machine: str
    sweep: str
    runs: list[Filed]

    @property
    def name(self) -> str:
        return f"Series {self.number}"


@dataclass
class Point:
    """One run's repeats of one cell's metric, and what ran them."""

    entry: str
    run_id: str
    date: datetime
    values: np.ndarray
    finished: int
    """Records of the cell that ended ok in this run (values may still be empty: an unconverged accuracy)."""
    framework: str | None
    code: str | None
    noisy: int

    @property
    def estimate(self) -> Estimate:
        """Median of the repeats with its bootstrap 95% interval (bench/results/stats.py)."""
        return median_interval(self.values)


@dataclass
class Chain:
    """One series, cell and metric over the series' runs."""

    series: Series
    cell_id: str
    backend: str
    variant: str
    model: str
    label: str
    metric: Metric
    points: list[Point] = field(default_factory=list)

    def marks(self, index: int) -> list[str]:
        """What changed between point ``index - 1`` and ``index``: the framework ('torch 2.12.0 → 2.13.0') or the code."""
        if index == 0:
            return []
        before, after = self.points[index - 1], self.points[index]
        marks = []
        if before.framework and after.framework and before.framework != after.framework:
            marks.append(f"{before.framework} → {after.framework}")
        if before.code and after.code and before.code != after.code:
            marks.append(f"code {before.code[:8]} → {after.code[:8]}")
        return marks


def observations(history: History) -> tuple[list[Filed], pd.DataFrame]:
    """Every filed run and all their current records as one frame (reports/records.py columns), with the
    run's entry, date and series added; a history with no run is a BenchError."""
    filed = history.filed()
    if not filed:
        raise BenchError(f"the history {history.folder} holds no run; add runs with `bench history add RUN_DIR...`")
    frames = []
    for run in filed:
        records, _ = read_records(run.folder / RESULTS)
        frame = records_frame(latest(records))
        frames.append(frame.assign(entry=run.id, entry_run=run.entry["run_id"], date=run.date,
                                   series=run.entry["series"]))
    return filed, pd.concat(frames, ignore_index=True)


def _versions(frame: pd.DataFrame) -> str | None:
    for versions in frame["framework_versions"]:
        if isinstance(versions, dict) and versions:
            return ", ".join(f"{k} {v}" for k, v in sorted(versions.items()))
    return None


def _labels(frame: pd.DataFrame) -> dict[str, str]:
    """Per cell id, 'torch · mlp · adam · relu', with batch size, loss, ... added where they vary in the series."""
    varying = [axis for axis in CONFIG_AXES if axis not in LABEL_AXES and frame[axis].nunique(dropna=True) > 1]
    labels = {}
    for cell_id, group in frame.groupby("cell_id", sort=False):
        first = group.iloc[0]
        parts = [first["variant"], *(first[a] for a in LABEL_AXES), *(f"{a} {first[a]}" for a in varying)]
        labels[str(cell_id)] = " · ".join(str(p) for p in parts if isinstance(p, str) or pd.notna(p))
    return labels


def _values(records: pd.DataFrame, metric: Metric) -> np.ndarray:
    ok = records[records["status"] == Status.OK]
    if metric.converged_only:
        ok = ok[~unconverged(ok)]
    return finite(ok[metric.field])


def build_series(filed: list[Filed], frame: pd.DataFrame) -> tuple[list[Series], list[Chain]]:
    """The series (numbered by first run) and every chain of each, one per cell and headline metric."""
    runs_of: dict[str, list[Filed]] = {}
    for run in filed:
        runs_of.setdefault(run.entry["series"], []).append(run)
    all_series, chains = [], []
    for number, (key, runs) in enumerate(runs_of.items(), start=1):
        first = runs[0].entry
        series = Series(key, number, first["machine"]["label"], first.get("sweep", ""), runs)
        all_series.append(series)
        mine = frame[frame["series"] == key]
        labels = _labels(mine)
        for cell_id, cell in mine.groupby("cell_id", sort=False):
            head = cell.iloc[0]
            for metric in HEADLINE:
                chain = Chain(series, str(cell_id), str(head["backend"]), str(head["variant"]), str(head["model"]),
                              labels[str(cell_id)], metric)
                for run in runs:
                    records = cell[cell["entry"] == run.id]
                    if records.empty:
                        continue
                    code = records["code_hash"].dropna()
                    chain.points.append(Point(
                        run.id, run.entry["run_id"], run.date, _values(records, metric),
                        int((records["status"] == Status.OK).sum()), _versions(records),
                        str(code.iloc[0]) if len(code) else run.entry.get("code_hash"),
                        int(records["noisy"].map(lambda v: v is True).sum())))
                chains.append(chain)
    return all_series, chains

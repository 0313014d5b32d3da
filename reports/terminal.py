"""The summary ``bench run`` prints when a sweep ends: the report's headline and where the time went.

It is the report's first table and its time table, cut to fit an 80-column terminal: the same
pooling, baseline and metrics (reports/headline.py, reports/metrics.py) and the same phases
(reports/costs.py), so the terminal never says something the page does not.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
from rich import box
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from bench.results.phases import PHASES
from reports.costs import OTHER, START_UP, time_breakdown
from reports.headline import choose_baseline, headlines
from reports.metrics import HEADLINE
from reports.records import load_run

VERDICT_STYLES = {"better": "green", "worse": "red", "same": "dim"}
"""How a comparison with the baseline is coloured: better, worse, or within noise."""


def print_summary(console: Console, run_dir: Path, baseline: str | None) -> None:
    """Each model's headline as the report's first table shows it, then the seconds per backend and phase.

    Under each value, the comparison with the baseline (green better, red worse, dim within noise).
    """
    frame = load_run(run_dir).records
    if not (frame["status"] == "ok").any():
        console.print("no successful cells to summarise")
        return
    console.print(_headline_table(frame, choose_baseline(frame, baseline)))
    costs = time_breakdown(frame)
    if not costs.empty:
        console.print(_time_table(costs))


def _headline_table(frame: pd.DataFrame, base: str | None) -> Table:
    versus = f"; second line: vs {base}" if base else ""
    out = Table(title=escape(f"headline per model, as in the report{versus}"), box=None, pad_edge=False)
    out.add_column("model")
    out.add_column("backend")
    for metric in HEADLINE:  # one word a line, so the table fits an 80-column terminal
        out.add_column(metric.label.replace(" ", "\n"), justify="right",
                       min_width=max(map(len, metric.label.split())))
    for head in headlines(frame, base):
        for row in head.rows:
            cells = []
            for metric in HEADLINE:
                entry = row.entries[metric.field]
                text = metric.format(entry.value.value)
                if entry.versus.ok:
                    text += f"\n[{VERDICT_STYLES[entry.verdict(metric)]}]{metric.change_format(entry.versus.value)}[/]"
                cells.append(text)
            problems = ", ".join(f"{n} {status}" for status, n in row.problems.items())
            name = escape(row.variant) + ("\n[dim]baseline[/]" if row.is_baseline else "")
            name += f"\n[red]{problems}[/]" if problems else ""
            out.add_row(escape(head.model), name, *cells)
    return out


def _time_table(costs: pd.DataFrame) -> Table:
    """reports/costs.py's breakdown with one narrow column per part; the title spells the columns out."""
    title = ("where the time went (seconds): worker start-up, then the cells' "
             + ", ".join(phase.label for phase in PHASES) + ", rest")
    table = Table(title=title, box=box.SIMPLE_HEAD, padding=(0, 0), pad_edge=False)
    parts = {START_UP: "start"} | {phase.label: phase.column for phase in PHASES} | {OTHER: "other", "total": "total"}
    table.add_column("backend")
    for column in parts.values():
        table.add_column(column, justify="right")
    table.add_column("cache")
    for row in costs.to_dict("records"):
        table.add_row(str(row["backend"]), *(f"{row[part]:.1f}" for part in parts), row["compile cache"])
    return table

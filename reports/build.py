"""Build a run folder's report: results.csv, curves.csv, summary.csv, figures/*.png and report.html.

This is what ``bench run`` calls at the end and ``bench report RUN_DIR`` calls again; it reads
only the run folder, so a report can be rebuilt anywhere from the JSON files alone, identically
(fixed bootstrap seed, no timestamps of its own).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from reports.costs import time_breakdown
from reports.figures import all_figures
from reports.frameworks import evidence
from reports.headline import choose_baseline, headlines
from reports.html import render
from reports.records import curves_table, load_run, results_table
from reports.summary import summary_table


@dataclass
class ReportResult:
    """Where the report's files went, and how many lines of results.jsonl could not be read."""

    run_dir: Path
    results_csv: Path
    curves_csv: Path
    summary_csv: Path
    html: Path
    figures: list[Path] = field(default_factory=list)
    skipped_lines: int = 0
    n_records: int = 0
    baseline: str | None = None


def build_report(run_dir: Path, baseline: str | None = None) -> ReportResult:
    """Read ``run_dir`` and write every report file into it; BenchError on a folder with nothing to report.

    ``baseline`` names the backend (``torch``) or backend and mode (``torch (compiled)``) that the
    headline ratios divide by; by default torch, else the first backend that finished a cell.
    """
    run = load_run(Path(run_dir))
    frame = run.records
    chosen = choose_baseline(frame, baseline)
    if baseline and chosen is None:
        run.notes.append(f"The baseline {baseline} finished no cell, so the headline shows no ratios.")
    summary = summary_table(frame)
    curves = curves_table(frame)
    heads = headlines(frame, chosen)
    costs = time_breakdown(frame)
    figures = all_figures(frame, curves, heads, costs)

    folder = run.folder
    result = ReportResult(folder, folder / "results.csv", folder / "curves.csv", folder / "summary.csv",
                          folder / "report.html", skipped_lines=run.skipped_lines, n_records=len(frame),
                          baseline=chosen)
    results_table(frame).to_csv(result.results_csv, index=False)
    curves.to_csv(result.curves_csv, index=False)
    summary.to_csv(result.summary_csv, index=False)
    figure_dir = folder / "figures"
    figure_dir.mkdir(exist_ok=True)
    for figure in figures:
        path = figure_dir / f"{figure.name}.png"
        path.write_bytes(figure.png)
        result.figures.append(path)
    files = [p.name for p in (result.results_csv, result.curves_csv, result.summary_csv)] + ["figures/"]
    page = render(run, summary, heads, figures, evidence(frame), chosen, files, costs)
    result.html.write_text(page, encoding="utf-8")
    return result

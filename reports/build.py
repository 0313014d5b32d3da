"""Build a run folder's report: results.csv, curves.csv, summary.csv, augmentation.csv, compile.csv,
figures/*.png and report.html.

This is what ``bench run`` calls at the end and ``bench report RUN_DIR`` calls again; it reads
only the run folder, so a report can be rebuilt anywhere from the JSON files alone, identically
(fixed bootstrap seed, no timestamps of its own). Each file is written whole to a temporary name
and renamed, so an interrupted or failed build leaves the previous report in place.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from bench.results.store import write_atomic
from reports.augmentation import augmentation_rows, augmentation_table
from reports.costs import compile_table, time_breakdown
from reports.escape import write_csv
from reports.fastest import fastest_headlines
from reports.figures import all_figures
from reports.frameworks import evidence
from reports.headline import choose_baseline, headlines
from reports.html import render
from reports.policies import headline_policy, policy_comparisons, policy_curves
from reports.records import curves_table, load_run, plain_records, results_table
from reports.summary import summary_table
from reports.wrappers import wrapper_views


@dataclass
class ReportResult:
    """Where the report's files went, and how many lines of results.jsonl could not be read."""

    run_dir: Path
    results_csv: Path
    curves_csv: Path
    summary_csv: Path
    augmentation_csv: Path
    html: Path
    compile_csv: Path
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
    policy = headline_policy(frame)  # one semantics policy in the headline: native and harmonised never pool
    compared = frame[frame["semantics_policy"] == policy]
    chosen = choose_baseline(compared, baseline)
    if baseline and chosen is None:
        run.notes.append(f"The baseline {baseline} finished no cell, so the headline shows no ratios.")
    summary = summary_table(frame)
    curves = curves_table(frame)
    plain = plain_records(compared)  # the headline and its figures compare backends on unaugmented training
    heads = headlines(plain, chosen)
    augmentation = augmentation_rows(frame)
    shown = curves[(curves["semantics_policy"] == policy) & curves["augment"].isin(set(plain["augment"]))]
    costs = time_breakdown(frame)
    compile_costs = compile_table(frame)
    figures = all_figures(plain, shown, heads, augmentation, costs)
    shifts = policy_comparisons(frame)
    if shifts:
        run.notes.append(f"This run trained both semantics policies: the headline and the figures show {policy}; "
                         "'Harmonised vs native' compares them.")
    policy_figures = {s.model: f for s in shifts if (f := policy_curves(curves, s.model)) is not None}

    folder = run.folder
    result = ReportResult(folder, folder / "results.csv", folder / "curves.csv", folder / "summary.csv",
                          folder / "augmentation.csv", folder / "report.html", folder / "compile.csv",
                          skipped_lines=run.skipped_lines, n_records=len(frame), baseline=chosen)
    write_csv(results_table(frame), result.results_csv)
    write_csv(curves, result.curves_csv)
    write_csv(summary, result.summary_csv)
    write_csv(augmentation_table(augmentation), result.augmentation_csv)
    write_csv(compile_costs, result.compile_csv)
    figure_dir = folder / "figures"
    figure_dir.mkdir(exist_ok=True)
    for figure in figures + list(policy_figures.values()):
        path = figure_dir / f"{figure.name}.png"
        write_atomic(path, figure.png)
        result.figures.append(path)
    files = [p.name for p in (result.results_csv, result.curves_csv, result.summary_csv, result.augmentation_csv,
                              result.compile_csv)]
    page = render(run, summary, heads, figures, evidence(frame), chosen, files + ["figures/"], augmentation, costs,
                  fastest_headlines(heads), shifts, policy_figures, compile_costs, wrapper_views(plain))
    write_atomic(result.html, page)
    return result

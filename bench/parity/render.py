"""Printing a parity report: the ladder (rung x backend), named deviations, failures, the statistical rung.

Rendering reads a finished ``ParityReport`` only, so the same tables come out whichever process
measured; tables over free text so a reader finds a backend's column and a rung's row at once.
"""

from __future__ import annotations

import numpy as np
from rich.console import Console
from rich.table import Table

from bench.parity import equivalence
from bench.parity.compare import Check
from bench.parity.ladder import DEVIATIONS, GRADIENT_KINK_WHY, MULTI_STEP_WHY, PARITY_EPSILON, RULE_DEVIATIONS, RUNG, RUNGS
from bench.parity.runner import ParityReport


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.1e}"


def _ladder_table(report: ParityReport, names: list[str]) -> Table:
    table = Table(title="Parity ladder vs the NumPy reference: largest rel difference per rung (where), tolerance dense / cnn / resnet")
    table.add_column("rung")
    table.add_column("tolerance", justify="right")
    for name in names:
        table.add_column(name)
    rungs = [r.name for r in RUNGS] + (["error"] if any(c.rung == "error" for c in report.checks) else [])
    for rung in rungs:
        cells = []
        for name in names:
            group = [c for c in report.checks if c.backend == name and c.rung == rung]
            if not group:
                cells.append("[dim]skipped[/dim]" if name in report.skipped else "[dim]n/a[/dim]")
                continue
            worst = max(group, key=lambda c: c.rel_diff)
            failed = sum(not c.passed for c in group)
            mark = f"[red]FAIL {failed}/{len(group)}[/red]" if failed else f"[green]pass {len(group)}[/green]"
            cells.append(f"{_fmt(worst.rel_diff)} {mark}\n[dim]{worst.job.label} {worst.worst}[/dim]")
        tolerance = " / ".join(_fmt(t) for t in (RUNG[rung].dense, RUNG[rung].conv, RUNG[rung].normalised_conv)) if rung in RUNG else "-"
        table.add_row(rung, tolerance, *cells)
    return table


def _deviation_table(report: ParityReport) -> Table | None:
    groups: dict[tuple[str, str], list[Check]] = {}
    for c in report.checks:
        for d in c.deviations:
            groups.setdefault((c.backend, d), []).append(c)
    if not groups:
        return None
    table = Table(title="Named deviations: each backend checked against the reference with its documented rule")
    for column in ("backend", "deviation", "rungs", "rel vs its rule", "rel if canonical"):
        table.add_column(column, overflow="fold")
    for (name, d), group in groups.items():
        canonical = [c.canonical_rel for c in group if c.canonical_rel is not None and d in RULE_DEVIATIONS.values()]
        rungs = ", ".join(dict.fromkeys(c.rung for c in group))
        table.add_row(name, d, rungs, _fmt(max(c.rel_diff for c in group)), _fmt(max(canonical)) if canonical else "-")
    return table


def _failure_table(report: ParityReport, limit: int = 40) -> Table:
    table = Table(title=f"Failures ({len(report.failures)}, first {limit} shown)" if len(report.failures) > limit else "Failures")
    for column in ("backend", "model/optimizer/activation/loss", "rung", "rel", "abs", "tolerance", "where / note"):
        table.add_column(column, overflow="fold")
    for c in report.failures[:limit]:
        table.add_row(c.backend, c.job.label, c.rung, _fmt(c.rel_diff), _fmt(c.abs_diff), _fmt(c.tolerance), " ".join(filter(None, (c.worst, c.note))))
    return table


def _equivalence_tables(report: ParityReport) -> tuple[Table, Table]:
    accuracies: dict[str, list[float]] = {}
    for r in report.statistical:
        accuracies.setdefault(r.a, r.accuracies_a)
        accuracies.setdefault(r.b, r.accuracies_b)
    seeds = Table(title="Statistical rung: mlp/adam/relu on digits, final test accuracy per seed (same weights and batches per seed)")
    seeds.add_column("backend")
    for i in range(len(next(iter(accuracies.values())))):
        seeds.add_column(f"seed {i}", justify="right")
    seeds.add_column("mean", justify="right")
    for name, values in accuracies.items():
        seeds.add_row(name, *(f"{v:.4f}" for v in values), f"{np.mean(values):.4f}")
    pairs = Table(title=f"Paired TOST: equivalent if the mean gap is within +-{equivalence.MARGIN:.0%} at alpha {equivalence.ALPHA}")
    for column in ("pair", "mean gap", "90% CI", "TOST p", "equivalent"):
        pairs.add_column(column)
    for r in report.statistical:
        pairs.add_row(
            f"{r.a} vs {r.b}", f"{r.mean_difference:+.4f}", f"[{r.ci90[0]:+.4f}, {r.ci90[1]:+.4f}]",
            f"{r.p_value:.2g}", "[green]yes[/green]" if r.passed else "[red]NO[/red]",
        )
    return seeds, pairs


def render(report: ParityReport, console: Console) -> None:
    """Print the ladder (rung x backend), the named deviations, failures and the statistical rung."""
    names = list(dict.fromkeys([c.backend for c in report.checks] + list(report.skipped)))
    console.print(_ladder_table(report, names))
    deviations = _deviation_table(report)
    if deviations is not None:
        console.print(deviations)
        for d in dict.fromkeys(d for c in report.checks for d in c.deviations):
            console.print(f"  [bold]{d}[/bold]: {DEVIATIONS[d].explanation}")
    if report.failures:
        console.print(_failure_table(report))
    if report.statistical:
        for table in _equivalence_tables(report):
            console.print(table)
    for name, reason in report.skipped.items():
        console.print(f"[yellow]skipped[/yellow] {name}: {reason}")
    for name, error in report.errors.items():
        console.print(f"[red]failed[/red] {name}: {error}")
    for name, facts in report.workers.items():
        versions = ", ".join(f"{k} {v}" for k, v in facts["versions"].items())
        console.print(f"{name} ran in its own worker process (pid {facts['pid']}): {versions}")
    console.print(f"rel = max|a-b| / (|b| + 1% of the rung's largest |b|); RMSprop/Adam epsilon {PARITY_EPSILON:g} "
                  "(why: bench/parity/ladder.py)")
    for r in RUNGS:
        console.print(f"  {r.name}: {r.why}")
    console.print(f"  {MULTI_STEP_WHY}")
    console.print(f"  {GRADIENT_KINK_WHY}")
    verdict = "[green]parity: every rung passes[/green]" if report.ok else (
        f"[red]parity: {len(report.failures)} failed checks, "
        f"{sum(not r.passed for r in report.statistical)} non-equivalent pairs, "
        f"{len(report.errors)} backends that failed to start or to answer the statistical rung[/red]"
    )
    console.print(verdict)

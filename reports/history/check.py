"""``bench history check``: did the newest run regress against its series? An answer CI can act on.

The run judged is the newest in the history (by its start date), or the one ``--run`` names. Its
cells are judged on the gated metrics of reports/metrics.py (train and inference throughput, the
ones ``bench compare --fail-on`` gates on) by reports/history/detect.py's test, against the
lookback the whole history gives it (segments after earlier steps included), and corrected for
that run's tests only: CI asks one question per run, and a correction over the whole history
would make every check blinder than the one before. Exit status (``EXIT``):

- 1: a gated metric got significantly worse, by at least ``--fail-on`` (default: the minimum
  effect), or a cell that finished before stopped finishing;
- 3: nothing regressed, but some gated comparison could not be judged (too few repeats or runs);
- 0: every gated comparison was judged and none regressed;
- 2: bad input (bench/cli.py), as everywhere.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from bench.errors import BenchError
from reports import fmt
from reports.history.archive import Filed, History
from reports.history.detect import (
    CANNOT,
    LOOKBACK,
    MIN_EARLIER,
    MIN_REPEATS,
    TEST_NAME,
    Judgement,
    compare,
    decide,
    judge,
)
from reports.history.series import build_series, observations

EXIT = {"ok": 0, "regression": 1, "cannot judge": 3}


def choose_run(filed: list[Filed], name: str | None) -> Filed:
    """The newest run, or the one whose entry id, id prefix or run id is ``name`` (one match, else a BenchError)."""
    if name is None:
        return filed[-1]
    found = [f for f in filed if f.id == name] or [f for f in filed if f.id.startswith(name) or f.entry["run_id"] == name]
    if len(found) == 1:
        return found[0]
    choices = ", ".join(f.id for f in (found or filed)[-8:])
    problem = "matches several runs" if found else "names no run in the history"
    raise BenchError(f"--run {name!r} {problem}; valid: an entry id or run id, e.g. {choices}")


@dataclass
class CheckResult:
    run: Filed
    judgements: list[Judgement]
    fail_on: float | None

    def failing(self, judgement: Judgement) -> bool:
        return judgement.regression and (self.fail_on is None or not math.isfinite(judgement.loss)
                                         or judgement.loss >= self.fail_on)

    @property
    def regressions(self) -> list[Judgement]:
        return [j for j in self.judgements if self.failing(j)]

    @property
    def unjudged(self) -> list[Judgement]:
        return [j for j in self.judgements if j.verdict == CANNOT]

    @property
    def outcome(self) -> str:
        """'regression', else 'cannot judge' (something unjudged, or no gated metric measured at all), else 'ok'."""
        if self.regressions:
            return "regression"
        return "cannot judge" if self.unjudged or not self.judgements else "ok"

    @property
    def exit_code(self) -> int:
        return EXIT[self.outcome]


def check(history: History, run: str | None, fail_on: float | None, min_effect: float) -> CheckResult:
    """Judge one run's gated metrics against its series (see the module docstring)."""
    filed, frame = observations(history)
    chosen = choose_run(filed, run)
    _, chains = build_series(filed, frame)
    detection = judge(chains, min_effect)
    judgements = []
    for chain in chains:
        index = next((i for i, p in enumerate(chain.points) if p.entry == chosen.id), None)
        if index is not None and chain.metric.gates:
            judgements.append(compare(chain, index, detection.of(chain)))
    decide(judgements, min_effect)
    return CheckResult(chosen, judgements, fail_on)


def _detail(judgement: Judgement) -> str:
    """'p 5.7e-05, q 0.00023 (3 runs, df 8)', then the reason where there is one."""
    if judgement.test is None:
        return judgement.reason
    test = judgement.test
    numbers = f"p {judgement.p_value:.2g}, q {judgement.q_value:.2g} ({test.earlier} runs, df {test.df:g})"
    return f"{numbers}; {judgement.reason}" if judgement.reason else numbers


def summary_line(result: CheckResult) -> str:
    run = f"run {result.run.entry['run_id']} ({result.run.id})"
    threshold = f"--fail-on {100 * result.fail_on:g}%" if result.fail_on is not None else "the minimum effect"
    if result.regressions:
        named = "; ".join(f"{j.chain.label}: {j.chain.metric.label} {j.change_text or j.verdict} "
                          f"({j.verdict}{f', p = {j.p_value:.2g}, q = {j.q_value:.2g}' if j.test else ''})"
                          for j in result.regressions)
        return f"FAIL: {run} regressed past {threshold}: {named}"
    if not result.judgements:
        return f"CANNOT JUDGE: {run} measured no gated metric (no cell of it has a train or inference throughput)"
    if result.unjudged:
        return (f"CANNOT JUDGE: {run}: {len(result.unjudged)} of {len(result.judgements)} gated comparison(s) could "
                f"not be judged (first: {result.unjudged[0].chain.label}, {result.unjudged[0].chain.metric.label}: "
                f"{result.unjudged[0].reason}); none regressed")
    return f"PASS: {run}: no gated metric regressed past {threshold} ({len(result.judgements)} comparison(s) judged)"


def print_check(result: CheckResult, console: Console | None = None) -> None:
    console = console or Console()
    table = Table(title=escape(f"{result.run.id} against its series"))
    for name, justify in (("cell", "left"), ("metric", "left"), ("value", "right"), ("vs lookback", "right"),
                          ("verdict", "left"), ("why", "left")):
        table.add_column(name, justify=justify)
    for j in result.judgements:
        style = "bold red" if result.failing(j) else "yellow" if j.verdict == CANNOT else ""
        estimate = j.point.estimate
        value = f"{j.chain.metric.format(estimate.value)} {fmt.interval(estimate, j.chain.metric.format)}".strip()
        table.add_row(escape(j.chain.label), j.chain.metric.label, value if estimate.ok else fmt.DASH, j.change_text,
                      f"[{style}]{j.verdict}[/]" if style else j.verdict, escape(_detail(j)))
    console.print(table)
    console.print(f"Test: {TEST_NAME} against up to {LOOKBACK} earlier runs of the series since its last step (needs "
                  f"{MIN_EARLIER}, and {MIN_REPEATS} repeats); q: Benjamini-Hochberg over this run's "
                  f"{sum(j.test is not None for j in result.judgements)} test(s).", markup=False, highlight=False)
    console.print(summary_line(result), style="bold red" if result.regressions else None, markup=False,
                  highlight=False, soft_wrap=True)

"""Compare two runs cell by cell: what got faster or slower, with the spread so noise is not a change.

Cells are matched by ``cell_id``. For each metric the change is the ratio of medians (B / A; a
difference for accuracy) with a bootstrap 95% interval from resampling both runs' repeats. With
three repeats that interval is about [min, max] and calls a same-distribution pair "changed" in
several percent of comparisons; a run pair has hundreds. So a change must also pass Welch's
t-test on log values after a false-discovery adjustment over all comparisons, and exceed a noise
floor (run-to-run drift on a shared machine is real even when repeats agree).

Each record names the code that measured it (``code_hash``, bench/run/code_identity.py); when the
two runs name different code the comparison says "different code" with both identities, and still
compares: a change may then come from the code as well as from the machine.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from bench.errors import BenchError
from bench.results.record import Status
from bench.results.stats import Estimate, benjamini_hochberg, difference_interval, ratio_interval, welch_p
from reports import fmt
from reports.escape import write_csv
from reports.metrics import BY_FIELD, COMPARED, Metric
from reports.records import CONFIG_AXES, VARIANT_AXES, Run, config_keys, counted, load_run

DEFAULT_NOISE_FLOOR = 0.05
SIGNIFICANCE = 0.05
"""Largest false-discovery-adjusted p-value (q) of a change."""
ACCURACY_FLOOR = 0.01
"""An accuracy change under one percentage point is not reported as a change."""


STOPPED = "stopped finishing"
TOO_FEW = "too few repeats"
VERDICT_ORDER = ("slower", "worse", STOPPED, "faster", "better", "now finishes", "only in A", "only in B",
                 TOO_FEW, "finished in neither", "unchanged")
GATE_REPEATS = 2
"""Repeats a side a gated comparison needs before ``--fail-on`` may pass it: what the statistics need
(Welch's test and a resampled interval need two values a side; with one, even a 93% loss cannot be
told from noise). A gate that cannot judge fails (exit 1), never passes. Two a side judge only
large changes: use three or more (the README says so)."""
RULE = ("A change needs a bootstrap 95% interval that excludes no change, a Welch test on log values with "
        "false-discovery-adjusted q < 0.05, and a size of at least the noise floor")
COLUMNS = ["cell_id", "backend", "mode", "model", "optimizer", "activation", "metric", "n_a", "n_b",
           "median_a", "median_b", "change", "change_low", "change_high", "p_value", "q_value", "verdict",
           "status_a", "status_b", "regression"]


@dataclass
class CompareResult:
    """Every compared cell and metric (``rows``), and whether the comparison fails the --fail-on gate."""

    run_a: str
    run_b: str
    rows: pd.DataFrame
    fail_on: float | None
    noise_floor: float
    skipped_lines: tuple[int, int] = (0, 0)
    code_note: str | None = None
    """'different code: ...' when the runs' records name different measuring code."""
    files: list[Path] = field(default_factory=list)

    @property
    def regressions(self) -> pd.DataFrame:
        return self.rows[self.rows["regression"]]

    @property
    def failed(self) -> bool:
        return bool(self.rows["regression"].any())

    @property
    def unjudged(self) -> pd.DataFrame:
        """Gated comparisons (train and inference throughput) with fewer than ``GATE_REPEATS`` repeats
        on either side: the gate cannot judge them."""
        gated = self.rows["metric"].map(lambda field: field in BY_FIELD and BY_FIELD[field].gates)
        return self.rows[gated & (self.rows[["n_a", "n_b"]].min(axis=1) < GATE_REPEATS)]

    @property
    def cannot_judge(self) -> bool:
        """A ``--fail-on`` gate with a gated comparison it cannot judge: it fails, it never passes."""
        return self.fail_on is not None and not self.unjudged.empty

    @property
    def exit_code(self) -> int:
        return 1 if self.failed or self.cannot_judge else 0

    def counts(self) -> dict[str, int]:
        return {str(k): int(v) for k, v in self.rows["verdict"].value_counts().items()}


def _keys(frame: pd.DataFrame) -> pd.Series:
    """cell_id, or for records older than cell_id the backend, mode and configuration joined."""
    built = config_keys(frame, (*VARIANT_AXES, *CONFIG_AXES))
    return frame["cell_id"].where(frame["cell_id"].notna(), built)


def _code(run: Run) -> tuple[set[str], str]:
    """The code hashes a run's records name, and them as text with their commits (records from before
    code identities name none)."""
    known = run.records[run.records["code_hash"].notna()]
    pairs = dict.fromkeys(zip(known["code_hash"], known["code_commit"]))
    text = " + ".join(f"code hash {h}" + (f" (commit {c})" if isinstance(c, str) else "") for h, c in pairs)
    return set(known["code_hash"]), text


def _code_note(first: Run, second: Run) -> str | None:
    """'different code: A ... ; B ...' when both runs name their code and the hashes differ."""
    (hashes_a, text_a), (hashes_b, text_b) = _code(first), _code(second)
    if not hashes_a or not hashes_b or hashes_a == hashes_b:
        return None
    return f"different code: A ({first.name}) ran {text_a}; B ({second.name}) ran {text_b}"


def _status(group: pd.DataFrame) -> str:
    return ", ".join(f"{s} {n}" for s, n in group["status"].value_counts().sort_index().items()) or "absent"


def _verdict(metric: Metric, est: Estimate, q_value: float, noise_floor: float) -> str:
    """'faster'/'slower' (or 'better'/'worse') only for a change that is real three ways over."""
    neutral = 1.0 if metric.relative else 0.0
    floor = noise_floor if metric.relative else ACCURACY_FLOOR
    if est.n < GATE_REPEATS:
        return TOO_FEW
    real = est.excludes(neutral) and q_value < SIGNIFICANCE and abs(est.value - neutral) >= floor
    if not real:
        return "unchanged"
    improved = (est.value > neutral) == metric.higher_is_better
    return metric.words[0] if improved else metric.words[1]


def _cell_rows(key: str, a: pd.DataFrame, b: pd.DataFrame) -> list[dict]:
    """The cell's rows: one per metric measured on both sides, or one saying why it cannot be compared."""
    either = a if len(a) else b
    base = {"cell_id": key} | {k: either[k].iloc[0] for k in ("backend", "mode", "model", "optimizer", "activation")}
    base |= {"status_a": _status(a), "status_b": _status(b)}
    a_ok, b_ok = a[a["status"] == Status.OK], b[b["status"] == Status.OK]
    if a.empty or b.empty:
        return [base | {"verdict": "only in B" if a.empty else "only in A"}]
    if a_ok.empty or b_ok.empty:
        verdict = "finished in neither" if a_ok.empty and b_ok.empty else ("now finishes" if a_ok.empty else STOPPED)
        return [base | {"verdict": verdict}]
    rows = []
    for metric in COMPARED:
        compare = ratio_interval if metric.relative else difference_interval
        values_a, values_b = counted(a_ok, metric.field), counted(b_ok, metric.field)  # no unconverged accuracy
        est = compare(values_b, values_a)
        if est.ok:
            rows.append(base | {
                "metric": metric.field, "n_a": int(values_a.notna().sum()), "n_b": int(values_b.notna().sum()),
                "median_a": float(values_a.median()), "median_b": float(values_b.median()),
                "change": est.value, "change_low": est.low, "change_high": est.high, "estimate": est,
                "p_value": welch_p(values_b, values_a, log=metric.relative),
            })
    return rows


def _judge(rows: list[dict], fail_on: float | None, noise_floor: float) -> pd.DataFrame:
    """Adjust p-values over all compared metrics, then give each row its verdict and gate decision."""
    q_values = benjamini_hochberg(r.get("p_value", np.nan) for r in rows)
    for row, q_value in zip(rows, q_values):
        row["q_value"] = q_value
        metric = BY_FIELD.get(row.get("metric"))
        if metric is None:  # a status row
            row["regression"] = row["verdict"] == STOPPED and fail_on is not None
            continue
        est = row.pop("estimate")
        row["verdict"] = _verdict(metric, est, q_value, noise_floor)
        loss = 1 - est.value if metric.higher_is_better else est.value - 1  # B / A: the fraction lost
        row["regression"] = (metric.gates and fail_on is not None and row["verdict"] == metric.words[1]
                             and loss >= fail_on)
    table = pd.DataFrame(rows, columns=COLUMNS)
    table["regression"] = table["regression"].astype(bool)
    return table


def compare_runs(run_a: Path, run_b: Path, fail_on: float | None = None, out: Path | None = None,
                 noise_floor: float = DEFAULT_NOISE_FLOOR) -> CompareResult:
    """Compare run B against run A; write compare.csv and compare.md into ``out`` when given.

    A metric changed when (1) the bootstrap 95% interval of its ratio of medians excludes 1,
    (2) Welch's t-test on the log values, adjusted for the number of comparisons
    (Benjamini-Hochberg), gives q < 0.05, and (3) the change is at least ``noise_floor``.
    With ``fail_on`` (a fraction, 0.05 = 5%), the result fails when the train or inference
    throughput of some cell got slower that way by at least that fraction, or a cell that
    finished in A no longer finishes in B. Runs that share no cell are a BenchError: with nothing
    compared, no gate can pass.
    """
    first, second = load_run(Path(run_a)), load_run(Path(run_b))
    frame_a, frame_b = first.records, second.records
    keys_a, keys_b = _keys(frame_a), _keys(frame_b)
    if not set(keys_a) & set(keys_b):  # else every cell is "only in A/B" and a gate would say PASS
        raise BenchError(f"{run_a} and {run_b} share no cell (cells match by cell_id: backend, model and "
                         "hyperparameters): nothing to compare; valid: two runs of overlapping sweeps")
    rows = []
    for key in sorted(set(keys_a) | set(keys_b)):
        rows += _cell_rows(key, frame_a[keys_a == key], frame_b[keys_b == key])
    result = CompareResult(first.name, second.name, _judge(rows, fail_on, noise_floor), fail_on, noise_floor,
                           (first.skipped_lines, second.skipped_lines), _code_note(first, second))
    if out is not None:
        result.files = write_comparison(result, Path(out), first, second)
    return result


def _change_text(row: dict) -> str:
    if pd.isna(row.get("change")):
        return ""
    formatter = BY_FIELD[row["metric"]].change_format
    est = Estimate(row["change"], row["change_low"], row["change_high"], 2)
    return f"{formatter(row['change'])} {fmt.interval(est, formatter)}"


def _noteworthy(result: CompareResult) -> pd.DataFrame:
    quiet = result.rows["verdict"].isin(["unchanged", TOO_FEW, "finished in neither"])
    shown = result.rows[~quiet]
    return shown.sort_values(["regression", "verdict", "cell_id"], ascending=[False, True, True], kind="stable")


def _cell_label(row: dict) -> str:
    parts = [row["backend"], row["mode"], row["model"], row["optimizer"], row["activation"]]
    return " · ".join(str(p) for p in parts if isinstance(p, str))


def _value_format(row: dict) -> fmt.Formatter:
    metric = BY_FIELD.get(row["metric"]) if isinstance(row["metric"], str) else None
    return metric.format if metric else fmt.sig


def _metric_label(row: dict) -> str:
    metric = BY_FIELD.get(row["metric"])
    return metric.label if metric else "status"


def _summary_line(result: CompareResult) -> str:
    counts = result.counts()
    rank = {v: i for i, v in enumerate(VERDICT_ORDER)}
    parts = [f"{n} {verdict}" for verdict, n in sorted(counts.items(), key=lambda kv: rank.get(kv[0], 99))]
    return f"{result.run_b} vs {result.run_a}: " + (", ".join(parts) if parts else "nothing to compare")


def _gate_line(result: CompareResult) -> str:
    unjudged = result.counts().get(TOO_FEW, 0)
    caveat = f" {unjudged} comparison(s) had fewer than 2 repeats a side and could not be judged." if unjudged else ""
    if result.fail_on is None:
        return "No --fail-on threshold: the comparison does not fail." + caveat
    n = len(result.regressions)
    if n:
        return (f"FAIL: {n} regression(s) past --fail-on {100 * result.fail_on:g}% "
                "(significant throughput loss, or a cell that stopped finishing)." + caveat)
    if result.cannot_judge:
        fewest = int(result.unjudged[["n_a", "n_b"]].min(axis=1).min())
        return (f"FAIL: cannot judge: {fewest} repeat(s) on a side of {len(result.unjudged)} throughput comparison(s); "
                f"the --fail-on gate needs {GATE_REPEATS} a side to see a loss, so it does not pass "
                f"(run both with --repeats {GATE_REPEATS} or more).")
    return f"PASS: no significant throughput loss of {100 * result.fail_on:g}% or more." + caveat


def print_comparison(result: CompareResult, console: Console | None = None) -> None:
    """The changed cells as a table, then the counts and the gate's decision."""
    console = console or Console()
    shown = _noteworthy(result)
    if len(shown):
        table = Table(title=escape(f"Changes: {result.run_b} (B) vs {result.run_a} (A)"), show_lines=False)
        for name, justify in (("cell", "left"), ("metric", "left"), ("A", "right"), ("B", "right"),
                              ("B / A [95%]", "right"), ("verdict", "left")):
            table.add_column(name, justify=justify)
        for row in shown.to_dict("records"):
            formatter = _value_format(row)
            good = row["verdict"] in ("faster", "better", "now finishes")
            style = "bold red" if row["regression"] else ("green" if good else "yellow")
            table.add_row(escape(_cell_label(row)), _metric_label(row),
                          formatter(row["median_a"]) if isinstance(row["metric"], str) else row["status_a"],
                          formatter(row["median_b"]) if isinstance(row["metric"], str) else row["status_b"],
                          _change_text(row), f"[{style}]{row['verdict']}[/]")
        console.print(table)
    else:
        console.print("No cell changed beyond the noise.")
    console.print(_summary_line(result), markup=False)
    if result.code_note:
        console.print(result.code_note, markup=False)
    console.print(f"{RULE} ({100 * result.noise_floor:g}%; 1 pp for accuracy).", markup=False)
    for run, skipped in zip((result.run_a, result.run_b), result.skipped_lines):
        if skipped:
            console.print(f"{run}: skipped {skipped} unreadable line(s) of results.jsonl", markup=False)
    console.print(_gate_line(result), style="bold red" if result.failed else None, markup=False)


def _markdown(result: CompareResult, first: Run, second: Run) -> str:
    lines = [f"# Comparison: {second.name} (B) vs {first.name} (A)", "",
             f"- A: `{first.folder}`", f"- B: `{second.folder}`", f"- {_summary_line(result)}",
             *([f"- {result.code_note}"] if result.code_note else []),
             f"- {RULE} ({100 * result.noise_floor:g}%; 1 pp for accuracy).", f"- {_gate_line(result)}", ""]
    shown = _noteworthy(result)
    if len(shown):
        lines += ["| cell | metric | A | B | B / A [95%] | verdict |", "|---|---|---|---|---|---|"]
        for row in shown.to_dict("records"):
            metric = row["metric"] if isinstance(row["metric"], str) else None
            formatter = _value_format(row)
            a = formatter(row["median_a"]) if metric else row["status_a"]
            b = formatter(row["median_b"]) if metric else row["status_b"]
            verdict = f"**{row['verdict']}**" if row["regression"] else row["verdict"]
            cells = [_cell_label(row), _metric_label(row), a, b, _change_text(row), verdict]
            lines.append("| " + " | ".join(str(c).replace("|", "\\|") for c in cells) + " |")
    else:
        lines.append("No cell changed beyond the noise.")
    return "\n".join(lines) + "\n"


def write_comparison(result: CompareResult, out: Path, first: Run, second: Run) -> list[Path]:
    """compare.csv (every cell and metric) and compare.md (the changes, readable) in ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    csv, md = out / "compare.csv", out / "compare.md"
    write_csv(result.rows, csv)
    md.write_text(_markdown(result, first, second), encoding="utf-8")
    return [csv, md]

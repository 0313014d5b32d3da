"""``bench history report``: the history as one self-contained page, and its table as CSV.

The page is the run report's sibling (same stylesheet, reports/templates/style.css; figures as
data URIs; Jinja2 with autoescape, so every text from a record or a folder name is text): the
steps found, the newest run of each series judged on every headline metric ("cannot judge" with
its reason where it cannot be), framework versions side by side, a trend per series and model,
then the series and runs. ``history.csv`` holds every judged point (one row per series, cell,
metric and run) and ``runs.csv`` every filed run; pandas reads both.
"""

from __future__ import annotations

import base64
import math
from dataclasses import dataclass, field
from pathlib import Path

import jinja2
import pandas as pd

from bench.errors import BenchError
from bench.results.store import write_atomic
from reports import fmt
from reports.compare import ACCURACY_FLOOR, SIGNIFICANCE, STOPPED
from reports.escape import write_csv
from reports.figures import FigureOut
from reports.history import detect
from reports.history.archive import Filed, History
from reports.history.detect import CANNOT, Detection, Judgement, judge
from reports.history.figures import trends
from reports.history.series import Chain, Series, build_series, observations
from reports.history.upgrades import version_rows
from reports.metrics import HEADLINE

TEMPLATES = Path(__file__).resolve().parents[1] / "templates"


@dataclass
class HistoryReport:
    html: Path
    tables: list[Path] = field(default_factory=list)
    runs: int = 0
    series: int = 0
    steps: int = 0


def _verdict_class(judgement: Judgement) -> str:
    if judgement.step or judgement.verdict == STOPPED:
        return "worse" if judgement.regression else "better"
    return "unknown" if judgement.verdict == CANNOT else ""


def _value(judgement: Judgement) -> dict:
    estimate, metric = judgement.point.estimate, judgement.chain.metric
    return {"text": metric.format(estimate.value) if estimate.ok else fmt.DASH, "ci": fmt.interval(estimate, metric.format)}


def _row(judgement: Judgement) -> dict:
    metric, point = judgement.chain.metric, judgement.point
    stopped = judgement.verdict == STOPPED
    return {
        "series": judgement.chain.series.name, "date": f"{point.date:%Y-%m-%d %H:%M}", "run": point.run_id,
        "entry": point.entry, "cell": judgement.chain.label, "metric": "status" if stopped else metric.label,
        "before": metric.format(judgement.level) if math.isfinite(judgement.level) else "",
        "value": _value(judgement), "change": judgement.change_text, "verdict": judgement.verdict,
        "cls": _verdict_class(judgement), "test": judgement.test_text, "reason": judgement.reason,
        "p": f"{judgement.p_value:.2g}" if judgement.test else "", "q": f"{judgement.q_value:.2g}" if judgement.test else "",
        "marks": "; ".join(judgement.marks), "noisy": point.noisy,
    }


def _steps(detection: Detection) -> list[dict]:
    """Every step found, newest first; a cell that stopped finishing once, not once per metric."""
    rows, seen = [], set()
    for judgement in detection.judgements:
        if not (judgement.step or judgement.verdict == STOPPED):
            continue
        key = (judgement.chain.series.key, judgement.chain.cell_id, judgement.point.entry, judgement.verdict == STOPPED
               or judgement.chain.metric.field)
        if key not in seen:
            seen.add(key)
            rows.append(_row(judgement))
    return sorted(rows, key=lambda r: (r["date"], r["series"], r["cell"]), reverse=True)


def _cell(judgement: Judgement | None) -> dict:
    """One metric of one cell of a newest run: value, change, verdict and the evidence (or why there is none)."""
    if judgement is None:
        return {"value": {"text": "", "ci": ""}, "change": "", "verdict": "", "cls": "", "evidence": ""}
    if judgement.test is None:
        evidence = judgement.reason
    else:
        test = judgement.test
        evidence = f"p = {judgement.p_value:.2g}, q = {judgement.q_value:.2g}; {test.earlier} runs, df {test.df:g}"
        evidence += f"; {judgement.reason}" if judgement.reason else ""
    return {"value": _value(judgement), "change": judgement.change_text, "verdict": judgement.verdict,
            "cls": _verdict_class(judgement), "evidence": evidence}


def _newest(series: list[Series], detection: Detection) -> list[dict]:
    """Per series, its newest run: one row per cell, one column per headline metric."""
    rows = []
    for one in series:
        newest = one.runs[-1]
        cells: dict[str, dict[str, Judgement]] = {}
        for j in detection.judgements:
            if j.chain.series is one and j.point.entry == newest.id:
                cells.setdefault(j.chain.label, {})[j.chain.metric.field] = j
        for label, by_metric in sorted(cells.items()):
            first = next(iter(by_metric.values()))
            rows.append({"series": one.name, "run": newest.entry["run_id"], "date": f"{newest.date:%Y-%m-%d %H:%M}",
                         "cell": label, "marks": "; ".join(first.marks),
                         "noisy": first.point.noisy, "metrics": [_cell(by_metric.get(m.field)) for m in HEADLINE]})
    return rows


def _series_rows(series: list[Series]) -> list[dict]:
    rows = []
    for one in series:
        frameworks = {}
        for run in one.runs:
            frameworks |= dict.fromkeys((run.entry.get("frameworks") or {}).values())
        rows.append({"name": one.name, "machine": one.machine, "sweep": one.sweep[:8], "key": one.key,
                     "runs": len(one.runs), "first": f"{one.runs[0].date:%Y-%m-%d %H:%M}",
                     "last": f"{one.runs[-1].date:%Y-%m-%d %H:%M}",
                     "frameworks": "; ".join(frameworks)})
    return rows


def runs_table(filed: list[Filed], series: list[Series], frame: pd.DataFrame) -> pd.DataFrame:
    """runs.csv: one row per filed run."""
    name_of = {s.key: s.name for s in series}
    noisy = frame.groupby("entry")["noisy"].agg(lambda v: int(sum(x is True for x in v)))
    ok = frame[frame["status"] == "ok"].groupby("entry").size()
    return pd.DataFrame([{
        "entry": f.id, "date": f.date.isoformat(), "run_id": f.entry["run_id"], "series": name_of[f.entry["series"]],
        "series_key": f.entry["series"], "machine": f.entry["machine"]["label"], "records": f.entry.get("records"),
        "ok": int(ok.get(f.id, 0)), "noisy": int(noisy.get(f.id, 0)), "code_hash": f.entry.get("code_hash"),
        "code_commit": f.entry.get("code_commit"),
        "frameworks": "; ".join(sorted((f.entry.get("frameworks") or {}).values())),
        "source": f.entry.get("source"),
    } for f in filed])


def points_table(detection: Detection) -> pd.DataFrame:
    """history.csv: every judged point, one row per series, cell, metric and run."""
    rows = []
    for j in detection.judgements:
        estimate = j.point.estimate
        rows.append({
            "series": j.chain.series.name, "series_key": j.chain.series.key, "cell_id": j.chain.cell_id,
            "cell": j.chain.label, "backend": j.chain.backend, "model": j.chain.model, "metric": j.chain.metric.field,
            "entry": j.point.entry, "run_id": j.point.run_id, "date": j.point.date.isoformat(),
            "repeats": int(j.point.values.size), "median": estimate.value, "low": estimate.low, "high": estimate.high,
            "framework": j.point.framework, "code_hash": j.point.code, "noisy": j.point.noisy, "lookback_runs": len(j.baseline), "lookback_level": j.level,
            "change": j.change, "p_value": j.p_value, "q_value": j.q_value, "verdict": j.verdict, "reason": j.reason,
            "test": j.test_text, "marks": "; ".join(j.marks),
        })
    return pd.DataFrame(rows)


def _figure_view(figure: FigureOut) -> dict:
    return {"title": figure.title, "caption": figure.caption,
            "src": "data:image/png;base64," + base64.b64encode(figure.png).decode("ascii")}


def _rule(min_effect: float) -> dict:
    return {"test": detect.TEST_NAME, "min_earlier": detect.MIN_EARLIER, "min_repeats": detect.MIN_REPEATS,
            "lookback": detect.LOOKBACK, "alpha": SIGNIFICANCE, "min_effect": f"{100 * min_effect:g}%",
            "accuracy_floor": f"{100 * ACCURACY_FLOOR:g} pp"}


def render(history: History, filed: list[Filed], series: list[Series], chains: list[Chain], detection: Detection,
           figures: list[FigureOut], runs: pd.DataFrame, files: list[str], min_effect: float) -> str:
    """The page as a string."""
    steps = _steps(detection)
    newest = _newest(series, detection)
    tested = sum(j.test is not None for j in detection.judgements)
    tiles = [("Runs", fmt.count(len(filed))), ("Series", fmt.count(len(series))),
             ("Machines", fmt.count(len({s.machine for s in series}))), ("Comparisons tested", fmt.count(tested)),
             ("Steps found", fmt.count(len(steps))),
             ("Regressions", fmt.count(sum(r["cls"] == "worse" for r in steps))),
             ("Newest: cannot judge", fmt.count(sum(c["verdict"] == CANNOT for r in newest for c in r["metrics"])))]
    context = {
        "folder": str(history.folder), "first": f"{filed[0].date:%Y-%m-%d %H:%M}", "last": f"{filed[-1].date:%Y-%m-%d %H:%M}",
        "tiles": tiles, "rule": _rule(min_effect), "steps": steps, "tested": tested, "newest": newest,
        "versions": version_rows(chains, detection),
        "metrics": [m.label for m in HEADLINE], "figures": [_figure_view(f) for f in figures],
        "series": _series_rows(series), "runs": runs.astype(object).where(runs.notna(), None).to_dict("records"),
        "files": files,
    }
    environment = jinja2.Environment(loader=jinja2.FileSystemLoader(TEMPLATES), autoescape=True,
                                     undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True)
    return environment.get_template("history.html.j2").render(context)


def build_history_report(history: History, out: Path | None, min_effect: float) -> HistoryReport:
    """Judge the whole history and write history.html, history.csv and runs.csv into ``out`` (default: the history)."""
    filed, frame = observations(history)
    series, chains = build_series(filed, frame)
    detection = judge(chains, min_effect)
    figures = trends(series, chains, detection)
    out = Path(out) if out is not None else history.folder
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise BenchError(f"cannot create {out}: {exc.strerror or exc}") from None
    report = HistoryReport(out / "history.html", [out / "history.csv", out / "runs.csv"], len(filed), len(series),
                           len(_steps(detection)))
    write_csv(points_table(detection), report.tables[0])
    runs = runs_table(filed, series, frame)
    write_csv(runs, report.tables[1])
    page = render(history, filed, series, chains, detection, figures, runs, [p.name for p in report.tables], min_effect)
    write_atomic(report.html, page)
    return report

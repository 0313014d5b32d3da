"""report.html: the run rendered as one self-contained page (inline CSS, figures as data URIs).

The page is a Jinja2 template with autoescape on: every string that came from a config, a record
or an error message is text, never markup (a run named ``<script>`` shows as that text). This
module turns the computed tables into display strings; the template only lays them out.
"""

from __future__ import annotations

import base64
import json
from pathlib import Path

import jinja2
import pandas as pd

from reports import fmt
from reports.costs import PHASE_COLUMNS
from reports.figures import FigureOut
from reports.frameworks import Evidence
from reports.headline import HEADLINE_METRICS, Entry, Metric, ModelHeadline
from reports.records import PROBLEM_STATUSES, Run
from reports.stats import Estimate
from reports.summary import first_line

TEMPLATES = Path(__file__).parent / "templates"
FORMATS: dict[str, fmt.Formatter] = {
    "test_accuracy": fmt.percent, "train_samples_per_s": fmt.rate, "inference_samples_per_s": fmt.rate,
    "compile_seconds": fmt.seconds, "peak_memory_bytes": fmt.nbytes,
}


def _environment() -> jinja2.Environment:
    return jinja2.Environment(
        loader=jinja2.FileSystemLoader(TEMPLATES), autoescape=True,
        undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True,
    )


def _value(est: Estimate, formatter: fmt.Formatter) -> dict:
    return {"text": formatter(est.value), "ci": fmt.interval(est, formatter), "cls": "", "sub": ""}


def _versus(entry: Entry, metric: Metric) -> dict:
    if not entry.versus.ok:
        return {"text": "", "ci": "", "cls": ""}
    formatter = fmt.ratio if metric.relative else fmt.points
    return {"text": formatter(entry.versus.value), "ci": fmt.interval(entry.versus, formatter),
            "cls": entry.verdict(metric)}


NOT_CONVERGED = "†"
NOT_CONVERGED_NOTE = ("† Not converged: no cell of this row trained long enough for its accuracy to be a result "
                      "(validation accuracy still rising fast, a single epoch, or below halfway from chance to "
                      "perfect), so it is shown greyed and is not compared.")
NOISY_NOTE = ("⚠ noisy: other processes used the cores while these throughputs were measured, and re-measuring did "
              "not get a quiet window.")


def _metric_cell(row, metric: Metric) -> dict:
    """One headline cell: value, interval and comparison, greyed where no cell converged, noisy marked."""
    entry = row.entries[metric.field]
    cell = _value(entry.value, FORMATS[metric.field]) | {"versus": _versus(entry, metric)}
    if metric.converged_only and row.unconverged:
        if entry.value.ok:
            cell["sub"] = f"{row.unconverged} not converged, left out"
        elif row.unconverged_accuracy.ok:
            cell |= {"text": FORMATS[metric.field](row.unconverged_accuracy.value) + NOT_CONVERGED, "ci": "",
                     "cls": "unconverged"}
    if metric.field == "train_samples_per_s" and row.noisy:
        cell["sub"] = f"⚠ {row.noisy} noisy"
    return cell


def _headline_view(head: ModelHeadline) -> dict:
    rows = []
    for row in head.rows:
        cells = [_metric_cell(row, metric) for metric in HEADLINE_METRICS]
        problems = ", ".join(f"{n} {s}" for s, n in row.problems.items())
        rows.append({
            "variant": row.variant, "framework": row.framework or "", "baseline": row.is_baseline,
            "pooled": f"{row.n_records} run(s) of {row.n_configs} config(s)" if row.n_records else "nothing finished",
            "problems": problems, "cells": cells,
        })
    if not any(row.n_records for row in head.rows):
        return {"model": head.model, "rows": rows, "matched": False, "footnotes": [],
                "note": "Nothing finished for this model: see the skipped, failed and diverged cells below."}
    if head.matched and head.configs:
        note = (f"Each value is the median over the {len(head.configs)} configuration(s) every backend finished, "
                "each configuration first reduced to its median over repeats; ratios are taken per configuration.")
    elif head.matched:
        note = "One backend only: the median over every configuration it finished."
    else:
        note = ("No configuration was finished by every backend: each row summarises what that backend finished, "
                "so ratios compare different configurations.")
    if head.baseline is None:
        note += " The baseline did not finish this model, so there are no ratios."
    footnotes = [NOT_CONVERGED_NOTE] if any(c["cls"] == "unconverged" for r in rows for c in r["cells"]) else []
    footnotes += [NOISY_NOTE] if any(row.noisy for row in head.rows) else []
    return {"model": head.model, "rows": rows, "note": note, "matched": head.matched, "footnotes": footnotes}


def _figure_view(figure: FigureOut) -> dict:
    return {"title": figure.title, "caption": figure.caption, "file": f"figures/{figure.name}.png",
            "src": "data:image/png;base64," + base64.b64encode(figure.png).decode("ascii")}


def _joined(values) -> str:
    return ", ".join(dict.fromkeys(str(v) for v in values if isinstance(v, str))) or fmt.DASH


def _problem_rows(frame: pd.DataFrame) -> list[dict]:
    """Records that did not finish, one row per status, backend and message (a whole skipped backend is one row)."""
    problems = frame[frame["status"] != "ok"]
    message = problems["reason"].fillna(problems["error"]).map(lambda m: first_line(m) or "(no reason recorded)")
    order = {s: i for i, s in enumerate(PROBLEM_STATUSES)}
    rows = []
    for (status, variant, text), group in problems.groupby([problems["status"], problems["variant"], message],
                                                          sort=False):
        full = next((t for t in list(group.get("traceback", [])) + list(group["error"]) + list(group["reason"])
                     if isinstance(t, str) and "\n" in t.strip()), None)
        rows.append({
            "status": status, "variant": variant, "message": text, "detail": full,
            "models": _joined(group["model"]), "optimizers": _joined(group["optimizer"]),
            "activations": _joined(group["activation"]),
            "cells": group["cell_id"].nunique() if group["cell_id"].notna().all() else len(group),
            "runs": len(group),
        })
    return sorted(rows, key=lambda r: (order.get(r["status"], 99), r["variant"], r["models"]))


def _text(value) -> str:
    if isinstance(value, (dict, list)):
        return json.dumps(value)
    return "" if value is None else str(value)


def _environment_view(run: Run) -> dict:
    env = run.environment
    hardware = [
        ("CPU", env.get("cpu")), ("Cores", env.get("cores")), ("Threads per backend", env.get("threads")),
        ("CPU set", env.get("cpu_set")), ("GPU", (env.get("gpu") or "none") if "gpu" in env else None),
        ("OS", env.get("os")),
        ("Python", env.get("python")),
        ("Matmul peak", f"{fmt.sig(env['matmul_peak_gflops'])} GFLOP/s" if env.get("matmul_peak_gflops") else None),
    ]
    return {
        "hardware": [(k, _text(v)) for k, v in hardware if v is not None],
        "versions": sorted((str(k), _text(v)) for k, v in (env.get("versions") or {}).items()),
        "fairness": sorted((str(k), _text(v)) for k, v in (env.get("fairness") or {}).items()),
        "settings": sorted((str(k), _text(v)) for k, v in (env.get("settings") or {}).items()),
        "command": _text(env.get("command")), "git_commit": _text(env.get("git_commit")),
        "created": _text(env.get("created")), "previous": len(env.get("previous") or []),
    }


def _semantics_view(frame: pd.DataFrame) -> dict:
    """Each backend's recorded framework facts side by side (first record that has them)."""
    facts: dict[str, dict] = {}
    for backend, group in frame.groupby("backend"):
        found = next((s for s in group["semantics"] if isinstance(s, dict) and s), None)
        if found:
            facts[str(backend)] = found
    keys = sorted({k for f in facts.values() for k in f})
    return {"backends": sorted(facts), "rows": [(k, [_text(facts[b].get(k)) for b in sorted(facts)]) for k in keys]}


def _glance(run: Run) -> list[tuple[str, str]]:
    frame = run.records
    counts = frame["status"].value_counts()
    cells = frame["cell_id"].nunique() if frame["cell_id"].notna().any() else len(frame)
    tiles = [("Backends", ", ".join(sorted(set(frame["variant"])))),
             ("Models", ", ".join(dict.fromkeys(frame["model"].dropna())) or fmt.DASH),
             ("Cells", fmt.count(cells)), ("Records", fmt.count(len(frame)))]
    tiles += [(s.capitalize(), fmt.count(counts.get(s, 0))) for s in ("ok",) + PROBLEM_STATUSES if counts.get(s, 0)]
    return tiles


def _cell_rows(summary: pd.DataFrame) -> list[dict]:
    def cell(row, metric: str, formatter: fmt.Formatter) -> dict:
        est = Estimate(row[f"{metric}_median"], row[f"{metric}_ci_low"], row[f"{metric}_ci_high"], int(row["n_ok"]))
        return _value(est, formatter)

    def marked(row, view: dict) -> dict:
        if row["n_ok"] and row["n_unconverged"] == row["n_ok"]:
            return view | {"text": view["text"] + NOT_CONVERGED, "cls": "unconverged"}
        return view

    return [{
        "variant": r["variant"], "model": _text(r["model"]), "optimizer": _text(r["optimizer"]),
        "activation": _text(r["activation"]), "status": r["status"], "n": int(r["n_records"]),
        "status_cls": "ok" if r["status"] == "ok" else next((s for s in PROBLEM_STATUSES if r[f"n_{s}"]), ""),
        "accuracy": marked(r, cell(r, "test_accuracy", fmt.percent)),
        "train": cell(r, "train_samples_per_s", fmt.rate) | {"sub": "⚠ noisy" if r["n_noisy"] else ""},
        "inference": cell(r, "inference_samples_per_s", fmt.rate),
        "step": cell(r, "step_time_ms_p50", fmt.milliseconds),
        "compile": cell(r, "compile_seconds", fmt.seconds),
    } for r in summary.to_dict("records")]


def _costs_view(costs: pd.DataFrame) -> dict:
    """The "where the time went" table: seconds per backend and phase, each with its share of the total."""
    columns = ["worker start-up", *PHASE_COLUMNS.values(), "other"]
    rows = []
    for row in costs.to_dict("records"):
        total = row["total"] or 1.0
        rows.append({"backend": row["backend"], "cells": fmt.count(row["cells"]), "total": fmt.seconds(row["total"]),
                     "per_cell": fmt.seconds(row["total"] / max(row["cells"], 1)), "cache": row["compile cache"],
                     "parts": [(fmt.seconds(row[c]), f"{100 * row[c] / total:.0f}%") for c in columns]})
    return {"columns": columns, "rows": rows}


def render(run: Run, summary: pd.DataFrame, heads: list[ModelHeadline], figures: list[FigureOut],
           evidence: list[Evidence], baseline: str | None, files: list[str], costs: pd.DataFrame) -> str:
    """The full page as a string."""
    context = {
        "run_name": run.name, "notes": run.notes, "glance": _glance(run), "baseline": baseline,
        "metrics": [m.label for m in HEADLINE_METRICS],
        "headlines": [_headline_view(h) for h in heads],
        "figures": [_figure_view(f) for f in figures],
        "problems": _problem_rows(run.records),
        "frameworks": evidence,
        "env": _environment_view(run), "semantics": _semantics_view(run.records),
        "cells": _cell_rows(summary), "files": files, "costs": _costs_view(costs),
        "not_converged_note": NOT_CONVERGED_NOTE,
    }
    return _environment().get_template("report.html.j2").render(context)

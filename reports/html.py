"""report.html: the run rendered as one self-contained page (inline CSS, figures as data URIs).

The page is a Jinja2 template with autoescape on: every string that came from a config, a record
or an error message is text, never markup (a run named ``<script>`` shows as that text). This
module turns the computed tables into display strings; the template only lays them out.
"""

from __future__ import annotations

import base64
import json
import math
from pathlib import Path

import jinja2
import pandas as pd

from bench.results.record import Status
from bench.results.stats import Estimate
from bench.spec.rules import CANONICAL, RULE_TEXT, RULE_TITLES, Rules
from bench.spec.semantics import HARMONISED, NATIVE
from reports import fmt
from reports.augmentation import AugmentationRow
from reports.costs import COMPILE_COLUMNS, PARTS
from reports.fastest import FastestHeadline, ModeResult
from reports.figures import FigureOut
from reports.frameworks import Evidence
from reports.headline import Entry, ModelHeadline
from reports.metrics import CELL_TABLE, HEADLINE, TRAIN_THROUGHPUT, Metric
from reports.policies import CAVEAT, PolicyComparison, describe_values
from reports.records import CONFIG_AXES, PROBLEM_STATUSES, VARIANT_AXES, Run
from reports.summary import first_line
from reports.wrappers import ACCURACY_TOLERANCE, WrapperView

TEMPLATES = Path(__file__).parent / "templates"


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
    formatter = metric.change_format
    return {"text": formatter(entry.versus.value), "ci": fmt.interval(entry.versus, formatter),
            "cls": entry.verdict(metric)}


NOT_CONVERGED = "†"
NOT_CONVERGED_NOTE = ("† Not converged: no cell of this row trained long enough for its accuracy to be a result "
                      "(validation accuracy still rising fast, a single epoch, or below halfway from chance to "
                      "perfect), so it is shown greyed and is not compared.")
THROUGHPUT_ONLY = "throughput only"
THROUGHPUT_ONLY_NOTE = ("Throughput only: this sweep measured the model for speed, on a slice too small for an "
                        "accuracy (each record's split_sources says which; the quick profile's CNN trains on 128 rows). "
                        "Run --profile full, or give --train-size, for its accuracy.")
NOISY_NOTE = ("⚠ noisy: other processes used the cores while these throughputs were measured, and re-measuring did "
              "not get a quiet window.")


def _metric_cell(row, metric: Metric) -> dict:
    """One headline cell: value, interval and comparison, greyed where no cell converged, noisy marked."""
    entry = row.entries[metric.field]
    cell = _value(entry.value, metric.format) | {"versus": _versus(entry, metric)}
    if metric.converged_only and row.throughput_only:
        return cell | {"text": THROUGHPUT_ONLY, "ci": "", "cls": "unconverged", "versus": {"text": "", "ci": "", "cls": ""}}
    if metric.converged_only and row.unconverged:
        if entry.value.ok:
            cell["sub"] = f"{row.unconverged} not converged, left out"
        elif row.unconverged_accuracy.ok:
            cell |= {"text": metric.format(row.unconverged_accuracy.value) + NOT_CONVERGED, "ci": "",
                     "cls": "unconverged"}
    if metric is TRAIN_THROUGHPUT and row.noisy:
        cell["sub"] = f"⚠ {row.noisy} noisy"
    return cell


def _headline_view(head: ModelHeadline) -> dict:
    rows = []
    for row in head.rows:
        cells = [_metric_cell(row, metric) for metric in HEADLINE]
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
    footnotes = [THROUGHPUT_ONLY_NOTE] if any(row.throughput_only for row in head.rows) else []
    footnotes += [NOT_CONVERGED_NOTE] if any(c["cls"] == "unconverged" and c["text"] != THROUGHPUT_ONLY
                                             for r in rows for c in r["cells"]) else []
    footnotes += [NOISY_NOTE] if any(row.noisy for row in head.rows) else []
    return {"model": head.model, "rows": rows, "note": note, "matched": head.matched, "footnotes": footnotes}


def _figure_view(figure: FigureOut) -> dict:
    return {"title": figure.title, "caption": figure.caption, "file": f"figures/{figure.name}.png",
            "src": "data:image/png;base64," + base64.b64encode(figure.png).decode("ascii")}


def _joined(values) -> str:
    return ", ".join(dict.fromkeys(str(v) for v in values if isinstance(v, str))) or fmt.DASH


def _problem_rows(frame: pd.DataFrame) -> list[dict]:
    """Records that did not finish, one row per status, backend and message (a whole skipped backend is one row)."""
    problems = frame[frame["status"] != Status.OK]
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


def _device_text(placement: dict | None) -> str | None:
    """environment.json's ``device`` section (backends/device.py ``Placement.describe``) in one line."""
    if not placement:
        return None
    text = placement.get("device", "?") + (f" (GPU {placement['gpu_index']})" if placement.get("gpu_index") is not None else "")
    text += f", asked {placement.get('requested')}" + (f": {placement['note']}" if placement.get("note") else "")
    stacks = "; ".join(f"{engine} " + ", ".join(f"{k} {v}" for k, v in stack.items()) for engine, stack in
                       (placement.get("stacks") or {}).items())
    peaks = "; ".join(f"{engine} " + ", ".join(f"{p} {fmt.sig(g)} GFLOP/s" for p, g in by.items()) for engine, by in
                      (placement.get("peaks") or {}).items())
    return text + (f"; {stacks}" if stacks else "") + (f"; matmul peaks: {peaks}" if peaks else "")


def _environment_view(run: Run) -> dict:
    env = run.environment
    hardware = [
        ("Device", _device_text(env.get("device"))),
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


def _rules_view(frame: pd.DataFrame) -> dict:
    """One row per framework rule (bench/spec/rules.py), one column per backend, from the records' typed rules.

    Every backend declares every rule, so each row has a value in every column; records written
    before rules were typed have none, and the table is left out.
    """
    declared: dict[str, Rules] = {}
    for backend, group in frame.groupby("backend"):
        found = next((r for r in group["rules"] if isinstance(r, dict) and r), None)
        if found:
            declared[str(backend)] = Rules(**{k: v for k, v in found.items() if k in RULE_TITLES})
    names = sorted(declared)
    rows = [(RULE_TITLES[f], [RULE_TEXT[f][getattr(declared[b], f)] + ("" if getattr(declared[b], f) == getattr(CANONICAL, f) else " *")
                              for b in names]) for f in RULE_TITLES]
    return {"backends": names, "rows": rows if names else []}


def _glance(run: Run) -> list[tuple[str, str]]:
    frame = run.records
    counts = frame["status"].value_counts()
    cells = frame["cell_id"].nunique() if frame["cell_id"].notna().any() else len(frame)
    tiles = [("Backends", ", ".join(sorted(set(frame["variant"])))),
             ("Models", ", ".join(dict.fromkeys(frame["model"].dropna())) or fmt.DASH),
             ("Cells", fmt.count(cells)), ("Records", fmt.count(len(frame)))]
    tiles += [(s.capitalize(), fmt.count(counts.get(s, 0))) for s in Status if counts.get(s, 0)]
    return tiles


def _repeats(frame: pd.DataFrame) -> int:
    """Most repeats any configuration has: with one, no ratio rests on a spread, so none is coloured."""
    ok = frame[frame["status"] == Status.OK]
    return int(ok.groupby("cell_id", dropna=True).size().max()) if ok["cell_id"].notna().any() else 0


def _augmentation_view(rows: list[AugmentationRow]) -> list[dict]:
    """Per model, augmentation and backend: plain and augmented throughput, their ratio, and the accuracy change."""
    def ratio(est: Estimate) -> dict:
        verdict = "same" if not est.excludes(1.0) else ("better" if est.value > 1.0 else "worse")
        return {"text": fmt.ratio(est.value), "ci": fmt.interval(est, fmt.ratio), "cls": verdict}

    def marked(row, view: dict) -> dict:
        if row["n_ok"] and row["n_unconverged"] == row["n_ok"]:
            return view | {"text": view["text"] + NOT_CONVERGED, "cls": "unconverged"}
        return view

    return [{
        "model": r.model, "augment": r.augment, "variant": r.variant, "configs": r.configs,
        "plain": _value(r.plain_speed, fmt.rate), "augmented": _value(r.augmented_speed, fmt.rate), "cost": ratio(r.cost),
        "plain_accuracy": _value(r.plain_accuracy, fmt.percent), "accuracy": _value(r.augmented_accuracy, fmt.percent),
        "accuracy_change": {"text": fmt.points(r.accuracy_change.value), "ci": fmt.interval(r.accuracy_change, fmt.points)},
    } for r in rows]


def _augment_facts(frame: pd.DataFrame) -> list[tuple[str, str]]:
    """The suite's fixed augmentation choices as the records state them (first augmented record)."""
    fields = (("Interpolation", "augment_interpolation"), ("Fill", "augment_fill"), ("Order", "augment_order"))
    augmented = frame[frame["augment_interpolation"].notna()]
    if augmented.empty:
        return []
    first = augmented.iloc[0]
    return [(label, _text(first[field])) for label, field in fields]


ALWAYS_SHOWN = ("backend", "model")
"""Axes the "All cells" table always shows (the backend as its variant label, with mode and policy)."""


def _cell_axes(summary: pd.DataFrame) -> list[str]:
    """The cell axes (bench/spec/cell.py ``AXES``, grouped as reports/records.py does) that take more
    than one value in this run: rows that differ only in a loss, a precision or a batch size must
    not look identical, and an axis with one value would be a column of repeats."""
    return [axis for axis in (*VARIANT_AXES, *CONFIG_AXES)
            if axis not in ALWAYS_SHOWN and summary[axis].map(_axis_text).nunique() > 1]


def _axis_text(value) -> str:
    """An axis value as the table shows it: 64 not 64.0, 0.001 not 0.0010, a dash where none."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return fmt.DASH
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def _cell_rows(summary: pd.DataFrame, axes: list[str]) -> list[dict]:
    def cell(row, metric: Metric) -> dict:
        name = metric.field
        est = Estimate(row[f"{name}_median"], row[f"{name}_ci_low"], row[f"{name}_ci_high"], int(row["n_ok"]))
        return _value(est, metric.format)

    return [{
        "variant": r["variant"], "model": _text(r["model"]), "axes": [_axis_text(r[axis]) for axis in axes],
        "status": r["status"], "n": int(r["n_records"]),
        "status_cls": Status.OK.value if r["status"] == Status.OK else next((s.value for s in PROBLEM_STATUSES if r[f"n_{s}"]), ""),
        "metrics": [cell(r, metric) for metric in CELL_TABLE],
    } for r in summary.to_dict("records")]


# -- each framework at its fastest, and harmonised vs native (issue 12) ------------------------------
def _beaten(mode: ModeResult) -> str:
    """'eager (12.5k/s, 0.52×)', or '..., within noise' when the ratio's interval includes 1."""
    ratio = f", {fmt.ratio(mode.versus_best.value)}" if mode.versus_best.ok else ""
    tie = ", within noise" if mode.versus_best.ok and mode.versus_best.n >= 2 and not mode.versus_best.excludes(1.0) else ""
    return f"{mode.mode} ({fmt.rate(mode.speed.value)}{ratio}{tie})"


def _fastest_view(head: FastestHeadline) -> dict:
    rows = []
    for row in head.rows:
        versus = ({"text": fmt.ratio(row.versus.value), "ci": fmt.interval(row.versus, fmt.ratio),
                   "cls": "same" if not row.versus.excludes(1.0) else ("better" if row.versus.value > 1 else "worse")}
                  if row.versus.ok else {"text": "", "ci": "", "cls": ""})
        won = (f"{row.best.mode} won over " + ", ".join(_beaten(m) for m in row.beaten)
               if row.beaten else f"{row.best.mode} (the only mode run)")
        rows.append({
            "backend": row.backend, "mode": row.best.mode, "baseline": row.is_baseline, "fastest": row.is_fastest,
            "speed": _value(row.best.speed, fmt.rate), "versus": versus,
            "compile": _value(row.best.compile, fmt.seconds), "won": won,
        })
    return {"model": head.model, "rows": rows, "baseline": head.baseline}


def _policy_view(comparison: PolicyComparison, figure: FigureOut | None) -> dict:
    def signed(x: float) -> str:
        return fmt.DASH if x != x else f"{x:+.3g}"

    rows = [{
        "backend": r.backend, "configs": r.n_configs,
        "harmonised": _value(r.harmonised_accuracy, fmt.percent), "native": _value(r.native_accuracy, fmt.percent),
        "accuracy": _value(r.accuracy, fmt.points), "loss": _value(r.final_loss, signed),
        "values_harmonised": describe_values(r.values[HARMONISED]), "values_native": describe_values(r.values[NATIVE]),
        "rules": "; ".join(f"{RULE_TITLES.get(k, k)}: {a} → {b}" for k, (a, b) in r.rules_changed.items()),
    } for r in comparison.rows]
    return {"model": comparison.model, "rows": rows, "figure": _figure_view(figure) if figure else None}


def _ratio_view(est: Estimate) -> dict:
    """A ratio with its interval, 'same' when the interval includes 1 (or rests on one repeat)."""
    if not est.ok:
        return {"text": fmt.DASH, "ci": "", "cls": ""}
    cls = "same" if not est.excludes(1.0) else ("better" if est.value > 1 else "worse")
    return {"text": fmt.ratio(est.value), "ci": fmt.interval(est, fmt.ratio), "cls": cls}


def _wrapper_view(view: WrapperView) -> dict:
    """What the wrapper costs (reports/wrappers.py): wrapper / native per model, and the engines ranked."""
    costs = [{
        "backend": c.wrapped.backend, "mode": c.wrapped.mode, "engine": c.engine,
        "native": c.native.backend if c.native else None, "native_mode": c.native.mode if c.native else "",
        "configs": c.n_configs, "train": _ratio_view(c.train), "inference": _ratio_view(c.inference),
        "compile": [_value(e, fmt.seconds) for e in c.compile], "host_memory": [_value(e, fmt.nbytes) for e in c.host_memory],
        "device_memory": [_value(e, fmt.nbytes) for e in c.device_memory],
        "accuracy": _value(c.accuracy, fmt.points) | {"cls": {True: "same", False: "worse", None: ""}[c.accuracy_agrees]},
        "rules": ", ".join(RULE_TITLES.get(r, r) for r in c.rules),
    } for c in view.costs]
    engines = [{
        "backend": r.side.backend, "engine": r.engine, "mode": r.side.mode, "fastest": r.fastest,
        "train": _value(r.train, fmt.rate), "versus": _ratio_view(r.versus_fastest) if r.versus_fastest.ok else None,
        "inference": _value(r.inference, fmt.rate), "compile": _value(r.compile, fmt.seconds),
        "accuracy": _value(r.accuracy, fmt.percent),
    } for r in view.engines]
    return {"model": view.model, "wrapper": view.wrapper, "costs": costs, "engines": engines}


def _costs_view(costs: pd.DataFrame) -> dict:
    """The "where the time went" table: seconds per backend and phase, each with its share of the total."""
    rows = []
    for row in costs.to_dict("records"):
        total = row["total"] or 1.0
        rows.append({"backend": row["backend"], "cells": fmt.count(row["cells"]), "total": fmt.seconds(row["total"]),
                     "per_cell": fmt.seconds(row["total"] / max(row["cells"], 1)), "cache": row["compile cache"],
                     "parts": [(fmt.seconds(row[c]), f"{100 * row[c] / total:.0f}%") for c in PARTS]})
    return {"columns": list(PARTS), "rows": rows}


def _compile_view(table: pd.DataFrame | None) -> dict:
    """The cold-and-warm compile table: seconds, and the graph counts as counts."""
    if table is None:
        return {"columns": [], "rows": []}

    def shown(column: str, value: float) -> str:
        return fmt.count(value) if column in ("graphs", "graph breaks") else fmt.seconds(value)
    rows = [{"backend": r["backend"], "mode": r["mode"], "model": r["model"], "cells": fmt.count(r["cells"]),
             "figures": [shown(c, r[c]) for c in COMPILE_COLUMNS]} for r in table.to_dict("records")]
    return {"columns": list(COMPILE_COLUMNS), "rows": rows}


def render(run: Run, summary: pd.DataFrame, heads: list[ModelHeadline], figures: list[FigureOut],
           evidence: list[Evidence], baseline: str | None, files: list[str],
           augmentation: list[AugmentationRow] = (), costs: pd.DataFrame | None = None,
           fastest: list[FastestHeadline] = (), policies: list[PolicyComparison] = (),
           policy_figures: dict[str, FigureOut] | None = None, compile_costs: pd.DataFrame | None = None,
           wrappers: list[WrapperView] = ()) -> str:
    """The full page as a string."""
    cell_axes = _cell_axes(summary)
    context = {
        "run_name": run.name, "notes": run.notes, "glance": _glance(run), "baseline": baseline,
        "repeats": _repeats(run.records),
        "metrics": [m.label for m in HEADLINE], "cell_metrics": [m.label for m in CELL_TABLE],
        "headlines": [_headline_view(h) for h in heads],
        "figures": [_figure_view(f) for f in figures],
        "problems": _problem_rows(run.records),
        "frameworks": evidence,
        "env": _environment_view(run), "semantics": _rules_view(run.records),
        "cells": _cell_rows(summary, cell_axes), "cell_axes": [axis.replace("_", " ").capitalize() for axis in cell_axes],
        "files": files, "augmentation": _augmentation_view(augmentation),
        "augment_facts": _augment_facts(run.records), "costs": _costs_view(costs) if costs is not None else {"columns": [], "rows": []},
        "compile_costs": _compile_view(compile_costs),
        "not_converged_note": NOT_CONVERGED_NOTE,
        "fastest": [_fastest_view(f) for f in fastest if f.several_modes],
        "policies": [_policy_view(p, (policy_figures or {}).get(p.model)) for p in policies], "policy_caveat": CAVEAT,
        "wrappers": [_wrapper_view(w) for w in wrappers], "accuracy_tolerance": f"{100 * ACCURACY_TOLERANCE:g} pp",
    }
    return _environment().get_template("report.html.j2").render(context)

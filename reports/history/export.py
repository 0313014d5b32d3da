"""``bench history export``: one run's figures in the JSON that github-action-benchmark reads.

github-action-benchmark's custom tools take a list of ``{"name", "unit", "value", "range",
"extra"}`` objects, and one direction per file: ``customBiggerIsBetter`` or
``customSmallerIsBetter``. So a run becomes two files, each headline metric going to the one its
``higher_is_better`` says (reports/metrics.py); a metric that is neither is not exported. The
value is the run's median over its repeats, ``range`` its bootstrap 95% interval, ``extra`` what
ran it. Names are the cell's label and the metric, stable from run to run of one sweep, so the
action's charts follow them; its own alert compares two single values with no statistics, so
gate CI on ``bench history check`` and use the action for its charts.
"""

from __future__ import annotations

import json
from pathlib import Path

from bench.errors import BenchError
from bench.results.store import write_atomic
from reports.history.archive import History
from reports.history.check import choose_run
from reports.history.series import build_series, observations

FILES = {True: "bench-bigger-is-better.json", False: "bench-smaller-is-better.json"}
"""File per direction (metric.higher_is_better): the action's customBiggerIsBetter / customSmallerIsBetter."""


def export(history: History, run: str | None, out: Path) -> list[Path]:
    """Write both files for the newest run (or ``run``) into ``out``; returns their paths."""
    filed, frame = observations(history)
    chosen = choose_run(filed, run)
    _, chains = build_series(filed, frame)
    benches: dict[bool, list[dict]] = {direction: [] for direction in FILES}
    machine = chosen.entry["machine"]["label"]
    for chain in chains:
        point = next((p for p in chain.points if p.entry == chosen.id and p.values.size), None)
        if point is None or chain.metric.higher_is_better is None:
            continue
        estimate = point.estimate
        bench = {"name": f"{chain.label} · {chain.metric.label}", "unit": chain.metric.unit or "count",
                 "value": estimate.value}
        if estimate.n >= 2:
            bench["range"] = f"{estimate.low:.6g} to {estimate.high:.6g} (bootstrap 95%)"
        bench["extra"] = (f"{point.values.size} repeat(s); {point.framework or chain.backend}; code {point.code}; "
                          f"{machine}; run {point.run_id}")
        benches[chain.metric.higher_is_better].append(bench)
    out = Path(out)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise BenchError(f"cannot create {out}: {exc.strerror or exc}") from None
    paths = []
    for direction, name in FILES.items():
        write_atomic(out / name, json.dumps(benches[direction], indent=2, ensure_ascii=False))
        paths.append(out / name)
    return paths

"""Framework versions as an axis: per machine and cell, how each headline figure moved between versions.

The question a user asks before upgrading ("what did torch 2.13 → 2.14 do on a machine like
mine?") is read off one series: its runs grouped by the framework version of the cell's backend,
in the order the versions first ran. Each version's figure is the median over its runs' medians;
the change is that over the previous version's, and the verdict is reports/history/detect.py's
judgement of the first run on the new version (the test across the upgrade), so a change that
the noise explains is not called a change here either.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from reports.history.detect import Detection
from reports.history.series import Chain
from reports.metrics import HEADLINE


@dataclass
class VersionRow:
    """One framework version of one cell in one series."""

    series: str
    cell: str
    framework: str
    runs: int
    first: str
    last: str
    figures: list[dict] = field(default_factory=list)
    """Per headline metric: value text, change text over the previous version, and the verdict across the upgrade."""


def _level(chain: Chain, indices: list[int]) -> float:
    medians = [float(np.median(chain.points[i].values)) for i in indices if chain.points[i].values.size]
    return float(np.median(medians)) if medians else float("nan")


def version_rows(chains: list[Chain], detection: Detection) -> list[VersionRow]:
    """One row per series, cell and framework version, for the cells whose backend ran with a version."""
    verdicts = {(id(j.chain), j.index): j for j in detection.judgements}
    cells: dict[tuple[str, str], dict] = {}
    for chain in chains:
        cells.setdefault((chain.series.key, chain.cell_id), {})[chain.metric.field] = chain
    rows = []
    for by_metric in cells.values():
        anchor = next(iter(by_metric.values()))
        versions: dict[str, list[int]] = {}
        for i, point in enumerate(anchor.points):
            if point.framework:
                versions.setdefault(point.framework, []).append(i)
        previous = None
        for framework, indices in versions.items():
            dates = [anchor.points[i].date for i in indices]
            row = VersionRow(anchor.series.name, anchor.label, framework, len(indices),
                             f"{min(dates):%Y-%m-%d %H:%M}", f"{max(dates):%Y-%m-%d %H:%M}")
            for metric in HEADLINE:
                chain = by_metric.get(metric.field)
                level = _level(chain, indices) if chain else float("nan")
                before = _level(chain, previous) if chain and previous else float("nan")
                with np.errstate(divide="ignore", invalid="ignore"):
                    change = level / before if metric.relative else level - before
                judged = verdicts.get((id(chain), indices[0])) if chain and previous else None
                row.figures.append({"text": metric.format(level),
                                    "change": metric.change_format(change) if np.isfinite(change) else "",
                                    "verdict": judged.verdict if judged else ""})
            rows.append(row)
            previous = indices
    return rows

"""The history's trend figures: one per series and model, a panel per headline metric, x the run's date.

Drawn like the run report's figures (reports/figures.py: matplotlib's object API on Agg, PNG bytes
without a timestamp, one colour per backend, user text through ``escape.plain``). Each point is
a run's median over its repeats with the bootstrap 95% interval as its error bar; a step found by
reports/history/detect.py is ringed (red: worse, green: better); a framework upgrade or a code
change between two runs is a dashed vertical line labelled with what changed.
"""

from __future__ import annotations

import math
from datetime import datetime, timedelta

import matplotlib.dates as mdates
import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import FixedLocator, MaxNLocator

from reports.escape import plain
from reports.figures import WIDTH, FigureOut, file_slug, png_bytes, variant_colours
from reports.history.detect import Detection, Judgement
from reports.history.series import Chain, Series
from reports.metrics import HEADLINE

MARKERS = ("o", "s", "^", "D", "v", "P", "X")
"""One marker per cell of a backend, where a model has several configurations."""
RING = {"worse": "#b3261e", "better": "#11795b"}


def _panel(ax, chains: list[Chain], verdicts: dict[tuple[int, int], Judgement], colours: dict) -> list[tuple[datetime, str]]:
    """One metric's chains on ``ax``; returns where each change mark goes (halfway between its two runs) and its text."""
    marks: list[tuple[datetime, str]] = []
    seen_per_variant: dict[str, int] = {}
    for chain in chains:
        shown = [(i, p) for i, p in enumerate(chain.points) if p.values.size]
        marks += [(chain.points[i - 1].date + (chain.points[i].date - chain.points[i - 1].date) / 2, text)
                  for i in range(1, len(chain.points)) for text in chain.marks(i)]  # between the two runs
        if not shown:
            continue
        rank = seen_per_variant.get(chain.variant, 0)
        seen_per_variant[chain.variant] = rank + 1
        dates = [p.date for _, p in shown]
        estimates = [p.estimate for _, p in shown]
        values = np.array([e.value for e in estimates])
        errors = np.array([[max(e.value - e.low, 0) for e in estimates], [max(e.high - e.value, 0) for e in estimates]])
        colour = colours[chain.variant]
        ax.errorbar(dates, values, yerr=errors, color=colour, marker=MARKERS[rank % len(MARKERS)], markersize=5,
                    linewidth=1.4, capsize=3, label=plain(chain.label))
        for (i, point), value in zip(shown, values):
            judgement = verdicts.get((id(chain), i))
            if judgement is not None and judgement.step:
                tone = "worse" if judgement.regression else "better"
                ax.scatter([point.date], [value], s=260, facecolors="none", edgecolors=RING[tone], linewidths=2,
                           zorder=5)
    return marks


def _span_dates(ax, dates: list[datetime]) -> None:
    """x limits a little wider than the runs; an hour around a lone run, which would otherwise span years."""
    if dates:
        low, high = min(dates), max(dates)
        pad = (high - low) * 0.08 if high > low else timedelta(minutes=30)
        ax.set_xlim(low - pad, high + pad)


def _binary_ticks(ax) -> None:
    """Byte axes ticked at round MiB (or GiB) values, as the labels read, not at round numbers of bytes."""
    low, high = ax.get_ylim()
    scale = 2**30 if high >= 2**30 else 2**20
    ticks = MaxNLocator(nbins=6).tick_values(low / scale, high / scale) * scale
    ax.yaxis.set_major_locator(FixedLocator([t for t in ticks if low <= t <= high]))


def trend(series: Series, model: str, chains: list[Chain], detection: Detection, colours: dict) -> FigureOut | None:
    """The trend of one series and model: a panel per headline metric that has a value."""
    verdicts = {(id(j.chain), j.index): j for j in detection.judgements}
    metrics = [m for m in HEADLINE if any(p.values.size for c in chains if c.metric is m for p in c.points)]
    if not metrics:
        return None
    columns = 2 if len(metrics) > 1 else 1
    rows = math.ceil(len(metrics) / columns)
    fig = Figure(figsize=(WIDTH, 2.9 * rows + 0.6), layout="constrained")
    axes = np.atleast_1d(fig.subplots(rows, columns, squeeze=False)).ravel()
    for ax, metric in zip(axes, metrics):
        marks = _panel(ax, [c for c in chains if c.metric is metric], verdicts, colours)
        for date, text in dict.fromkeys(marks):
            ax.axvline(date, color="#5b6475", linestyle="--", linewidth=1)
            ax.annotate(plain(text), (date, 1.0), xycoords=("data", "axes fraction"), xytext=(3, -3),
                        textcoords="offset points", va="top", fontsize=7.5, color="#5b6475", rotation=90)
        direction = {True: "higher is better", False: "lower is better"}[metric.higher_is_better]
        unit = f" ({metric.unit})" if metric.unit else ""
        ax.set_title(f"{metric.label}{unit}, {direction}")
        ax.yaxis.set_major_formatter(lambda value, _position, metric=metric: metric.format(value))
        locator = mdates.AutoDateLocator(minticks=3, maxticks=7)
        ax.xaxis.set_major_locator(locator)
        ax.xaxis.set_major_formatter(mdates.ConciseDateFormatter(locator))
        ax.margins(y=0.15)
        _span_dates(ax, [p.date for c in chains if c.metric is metric for p in c.points])
        if metric.unit == "bytes":
            _binary_ticks(ax)
    for ax in axes[len(metrics):]:
        ax.set_visible(False)
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, frameon=False, fontsize=8.5, ncols=min(len(labels), 4), loc="outside upper center")
    return FigureOut(f"trend_{series.number}_{file_slug(model)}", f"{series.name}, {model}",
                     "Each point is one run: the median over its repeats, with the bootstrap 95% interval as its error "
                     "bar; x is the run's start. Ringed points are steps the regression table lists (red worse, green "
                     "better); dashed lines mark a framework upgrade or a change of the measuring code between two runs.",
                     png_bytes(fig))


def trends(series: list[Series], chains: list[Chain], detection: Detection) -> list[FigureOut]:
    """Every series' trend figures, one per model, in series order."""
    backend_of = {c.variant: c.backend for c in chains}
    colours = variant_colours(sorted(backend_of), backend_of)
    figures = []
    for one in series:
        mine = [c for c in chains if c.series is one]
        for model in dict.fromkeys(c.model for c in mine):
            figure = trend(one, model, [c for c in mine if c.model == model], detection, colours)
            if figure is not None:
                figures.append(figure)
    return figures

"""The report's figures, drawn with matplotlib's object API on the Agg canvas and kept as PNG bytes.

``matplotlib.figure.Figure`` is used without pyplot, so building a report never touches a GUI
backend or global figure state. Every text from records or config passes through ``escape.plain``. Every bar shows a median with its bootstrap interval as an error
bar; the same pooled records feed the headline table and the figures, so they always agree.
The helpers a figure is made with (``file_slug``, ``png_bytes``, ``plain_value``, ``reference_config``)
are public: reports/policies.py draws its figures with them too.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass

import matplotlib
import numpy as np
import pandas as pd
from matplotlib.colors import to_rgb
from matplotlib.figure import Figure
from matplotlib.ticker import LogLocator, NullFormatter, PercentFormatter

from bench.results.phases import PHASES
from bench.results.store import file_stem
from reports import fmt
from reports.augmentation import AugmentationRow
from reports.costs import PARTS
from reports.escape import plain
from reports.headline import ModelHeadline, pooled_estimate
from reports.metrics import COMPILE_TIME, INFERENCE_THROUGHPUT, TEST_ACCURACY, TIME_TO_TARGET, TRAIN_THROUGHPUT, TRAIN_TIME
from reports.records import CONFIG_AXES, config_keys, throughput_only, unconverged

matplotlib.rcParams.update({
    "font.size": 10, "axes.titlesize": 11, "axes.spines.top": False, "axes.spines.right": False,
    "axes.grid": True, "grid.alpha": 0.3, "figure.dpi": 100, "savefig.dpi": 100,
})

BACKEND_COLOURS = {"torch": "#e4572e", "tf": "#f0a202", "jax": "#3a86ff", "keras-jax": "#5e60ce", "keras-torch": "#c9184a",
                   "numpy": "#6c757d"}
OTHER_COLOURS = ("#8338ec", "#2a9d8f", "#b5179e", "#264653")
WIDTH = 11.0  # inches at 100 dpi: the page's content width


@dataclass
class FigureOut:
    """A rendered figure: file name, heading, caption and PNG bytes."""

    name: str
    title: str
    caption: str
    png: bytes


SLUG_LIMIT = 60
"""Characters of a model name kept in a figure's file name, before the hash that keeps it unique."""


def file_slug(name: str) -> str:
    """A model name as part of a figure's file name: safe, bounded and unique per model (names come
    from user TOML files, of any length; ``store.file_stem`` adds a hash of the exact name)."""
    return file_stem(name, SLUG_LIMIT)


def png_bytes(fig: Figure) -> bytes:
    """The figure as PNG bytes without the Software stamp: a report rebuilt from the same run is byte-identical."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", metadata={"Software": None})
    return buffer.getvalue()


def variant_colours(variants: list[str], backend_of: dict[str, str]) -> dict[str, tuple]:
    """One colour per backend; a backend's extra modes get lighter shades of it."""
    colours, spare = {}, iter(OTHER_COLOURS * 4)
    seen: dict[str, int] = {}
    base_of: dict[str, str] = {}
    for variant in sorted(variants):
        backend = backend_of.get(variant, variant)
        if backend not in base_of:
            base_of[backend] = BACKEND_COLOURS.get(backend) or next(spare)
        shade = seen.get(backend, 0)
        seen[backend] = shade + 1
        rgb = np.array(to_rgb(base_of[backend]))
        colours[variant] = tuple(rgb + (1 - rgb) * min(0.6, 0.35 * shade))
    return colours


def _tick(value: float, _position=None) -> str:
    """Axis labels without trailing zeros: 20k, 1.5k, 500."""
    text = fmt.sig(value, digits=2)
    number = text.rstrip("kMGT")
    return (number.rstrip("0").rstrip(".") if "." in number else number) + text[len(number):]


def _errors(estimates) -> np.ndarray:
    low = [max(e.value - e.low, 0) if e.ok else 0 for e in estimates]
    high = [max(e.high - e.value, 0) if e.ok else 0 for e in estimates]
    return np.array([low, high])


def throughput(heads: list[ModelHeadline], colours: dict) -> FigureOut | None:
    """Grouped bars: train and inference samples/s per model, one bar per backend."""
    panels = (TRAIN_THROUGHPUT, INFERENCE_THROUGHPUT)
    if not any(r.entries[m.field].value.ok for h in heads for r in h.rows for m in panels):
        return None
    variants = sorted({r.variant for h in heads for r in h.rows})
    fig = Figure(figsize=(WIDTH, 4.0), layout="constrained")
    axes = fig.subplots(1, 2)
    width = 0.8 / max(len(variants), 1)
    for ax, metric in zip(axes, panels):
        field = metric.field
        values = [r.entries[field].value.value for h in heads for r in h.rows if r.entries[field].value.ok]
        for i, variant in enumerate(variants):
            ests = [next((r.entries[field].value for r in h.rows if r.variant == variant), None) for h in heads]
            xs = [j + (i - (len(variants) - 1) / 2) * width for j, e in enumerate(ests) if e is not None and e.ok]
            ests = [e for e in ests if e is not None and e.ok]
            if ests:
                ax.bar(xs, [e.value for e in ests], width, yerr=_errors(ests), capsize=3,
                       color=colours[variant], label=plain(variant), edgecolor="white", linewidth=0.5)
        if values and max(values) / max(min(values), 1e-12) > 30:
            ax.set_yscale("log")
            ax.yaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
            ax.yaxis.set_minor_formatter(NullFormatter())
        ax.set_xticks(range(len(heads)), [plain(h.model) for h in heads])
        ax.set_title(f"{metric.label} (samples/s, higher is better)")
        ax.yaxis.set_major_formatter(_tick)
        ax.grid(axis="x", visible=False)
    axes[0].legend(frameon=False, fontsize=9)
    return FigureOut("throughput", "Throughput by backend and model",
                     "Median samples per second over the configurations every backend finished; error bars "
                     "are bootstrap 95% intervals over repeats.", png_bytes(fig))


def accuracy_heatmap(frame: pd.DataFrame, model: str, colours: dict) -> FigureOut | None:
    """Optimizer x activation grid of median test accuracy, one panel per backend; empty cells say why."""
    rows = frame[frame["model"] == model]
    optimizers = sorted(set(rows["optimizer"].dropna()))
    activations = sorted(set(rows["activation"].dropna()))
    variants = sorted(set(rows["variant"]))
    ok = rows[rows["status"] == "ok"]
    if len(optimizers) * len(activations) < 2 or ok[TEST_ACCURACY.field].notna().sum() == 0:
        return None
    if throughput_only(ok).all():  # measured for speed only: no accuracy to map (the headline says why)
        return None
    grids, labels = {}, {}
    for variant in variants:
        grid = np.full((len(optimizers), len(activations)), np.nan)
        text = [["" for _ in activations] for _ in optimizers]
        for i, opt in enumerate(optimizers):
            for j, act in enumerate(activations):
                cell = rows[(rows["variant"] == variant) & (rows["optimizer"] == opt) & (rows["activation"] == act)]
                ok_cell = cell[cell["status"] == "ok"]
                est = pooled_estimate(ok_cell, TEST_ACCURACY.field)
                if est.ok and unconverged(ok_cell).all():  # not a result: greyed, value in brackets
                    text[i][j] = f"({100 * est.value:.1f})†"
                elif est.ok:
                    grid[i, j], text[i][j] = est.value, f"{100 * est.value:.1f}"
                else:
                    text[i][j] = cell["status"].value_counts().index[0] if len(cell) else "not run"
        grids[variant], labels[variant] = grid, text
    finite = np.concatenate([g[np.isfinite(g)] for g in grids.values()])
    if not finite.size:
        finite = ok[TEST_ACCURACY.field].dropna().to_numpy()
    vmin, vmax = float(finite.min()), float(finite.max())
    if vmax - vmin < 1e-3:
        vmin, vmax = vmin - 0.01, vmax + 0.01
    cell_w = 0.8 * len(activations) + 1.2
    nrows = math.ceil(len(variants) / max(1, min(len(variants), int((WIDTH - 1.2) // cell_w))))
    cols = math.ceil(len(variants) / nrows)  # balanced rows: 2 + 2 rather than 3 + 1
    fig = Figure(figsize=(min(WIDTH, cols * cell_w + 1.2), nrows * (0.45 * len(optimizers) + 1.3)),
                 layout="constrained")
    axes = np.atleast_1d(fig.subplots(nrows, cols, squeeze=False)).ravel()
    cmap = matplotlib.colormaps["viridis"].with_extremes(bad="#eeeeee")
    image = None
    for ax, variant in zip(axes, variants):
        image = ax.imshow(np.ma.masked_invalid(grids[variant]), cmap=cmap, vmin=vmin, vmax=vmax, aspect="auto")
        for i in range(len(optimizers)):
            for j in range(len(activations)):
                value = grids[variant][i, j]
                dark = np.isfinite(value) and (value - vmin) / (vmax - vmin) < 0.6
                label = plain(labels[variant][i][j])
                ax.text(j, i, label, ha="center", va="center", fontsize=8.5, color="white" if dark else "#333333",
                        fontstyle="italic" if label.endswith("†") else "normal")
        ax.set_title(plain(variant), color=colours.get(variant, "black"), fontweight="bold")
        ax.set_xticks(range(len(activations)), [plain(a) for a in activations], rotation=30, ha="right")
        ax.set_yticks(range(len(optimizers)), [plain(o) for o in optimizers])
        ax.grid(False)
    for ax in axes[len(variants):]:
        ax.set_visible(False)
    # decimals=None: as many as the colour range needs, so a narrow range (88.5-92.2%) gets no twin ticks
    fig.colorbar(image, ax=list(axes[: len(variants)]), shrink=0.9, label="test accuracy",
                 format=PercentFormatter(xmax=1.0, decimals=None))
    return FigureOut(f"accuracy_{file_slug(model)}", f"Accuracy: {model}, optimizer × activation",
                     "Median test accuracy (%) over repeats for each optimizer and hidden activation; grey "
                     "cells did not finish and name their status. † (greyed, in brackets): training did not "
                     "converge in its budget, so the accuracy is not a result.", png_bytes(fig))


def plain_value(value) -> str:
    """A config value as a person writes it: 128 not 128.0, '' for missing."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return f"{value:g}" if isinstance(value, float) else str(value)


def reference_config(rows: pd.DataFrame) -> tuple[str, dict] | None:
    """The configuration most backends ran (ties: most rows, then alphabetical), as key and values."""
    if rows.empty:
        return None
    keys = config_keys(rows)
    score = rows.assign(_key=keys).groupby("_key").agg(n_variants=("variant", "nunique"), n=("variant", "size"))
    best = score.sort_values(["n_variants", "n"], ascending=False, kind="stable").index[0]
    return best, rows.loc[keys == best, list(CONFIG_AXES)].iloc[0].to_dict()


def training_curves(curves: pd.DataFrame, model: str, colours: dict) -> FigureOut | None:
    """Loss and validation accuracy per epoch for one shared configuration, one line per backend."""
    mine = curves[curves["model"] == model]
    found = reference_config(mine)
    if found is None or mine["train_loss"].notna().sum() == 0:
        return None
    key, reference = found
    chosen = mine[config_keys(mine) == key]
    fig = Figure(figsize=(WIDTH, 3.6), layout="constrained")
    loss_ax, acc_ax = fig.subplots(1, 2)
    groups = list(chosen.groupby("variant"))
    for rank, (variant, group) in enumerate(groups):
        by_epoch = group.groupby("epoch")
        colour = colours[variant]
        width = 1.3 + 1.6 * (len(groups) - 1 - rank)  # earlier lines wider, so coinciding lines stay visible
        for column, ax, style in (("train_loss", loss_ax, "-"), ("val_loss", loss_ax, "--"),
                                  ("val_accuracy", acc_ax, "-")):
            median = by_epoch[column].median()
            if median.notna().sum() == 0:
                continue
            ax.plot(median.index, median.values, style, marker="o", markersize=2 + width, color=colour,
                    linewidth=width, label=plain(variant) if column != "val_loss" else None)
            if by_epoch[column].count().max() > 1:
                ax.fill_between(median.index, by_epoch[column].min(), by_epoch[column].max(),
                                color=colour, alpha=0.1, linewidth=0)
    loss_ax.set(title="Loss per epoch (solid: train, dashed: validation)", xlabel="epoch", ylabel="loss")
    acc_ax.set(title="Validation accuracy per epoch", xlabel="epoch", ylabel="accuracy")
    acc_ax.yaxis.set_major_formatter(lambda y, _: f"{100 * y:.1f}%")
    for ax in (loss_ax, acc_ax):
        ax.xaxis.get_major_locator().set_params(integer=True)
        if ax.has_data():
            ax.legend(frameon=False, fontsize=8)
    if not acc_ax.has_data():
        acc_ax.set_axis_off()
        acc_ax.text(0.5, 0.5, "no validation split in this run", ha="center", va="center",
                    transform=acc_ax.transAxes, color="#5b6475")
    described = ", ".join(f"{k.replace('_', ' ')} {plain_value(v)}" for k, v in reference.items()
                          if k != "model" and plain_value(v))
    return FigureOut(f"curves_{file_slug(model)}", f"Training curves: {model}",
                     f"Median over repeats per epoch (band: min to max) for the configuration most backends "
                     f"ran: {described}. Lines that coincide mean the backends computed the same thing.", png_bytes(fig))


def compile_vs_steady(heads: list[ModelHeadline], colours: dict) -> FigureOut | None:
    """Stacked bars per model and backend: one-off compile/warm-up cost next to steady-state training time."""
    bars = []
    for head in heads:
        for variant, pool in head.pools.items():
            compile_s = pooled_estimate(pool, COMPILE_TIME.field)
            steady = pooled_estimate(pool, TRAIN_TIME.field)
            if steady.ok:
                bars.append((f"{head.model} · {variant}", variant, compile_s.value if compile_s.ok else 0.0,
                             steady.value))
    if not bars:
        return None
    fig = Figure(figsize=(WIDTH, 0.35 * len(bars) + 1.2), layout="constrained")
    ax = fig.subplots()
    ys = np.arange(len(bars))[::-1]
    for y, (_, variant, compile_s, steady) in zip(ys, bars):
        ax.barh(y, compile_s, color=colours[variant], hatch="////", edgecolor="white", alpha=0.55)
        ax.barh(y, steady, left=compile_s, color=colours[variant])
        share = compile_s / (compile_s + steady) if compile_s + steady > 0 else 0
        text = f"  {fmt.seconds(compile_s)} + {fmt.seconds(steady)} ({100 * share:.0f}% compile)"
        ax.text(compile_s + steady, y, text, va="center", fontsize=8.5)
    ax.set_yticks(ys, [plain(b[0]) for b in bars])
    ax.set_xlabel("seconds (hatched: compile / first-step overhead; solid: steady-state training, all epochs)")
    ax.set_xlim(0, max(c + s for _, _, c, s in bars) * 1.45)
    ax.grid(axis="y", visible=False)
    return FigureOut("compile_vs_steady", "Compile time vs steady-state time",
                     "Median one-off compile/warm-up overhead (first step minus a steady step) stacked with the "
                     "median steady-state training time; the share says how much a short run pays for "
                     "compilation.", png_bytes(fig))


def time_to_target(heads: list[ModelHeadline], colours: dict) -> FigureOut | None:
    """Horizontal bars: median training seconds until validation accuracy first reached the target."""
    bars, targets = [], set()
    for head in heads:
        for variant, pool in head.pools.items():
            if pool[TIME_TO_TARGET.field].notna().any() or pool["target_accuracy"].notna().any():
                reached = pool[TIME_TO_TARGET.field].notna()
                targets |= set(pool["target_accuracy"].dropna())
                bars.append((f"{head.model} · {variant}", variant,
                             pooled_estimate(pool[reached], TIME_TO_TARGET.field),
                             int(reached.sum()), len(pool)))
    if not any(est.ok for _, _, est, _, _ in bars):
        return None  # nothing reached the target: the headline's accuracies already say so
    fig = Figure(figsize=(WIDTH, 0.35 * len(bars) + 1.2), layout="constrained")
    ax = fig.subplots()
    ys = np.arange(len(bars))[::-1]
    top = max((b[2].high for b in bars if b[2].ok), default=1.0)
    for y, (_, variant, est, hits, n) in zip(ys, bars):
        if est.ok:
            ax.barh(y, est.value, xerr=_errors([est]), capsize=3, color=colours[variant])
            ax.text(est.high, y, f"  {fmt.seconds(est.value)}  (reached in {hits} of {n} runs)", va="center",
                    fontsize=8.5)
        else:
            ax.text(0, y, f"  not reached in {n} run(s)", va="center", fontsize=8.5, color="#b00020")
    ax.set_yticks(ys, [plain(b[0]) for b in bars])
    ax.set_xlim(0, top * 1.5)
    ax.set_xlabel("training seconds until validation accuracy first reached the target")
    ax.grid(axis="y", visible=False)
    target = ", ".join(fmt.percent(t) for t in sorted(targets)) or "the target"
    return FigureOut("time_to_target", "Time to target accuracy",
                     f"Median steady-state training time until validation accuracy first reached {target}, "
                     "over the repeats that reached it; error bars are bootstrap 95% intervals.", png_bytes(fig))


def augmentation_cost(rows: list[AugmentationRow], colours: dict) -> FigureOut | None:
    """Bars: augmented / plain training throughput per model and augmentation, one bar per backend."""
    rows = [r for r in rows if r.cost.ok]
    if not rows:
        return None
    groups = list(dict.fromkeys((r.model, r.augment) for r in rows))
    variants = sorted({r.variant for r in rows})
    fig = Figure(figsize=(WIDTH, 3.6), layout="constrained")
    ax = fig.subplots()
    width = min(0.8 / len(variants), 0.2)
    for i, variant in enumerate(variants):
        mine = {(r.model, r.augment): r.cost for r in rows if r.variant == variant}
        xs = [j + (i - (len(variants) - 1) / 2) * width for j, g in enumerate(groups) if g in mine]
        ests = [mine[g] for g in groups if g in mine]
        ax.bar(xs, [e.value for e in ests], width, yerr=_errors(ests), capsize=3, color=colours[variant],
               label=variant, edgecolor="white", linewidth=0.5)
    ax.axhline(1.0, color="#1d2433", linewidth=0.8)
    ax.set_xticks(range(len(groups)), [f"{model}\n{augment}" for model, augment in groups], fontsize=8)
    ax.set_title("Training throughput with augmentation / without (1 = free, lower costs more)")
    ax.grid(axis="x", visible=False)
    ax.legend(frameon=False, fontsize=9)
    return FigureOut("augmentation_cost", "Throughput cost of augmentation",
                     "Per backend: augmented over plain training samples/s of the same configurations in this run "
                     "(median over configurations); error bars are bootstrap 95% intervals over repeats.", png_bytes(fig))


def time_breakdown(costs: pd.DataFrame) -> FigureOut | None:
    """Stacked bars per backend: worker start-up and each phase of its cells, in seconds."""
    if costs.empty:
        return None
    shades = ("#6c757d", "#b8c1d1", "#f4a261", "#2a9d8f", "#8ecae6", "#e9c46a", "#dddddd")  # one per part of PARTS
    fig = Figure(figsize=(WIDTH, 0.5 * len(costs) + 1.6), layout="constrained")
    ax = fig.subplots()
    ys = np.arange(len(costs))[::-1]
    for y, row in zip(ys, costs.to_dict("records")):
        left = 0.0
        for part, shade in zip(PARTS, shades, strict=True):
            ax.barh(y, row[part], left=left, color=shade, edgecolor="white", label=part if y == ys[0] else None)
            left += row[part]
        ax.text(left, y, f"  {fmt.seconds(row['total'])} ({row['cells']:.0f} cells)", va="center", fontsize=8.5)
    ax.set_yticks(ys, list(costs["backend"]))
    ax.set_xlim(0, float(costs["total"].max()) * 1.25)
    ax.set_xlabel("seconds")
    ax.grid(axis="y", visible=False)
    fig.legend(frameon=False, fontsize=8, ncols=len(PARTS), loc="outside upper center")
    return FigureOut("time_breakdown", "Where the time went",
                     "Seconds per backend: worker start-up (framework import, once per worker) and, summed over "
                     f"its cells, {', '.join(phase.caption for phase in PHASES)}, and the rest.", png_bytes(fig))


def all_figures(frame: pd.DataFrame, curves: pd.DataFrame, heads: list[ModelHeadline],
                augmentation: list[AugmentationRow] = (), costs: pd.DataFrame | None = None) -> list[FigureOut]:
    """Every figure the run's data supports, in reading order."""
    backend_of = dict(zip(frame["variant"], frame["backend"])) | {r.variant: r.backend for r in augmentation}
    colours = variant_colours(sorted(backend_of), backend_of)
    models = [h.model for h in heads]
    figures = [throughput(heads, colours)]
    figures += [accuracy_heatmap(frame, m, colours) for m in models]
    figures += [training_curves(curves, m, colours) for m in models]
    figures += [compile_vs_steady(heads, colours), time_to_target(heads, colours), augmentation_cost(augmentation, colours)]
    figures += [time_breakdown(costs)] if costs is not None else []
    return [f for f in figures if f is not None]

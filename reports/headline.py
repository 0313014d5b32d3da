"""The headline comparison: per model, each backend's key metrics and their ratio to a baseline backend.

A fair headline compares like with like: for each model, only the configurations (optimizer,
activation, loss, batch size, ...) that every compared backend finished are pooled, so a backend
that skipped the slow configurations does not look fast. When no configuration is shared the
pooling falls back to everything each backend finished, and the table says so.

An accuracy is a result only where training converged (the record's ``converged``): accuracies of
cells whose training budget was too short are left out of the headline accuracy, counted, and
shown apart (greyed, with a footnote) when no cell of a row converged.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from bench.errors import BenchError
from bench.results.record import Status
from bench.results.stats import MISSING, Estimate, grouped_comparison, grouped_median_interval
from reports.metrics import HEADLINE, TEST_ACCURACY, Metric
from reports.records import CONFIG_AXES, PROBLEM_STATUSES, config_keys, counted, throughput_only, unconverged


@dataclass
class Entry:
    """One backend's value of one metric, and its comparison with the baseline (MISSING for the baseline)."""

    value: Estimate
    versus: Estimate = MISSING

    def verdict(self, metric: Metric) -> str:
        """'better', 'worse' or 'same' (interval includes no change, or too few repeats)."""
        neutral = 1.0 if metric.relative else 0.0
        if not self.versus.excludes(neutral):
            return "same"
        up = self.versus.value > neutral
        return "better" if up == metric.higher_is_better else "worse"


@dataclass
class Row:
    variant: str
    framework: str | None
    n_configs: int
    n_records: int
    problems: dict[str, int]
    entries: dict[str, Entry]
    is_baseline: bool = False
    unconverged: int = 0
    """Pooled records whose training did not converge (left out of the accuracy)."""
    unconverged_accuracy: Estimate = MISSING
    """The accuracy over every pooled record, shown (greyed) only when none of them converged."""
    noisy: int = 0
    """Pooled records measured while other load disturbed the machine (bench.measure.load)."""
    throughput_only: bool = False
    """Every pooled record was measured for speed only: there is no accuracy to show, greyed or not."""


@dataclass
class ModelHeadline:
    model: str
    rows: list[Row]
    baseline: str | None
    """The baseline variant when it finished this model, else None (no ratios for this model)."""
    matched: bool
    """True when all rows pool the same configurations."""
    configs: list[dict] = field(default_factory=list)
    """The shared configurations (empty when unmatched)."""
    pools: dict[str, pd.DataFrame] = field(default_factory=dict, repr=False)
    """Per variant, the ok records behind its row: the figures draw from the same records."""


def choose_baseline(frame: pd.DataFrame, requested: str | None) -> str | None:
    """The baseline variant: the requested backend or variant, else torch, else the first that finished.

    A backend that ran several modes is represented by its eager mode when it has one.
    """
    ok = frame[frame["status"] == Status.OK]
    if requested:
        if requested in set(frame["variant"]):
            return requested
        if requested not in set(frame["backend"]):
            known = ", ".join(sorted(set(frame["backend"])))
            raise BenchError(f"baseline {requested!r} is not a backend of this run; backends: {known}")
    candidates = sorted(set(ok["variant"]))
    wanted = requested or "torch"
    for label in (wanted, f"{wanted} (eager)"):
        if label in candidates:
            return label
    own = sorted(v for v in candidates if ok.loc[ok["variant"] == v, "backend"].iloc[0] == wanted)
    if own:
        return own[0]
    return None if requested else (candidates[0] if candidates else None)


def by_config(pool: pd.DataFrame, field: str, keys: list[str], counted_only: bool = True) -> list[pd.Series]:
    """``field`` of ``pool`` split into one group per configuration key, in the order of ``keys``: the
    values the reports count (``counted``: no unconverged accuracy), or every value (``counted_only``
    False, to show what an unconverged cell reached)."""
    own = config_keys(pool)
    values = counted(pool, field) if counted_only else pool[field]
    return [values[own == key] for key in keys]


def pooled_estimate(pool: pd.DataFrame, field: str) -> Estimate:
    """``field`` over all configurations in ``pool``: median of per-configuration medians, with interval."""
    return grouped_median_interval(by_config(pool, field, sorted(set(config_keys(pool)))))


def model_headline(frame: pd.DataFrame, model: str, baseline: str | None) -> ModelHeadline:
    """The headline rows of one model (every variant that has records of it).

    Each value is the median over configurations of the per-configuration median; a ratio to the
    baseline is taken per configuration and then summarised, so the interval reflects repeat noise
    rather than how much sgd and adam differ.
    """
    rows_of_model = frame[frame["model"] == model]
    ok = rows_of_model[rows_of_model["status"] == Status.OK]
    keys = config_keys(ok)
    finished = {v: set(keys[ok["variant"] == v]) for v in sorted(set(ok["variant"]))}
    shared = sorted(set.intersection(*finished.values())) if finished else []
    matched = bool(shared) or len(finished) <= 1
    pools = {v: ok[(ok["variant"] == v) & (keys.isin(shared) if shared else True)] for v in finished}
    config_order = {v: shared or sorted(finished[v]) for v in finished}
    base = baseline if baseline in pools else None
    rows = []
    for variant in sorted(set(rows_of_model["variant"]), key=lambda v: (v != base, v)):
        pool = pools.get(variant, ok.iloc[0:0])
        order = config_order.get(variant, [])
        everything = rows_of_model[rows_of_model["variant"] == variant]
        entries = {}
        for metric in HEADLINE:
            groups = by_config(pool, metric.field, order)
            entry = Entry(grouped_median_interval(groups))
            if base is not None and variant != base and entry.value.ok:
                combine = np.divide if metric.relative else np.subtract
                base_groups = by_config(pools[base], metric.field, config_order[base])
                entry.versus = grouped_comparison(groups, base_groups, combine, paired=bool(shared))
            entries[metric.field] = entry
        rows.append(Row(
            variant=variant,
            framework=next(iter(everything["framework"].dropna()), None),
            n_configs=len(order),
            n_records=len(pool),
            problems={s: int((everything["status"] == s).sum()) for s in PROBLEM_STATUSES
                      if (everything["status"] == s).any()},
            entries=entries,
            is_baseline=variant == base,
            unconverged=int(unconverged(pool).sum()),
            unconverged_accuracy=grouped_median_interval(by_config(pool, TEST_ACCURACY.field, order, counted_only=False)),
            noisy=int(pool["noisy"].map(lambda v: v is True).sum()),
            throughput_only=bool(len(pool)) and bool(throughput_only(pool).all()),
        ))
    configs = ok[keys.isin(shared)][list(CONFIG_AXES)].drop_duplicates().to_dict("records") if shared else []
    return ModelHeadline(model, rows, base, matched, configs, pools)


def headlines(frame: pd.DataFrame, baseline: str | None) -> list[ModelHeadline]:
    """One headline per model, in the order models first appear in the run."""
    models = list(dict.fromkeys(frame["model"].dropna()))
    return [model_headline(frame, m, baseline) for m in models]

"""What a framework's own defaults cost: native minus harmonised, per model and backend.

A run with ``--semantics harmonised,native`` trains every configuration under both policies. Here
each backend's native records are paired with its harmonised ones of the same configuration and
mode, and the change of test accuracy and of the final training loss is a median over those
configurations with a bootstrap interval over repeats. Native runs cannot start from identical
weights (each framework draws its own), so a native difference between two frameworks also holds
initialisation luck; the parity ladder runs harmonised only.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from bench.results.stats import Estimate, grouped_comparison, grouped_median_interval
from bench.spec.semantics import HARMONISED, NATIVE
from reports.figures import BACKEND_COLOURS, WIDTH, FigureOut, file_slug, plain_value, png_bytes, reference_config
from reports.metrics import FINAL_TRAIN_LOSS, TEST_ACCURACY
from reports.records import config_axes_but, config_keys, counted

TWIN_AXES = config_axes_but("semantics_policy")
"""What a native cell and its harmonised twin share, on any backend."""
PAIR_AXES = (*TWIN_AXES, "mode")
"""What must match for a native and a harmonised record to be the same experiment."""
VALUES = ("epsilon", "rho", "bn_momentum_framework", "bn_epsilon", "leaky_relu_slope", "init", "init_source")
"""The effective values a record lists, shown per policy."""
POLICY_STYLE = {HARMONISED: ("-", "o"), NATIVE: ("--", "s")}

CAVEAT = ("Native runs cannot start from identical weights: each framework draws its own initial weights with its "
          "own random generator, so under native a difference between two frameworks mixes their defaults with "
          "initialisation luck. The parity ladder (bench parity) runs the harmonised policy only.")


@dataclass
class PolicyShift:
    """One backend's move from harmonised to native on one model."""

    backend: str
    n_configs: int
    harmonised_accuracy: Estimate
    native_accuracy: Estimate
    accuracy: Estimate
    """Native minus harmonised test accuracy, paired per configuration."""
    final_loss: Estimate
    """Native minus harmonised final training loss, paired per configuration."""
    values: dict[str, dict[str, object]]
    """Per policy, the effective values its first record lists (VALUES)."""
    rules_changed: dict[str, tuple[str, str]]
    """Framework rules (bench.spec.rules) whose formula differs between the policies: name -> (harmonised, native)."""


@dataclass
class PolicyComparison:
    model: str
    rows: list[PolicyShift]


def _values(records: pd.DataFrame) -> dict[str, object]:
    first = records.iloc[0]
    return {name: first[name] for name in VALUES if name in records.columns and pd.notna(first[name])}


def _rules_changed(harmonised: pd.DataFrame, native: pd.DataFrame) -> dict[str, tuple[str, str]]:
    before, after = (next((r for r in pool["rules"] if isinstance(r, dict)), {}) if "rules" in pool else {}
                     for pool in (harmonised, native))
    return {k: (before[k], after[k]) for k in before if k in after and before[k] != after[k]}


def _shift(ok: pd.DataFrame, backend: str) -> PolicyShift | None:
    mine = ok[ok["backend"] == backend]
    native, harmonised = mine[mine["semantics_policy"] == NATIVE], mine[mine["semantics_policy"] == HARMONISED]
    keys = sorted(set(config_keys(native, PAIR_AXES)) & set(config_keys(harmonised, PAIR_AXES)))
    if not keys:
        return None
    native = native[config_keys(native, PAIR_AXES).isin(keys)]
    harmonised = harmonised[config_keys(harmonised, PAIR_AXES).isin(keys)]

    def groups(pool: pd.DataFrame, field: str) -> list[pd.Series]:
        pairs, values = config_keys(pool, PAIR_AXES), counted(pool, field)  # no unconverged accuracy
        return [values[pairs == k] for k in keys]

    def change(field: str) -> Estimate:
        return grouped_comparison(groups(native, field), groups(harmonised, field), np.subtract, paired=True)

    return PolicyShift(
        backend, len(keys),
        grouped_median_interval(groups(harmonised, TEST_ACCURACY.field)),
        grouped_median_interval(groups(native, TEST_ACCURACY.field)),
        change(TEST_ACCURACY.field), change(FINAL_TRAIN_LOSS.field),
        {HARMONISED: _values(harmonised), NATIVE: _values(native)}, _rules_changed(harmonised, native),
    )


def policy_comparisons(frame: pd.DataFrame) -> list[PolicyComparison]:
    """Per model (in run order), each backend that finished a configuration under both policies."""
    ok = frame[frame["status"] == "ok"]
    if not {HARMONISED, NATIVE} <= set(ok["semantics_policy"]):
        return []
    out = []
    for model in dict.fromkeys(ok["model"].dropna()):
        rows = [_shift(ok[ok["model"] == model], b) for b in sorted(set(ok.loc[ok["model"] == model, "backend"]))]
        rows = [r for r in rows if r is not None]
        if rows:
            out.append(PolicyComparison(str(model), rows))
    return out


def headline_policy(frame: pd.DataFrame) -> str:
    """The policy the headline, the fastest-mode view and the general figures show: harmonised where
    the run has it (the frameworks then compute the same thing), else native."""
    return HARMONISED if (frame["semantics_policy"] == HARMONISED).any() else NATIVE


def policy_curves(curves: pd.DataFrame, model: str) -> FigureOut | None:
    """One panel per backend: loss per epoch under each policy, for the configuration most backends ran."""
    mine = curves[(curves["model"] == model) & curves["semantics_policy"].isin((HARMONISED, NATIVE))]
    found = reference_config(mine.assign(semantics_policy=""))
    if found is None or mine["train_loss"].notna().sum() == 0:
        return None
    _, reference = found
    wanted = "|".join(map(str, (reference[a] for a in TWIN_AXES)))
    chosen = mine[config_keys(mine, TWIN_AXES) == wanted]
    backends = [b for b in sorted(set(chosen["backend"])) if chosen.loc[chosen["backend"] == b, "semantics_policy"].nunique() == 2]
    if not backends:
        return None
    fig = Figure(figsize=(WIDTH, 3.4), layout="constrained")
    axes = np.atleast_1d(fig.subplots(1, len(backends), sharey=True, squeeze=False)).ravel()
    for ax, backend in zip(axes, backends):
        colour = BACKEND_COLOURS.get(backend, "#6c757d")
        for policy, group in chosen[chosen["backend"] == backend].groupby("semantics_policy"):
            style, marker = POLICY_STYLE[policy]
            for column, alpha in (("train_loss", 1.0), ("val_loss", 0.45)):
                median = group.groupby("epoch")[column].median()
                if median.notna().any():
                    ax.plot(median.index, median.values, style, marker=marker, color=colour, alpha=alpha,
                            label=f"{policy} ({column.replace('_loss', '')})")
        ax.set(title=backend, xlabel="epoch")
        ax.set_xticks(sorted(set(chosen["epoch"])))
        ax.legend(frameon=False, fontsize=8)
    axes[0].set_ylabel("loss")
    described = ", ".join(f"{k.replace('_', ' ')} {plain_value(v)}" for k, v in reference.items()
                          if k not in ("model", "semantics_policy") and plain_value(v))
    return FigureOut(f"policies_{file_slug(model)}", f"Harmonised vs native: {model}",
                     f"Median loss per epoch over repeats (solid: harmonised, dashed: native; faint: validation) "
                     f"for {described}, one panel per backend.", png_bytes(fig))


def describe_values(values: dict[str, object]) -> str:
    """The effective values of one policy in a line: 'eps 1e-08, rho 0.99, BN momentum 0.1, ...'."""
    labels = {"epsilon": "eps", "rho": "rho", "bn_momentum_framework": "BN momentum (as passed)",
              "bn_epsilon": "BN eps", "leaky_relu_slope": "leaky slope"}
    parts = [f"{label} {float(values[k]):g}" for k, label in labels.items() if k in values]
    if "init" in values:
        parts.append(f"init {values['init']} ({values.get('init_source', '?')})")
    return ", ".join(parts)

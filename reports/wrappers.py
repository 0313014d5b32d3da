"""What the wrapper costs: a wrapper (Keras 3) on an engine beside that engine's own adapter, same run.

Every record names its ``engine`` (the framework whose kernels ran the maths) and its ``wrapper``
(``keras``, or none for a framework's own API); both come from the backend registry
(backends/__init__.py), so this view pairs Keras on JAX with the JAX adapter and Keras on torch with
the torch adapter without knowing either. Keras on TensorFlow (the ``tf`` backend) has no native
TensorFlow adapter beside it in the suite, so its row says so.

Per model, each wrapper is compared with its engine's adapter on the configurations both finished
(paired per configuration, bootstrap intervals over repeats, as the headline does): train and
inference throughput ratios, compile time and peak memory side by side, and the test-accuracy
difference (of converged cells only, as in the headline). Under ``harmonised`` both start from the
same weights and batches and compute the same model, so that difference must be zero within
``ACCURACY_TOLERANCE``; where the two follow different
framework rules (bench/spec/rules.py: Keras' epsilon placement, torch's unbiased running variance),
the row names them. Each backend is taken at its fastest mode in the run (its only mode unless
``--modes`` asked for more), as in "each framework at its fastest". The second table answers which
engine runs Keras fastest per model (docs/architecture.md, "Keras engines").
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from bench.results.record import Status
from bench.results.stats import MISSING, Estimate, grouped_comparison, grouped_median_interval
from reports.headline import by_config
from reports.metrics import (
    COMPILE_TIME,
    INFERENCE_THROUGHPUT,
    PEAK_DEVICE_MEMORY,
    PEAK_HOST_MEMORY,
    TEST_ACCURACY,
    TRAIN_THROUGHPUT,
)
from reports.records import config_keys

ACCURACY_TOLERANCE = 0.005
"""Half a point of test accuracy: a wrapper and its engine's adapter, started from the same weights on
the same batches, differ only by float32 rounding that training amplifies (and by a declared framework
rule, named in the row); a larger gap is flagged."""


@dataclass
class Side:
    """One backend's records for a model at its fastest mode."""

    backend: str
    mode: str
    records: pd.DataFrame


@dataclass
class WrapperCost:
    """One wrapper backend against its engine's own adapter on one model (``native`` None: none ran)."""

    wrapped: Side
    engine: str
    native: Side | None
    n_configs: int = 0
    train: Estimate = MISSING
    """Wrapper / native train samples per second, paired per configuration."""
    inference: Estimate = MISSING
    compile: tuple[Estimate, Estimate] = (MISSING, MISSING)
    """Compile time of the wrapper and of the native adapter."""
    host_memory: tuple[Estimate, Estimate] = (MISSING, MISSING)
    device_memory: tuple[Estimate, Estimate] = (MISSING, MISSING)
    """Peak host RSS and peak device memory of the wrapper and of the native adapter (two quantities, never mixed)."""
    accuracy: Estimate = MISSING
    """Wrapper minus native test accuracy, paired per configuration."""
    rules: tuple[str, ...] = ()
    """Framework rules on which the two differ (they can move the accuracy)."""

    @property
    def accuracy_agrees(self) -> bool | None:
        return abs(self.accuracy.value) <= ACCURACY_TOLERANCE if self.accuracy.ok else None


@dataclass
class EngineRow:
    """One wrapper engine on one model: its speeds, compile time, accuracy, and ratio to the fastest."""

    side: Side
    engine: str
    train: Estimate
    inference: Estimate
    compile: Estimate
    accuracy: Estimate
    versus_fastest: Estimate = MISSING
    fastest: bool = False


@dataclass
class WrapperView:
    model: str
    wrapper: str
    costs: list[WrapperCost]
    engines: list[EngineRow]


def _fastest_mode(records: pd.DataFrame, backend: str) -> Side:
    mine = records[records["backend"] == backend]
    speeds = mine.groupby("mode")[TRAIN_THROUGHPUT.field].median()
    mode = str(speeds.idxmax()) if speeds.notna().any() else str(mine["mode"].iloc[0])
    return Side(backend, mode, mine[mine["mode"] == mode])


def _estimate(side: Side, field: str, converged_only: bool = False) -> Estimate:
    return grouped_median_interval(by_config(side.records, field, sorted(set(config_keys(side.records))), converged_only))


def _rules(a: pd.DataFrame, b: pd.DataFrame) -> tuple[str, ...]:
    first, second = (next((r for r in pool["rules"] if isinstance(r, dict)), {}) for pool in (a, b))
    return tuple(k for k in first if k in second and first[k] != second[k])


def _cost(wrapped: Side, engine: str, native: Side | None) -> WrapperCost:
    if native is None:
        return WrapperCost(wrapped, engine, None)
    keys = sorted(set(config_keys(wrapped.records)) & set(config_keys(native.records)))
    if not keys:
        return WrapperCost(wrapped, engine, native)

    def compare(field: str, combine, converged_only: bool = False) -> Estimate:
        return grouped_comparison(by_config(wrapped.records, field, keys, converged_only),
                                  by_config(native.records, field, keys, converged_only), combine, paired=True)

    def both(field: str) -> tuple[Estimate, Estimate]:
        return (grouped_median_interval(by_config(wrapped.records, field, keys)),
                grouped_median_interval(by_config(native.records, field, keys)))

    return WrapperCost(wrapped, engine, native, len(keys), compare(TRAIN_THROUGHPUT.field, np.divide),
                       compare(INFERENCE_THROUGHPUT.field, np.divide), both(COMPILE_TIME.field),
                       both(PEAK_HOST_MEMORY.field), both(PEAK_DEVICE_MEMORY.field),
                       compare(TEST_ACCURACY.field, np.subtract, TEST_ACCURACY.converged_only),
                       _rules(wrapped.records, native.records))


def _engines(sides: list[tuple[Side, str]]) -> list[EngineRow]:
    rows = [EngineRow(side, engine, _estimate(side, TRAIN_THROUGHPUT.field), _estimate(side, INFERENCE_THROUGHPUT.field),
                      _estimate(side, COMPILE_TIME.field), _estimate(side, TEST_ACCURACY.field, TEST_ACCURACY.converged_only))
            for side, engine in sides]
    finished = [r for r in rows if r.train.ok]
    if len(finished) < 2:
        return rows
    best = max(finished, key=lambda r: r.train.value)
    best.fastest = True
    for row in finished:
        if row is not best:
            keys = sorted(set(config_keys(row.side.records)) & set(config_keys(best.side.records)))
            row.versus_fastest = grouped_comparison(by_config(row.side.records, TRAIN_THROUGHPUT.field, keys),
                                                    by_config(best.side.records, TRAIN_THROUGHPUT.field, keys),
                                                    np.divide, paired=True)
    return sorted(rows, key=lambda r: -r.train.value if r.train.ok else np.inf)


def wrapper_views(frame: pd.DataFrame) -> list[WrapperView]:
    """Per model (in run order) and wrapper, each wrapper backend that finished a cell, where there is
    something to compare: a wrapped engine whose own adapter is in the run, or two engines to rank.
    None for a run of the default backends alone (Keras on TensorFlow, which has no counterpart) or
    of records that predate the engine and wrapper fields."""
    ok = frame[(frame["status"] == Status.OK) & frame["engine"].notna()]
    views = []
    for model in dict.fromkeys(ok["model"].dropna()):
        mine = ok[ok["model"] == model]
        natives = {str(engine): str(group["backend"].iloc[0])
                   for engine, group in mine[mine["wrapper"].isna()].groupby("engine")}
        for wrapper, wrapped in mine[mine["wrapper"].notna()].groupby("wrapper"):
            sides = [(_fastest_mode(mine, str(b)), str(g["engine"].iloc[0])) for b, g in wrapped.groupby("backend")]
            costs = [_cost(side, engine, _fastest_mode(mine, natives[engine]) if engine in natives else None)
                     for side, engine in sides]
            if len(sides) > 1 or any(cost.native is not None for cost in costs):
                views.append(WrapperView(str(model), str(wrapper), costs, _engines(sides)))
    return views

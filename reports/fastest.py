"""Each framework at its fastest: per model, the execution mode that trained fastest on every backend.

A comparison is unfair when one framework runs compiled and another eager (``--modes best`` runs
every compiled mode of each backend). This view answers "who is fastest when each is at its best"
on one line per backend: the winning mode by median train samples/s, its throughput with interval,
its ratio to the baseline backend at its own best, and the compile cost that bought it. It reads
the headline's pools, so it compares the same configurations as the headline does.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from bench.results.stats import MISSING, Estimate, grouped_comparison
from reports.headline import ModelHeadline, by_config
from reports.metrics import COMPILE_TIME, TRAIN_THROUGHPUT
from reports.records import config_keys


@dataclass
class ModeResult:
    """One mode of one backend: its variant label, median train throughput and compile time."""

    mode: str
    variant: str
    speed: Estimate
    compile: Estimate
    versus_best: Estimate = MISSING
    """For a mode that lost: its throughput over the winning mode's (an interval including 1 is a tie)."""


@dataclass
class BackendBest:
    """A backend's fastest mode, its ratio to the baseline backend's fastest, and the modes it beat."""

    backend: str
    best: ModeResult
    beaten: list[ModeResult] = field(default_factory=list)
    versus: Estimate = MISSING
    is_baseline: bool = False
    is_fastest: bool = False


@dataclass
class FastestHeadline:
    model: str
    rows: list[BackendBest]
    baseline: str | None
    """The baseline backend (the headline baseline's backend) when it finished this model."""
    several_modes: bool
    """Whether some backend ran more than one mode (else this view repeats the headline)."""


def _modes(head: ModelHeadline) -> dict[str, list[tuple[ModeResult, pd.DataFrame]]]:
    """Per backend, each mode that finished with its pooled estimates and records, fastest first."""
    found: dict[str, list[tuple[ModeResult, pd.DataFrame]]] = {}
    for row in head.rows:
        pool = head.pools.get(row.variant)
        speed = row.entries[TRAIN_THROUGHPUT.field].value
        if pool is None or pool.empty or not speed.ok:
            continue
        result = ModeResult(str(pool["mode"].iloc[0]), row.variant, speed, row.entries[COMPILE_TIME.field].value)
        found.setdefault(str(pool["backend"].iloc[0]), []).append((result, pool))
    return {b: sorted(ms, key=lambda m: -m[0].speed.value) for b, ms in found.items()}


def _ratio(pool: pd.DataFrame, base: pd.DataFrame) -> Estimate:
    """Train throughput of ``pool`` over ``base``, paired per configuration where they share some."""
    own, theirs = set(config_keys(pool)), set(config_keys(base))
    shared = sorted(own & theirs)
    speed = TRAIN_THROUGHPUT.field
    if shared:
        return grouped_comparison(by_config(pool, speed, shared), by_config(base, speed, shared), np.divide, paired=True)
    return grouped_comparison(by_config(pool, speed, sorted(own)), by_config(base, speed, sorted(theirs)),
                              np.divide, paired=False)


def fastest_modes(head: ModelHeadline) -> FastestHeadline:
    """The fastest mode of every backend for one model (ties: the first mode in name order)."""
    modes = _modes(head)
    base_pool = head.pools.get(head.baseline) if head.baseline else None
    base_backend = str(base_pool["backend"].iloc[0]) if base_pool is not None and not base_pool.empty else None
    for ms in modes.values():
        for loser, pool in ms[1:]:
            loser.versus_best = _ratio(pool, ms[0][1])
    rows = [BackendBest(backend, ms[0][0], [m for m, _ in ms[1:]], is_baseline=backend == base_backend)
            for backend, ms in modes.items()]
    if base_backend in modes:
        best_base = modes[base_backend][0][1]
        for row, (backend, ms) in zip(rows, modes.items()):
            if backend != base_backend:
                row.versus = _ratio(ms[0][1], best_base)
    if rows:
        max(rows, key=lambda r: r.best.speed.value).is_fastest = True
    rows.sort(key=lambda r: (not r.is_baseline, r.backend))
    return FastestHeadline(head.model, rows, base_backend if base_backend in modes else None,
                           any(len(ms) > 1 for ms in modes.values()))


def fastest_headlines(heads: list[ModelHeadline]) -> list[FastestHeadline]:
    return [fastest_modes(h) for h in heads]

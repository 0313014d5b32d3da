"""The learning rate of every optimizer step, computed once in NumPy and fed to every framework.

Frameworks each have schedulers (``torch.optim.lr_scheduler``, ``keras.optimizers.schedules``,
``optax.warmup_cosine_decay_schedule``) that differ in where the warm-up starts, whether the
step counter is 0- or 1-based and when they step (per batch or per epoch). The suite uses none of
them: ``learning_rates`` is the one definition, and each backend, and the oracle, reads the rate of
the step it is about to take from it (docs/architecture.md, "Framework rules").
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np

from bench.spec.train import TrainSpec


def _constant(base: float, step: np.ndarray, total: int, warmup: int) -> np.ndarray:
    return np.full(step.shape, base)


def _warmup_cosine(base: float, step: np.ndarray, total: int, warmup: int) -> np.ndarray:
    """Linear from base/warmup up to base over the first ``warmup`` steps, then half a cosine from
    base down towards 0 (the last step's rate is small, never 0)."""
    ramp = base * (step + 1) / max(warmup, 1)
    decay = 0.5 * base * (1.0 + np.cos(math.pi * (step - warmup) / max(total - warmup, 1)))
    return np.where(step < warmup, ramp, decay)


SCHEDULES: dict[str, Callable[[float, np.ndarray, int, int], np.ndarray]] = {
    "constant": _constant, "warmup_cosine": _warmup_cosine,
}
"""Each schedule's rate per step (0-based), from the base rate, the total steps and the warm-up steps."""


def learning_rates(train: TrainSpec, steps_per_epoch: int) -> np.ndarray:
    """The rate of each of the ``train.epochs * steps_per_epoch`` optimizer steps, in float64.

    Warm-up lasts ``round(warmup_fraction * total)`` steps. A constant schedule gives ``train.lr``
    exactly at every step, so the oracle computes what it did before schedules existed; a framework
    rounds a rate to its own float32 where it rounded a constant one. Steps past the end (the
    harness' step-time probe) take the last rate: ``rate_at``.
    """
    total = train.epochs * max(steps_per_epoch, 1)
    warmup = round(train.warmup_fraction * total)
    return SCHEDULES[train.schedule](train.lr, np.arange(total, dtype=np.float64), total, warmup)


def rate_at(rates: np.ndarray, step: int) -> float:
    """The rate of 0-based ``step``; a step beyond the schedule keeps its last rate."""
    return float(rates[min(step, len(rates) - 1)])

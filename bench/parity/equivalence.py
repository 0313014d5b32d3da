"""The parity ladder's statistical rung: do backends reach the same accuracy, over seeds?

mlp/adam/relu on ``digits`` (small, bundled with scikit-learn), trained for a few epochs from each
seed's canonical weights on the seed's batch order, so runs pair up by seed across backends. The
loop uses only the ``Backend`` protocol and ``bench.measure.training``, so it measures the backend, not a
harness. Each backend trains in its own process (``bench.parity.worker``); only the per-seed
accuracies come back, and the test runs on them here.

The test is an equivalence test, TOST (two one-sided paired t-tests), not a difference test:
with 5 seeds a Welch or Mann-Whitney test has little power, so "p > 0.01" would mostly mean "too
few runs"; and since backends start from the same weights and batches, paired differences are
nearly constant (often exactly 0, where a t statistic is undefined), so a difference test would also
call a meaningless, constant 0.3-point gap significant. TOST answers the question asked: is the
gap provably smaller than a margin that matters.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np
from scipy import stats

from backends.base import Backend
from bench.measure import training
from bench.spec.data import load_dataset
from bench.spec.model import SEED_MODELS
from bench.spec.train import TrainSpec

SEEDS = 5
EPOCHS = 5
BATCH_SIZE = 32
MARGIN = 0.02
"""Equivalent means a mean paired accuracy gap under 2 points: the 360-image test set alone has a
binomial standard error of ~1.2 points at 94% accuracy, so a smaller gap is not one to act on."""
ALPHA = 0.05
"""TOST at 5%: the 90% confidence interval of the mean gap lies inside +-MARGIN."""


@dataclass
class EquivalenceResult:
    """One pair of backends: their per-seed accuracies and the paired TOST."""

    a: str
    b: str
    accuracies_a: list[float]
    accuracies_b: list[float]
    mean_difference: float
    ci90: tuple[float, float]
    p_value: float
    passed: bool


def final_accuracy(backend: Backend, seed: int, epochs: int = EPOCHS) -> float:
    """Test accuracy of mlp/adam/relu on digits after ``epochs`` (the suite's default Adam settings)."""
    data = load_dataset("digits")
    model = SEED_MODELS["mlp"].resolve("relu")
    train = TrainSpec(optimizer="adam", activation="relu", batch_size=BATCH_SIZE, epochs=epochs, seed=seed)
    training.prepare(backend, model, train, data.x_train, data.y_train, data.num_classes)
    training.fit(backend, len(data.x_train), train)
    return backend.evaluate(data.x_test, data.y_test, 256)[1]


def paired_tost(a: str, b: str, acc_a: list[float], acc_b: list[float], margin: float = MARGIN) -> EquivalenceResult:
    """TOST of |mean(acc_a - acc_b)| < margin: p is the larger of the two one-sided p-values."""
    d = np.asarray(acc_a, dtype=np.float64) - np.asarray(acc_b, dtype=np.float64)
    mean = float(d.mean())
    if np.ptp(d) == 0:  # every seed gives the same gap: no spread, the answer is exact
        p, ci = (0.0 if abs(mean) < margin else 1.0), (mean, mean)
    else:
        lower = stats.ttest_1samp(d, -margin, alternative="greater").pvalue
        upper = stats.ttest_1samp(d, margin, alternative="less").pvalue
        p = max(float(lower), float(upper))
        half = float(stats.t.ppf(1 - ALPHA, len(d) - 1) * d.std(ddof=1) / np.sqrt(len(d)))
        ci = (mean - half, mean + half)
    return EquivalenceResult(a, b, [float(v) for v in acc_a], [float(v) for v in acc_b], mean, ci, p, p < ALPHA)


def statistical_rung(accuracies: dict[str, list[float]]) -> list[EquivalenceResult]:
    """Every pair of backends tested for equivalent final accuracy, from each one's per-seed
    ``final_accuracy`` (measured wherever the backend runs: its own worker process, as the ladder)."""
    return [paired_tost(a, b, accuracies[a], accuracies[b]) for a, b in itertools.combinations(accuracies, 2)]

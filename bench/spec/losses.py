"""The spec's losses and output probabilities in NumPy: the one definition every backend must match.

Every loss takes logits and integer labels and is a mean over the batch (and over classes for the
per-class losses): cce is softmax cross-entropy; mse/mae compare softmax(logits) with one-hot
targets; bce is per-class sigmoid cross-entropy against one-hot; hinge is max(0, 1 - t*z) with t in
{-1, +1} on the raw logits. ``value`` is what the harness reports as a backend's evaluation loss,
``gradient`` (dL/dlogits, means included) is what the NumPy oracle back-propagates.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from bench.errors import SpecError
from bench.spec.model import LOSSES


def probabilities(logits: np.ndarray, loss: str) -> np.ndarray:
    """Softmax of the logits, or the per-class sigmoid for the bce loss (the spec's ``predict``)."""
    z = logits.astype(np.float64)
    if loss == "bce":
        return 0.5 * (1.0 + np.tanh(0.5 * z))  # = 1 / (1 + e^-z), without overflow for large |z|
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def _onehot(z: np.ndarray, labels: np.ndarray) -> np.ndarray:
    return np.eye(z.shape[1])[labels]


def _cce(z, y):
    shifted = z - z.max(axis=1, keepdims=True)
    logp = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    return -logp[np.arange(len(z)), y].mean()


def _cce_grad(z, y):
    return (probabilities(z, "cce") - _onehot(z, y)) / len(z)


def _softmax_distance_grad(z, y, dp_of_diff):
    n, k = z.shape
    p = probabilities(z, "cce")
    dp = dp_of_diff(p - _onehot(z, y)) / (n * k)
    return p * (dp - (dp * p).sum(axis=1, keepdims=True))  # softmax Jacobian: dp_i/dz_j = p_i (delta_ij - p_j)


def _bce(z, y):
    t = _onehot(z, y)
    return (np.maximum(z, 0) - z * t + np.log1p(np.exp(-np.abs(z)))).mean()


def _hinge_grad(z, y):
    t = 2 * _onehot(z, y) - 1
    return -t * (1 - t * z > 0) / z.size


@dataclass(frozen=True)
class Loss:
    value: Callable[[np.ndarray, np.ndarray], float]
    gradient: Callable[[np.ndarray, np.ndarray], np.ndarray]


LOSS_TABLE: dict[str, Loss] = {
    "cce": Loss(_cce, _cce_grad),
    "mse": Loss(lambda z, y: ((probabilities(z, "cce") - _onehot(z, y)) ** 2).mean(),
                lambda z, y: _softmax_distance_grad(z, y, lambda d: 2 * d)),
    "mae": Loss(lambda z, y: np.abs(probabilities(z, "cce") - _onehot(z, y)).mean(),
                lambda z, y: _softmax_distance_grad(z, y, np.sign)),
    "bce": Loss(_bce, lambda z, y: (probabilities(z, "bce") - _onehot(z, y)) / z.size),
    "hinge": Loss(lambda z, y: np.maximum(0.0, 1.0 - (2 * _onehot(z, y) - 1) * z).mean(), _hinge_grad),
}


def _lookup(loss: str) -> Loss:
    try:
        return LOSS_TABLE[loss]
    except KeyError:
        raise SpecError(f"unknown loss {loss!r}; valid: {', '.join(LOSSES)}") from None


def loss_value(logits: np.ndarray, labels: np.ndarray, loss: str) -> float:
    """The loss of float64 logits against integer labels, as the spec defines it."""
    return float(_lookup(loss).value(logits.astype(np.float64), np.asarray(labels)))


def loss_gradient(logits: np.ndarray, labels: np.ndarray, loss: str) -> np.ndarray:
    """dL/dlogits of ``loss_value`` (batch and class means included)."""
    return _lookup(loss).gradient(logits.astype(np.float64), np.asarray(labels))

"""Shared fixtures: small real data, and the list of backends installed on this machine."""

from __future__ import annotations

import os

import numpy as np
import pytest

import backends
from backends.base import BackendInfo
from bench.spec.data import load_dataset
from bench.spec.model import ModelSpec
from bench.spec.shapes import param_specs
from bench.spec.train import TrainSpec
from bench.spec.weights import canonical_weights

KERAS_ENGINE = os.environ.get("KERAS_BACKEND", "tensorflow")
"""The engine Keras runs on in this test process. Keras reads ``KERAS_BACKEND`` once per process, so
a test process hosts one Keras backend (tf by default; ``KERAS_BACKEND=jax pytest`` tests keras-jax
instead); tests/test_keras_engines.py runs the other Keras engines' tests in processes of their own."""


def _hosted(name: str) -> bool:
    entry = backends.REGISTRY[name]
    return entry.wrapper != "keras" or entry.engine == KERAS_ENGINE


INSTALLED = [name for name in backends.REGISTRY if backends.unavailable_reason(name) is None and _hosted(name)]
"""The backends this process can load: installed, and for Keras the one on this process's engine."""
FRAMEWORKS = [name for name in INSTALLED if name != "numpy"]
"""The framework adapters this process tests (the oracle aside)."""
ALL = [name for name in backends.FRAMEWORK_BACKENDS if backends.unavailable_reason(name) is None]
"""The installed members of ``--backend all``, for tests that run a sweep in workers."""


@pytest.fixture(scope="session")
def mnist_small():
    """The bundled MNIST sample cut to 1,000 train / 500 test rows: real data, seconds to train."""
    return load_dataset("mnist-sample", train_size=1000, test_size=500, val_split=0.1)


_LOADED: dict[str, object] = {}
_INFO: dict[str, BackendInfo] = {}
THREADS = 2


def loaded_backend(name: str):
    """One configured adapter per backend and test session (frameworks configure threads once)."""
    if name not in _LOADED:
        backend = backends.load(name)
        _INFO[name] = backend.setup(threads=THREADS, device="cpu")
        _LOADED[name] = backend
    return _LOADED[name]


def backend_info(name: str) -> BackendInfo:
    """What ``setup`` reported for the session's adapter (framework versions, device, threads)."""
    loaded_backend(name)
    return _INFO[name]


def perturbed_weights(model: ModelSpec, shape: tuple[int, ...], seed: int = 3) -> list[np.ndarray]:
    """Canonical weights with non-zero biases and non-trivial BatchNorm parameters and statistics,
    so a swapped or mis-laid-out mapping shows in the logits (zero biases and unit statistics hide it)."""
    rng = np.random.default_rng(seed)
    weights = canonical_weights(model, shape, 10, seed)
    for spec, w in zip(param_specs(model, shape, 10), weights):
        if spec.name in ("gamma", "moving_variance"):
            w *= rng.uniform(0.5, 1.5, w.shape)
        elif not spec.name.endswith("kernel"):
            w += rng.normal(0.0, 0.1, w.shape)
    return weights


def reference_logits(model: ModelSpec, train: TrainSpec, shape: tuple[int, ...], weights, x: np.ndarray) -> np.ndarray:
    """Eval-mode logits of the NumPy oracle (bench/reference, run as the ``numpy`` backend) for the same model and weights."""
    oracle = loaded_backend("numpy")
    oracle.build(model.resolve(train.activation), train, shape, 10)
    oracle.set_weights(weights)
    return oracle.logits(x)

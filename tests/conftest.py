"""Shared fixtures: small real data, and the list of backends installed on this machine."""

from __future__ import annotations

import pytest

import backends
from bench.data import load_dataset

INSTALLED = [name for name in backends.REGISTRY if backends.unavailable_reason(name) is None]
FRAMEWORKS = [name for name in backends.FRAMEWORK_BACKENDS if name in INSTALLED]


@pytest.fixture(scope="session")
def mnist_small():
    """The bundled MNIST sample cut to 1,000 train / 500 test rows: real data, seconds to train."""
    return load_dataset("mnist-sample", train_size=1000, test_size=500, val_split=0.1)


_LOADED: dict[str, object] = {}


def loaded_backend(name: str):
    """One configured adapter per backend and test session (frameworks configure threads once)."""
    if name not in _LOADED:
        backend = backends.load(name)
        backend.setup(threads=2, device="cpu")
        _LOADED[name] = backend
    return _LOADED[name]

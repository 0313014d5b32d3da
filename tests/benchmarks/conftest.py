"""Shared pieces of the pytest-benchmark suites: the data slice and the facts stored with each result.

The facts go into ``benchmark.extra_info`` and so into every saved run (``--benchmark-autosave``,
``--benchmark-json``): what was measured (batch, FLOPs, parameters, mode, threads) and with which
framework versions, so a comparison between two saved runs shows what changed besides the time.
"""

from __future__ import annotations

import pytest

from bench.spec.cost import forward_flops, train_flops
from bench.spec.data import Dataset, load_dataset
from bench.spec.model import ModelSpec
from bench.spec.shapes import parameter_count
from tests.conftest import THREADS, backend_info

ROWS = 256


@pytest.fixture(scope="session")
def bench_data() -> Dataset:
    """The first rows of the bundled MNIST sample: real images, loaded once."""
    return load_dataset("mnist-sample", train_size=ROWS, test_size=ROWS, val_split=0.0)


def step_facts(
    name: str, backend, model: ModelSpec, data: Dataset, kind: str, batch_size: int, first_call_seconds: float
) -> dict:
    """Accuracy-free facts of one benchmarked step; ``first_call_seconds`` includes tracing/compilation."""
    shape, classes = data.input_shape, data.num_classes
    per_sample = train_flops(model, shape, classes) if kind == "train" else forward_flops(model, shape, classes)
    info = backend_info(name)
    return {
        "backend": name, "model": model.name, "step": kind, "batch_size": batch_size,
        "flops_per_sample": per_sample, "flops_per_step": per_sample * batch_size,
        "params": parameter_count(model, shape, classes), "mode": backend.resolve_mode("default"),
        "framework_versions": info.versions, "device": info.device, "threads": THREADS,
        "first_call_seconds": first_call_seconds,
    }

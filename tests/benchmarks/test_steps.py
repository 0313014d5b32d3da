"""One training step and one inference step per backend x seed model, timed by pytest-benchmark.

Skipped by the default ``pytest`` run and CI (``--benchmark-skip`` in pyproject's addopts);
``--benchmark-only`` overrides that. One table per seed model, its backends side by side:

    pytest tests/benchmarks --benchmark-only --benchmark-sort=name

Each test builds the model from canonical weights, times its first call apart (tracing and
compilation land there: ``extra_info["first_call_seconds"]`` and ``compile_seconds``), then runs
pedantic rounds after warm-up rounds. The timed call ends with ``backend.synchronize()``, so an
asynchronous backend (JAX, a GPU) is timed to the end of its work, not to the dispatch. The
frameworks share this process: for cross-framework figures under the suite's isolation rules use
``bench run``; these suites catch a regression of one backend between two versions of its framework.
"""

from __future__ import annotations

import itertools
import time

import numpy as np
import pytest

from bench.spec.data import epoch_batches
from bench.spec.model import SEED_MODELS
from bench.spec.train import TrainSpec
from bench.spec.weights import canonical_weights
from tests.benchmarks.conftest import step_facts
from tests.conftest import FRAMEWORKS, loaded_backend

TRAIN_BATCH = 32
INFERENCE_BATCH = 128
ROUNDS = 20
WARMUP_ROUNDS = 3

pytestmark = pytest.mark.skipif(not FRAMEWORKS, reason="no framework installed")
models = pytest.mark.parametrize("model", list(SEED_MODELS))
frameworks = pytest.mark.parametrize("backend", FRAMEWORKS)


def _built(name: str, model: str, data):
    """A backend with the model built from canonical weights and the training rows in place."""
    backend = loaded_backend(name)
    spec = SEED_MODELS[model].resolve("relu")
    train = TrainSpec(optimizer="adam", batch_size=TRAIN_BATCH)
    backend.build(spec, train, data.input_shape, data.num_classes)
    backend.set_weights(canonical_weights(spec, data.input_shape, data.num_classes, train.seed))
    backend.load_data(data.x_train, data.y_train)
    return backend, spec, train


def _first_call(fn, *args) -> float:
    start = time.perf_counter()
    fn(*args)
    return time.perf_counter() - start


def _compile_seconds(benchmark, first: float) -> float | None:
    """The first call's excess over a steady one (None where pytest-benchmark kept no statistics)."""
    stats = getattr(benchmark, "stats", None)
    return max(first - stats.stats.median, 0.0) if stats else None


@models
@frameworks
def test_train_step(benchmark, backend, model, bench_data):
    b, spec, train = _built(backend, model, bench_data)
    batches = itertools.cycle(epoch_batches(len(bench_data.x_train), train.batch_size, train.seed, 0))

    def step(rows: np.ndarray) -> None:
        b.train_step(rows)
        b.synchronize()

    def next_batch():
        b.finish_epoch()  # reads the pending losses back: off the clock
        return (next(batches),), {}

    first = _first_call(step, next(batches))
    benchmark.group = model  # one table per model, backends side by side, with or without --benchmark-group-by
    benchmark.extra_info.update(step_facts(backend, b, spec, bench_data, "train", train.batch_size, first))
    benchmark.pedantic(step, setup=next_batch, rounds=ROUNDS, warmup_rounds=WARMUP_ROUNDS)
    benchmark.extra_info["compile_seconds"] = _compile_seconds(benchmark, first)
    assert np.isfinite(b.finish_epoch().losses).all()


@models
@frameworks
def test_inference_step(benchmark, backend, model, bench_data):
    b, spec, _ = _built(backend, model, bench_data)
    x = bench_data.x_test[:INFERENCE_BATCH]

    def step() -> np.ndarray:
        out = b.logits(x)
        b.synchronize()
        return out

    first = _first_call(step)
    benchmark.group = model
    benchmark.extra_info.update(step_facts(backend, b, spec, bench_data, "inference", len(x), first))
    logits = benchmark.pedantic(step, rounds=ROUNDS, warmup_rounds=WARMUP_ROUNDS)
    benchmark.extra_info["compile_seconds"] = _compile_seconds(benchmark, first)
    assert logits.shape == (len(x), bench_data.num_classes) and np.isfinite(logits).all()

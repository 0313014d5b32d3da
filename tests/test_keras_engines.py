"""Keras 3 on each engine: one engine per process, the other engines' tests in processes of their own,
and what is particular to Keras' JAX and torch steps.

Keras reads ``KERAS_BACKEND`` once per process, so this test process hosts one Keras backend
(tests/conftest.py ``KERAS_ENGINE``, tensorflow by default). The adapter tests parametrised over
``FRAMEWORKS``/``INSTALLED`` (conformance against the oracle, augmentation against the NumPy
reference, saved models, rules and the compact parity ladder) then cover the hosted one, and the
``test_a_keras_engine_passes_the_adapter_tests_in_a_process_of_its_own`` runs them for every other
installed Keras engine in a pytest process with ``KERAS_BACKEND`` set, selecting that backend's
parametrisations (``-k keras-jax``). The rest of this module runs where its backend is hosted.
"""

from __future__ import annotations

import importlib
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import backends
from backends.base import Unsupported
from bench.errors import BackendUnavailable
from bench.measure import training
from bench.spec.model import SEED_MODELS
from bench.spec.train import Augment, TrainSpec
from tests.conftest import INSTALLED, KERAS_ENGINE, loaded_backend, perturbed_weights

ROOT = Path(__file__).resolve().parents[1]
KERAS = [n for n, e in backends.REGISTRY.items() if e.wrapper == "keras" and backends.unavailable_reason(n) is None]
ELSEWHERE = [n for n in KERAS if backends.REGISTRY[n].engine != KERAS_ENGINE]
"""Installed Keras backends this process cannot host."""
SUITE = ("tests/test_backend_conformance.py", "tests/test_keras_engines.py")
"""The adapter tests every default run repeats for each other Keras engine (about 45 s each, most of it
the process's imports): conformance against the oracle and this module's engine-specific checks.
``tox -e keras-jax`` / ``tox -e keras-torch`` add augmentation against the NumPy reference, the
residual-net and transformer layers against the oracle in every mode, saved models, the rules and
the compact ladder, the records and the native policy (tests/test_augment.py, test_keras_layers.py,
test_saved_models.py, test_parity.py, test_measurement.py, test_semantics.py) with their slow tests;
``bench parity`` runs the whole ladder, and the slow end-to-end test of tests/test_saved_models.py
predicts a saved model with ``bench predict`` on every Keras engine."""


@pytest.mark.parametrize("name", ELSEWHERE)
def test_a_keras_engine_passes_the_adapter_tests_in_a_process_of_its_own(name):
    if backends.REGISTRY[name].engine == "tensorflow":
        pytest.skip("Keras on TensorFlow is the default process's engine: its tests run there")
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-m", "not slow", "-k", name, *SUITE]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=1800,
                            env=os.environ | {"KERAS_BACKEND": backends.REGISTRY[name].engine})
    summary = result.stdout.strip().splitlines()[-1] if result.stdout.strip() else ""
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-2000:]
    assert " passed" in summary and "failed" not in summary, summary


@pytest.mark.parametrize("name", [n for n in KERAS if n not in ELSEWHERE and n in INSTALLED])
@pytest.mark.parametrize("other", ELSEWHERE)
def test_a_process_whose_keras_runs_one_engine_refuses_another(name, other):
    loaded_backend(name)  # Keras is now imported on this process's engine
    with pytest.raises(BackendUnavailable, match=rf"keras is already running on '{KERAS_ENGINE}'.*{other} backend"):
        backends.load(other)
    with pytest.raises(ImportError, match="fresh process"):
        importlib.import_module(backends.REGISTRY[other].module)


def _three_steps(name: str, mode: str, model: str, augment: Augment = Augment()) -> tuple[np.ndarray, list[np.ndarray]]:
    """Three momentum steps from perturbed weights (momentum, not Adam: Adam turns the rounding noise in
    the zero gradient of a bias before BatchNorm into lr-sized steps that differ between modes)."""
    backend = loaded_backend(name)
    spec = SEED_MODELS[model].resolve("relu")
    train = TrainSpec(optimizer="momentum", learning_rate=0.05, batch_size=32, mode=mode, augment=augment)
    x = np.random.default_rng(3).random((96, 28, 28, 1), dtype=np.float32)
    training.prepare(backend, spec, train, x, np.arange(96) % 10, 10, perturbed_weights(spec, (28, 28, 1), seed=0))
    batches, params = training.schedule(96, train, (28, 28, 1), 0)
    result, _ = training.run_steps(backend, batches[:3], params)
    return result.losses, backend.get_weights()


def _same_in_every_mode(name: str, model: str, modes: tuple[str, ...]) -> None:
    reference, weights = _three_steps(name, modes[0], model)
    for mode in modes[1:]:
        losses, w = _three_steps(name, mode, model)
        assert loaded_backend(name).facts()["mode_description"].startswith(mode)
        np.testing.assert_allclose(losses, reference, atol=1e-5, rtol=0)
        for a, b in zip(w, weights):
            np.testing.assert_allclose(a, b, atol=1e-5, rtol=0)


needs_keras_jax = pytest.mark.skipif("keras-jax" not in INSTALLED, reason="Keras on JAX is not this process's engine")
needs_keras_torch = pytest.mark.skipif("keras-torch" not in INSTALLED, reason="Keras on torch is not this process's engine")


@needs_keras_jax
@pytest.mark.parametrize("name", ["keras-jax"])
def test_keras_on_jax_jit_and_eager_train_alike_and_the_step_compiles_once_per_cell(name):
    _same_in_every_mode(name, "mlp_bn", ("jit", "eager"))
    backend = loaded_backend(name)
    spec = Augment.parse("flip,crop=2,rotate")
    _three_steps(name, "jit", "mlp_bn", spec)
    training.restart(backend, backend.get_weights())
    batches, params = training.schedule(96, backend.train, (28, 28, 1), 1)
    training.run_steps(backend, batches[:3], params)  # after a restart, a new epoch's draws: the same program
    assert backend.compile_count == 1 and backend.compile_cache() in ("cold", "warm")


@needs_keras_jax
@pytest.mark.parametrize("name", ["keras-jax"])
def test_keras_on_jax_keeps_its_state_outside_the_variables_and_writes_it_back_when_read(name, tmp_path):
    """The donated step leaves the Keras variables stale, as in Keras' own fit; the weights, the saved
    file and a reload must all see the trained state, never a donated buffer."""
    losses, trained = _three_steps(name, "jit", "mlp_bn")
    backend = loaded_backend(name)
    x = np.random.default_rng(5).random((8, 28, 28, 1), dtype=np.float32)
    before = backend.logits(x)
    path = backend.save_native(tmp_path)
    backend.set_weights(perturbed_weights(SEED_MODELS["mlp_bn"].resolve("relu"), (28, 28, 1), seed=9))
    backend.load_native(path)
    np.testing.assert_array_equal(backend.logits(x), before)
    for a, b in zip(backend.get_weights(), trained):
        np.testing.assert_array_equal(a, b)


@needs_keras_torch
@pytest.mark.parametrize("name", ["keras-torch"])
def test_keras_on_torch_refuses_what_it_has_not(name):
    backend = loaded_backend(name)
    with pytest.raises(Unsupported, match="no execution mode 'jit'"):
        backend.build(SEED_MODELS["mlp"].resolve("relu"), TrainSpec(mode="jit"), (28, 28, 1), 10)
    _three_steps(name, "eager", "mlp")
    assert backend.facts()["engine"] == "torch" and backend.facts()["wrapper"] == "keras"


@pytest.mark.slow
@needs_keras_torch
@pytest.mark.parametrize("name", ["keras-torch"])
def test_keras_on_torch_compiled_trains_like_eager(name):
    """torch.compile of Keras' step takes minutes on 2 cores (dynamo traces Keras' layer machinery)."""
    _same_in_every_mode(name, "mlp", ("eager", "compiled"))


def test_the_keras_group_is_keras_on_each_engine_and_not_in_all():
    entries = [backends.REGISTRY[n] for n in backends.GROUPS["keras"]]
    assert [(e.engine, e.wrapper) for e in entries] == [("tensorflow", "keras"), ("jax", "keras"), ("torch", "keras")]
    assert not set(backends.GROUPS["keras"][1:]) & set(backends.GROUPS["all"])
    assert backends.expand(["all", "keras", "keras-jax"]) == ["torch", "tf", "jax", "keras-jax", "keras-torch"]


def test_a_group_skips_its_missing_members_and_a_name_alone_must_be_installed(monkeypatch):
    from bench.errors import BenchError
    from bench.run.flags import resolve_backends

    real = backends.unavailable_reason
    monkeypatch.setattr(backends, "unavailable_reason", lambda n: "torch not installed" if n == "keras-torch" else real(n))
    assert resolve_backends(["keras"]) == ["tf", "keras-jax", "keras-torch"]  # recorded as skipped by the run
    with pytest.raises(BenchError, match="backend 'keras-torch' is not available: torch not installed; use a group"):
        resolve_backends(["all", "keras-torch"])

"""The semantics policy axis: native runs carry each framework's own defaults, harmonised runs are unchanged.

Every framework check runs the real framework on a small slice of MNIST: the record must state the
values the framework itself uses (Adam epsilon, BatchNorm momentum in its own convention, its
initialiser), the initial weights must have that initialiser's spread, and a native cell must
undo its warm-up to the framework's own initial weights (two runs train identically).
"""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import backends
from backends.base import Unsupported
from bench.measure import training
from bench.measure.harness import run_cell
from bench.run import grid
from bench.spec.cell import Cell
from bench.spec.model import SEED_MODELS
from bench.spec.semantics import NATIVE_FIELDS
from bench.spec.train import TrainSpec
from bench.spec.weights import canonical_weights
from tests.conftest import FRAMEWORKS, loaded_backend

ROOT = Path(__file__).resolve().parents[1]

# What each framework does by default, as its documentation states it (bn_momentum_framework is the
# framework's own argument: torch weighs the new statistic).
NATIVE_VALUES = {
    "torch": {"epsilon": 1e-8, "rho": 0.99, "bn_momentum_framework": 0.1, "bn_epsilon": 1e-5,
              "leaky_relu_slope": 0.01, "init": "kaiming_uniform"},
    "tf": {"epsilon": 1e-7, "rho": 0.9, "bn_momentum_framework": 0.99, "bn_epsilon": 1e-3,
           "leaky_relu_slope": 0.3, "init": "glorot_uniform"},
    "jax": {"epsilon": 1e-8, "rho": 0.9, "bn_momentum_framework": 0.99, "bn_epsilon": 1e-5,
            "leaky_relu_slope": 0.01, "init": "lecun_normal"},
}
NATIVE_VALUES |= {"keras-jax": NATIVE_VALUES["tf"], "keras-torch": NATIVE_VALUES["tf"]}  # Keras' defaults, any engine
NATIVE_RMSPROP_EPS = {"torch": "outside_sqrt", "tf": "inside_sqrt", "jax": "inside_sqrt", "keras-jax": "inside_sqrt",
                      "keras-torch": "inside_sqrt"}
HARMONISED_BN_MOMENTUM = {"torch": 0.01, "tf": 0.99, "jax": 0.99, "keras-jax": 0.99, "keras-torch": 0.99}


def _kernel_std(scheme: str, fan_in: int, fan_out: int) -> float:
    return {"kaiming_uniform": 1 / math.sqrt(3 * fan_in),  # U(+-1/sqrt(fan_in)), from a=sqrt(5)
            "glorot_uniform": math.sqrt(2 / (fan_in + fan_out)),
            "lecun_normal": 1 / math.sqrt(fan_in)}[scheme]


def _cell(name: str, policy: str, optimizer: str = "adam") -> Cell:
    train = TrainSpec(optimizer=optimizer, batch_size=64, semantics=policy)
    return Cell(name, SEED_MODELS["mlp_bn"], train, "mnist-sample", probe_steps=2)


@pytest.mark.parametrize("name", FRAMEWORKS)
def test_a_native_record_carries_the_frameworks_own_values(name, mnist_small):
    record = run_cell(loaded_backend(name), _cell(name, "native", "rmsprop"), mnist_small).to_json_dict()
    assert record["status"] == "ok", record.get("error") or record.get("reason")
    expected = NATIVE_VALUES[name]
    for key, value in expected.items():
        assert record[key] == (pytest.approx(value) if isinstance(value, float) else value), key
    assert record["semantics_policy"] == "native" and record["init_source"] == "framework"
    assert record["rules"]["rmsprop_eps"] == NATIVE_RMSPROP_EPS[name]
    assert record["cell_id"].endswith("|native")


@pytest.mark.parametrize("name", FRAMEWORKS)
def test_a_harmonised_record_is_unchanged_one_value_everywhere(name, mnist_small):
    record = run_cell(loaded_backend(name), _cell(name, "harmonised"), mnist_small).to_json_dict()
    assert record["status"] == "ok", record.get("error") or record.get("reason")
    assert (record["semantics_policy"], record["init"], record["init_source"]) == ("harmonised", "glorot_uniform", "canonical")
    assert (record["epsilon"], record["rho"], record["bn_momentum"], record["bn_epsilon"], record["leaky_relu_slope"]) == (
        1e-7, 0.9, 0.99, 1e-3, 0.01)
    assert record["bn_momentum_framework"] == pytest.approx(HARMONISED_BN_MOMENTUM[name])
    assert record["rules"] == type(loaded_backend(name)).RULES.as_dict()
    assert not record["cell_id"].endswith("|native")


@pytest.mark.parametrize("name", FRAMEWORKS)
def test_native_initial_weights_come_from_the_frameworks_initialiser_and_seed(name, mnist_small):
    backend = loaded_backend(name)
    model, shape = SEED_MODELS["mlp_bn"], mnist_small.input_shape

    def initial(policy: str, seed: int) -> list[np.ndarray]:
        train = TrainSpec(semantics=policy, seed=seed, batch_size=64)
        return training.prepare(backend, model, train, mnist_small.x_train, mnist_small.y_train, 10)

    native, again, other = initial("native", 0), initial("native", 0), initial("native", 1)
    scheme = NATIVE_VALUES[name]["init"]
    kernel, bias = native[0], native[1]  # the first Dense: (784, 128)
    assert kernel.std() == pytest.approx(_kernel_std(scheme, *kernel.shape), rel=0.05)
    if scheme == "kaiming_uniform":  # torch draws biases too: U(+-1/sqrt(fan_in))
        assert np.abs(bias).max() <= 1 / math.sqrt(kernel.shape[0]) and np.abs(bias).min() > 0
    else:
        assert not bias.any()
    for a, b in zip(native, again, strict=True):
        np.testing.assert_array_equal(a, b)  # the framework's own draw, reproducible from the seed
    assert not np.array_equal(native[0], other[0])
    assert not np.array_equal(native[0], canonical_weights(model.resolve("relu"), shape, 10, 0)[0])
    for a, b in zip(initial("harmonised", 0), canonical_weights(model.resolve("relu"), shape, 10, 0), strict=True):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("name", FRAMEWORKS)
def test_a_native_warm_up_is_undone_to_the_frameworks_own_initial_weights(name, mnist_small):
    first = run_cell(loaded_backend(name), _cell(name, "native"), mnist_small)
    second = run_cell(loaded_backend(name), _cell(name, "native"), mnist_small)
    assert first.status == second.status == "ok"
    assert first.epoch_train_loss == pytest.approx(second.epoch_train_loss, rel=1e-6)


@pytest.mark.parametrize("name", FRAMEWORKS)
def test_native_overrides_are_valid_train_specs_and_only_policy_values(name):
    cls = type(loaded_backend(name))
    native = loaded_backend(name).native_train(TrainSpec(optimizer="rmsprop", learning_rate=0.01, epochs=3))
    TrainSpec.model_validate(native.model_dump())
    assert set(cls.NATIVE.overrides) == set(NATIVE_FIELDS)
    assert (native.semantics, native.lr, native.epochs, native.optimizer) == ("native", 0.01, 3, "rmsprop")


def test_the_numpy_oracle_runs_harmonised_only():
    oracle = loaded_backend("numpy")
    with pytest.raises(Unsupported, match="harmonised policy only"):
        oracle.build(SEED_MODELS["mlp"].resolve("relu"), TrainSpec(semantics="native"), (28, 28, 1), 10)


# -- the sweep: --modes best per backend, --semantics as an axis -------------------------------------
@pytest.mark.parametrize("on_gpu,expected", [
    (False, {"torch": ["compiled"], "tf": ["graph", "xla"], "jax": ["jit"], "numpy": ["default"]}),
    (True, {"torch": ["compiled", "compiled-cudagraphs"], "tf": ["graph", "xla"], "jax": ["jit"], "numpy": ["default"]}),
])
def test_modes_best_expands_to_each_backends_compiled_modes(on_gpu, expected):
    sweep = grid.Sweep(models=["mlp"], optimizers=["adam"], activations=["relu"], modes=["best"],
                       semantics=["harmonised", "native"])
    cells = grid.cells(sweep, list(expected), ["mlp"], 1000, on_gpu=on_gpu)
    for name, modes in expected.items():
        mine = [c for c in cells if c.backend == name]
        assert [c.train.mode for c in mine if c.train.semantics == "harmonised"] == modes
        assert [c.train.mode for c in mine if c.train.semantics == "native"] == modes
    assert backends.expand_modes("torch", ["eager", "best", "compiled"], on_gpu) == ["eager", *expected["torch"]]


def test_semantics_is_a_toml_key_and_a_bad_policy_is_one_line(tmp_path):
    config = tmp_path / "sweep.toml"
    config.write_text('[sweep]\nsemantics = ["harmonised", "native"]\nmodes = ["best"]\n')
    settings, _ = grid.read_toml(config)
    sweep = grid.merge(grid.Sweep(), settings, {})
    assert sweep.semantics == ["harmonised", "native"] and sweep.modes == ["best"]
    result = subprocess.run([sys.executable, "-m", "bench", "run", "--semantics", "defaults"], capture_output=True,
                            text=True, cwd=ROOT, timeout=300)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip() == "error: --semantics: unknown semantics policy 'defaults'; valid: harmonised, native"


@pytest.mark.skipif("torch" not in FRAMEWORKS, reason="torch not installed")
def test_cuda_graphs_are_refused_on_a_cpu():
    with pytest.raises(Unsupported, match="needs a CUDA GPU"):
        loaded_backend("torch").build(SEED_MODELS["mlp"].resolve("relu"), TrainSpec(mode="compiled-cudagraphs"), (28, 28, 1), 10)

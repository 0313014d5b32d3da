"""The JAX adapter's residual and transformer layers against the float64 oracle, at tiny sizes.

Each new layer type (tests/layer_models.py) on forward, loss and gradients in both modes; a planted
attention scale that the check must catch; BatchNorm statistics inside a Residual after a real
step; AdamW and a warm-up-cosine schedule over several steps of the one compiled step; Flax's own
LayerNorm epsilon under ``--semantics native``; the Flax file of a model with nested attention.
"""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("jax")
pytest.importorskip("flax")
pytest.importorskip("optax")

from backends import jax_layers  # noqa: E402
from backends.jax_backend import JaxBackend  # noqa: E402
from bench import reference  # noqa: E402
from bench.spec.model import MODERN_MODELS, LayerNorm, walk  # noqa: E402
from bench.spec.schedule import learning_rates  # noqa: E402
from bench.spec.train import TrainSpec  # noqa: E402
from tests.conftest import perturbed_weights  # noqa: E402
from tests.layer_models import CLASSES, LAYER_MODELS, LAYER_SHAPE, check_against_oracle  # noqa: E402

STEP_ATOL = 1e-5
"""Weights after one step: the ladder's step_1 tolerance."""
STEPS_RTOL, STEPS_ATOL = 1e-4, 1e-5
"""Weights after several steps: the ladder's steps_20 tolerance (rounding compounds)."""


def _backend() -> JaxBackend:
    b = JaxBackend()
    b.setup(threads=1, device="cpu")
    return b


@pytest.fixture(scope="module")
def backend() -> JaxBackend:
    return _backend()


def _rows(n: int, seed: int = 11) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.random((n, *LAYER_SHAPE), dtype=np.float32), rng.integers(0, CLASSES, n)


@pytest.mark.parametrize("layer", LAYER_MODELS)
def test_layer_matches_the_oracle(backend, layer):
    check_against_oracle(backend, LAYER_MODELS[layer])


@pytest.mark.parametrize("layer", ["SelfAttention", "Residual_identity", "Residual_nested"])
def test_eager_mode_matches_the_oracle_too(backend, layer):
    check_against_oracle(backend, LAYER_MODELS[layer], TrainSpec(mode="eager"))


@pytest.mark.parametrize("mode", ["jit", "eager"])
def test_a_planted_attention_scale_fails_the_oracle_check(mode, monkeypatch):
    """Scores divided by dim instead of sqrt(head_dim): the adapter's one scaling, caught in both modes.

    A fresh backend traces anew, so no compiled function of an earlier test hides the plant; eager
    mode compiles nothing, so there it already fails at the eval logits."""
    monkeypatch.setattr(jax_layers, "attention_scale", lambda dim, heads: 1.0 / dim)
    with pytest.raises(AssertionError, match="eval logits" if mode == "eager" else None):
        check_against_oracle(_backend(), LAYER_MODELS["SelfAttention"], TrainSpec(mode=mode))


def _train_like_the_oracle(backend: JaxBackend, model_name: str, train: TrainSpec, rows: int) -> tuple[list, list]:
    """The backend and the oracle from the same weights, one epoch after another over ``rows`` rows in
    batches in order, each step at the schedule's rate; returns both weight lists (statistics included)."""
    model = LAYER_MODELS[model_name].resolve(train.activation)
    weights = perturbed_weights(model, LAYER_SHAPE)
    x, y = _rows(rows)
    backend.build(model, train, LAYER_SHAPE, CLASSES)
    backend.set_weights(weights)
    backend.load_data(x, y)
    net = reference.Network(model, train, LAYER_SHAPE, CLASSES)
    net.set_weights(weights)
    optimizer = reference.Optimizer(train)
    steps_per_epoch = rows // train.batch_size
    batches = [np.arange(i, i + train.batch_size) for i in range(0, rows, train.batch_size)] * train.epochs
    for rate, batch in zip(learning_rates(train, steps_per_epoch), batches, strict=True):
        backend.train_step(batch)
        reference.train_step(net, optimizer, x[batch], y[batch], lr=rate)
    backend.synchronize()
    return backend.get_weights(), net.params


def test_one_step_updates_batchnorm_statistics_inside_a_residual_like_the_oracle(backend):
    got, want = _train_like_the_oracle(backend, "Residual_identity", TrainSpec(optimizer="sgd", learning_rate=0.1,
                                                                               batch_size=8), rows=8)
    for p, a, b in zip(backend.specs, got, want, strict=True):
        np.testing.assert_allclose(a, b, rtol=0, atol=STEP_ATOL, err_msg=p.key)
    before = dict(zip((p.key for p in backend.specs), perturbed_weights(backend.model, LAYER_SHAPE)))
    after = dict(zip((p.key for p in backend.specs), got))
    for key in ("1.1.moving_mean", "1.1.moving_variance", "1.4.moving_mean", "1.4.moving_variance"):  # inside the Residual
        assert np.abs(after[key] - before[key]).max() > 100 * STEP_ATOL, key


def test_adamw_on_a_warmup_cosine_schedule_follows_the_oracle_in_one_compiled_step(backend):
    """8 steps at rates from 0.005 up to 0.01 and down the cosine to 0.0007, decoupled decay 0.1: each step
    must take its own rate, the decay must shrink the weight outside Adam's moments, and the rate
    being an argument must leave one compilation for all of them."""
    train = TrainSpec(optimizer="adamw", learning_rate=0.01, weight_decay=0.1, epsilon=1e-3, schedule="warmup_cosine",
                      warmup_fraction=0.25, batch_size=8, epochs=2)
    rates = learning_rates(train, 4)
    assert rates[0] < rates[1] and rates.min() < 0.1 * rates.max()
    got, want = _train_like_the_oracle(backend, "Residual_dense", train, rows=32)
    assert backend.compile_count == 1
    for p, a, b in zip(backend.specs, got, want, strict=True):
        np.testing.assert_allclose(a, b, rtol=STEPS_RTOL, atol=STEPS_ATOL, err_msg=p.key)


def test_native_semantics_gives_unset_layernorms_flax_epsilon_and_keeps_a_named_one(backend):
    vit = MODERN_MODELS["vit"]
    model = vit.model_copy(update={"layers": (*vit.layers[:-3], LayerNorm(epsilon=1e-3), *vit.layers[-2:])})
    epsilons = {}
    for policy in ("harmonised", "native"):
        backend.build(model, TrainSpec(semantics=policy), (28, 28, 1), 10)
        epsilons[policy] = [layer.epsilon for _, layer in walk(backend.model.layers) if isinstance(layer, LayerNorm)]
    assert epsilons == {"harmonised": [1e-5] * 4 + [1e-3], "native": [JaxBackend.NATIVE.layers["LayerNorm"]["epsilon"]] * 4 + [1e-3]}


def test_the_flax_file_of_nested_attention_loads_back_exactly(backend, tmp_path):
    model = LAYER_MODELS["Residual_nested"].resolve("relu")
    weights = perturbed_weights(model, LAYER_SHAPE)
    backend.build(model, TrainSpec(), LAYER_SHAPE, CLASSES)
    backend.set_weights(weights)
    path = backend.save_native(tmp_path)
    other = _backend()
    other.build(model, TrainSpec(), LAYER_SHAPE, CLASSES)
    other.load_native(path)
    for p, a, b in zip(other.specs, other.get_weights(), weights, strict=True):
        np.testing.assert_array_equal(a, b, err_msg=p.key)

"""Keras 3's residual-net and transformer layers against the oracle, on the Keras engine this process hosts.

Every new layer type's eval logits, training loss and gradients are held to the float64 oracle through
``tests/layer_models.py`` (the same tiny models and tolerances every adapter is held to), a planted
attention scale must fail that check, AdamW on a warm-up/cosine schedule must follow the oracle step
by step in every mode (so the schedule's rate reaches the compiled step, without a retrace), a
BatchNorm inside a Residual must have its statistics updated and read back, and a saved transformer
must reload with its registered layers. The parametrisation ids carry the backend's name, so
tests/test_keras_engines.py runs this module for the other Keras engines in processes of their own.
"""

from __future__ import annotations

import importlib

import numpy as np
import pytest

import backends
from backends.numpy_backend import NumpyBackend
from bench.measure import training
from bench.spec.model import (
    GELU,
    Dense,
    GlobalAvgPool,
    LayerNorm,
    ModelSpec,
    PatchEmbed,
    PositionEmbedding,
    Residual,
    SelfAttention,
)
from bench.spec.train import TrainSpec
from tests.conftest import INSTALLED, loaded_backend, perturbed_weights
from tests.layer_models import BATCH, CLASSES, LAYER_MODELS, LAYER_SHAPE, check_against_oracle

HOSTED = [n for n in INSTALLED if backends.REGISTRY[n].wrapper == "keras"]
"""The Keras backend of this process's engine (tests/conftest.py ``KERAS_ENGINE``)."""
pytestmark = pytest.mark.skipif(not HOSTED, reason="no Keras engine installed for this process")

SLOW_MODES = {("keras-torch", "compiled")}
"""torch.compile of Keras' step takes minutes on 2 cores: its own slow test below."""
MODES = [(n, m) for n in HOSTED for m in backends.REGISTRY[n].modes if (n, m) not in SLOW_MODES]

TINY_VIT = ModelSpec(name="tiny_vit", layers=(
    PatchEmbed(patch=2, dim=8), PositionEmbedding(),
    Residual(layers=(LayerNorm(), SelfAttention(heads=2))),
    Residual(layers=(LayerNorm(), Dense(units=16), GELU(approximate="tanh"), Dense(units=8))),
    LayerNorm(), GlobalAvgPool(), Dense(units=CLASSES)))
"""A two-block Vision Transformer on 6x6x2 images: every array kind a ViT has, in under a second."""
STEPS = 4
"""Steps of the training tests: one epoch of 4 batches."""


@pytest.mark.parametrize("layer", LAYER_MODELS)
@pytest.mark.parametrize("name", HOSTED)
def test_each_new_layer_matches_the_oracle(name, layer):
    check_against_oracle(loaded_backend(name), LAYER_MODELS[layer])


@pytest.mark.parametrize("name", HOSTED)
def test_a_planted_attention_scale_fails_the_layer_check(name, monkeypatch):
    """Scores divided by D instead of sqrt(D / heads): the check must see it in the logits or gradients."""
    loaded_backend(name)  # Keras started on this process's engine before its layers module is imported
    monkeypatch.setattr(importlib.import_module("backends.keras_layers"), "attention_scale", lambda dim, heads: 1.0 / dim)
    with pytest.raises(AssertionError, match="layer_SelfAttention"):
        check_against_oracle(loaded_backend(name), LAYER_MODELS["SelfAttention"])


def _data(seed: int = 11) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.random((STEPS * BATCH, *LAYER_SHAPE), dtype=np.float32), rng.integers(0, CLASSES, STEPS * BATCH)


def _prepared(backend, model: ModelSpec, train: TrainSpec) -> list[np.ndarray]:
    """Built from perturbed weights with ``STEPS`` batches of data placed; returns the epoch's batches."""
    x, y = _data()
    training.prepare(backend, model, train, x, y, CLASSES, perturbed_weights(model.resolve(train.activation), LAYER_SHAPE))
    return training.schedule(len(x), train, LAYER_SHAPE, 0)[0]


def _oracle(model: ModelSpec, train: TrainSpec, rules) -> tuple[list[np.ndarray], np.ndarray]:
    """The float64 oracle's weights (statistics included) and losses after the same epoch, following
    ``rules`` (the Keras backend's declared formulas), in a NumPy backend of its own."""
    oracle = NumpyBackend()
    oracle.setup(threads=1)
    oracle.RULES = rules  # an instance attribute, as bench/parity/measure.py sets it
    batches = _prepared(oracle, model, train.model_copy(update={"mode": "default"}))
    result, _ = training.run_steps(oracle, batches)
    return oracle.get_weights(), result.losses


def _assert_close_to_the_oracle(backend, model: ModelSpec, losses: np.ndarray) -> None:
    expected, expected_losses = _oracle(model, backend.train, backend.rules())
    np.testing.assert_allclose(losses, expected_losses, rtol=1e-5)
    for spec, got, want in zip(backend.specs, backend.get_weights(), expected, strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6, err_msg=f"{backend.mode}: {spec.key}")


def _traces(backend) -> int:
    """How often this cell's step was traced: tf's ``trace_count``, Keras on JAX's ``compile_count``
    (0 where the mode traces nothing)."""
    return backend.trace_count() if hasattr(backend, "trace_count") else getattr(backend, "compile_count", 0)


ADAMW_ON_A_SCHEDULE = dict(optimizer="adamw", learning_rate=0.01, weight_decay=0.1, epsilon=1e-3, batch_size=BATCH,
                           schedule="warmup_cosine", warmup_fraction=0.5)
"""Two warm-up steps, then the cosine: rates lr/2, lr, lr, lr/2 over the ``STEPS`` steps. Epsilon 1e-3, as
the parity ladder's adaptive rungs (bench/parity/ladder.py): the key bias has a zero gradient in exact
arithmetic (softmax ignores a shift shared by all keys), and Adam would turn its rounding into steps."""


@pytest.mark.parametrize(("name", "mode"), MODES)
def test_adamw_on_a_warmup_cosine_schedule_follows_the_oracle_in_every_mode(name, mode):
    """An adapter that kept the base rate, fed it a step late, or decayed at another rate parts from
    the oracle; the rate is a value in the optimizer's variable, so the compiled step is traced once."""
    backend = loaded_backend(name)
    batches = _prepared(backend, TINY_VIT, TrainSpec(mode=mode, **ADAMW_ON_A_SCHEDULE))
    assert backend.learning_rates[0] < backend.train.lr < np.ptp(backend.learning_rates) * 3
    result, _ = training.run_steps(backend, batches)
    _assert_close_to_the_oracle(backend, TINY_VIT, result.losses)
    assert _traces(backend) <= 1, f"{mode}: the step was traced {_traces(backend)} times in one cell"


@pytest.mark.parametrize(("name", "mode"), MODES)
def test_batchnorm_inside_a_residual_updates_its_statistics_and_reads_them_back(name, mode):
    """SGD, so a bias before BatchNorm (zero gradient but for rounding) moves by rounding alone."""
    backend = loaded_backend(name)
    model = LAYER_MODELS["Residual_identity"]
    batches = _prepared(backend, model, TrainSpec(optimizer="sgd", learning_rate=0.1, batch_size=BATCH, mode=mode))
    start = dict(zip([p.key for p in backend.specs], backend.get_weights()))
    result, _ = training.run_steps(backend, batches)
    _assert_close_to_the_oracle(backend, model, result.losses)
    after = dict(zip([p.key for p in backend.specs], backend.get_weights()))
    assert not np.allclose(after["1.1.moving_mean"], start["1.1.moving_mean"]), "the Residual's BatchNorm statistics never moved"


@pytest.mark.parametrize("name", HOSTED)
def test_a_saved_transformer_reloads_with_its_registered_layers(name, tmp_path):
    import keras

    backend = loaded_backend(name)
    train = TrainSpec()
    backend.build(TINY_VIT, train, LAYER_SHAPE, CLASSES)
    backend.set_weights(perturbed_weights(TINY_VIT, LAYER_SHAPE))
    x = _data()[0][:BATCH]
    before = backend.logits(x)
    path = backend.save_native(tmp_path)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(keras.models.load_model(path)(x, training=False)), before, atol=1e-6)
    backend.build(TINY_VIT, train, LAYER_SHAPE, CLASSES)
    backend.load_native(path)
    np.testing.assert_array_equal(backend.logits(x), before)


@pytest.mark.parametrize("name", HOSTED)
def test_the_native_policy_draws_every_transformer_array_from_keras_initialisers(name):
    import keras

    backend = loaded_backend(name)
    backend.build(TINY_VIT, TrainSpec(semantics="native"), LAYER_SHAPE, CLASSES)
    drawn = dict(zip([p.key for p in backend.specs], backend.initialise_natively(), strict=True))
    assert drawn["1.embedding"].std() > 0 and drawn["2.0.gamma"].tolist() == [1.0] * 8
    assert all(drawn[f"2.1.{part}_kernel"].std() > 0 for part in ("query", "key", "value", "output"))
    assert drawn["2.1.query_bias"].shape == (8,) and not drawn["2.1.query_bias"].any()
    epsilons = [layer.epsilon for layer in backend.keras_model.layers if isinstance(layer, keras.layers.LayerNormalization)]
    assert epsilons == [1e-3] * 3, "Keras' own LayerNormalization epsilon under the native policy"
    backend.build(TINY_VIT, TrainSpec(), LAYER_SHAPE, CLASSES)
    epsilons = [layer.epsilon for layer in backend.keras_model.layers if isinstance(layer, keras.layers.LayerNormalization)]
    assert epsilons == [1e-5] * 3, "the spec's epsilon, passed explicitly, under the harmonised policy"


@pytest.mark.slow
@pytest.mark.parametrize("name", [n for n in HOSTED if (n, "compiled") in SLOW_MODES])
def test_keras_on_torch_compiles_the_transformer_step_once_across_a_schedule(name):
    """The schedule's rates reach torch.compile's step as a tensor's value: once Keras' first two steps
    have compiled what they need (the first ``zero_grad`` finds no gradients, the first weight decay
    fills a cache), the rate's change at the last step compiles nothing, and the record counts the
    graphs and their breaks."""
    backend = loaded_backend(name)
    batches = _prepared(backend, TINY_VIT, TrainSpec(mode="compiled", **ADAMW_ON_A_SCHEDULE))
    assert backend.learning_rates[3] != backend.learning_rates[2]
    first, _ = training.run_steps(backend, batches[:2])
    compiled = backend.compiled_graphs()
    rest, _ = training.run_steps(backend, batches[2:])
    assert backend.compiled_graphs() == compiled and compiled["graphs"] >= 1
    assert compiled["graph_breaks"] >= len(compiled["graph_break_reasons"]) > 0
    _assert_close_to_the_oracle(backend, TINY_VIT, np.concatenate([first.losses, rest.losses]))

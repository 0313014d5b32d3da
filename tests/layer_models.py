"""One tiny model per layer type of residual nets and transformers, and the check an adapter must pass on each.

Each model puts a parametrised layer (PatchEmbed, Conv2D or Dense) before the layer under test, so
that layer's input gradient is checked too, through the parameter gradients before it. Adapter
tests parametrise ``check_against_oracle`` over ``LAYER_MODELS`` with their backend:

    @pytest.mark.parametrize("layer", LAYER_MODELS)
    def test_layer_matches_the_oracle(layer):
        check_against_oracle(loaded_backend("torch"), LAYER_MODELS[layer])

The oracle's answer is computed in float64 straight from ``bench.reference`` (not through any
backend object), so a planted error in an adapter, the numpy one included, cannot leak into it.
"""

from __future__ import annotations

from functools import cache

import numpy as np

from backends.base import Backend
from bench import reference
from bench.spec.model import (
    GELU,
    Activation,
    BatchNorm,
    Conv2D,
    Dense,
    Flatten,
    GlobalAvgPool,
    LayerNorm,
    ModelSpec,
    PatchEmbed,
    PositionEmbedding,
    Residual,
    SelfAttention,
)
from bench.spec.train import TrainSpec
from tests.conftest import perturbed_weights

LAYER_SHAPE = (6, 6, 2)
"""Input of every layer model: 2x2 patches give 9 tokens."""
CLASSES = 10
BATCH = 6
LOGITS_ATOL = 1e-5
"""Eval-mode logits, float32 against the float64 oracle (as tests/test_backend_conformance.py)."""
LOSS_RTOL = 1e-5
GRADIENT_RTOL, GRADIENT_ATOL = 1e-4, 1e-6


def _tokens(*layers, pool: bool = True) -> tuple:
    """PatchEmbed to 9 tokens of 8, the layers under test, then to logits."""
    head = (GlobalAvgPool(),) if pool else (Flatten(),)
    return (PatchEmbed(patch=2, dim=8), *layers, *head, Dense(units=CLASSES))


def _model(name: str, layers: tuple) -> ModelSpec:
    return ModelSpec(name=f"layer_{name}", layers=layers)


LAYER_MODELS: dict[str, ModelSpec] = {
    "PatchEmbed": _model("PatchEmbed", _tokens(pool=False)),
    "Dense_on_tokens": _model("Dense_on_tokens", _tokens(Dense(units=5, activation="hidden"), pool=False)),
    "PositionEmbedding": _model("PositionEmbedding", _tokens(PositionEmbedding(), Activation(activation="tanh"))),
    "LayerNorm": _model("LayerNorm", _tokens(LayerNorm(), pool=False)),
    "LayerNorm_plain": _model("LayerNorm_plain", _tokens(LayerNorm(affine=False, epsilon=1e-3), pool=False)),
    "GELU_exact": _model("GELU_exact", _tokens(GELU(approximate="exact"), pool=False)),
    "GELU_tanh": _model("GELU_tanh", _tokens(GELU(approximate="tanh"), pool=False)),
    "SelfAttention": _model("SelfAttention", _tokens(SelfAttention(heads=2), pool=False)),
    "GlobalAvgPool_tokens": _model("GlobalAvgPool_tokens", _tokens(Activation(activation="tanh"))),
    "GlobalAvgPool_image": _model("GlobalAvgPool_image", (Conv2D(filters=4, kernel=3, activation="tanh"), GlobalAvgPool(),
                                                          Dense(units=CLASSES))),
    "Residual_identity": _model("Residual_identity", (
        Conv2D(filters=4, kernel=3, padding="same"),
        Residual(layers=(Conv2D(filters=4, kernel=3, padding="same"), BatchNorm(), Activation(activation="hidden"),
                         Conv2D(filters=4, kernel=3, padding="same"), BatchNorm()), activation="hidden"),
        GlobalAvgPool(), Dense(units=CLASSES))),
    "Residual_conv": _model("Residual_conv", (
        Conv2D(filters=3, kernel=3, padding="same"),
        Residual(layers=(Conv2D(filters=5, kernel=3, stride=2, padding="same"), BatchNorm()), projection="conv", stride=2,
                 activation="hidden"),
        Flatten(), Dense(units=CLASSES))),
    "Residual_dense": _model("Residual_dense", _tokens(Residual(layers=(LayerNorm(), Dense(units=6), GELU(approximate="tanh")),
                                                                projection="dense"), pool=False)),
    "Residual_nested": _model("Residual_nested", _tokens(
        Residual(layers=(Residual(layers=(LayerNorm(), SelfAttention(heads=4))), Dense(units=8, activation="hidden"))))),
}
"""The layer models by name: every new layer type, each Residual projection, and a nested container."""


@cache
def _batch(shape: tuple[int, ...] = LAYER_SHAPE) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(7)
    return rng.random((BATCH, *shape), dtype=np.float32), rng.integers(0, CLASSES, BATCH)


def oracle_answer(model: ModelSpec, train: TrainSpec, weights: list[np.ndarray], shape: tuple[int, ...] = LAYER_SHAPE
                  ) -> tuple[np.ndarray, float, list[np.ndarray]]:
    """Eval-mode logits, training-mode loss and trainable gradients of the float64 oracle."""
    x, y = _batch(shape)
    net = reference.Network(model, train, shape, CLASSES)
    net.set_weights(weights)
    logits = net.forward(x, training=False).logits
    loss, grads, _ = net.loss_and_gradients(x, y)
    return logits, loss, grads


def check_against_oracle(backend: Backend, model: ModelSpec, train: TrainSpec | None = None,
                         shape: tuple[int, ...] = LAYER_SHAPE) -> None:
    """The backend's eval logits, training-mode loss and gradients on ``model`` equal the oracle's, from the
    same perturbed canonical weights (non-zero biases, non-unit norms), within the conformance tolerances."""
    train = train or TrainSpec()
    model = model.resolve(train.activation)
    weights = perturbed_weights(model, shape)
    logits, loss, grads = oracle_answer(model, train, weights, shape)
    x, y = _batch(shape)
    backend.build(model, train, shape, CLASSES)
    backend.set_weights(weights)
    np.testing.assert_allclose(backend.logits(x), logits, rtol=0, atol=LOGITS_ATOL, err_msg=f"{model.name}: eval logits")
    got_loss, got_grads = backend.loss_and_gradients(x, y)
    np.testing.assert_allclose(got_loss, loss, rtol=LOSS_RTOL, err_msg=f"{model.name}: training loss")
    keys = [p.key for p in backend.specs if p.trainable]
    for key, got, want in zip(keys, got_grads, grads, strict=True):
        np.testing.assert_allclose(got, want, rtol=GRADIENT_RTOL, atol=GRADIENT_ATOL, err_msg=f"{model.name}: gradient of {key}")

"""PyTorch's residual nets and transformers against the oracle, layer by layer (backends/torch_layers.py).

Each new layer type, inside the tiny models of tests/layer_models.py, must give the oracle's eval
logits, training loss and gradients within the conformance tolerances (the CNN's); so must the
places where torch's layout differs from the spec's (a last-axis layer on an NCHW image, BatchNorm
on tokens). A planted attention scale fails that check. The attention module is torch's own
``nn.MultiheadAttention`` in parameters and function. AdamW's decoupled decay and the per-step rate
of a schedule match the oracle's steps, BatchNorm statistics inside residual blocks included, and a
torch-trained model saves and reloads in both formats.
"""

from __future__ import annotations

import numpy as np
import pytest

from bench import reference
from bench.models.saved import load_neutral, save_neutral
from bench.spec.model import (
    BatchNorm,
    Conv2D,
    Dense,
    Flatten,
    GlobalAvgPool,
    LayerNorm,
    ModelSpec,
    PatchEmbed,
    Residual,
)
from bench.spec.schedule import learning_rates
from bench.spec.shapes import attention_scale
from bench.spec.train import TrainSpec
from tests.conftest import loaded_backend, perturbed_weights
from tests.layer_models import CLASSES, LAYER_MODELS, LAYER_SHAPE, check_against_oracle

torch = pytest.importorskip("torch")
from backends import torch_layers  # noqa: E402

LAYOUT_MODELS: dict[str, ModelSpec] = {
    "BatchNorm_tokens": ModelSpec(name="layout_BatchNorm_tokens", layers=(
        PatchEmbed(patch=2, dim=8), BatchNorm(), Flatten(), Dense(units=CLASSES))),
    "LayerNorm_image": ModelSpec(name="layout_LayerNorm_image", layers=(
        Conv2D(filters=4, kernel=3, padding="same"), LayerNorm(), Flatten(), Dense(units=CLASSES))),
    "Residual_dense_image": ModelSpec(name="layout_Residual_dense_image", layers=(
        Conv2D(filters=3, kernel=3, padding="same"),
        Residual(layers=(Conv2D(filters=5, kernel=3, padding="same", activation="tanh"),), projection="dense"),
        GlobalAvgPool(), Dense(units=CLASSES))),
}
"""Where torch keeps an axis elsewhere than the spec: the spec's last axis is dim 1 of a torch image, and
torch's BatchNorm normalises dim 1 where tokens keep their features last."""


@pytest.mark.parametrize("layer", list(LAYER_MODELS) + list(LAYOUT_MODELS))
def test_each_layer_gives_the_oracles_logits_loss_and_gradients(layer):
    check_against_oracle(loaded_backend("torch"), (LAYER_MODELS | LAYOUT_MODELS)[layer])


def test_an_attention_scaled_by_dim_instead_of_the_root_of_head_dim_fails(monkeypatch):
    monkeypatch.setattr(torch_layers, "attention_scale", lambda dim, heads: 1.0 / dim)
    with pytest.raises(AssertionError, match="layer_SelfAttention"):
        check_against_oracle(loaded_backend("torch"), LAYER_MODELS["SelfAttention"])


def test_the_attention_is_torchs_multihead_attention_with_its_scale_passed_explicitly():
    """Same parameters and state-dict keys as ``nn.MultiheadAttention``, and the same outputs and gradients."""
    torch.manual_seed(0)
    ours = torch_layers.ScaledSelfAttention(8, 2, attention_scale(8, 2))
    theirs = torch.nn.MultiheadAttention(8, 2, dropout=0.0, batch_first=True)
    theirs.load_state_dict(ours.state_dict(), strict=True)
    x = torch.randn(3, 5, 8, requires_grad=True)
    mine, reference_out = ours(x), theirs(x, x, x, need_weights=False)[0]
    torch.testing.assert_close(mine, reference_out, rtol=1e-5, atol=1e-6)
    (grad_ours,) = torch.autograd.grad(mine.square().sum(), x)
    (grad_theirs,) = torch.autograd.grad(reference_out.square().sum(), x)
    torch.testing.assert_close(grad_ours, grad_theirs, rtol=1e-5, atol=1e-6)


STEPS, BATCH = 4, 8


def _oracle_weights(model: ModelSpec, train: TrainSpec, weights, x, y, rates) -> list[np.ndarray]:
    """The oracle's weights after one step per batch of ``BATCH`` rows, each at its rate, under torch's rules."""
    net = reference.Network(model, train, LAYER_SHAPE, CLASSES, loaded_backend("torch").RULES)
    net.set_weights(weights)
    optimizer = reference.Optimizer(train, net.rules)
    for step in range(STEPS):
        rows = slice(step * BATCH, (step + 1) * BATCH)
        reference.train_step(net, optimizer, x[rows], y[rows], None, rates[step])
    return net.params


def test_adamw_under_a_schedule_steps_as_the_oracle_batchnorm_statistics_in_residual_blocks_included():
    """Four AdamW steps (a large decay, epsilon 1e-3 as the parity ladder's adaptive rungs) at the
    warm-up rates of a schedule; every canonical array, the running statistics inside the residual
    block included, must be the oracle's. The decay and the schedule both move the weights by far more
    than the tolerance: the oracle without either is checked to be that far off. (The compiled step
    is held to this eager one, under the same schedule, in tests/test_torch_compiled.py.)"""
    model = LAYER_MODELS["Residual_identity"].resolve("relu")
    train = TrainSpec(optimizer="adamw", weight_decay=0.5, learning_rate=0.01, epsilon=1e-3, batch_size=BATCH,
                      epochs=2, schedule="warmup_cosine", warmup_fraction=0.5)
    rng = np.random.default_rng(11)
    x, y = rng.random((STEPS * BATCH, *LAYER_SHAPE), dtype=np.float32), rng.integers(0, CLASSES, STEPS * BATCH)
    weights = perturbed_weights(model, LAYER_SHAPE)
    backend = loaded_backend("torch")
    backend.build(model, train, LAYER_SHAPE, CLASSES)
    backend.set_weights(weights)
    backend.load_data(x, y)
    for step in range(STEPS):
        backend.train_step(np.arange(step * BATCH, (step + 1) * BATCH))
    backend.finish_epoch()
    rates = learning_rates(train, STEPS)
    assert len(set(rates[:STEPS])) == STEPS, "the schedule must change the rate every step here"
    expected = _oracle_weights(model, train, weights, x, y, rates)
    got = backend.get_weights()
    keys = [s.key for s in backend.specs]
    assert {"1.1.moving_mean", "1.4.moving_variance"} <= set(keys)
    for key, actual, want, start in zip(keys, got, expected, weights, strict=True):
        assert np.abs(want - start).max() > 1e-4, f"{key} did not move"
        np.testing.assert_allclose(actual, want, rtol=1e-4, atol=2e-6, err_msg=key)

    def off_by(variant: TrainSpec) -> float:
        other = _oracle_weights(model, variant, weights, x, y, learning_rates(variant, STEPS))
        return max(float(np.abs(a - b).max()) for a, b in zip(got, other))

    assert off_by(train.model_copy(update={"weight_decay": 0.0})) > 1e-3
    assert off_by(train.model_copy(update={"schedule": "constant"})) > 1e-3


def test_a_trained_residual_transformer_saves_and_reloads_natively_and_neutrally(tmp_path):
    """torch's ``state_dict`` reloads into torch bit for bit; the neutral files give the oracle's logits."""
    model = LAYER_MODELS["Residual_nested"].resolve("relu")
    train = TrainSpec(optimizer="adam", learning_rate=0.01, batch_size=BATCH)
    rng = np.random.default_rng(5)
    x, y = rng.random((STEPS * BATCH, *LAYER_SHAPE), dtype=np.float32), rng.integers(0, CLASSES, STEPS * BATCH)
    backend = loaded_backend("torch")
    backend.build(model, train, LAYER_SHAPE, CLASSES)
    backend.set_weights(perturbed_weights(model, LAYER_SHAPE))
    backend.load_data(x, y)
    for step in range(STEPS):
        backend.train_step(np.arange(step * BATCH, (step + 1) * BATCH))
    backend.finish_epoch()
    trained, logits = backend.get_weights(), backend.logits(x)
    native = backend.save_native(tmp_path)
    save_neutral(tmp_path, model, train, LAYER_SHAPE, CLASSES, trained, {"backend": "torch"})

    backend.build(model, train, LAYER_SHAPE, CLASSES)
    backend.set_weights(perturbed_weights(model, LAYER_SHAPE, seed=9))
    backend.load_native(native)
    for restored, original in zip(backend.get_weights(), trained, strict=True):
        np.testing.assert_array_equal(restored, original)
    loaded = load_neutral(tmp_path)
    oracle = loaded_backend("numpy")
    oracle.build(loaded.model, loaded.train, loaded.input_shape, loaded.num_classes)
    oracle.set_weights(loaded.weights)
    np.testing.assert_allclose(oracle.logits(x), logits, rtol=0, atol=1e-5)

"""The NumPy oracle against first principles: finite differences, hand-worked optimizer steps, and
the layer conventions the spec fixes (NHWC, HWIO, TF 'same' padding, H,W,C flatten order).

No framework is imported: every backend's tox env runs these, so the oracle is trusted before it
is used to judge anything.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from backends.numpy_backend import NumpyBackend
from bench import reference as R
from bench.measure import training
from bench.reference import network, ops
from bench.spec.data import epoch_batches, load_dataset
from bench.spec.losses import loss_gradient
from bench.spec.losses import loss_value as numpy_loss
from bench.spec.model import (
    ACTIVATIONS,
    LOSSES,
    MODERN_MODELS,
    SEED_MODELS,
    Activation,
    AvgPool2D,
    BatchNorm,
    Conv2D,
    Dense,
    Dropout,
    Flatten,
    MaxPool2D,
    ModelSpec,
)
from bench.spec.schedule import learning_rates
from bench.spec.shapes import ATTENTION_LAYOUT, attention_scale
from bench.spec.train import TrainSpec
from bench.spec.weights import canonical_weights
from tests.conftest import perturbed_weights
from tests.layer_models import LAYER_MODELS, LAYER_SHAPE, check_against_oracle

# Every layer type in one small model: 'same' conv with stride 2 on an odd size (asymmetric pad),
# BatchNorm over a conv output, both pools, dropout, a separate Activation layer.
EVERY_LAYER = ModelSpec(
    name="every_layer",
    layers=(
        Conv2D(filters=3, kernel=3, stride=2, padding="same", activation="hidden"),
        BatchNorm(),
        Activation(activation="hidden"),
        MaxPool2D(size=2),
        Conv2D(filters=4, kernel=2, padding="valid", activation="hidden"),
        AvgPool2D(size=2),
        Flatten(),
        Dense(units=6, activation="hidden"),
        Dropout(rate=0.3),
        Dense(units=5),
    ),
)
SHAPE = (11, 11, 2)


def _network(activation: str, loss: str = "cce", seed: int = 0) -> tuple[R.Network, np.ndarray, np.ndarray, dict]:
    model = EVERY_LAYER.resolve(activation)
    net = R.Network(model, TrainSpec(activation=activation, loss=loss), SHAPE, 5)
    rng = np.random.default_rng(seed)
    # perturbed canonical weights: BatchNorm's gamma/beta away from 1/0 so their gradients are generic
    net.set_weights([w + 0.1 * rng.standard_normal(w.shape) for w in canonical_weights(model, SHAPE, 5, seed)])
    x, y = rng.random((4, *SHAPE)), rng.integers(0, 5, 4)
    return net, x, y, R.draw_dropout_masks(model, SHAPE, 5, 4, rng)


def _numerical_gradient(net: R.Network, x, y, masks, index: int, h: float = 1e-6) -> np.ndarray:
    param, grad = net.params[index], np.zeros_like(net.params[index])
    for i in np.ndindex(param.shape):
        old = param[i]
        param[i] = old + h
        up = net.loss_and_gradients(x, y, masks)[0]
        param[i] = old - h
        down = net.loss_and_gradients(x, y, masks)[0]
        param[i] = old
        grad[i] = (up - down) / (2 * h)
    return grad


@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_backward_matches_finite_differences_for_every_activation(activation):
    net, x, y, masks = _network(activation)
    _, grads, _ = net.loss_and_gradients(x, y, masks)
    for index, grad in zip(net.trainable, grads, strict=True):
        expected = _numerical_gradient(net, x, y, masks, index)
        np.testing.assert_allclose(grad, expected, rtol=1e-5, atol=1e-8 * max(1.0, np.abs(expected).max()))


@pytest.mark.parametrize("loss", LOSSES)
def test_loss_gradient_matches_finite_differences_and_numpy_loss(loss):
    rng = np.random.default_rng(1)
    z, y = rng.standard_normal((6, 5)), rng.integers(0, 5, 6)
    grad = loss_gradient(z, y, loss)
    numeric = np.zeros_like(z)
    for i in np.ndindex(z.shape):
        step = np.zeros_like(z)
        step[i] = 1e-6
        numeric[i] = (numpy_loss(z + step, y, loss) - numpy_loss(z - step, y, loss)) / 2e-6
    np.testing.assert_allclose(grad, numeric, rtol=1e-6, atol=1e-9)


def test_same_padding_puts_the_extra_pixel_after_as_tensorflow_does():
    # 5 wide, kernel 2, stride 2: output 3, total pad 1 -> 0 before, 1 after
    x = np.arange(25, dtype=np.float64).reshape(1, 5, 5, 1)
    kernel = np.zeros((2, 2, 1, 1))
    kernel[0, 0] = 1.0  # picks the top-left pixel of each window
    z, _ = ops.conv2d_forward(x, kernel, np.zeros(1), stride=2, padding="same")
    assert z.shape == (1, 3, 3, 1)
    np.testing.assert_array_equal(z[0, :, :, 0], x[0, ::2, ::2, 0])  # no shift: the pad went after


def test_conv_is_a_cross_correlation_in_hwio_layout():
    rng = np.random.default_rng(2)
    x, kernel, bias = rng.standard_normal((2, 6, 5, 3)), rng.standard_normal((3, 3, 3, 4)), rng.standard_normal(4)
    z, _ = ops.conv2d_forward(x, kernel, bias, stride=1, padding="valid")
    direct = np.zeros((2, 4, 3, 4))
    for n, i, j, o in np.ndindex(direct.shape):
        direct[n, i, j, o] = np.sum(x[n, i : i + 3, j : j + 3, :] * kernel[:, :, :, o]) + bias[o]
    np.testing.assert_allclose(z, direct, rtol=1e-12)


def test_flatten_is_h_w_c_order():
    model = ModelSpec(name="f", layers=(Flatten(), Dense(units=2)))
    net = R.Network(model, TrainSpec(), (2, 3, 4), 2)
    kernel = np.zeros((24, 2))
    kernel[1 * 12 + 2 * 4 + 3, 0] = 1.0  # the input at h=1, w=2, c=3
    net.set_weights([kernel, np.zeros(2)])
    x = np.zeros((1, 2, 3, 4))
    x[0, 1, 2, 3] = 7.0
    assert net.forward(x, training=False).logits[0, 0] == 7.0


def test_maxpool_routes_the_gradient_to_the_maximum_and_avgpool_spreads_it():
    x = np.array([1.0, 5.0, 9.0, 2.0, 4.0, 9.0, 9.0, 9.0, 9.0]).reshape(1, 3, 3, 1)  # last row/col (the 9s) dropped
    y, argmax = ops.maxpool_forward(x, 2)
    assert y.item() == 5.0
    dmax = ops.maxpool_backward(x.shape, argmax, np.ones((1, 1, 1, 1)), 2)[0, :, :, 0]
    np.testing.assert_array_equal(dmax, [[0, 1, 0], [0, 0, 0], [0, 0, 0]])
    assert ops.avgpool_forward(x, 2).item() == (1 + 5 + 2 + 4) / 4
    davg = ops.avgpool_backward(x.shape, np.ones((1, 1, 1, 1)), 2)[0, :, :, 0]
    np.testing.assert_array_equal(davg, [[0.25, 0.25, 0], [0.25, 0.25, 0], [0, 0, 0]])


def test_maxpool_ties_go_to_the_first_maximum():
    x = np.zeros((1, 2, 2, 1))
    _, argmax = ops.maxpool_forward(x, 2)
    dx = ops.maxpool_backward(x.shape, argmax, np.ones((1, 1, 1, 1)), 2)
    np.testing.assert_array_equal(dx[0, :, :, 0], [[1, 0], [0, 0]])


def test_batchnorm_normalises_with_the_biased_batch_variance_and_updates_keras_style():
    rng = np.random.default_rng(3)
    x = rng.normal(3.0, 2.0, size=(8, 5))
    y, cache = ops.batchnorm_train_forward(x, np.ones(5), np.zeros(5), eps=1e-3)
    np.testing.assert_allclose(y.mean(axis=0), 0, atol=1e-12)
    np.testing.assert_allclose(y.var(axis=0), x.var(axis=0) / (x.var(axis=0) + 1e-3), rtol=1e-12)
    mean, var = ops.running_stats_update(np.zeros(5), np.ones(5), cache, 0.99, R.CANONICAL)
    np.testing.assert_allclose(mean, 0.01 * x.mean(axis=0))
    np.testing.assert_allclose(var, 0.99 + 0.01 * x.var(axis=0))
    _, torch_var = ops.running_stats_update(np.zeros(5), np.ones(5), cache, 0.99, R.Rules(bn_running_variance="unbiased"))
    np.testing.assert_allclose(torch_var, 0.99 + 0.01 * x.var(axis=0, ddof=1))


def test_dropout_scales_kept_units_and_eval_mode_ignores_it():
    model = ModelSpec(name="d", layers=(Flatten(), Dropout(rate=0.5), Dense(units=2)))
    net = R.Network(model, TrainSpec(), (4,), 2)
    net.set_weights([np.ones((4, 2)), np.zeros(2)])
    x = np.ones((1, 4))
    keep = {"1": np.array([[True, False, True, False]])}
    assert net.forward(x, training=True, masks=keep).logits[0, 0] == 4.0  # two kept units, each x2
    assert net.forward(x, training=False).logits[0, 0] == 4.0  # all four, unscaled
    with pytest.raises(ValueError, match="keep-mask"):
        net.forward(x, training=True)


def test_leaky_relu_derivative_at_zero_follows_the_rule():
    z = np.array([-1.0, 0.0, 1.0])
    y = ops.activate(z, "leaky_relu", 0.01)
    np.testing.assert_array_equal(ops.activation_grad(z, y, "leaky_relu", 0.01), [0.01, 0.01, 1.0])
    jax_rule = R.Rules(leaky_relu_grad_at_zero="one")
    np.testing.assert_array_equal(ops.activation_grad(z, y, "leaky_relu", 0.01, jax_rule), [0.01, 1.0, 1.0])
    np.testing.assert_array_equal(ops.activation_grad(z, ops.activate(z, "relu", 0.01), "relu", 0.01), [0, 0, 1])


def _two_steps(optimizer: str, rules: R.Rules = R.CANONICAL, **spec) -> np.ndarray:
    opt = R.Optimizer(TrainSpec(optimizer=optimizer, **spec), rules)
    params = [np.array([1.0, -2.0])]
    for g in (np.array([0.5, -0.1]), np.array([0.2, 0.3])):
        opt.step(params, [g], [0])
    return params[0]


def test_sgd_and_momentum_follow_the_torch_form():
    np.testing.assert_allclose(_two_steps("sgd", learning_rate=0.1), [1.0 - 0.1 * 0.7, -2.0 - 0.1 * 0.2])
    # v1 = g1, v2 = 0.9 v1 + g2; w -= lr v each step
    v1, v2 = np.array([0.5, -0.1]), 0.9 * np.array([0.5, -0.1]) + np.array([0.2, 0.3])
    np.testing.assert_allclose(_two_steps("momentum", learning_rate=0.1), np.array([1.0, -2.0]) - 0.1 * (v1 + v2))


def test_rmsprop_first_step_and_epsilon_placement():
    g, lr, eps = 0.5, 0.01, 1e-2
    opt = R.Optimizer(TrainSpec(optimizer="rmsprop", learning_rate=lr, epsilon=eps))
    params = [np.array([1.0])]
    opt.step(params, [np.array([g])], [0])
    v = 0.1 * g**2
    np.testing.assert_allclose(params[0], 1.0 - lr * g / (math.sqrt(v) + eps))
    keras = R.Optimizer(TrainSpec(optimizer="rmsprop", learning_rate=lr, epsilon=eps), R.Rules(rmsprop_eps="inside_sqrt"))
    params = [np.array([1.0])]
    keras.step(params, [np.array([g])], [0])
    np.testing.assert_allclose(params[0], 1.0 - lr * g / math.sqrt(v + eps))


def test_adam_is_bias_corrected_and_keras_placement_is_a_rescaled_epsilon():
    eps, t = 1e-3, 2
    torch_form = _two_steps("adam", learning_rate=0.01, epsilon=eps)
    m = 0.9 * 0.1 * np.array([0.5, -0.1]) + 0.1 * np.array([0.2, 0.3])
    v = 0.999 * 0.001 * np.array([0.25, 0.01]) + 0.001 * np.array([0.04, 0.09])
    first = np.array([1.0, -2.0]) - 0.01 * np.array([0.5, -0.1]) / (np.abs([0.5, -0.1]) + eps)  # step 1: m_hat = g, v_hat = g^2
    np.testing.assert_allclose(torch_form, first - 0.01 * (m / (1 - 0.9**t)) / (np.sqrt(v / (1 - 0.999**t)) + eps))
    # Keras' rule equals the corrected rule with eps / sqrt(1 - b2^t) at step t: check step 1
    keras = R.Optimizer(TrainSpec(optimizer="adam", learning_rate=0.01, epsilon=eps), R.Rules(adam_eps="uncorrected"))
    scaled = R.Optimizer(TrainSpec(optimizer="adam", learning_rate=0.01, epsilon=eps / math.sqrt(1 - 0.999)))
    a, b = [np.array([1.0, -2.0])], [np.array([1.0, -2.0])]
    keras.step(a, [np.array([0.5, -0.1])], [0])
    scaled.step(b, [np.array([0.5, -0.1])], [0])
    np.testing.assert_allclose(a[0], b[0], rtol=1e-12)


def test_weight_decay_is_decoupled():
    decayed = _two_steps("sgd", learning_rate=0.1, weight_decay=0.5)
    w = np.array([1.0, -2.0])
    for g in (np.array([0.5, -0.1]), np.array([0.2, 0.3])):
        w = w - 0.1 * 0.5 * w - 0.1 * g
    np.testing.assert_allclose(decayed, w)


def test_loss_and_gradients_leave_the_running_statistics_alone():
    net, x, y, masks = _network("relu")
    before = [p.copy() for p in net.params]
    net.loss_and_gradients(x, y, masks)
    for a, b in zip(before, net.params, strict=True):
        np.testing.assert_array_equal(a, b)


def test_numpy_backend_trains_digits_and_saves_canonical_arrays(tmp_path):
    data = load_dataset("digits")
    model = SEED_MODELS["mlp_bn"].resolve("relu")
    train = TrainSpec(optimizer="adam", activation="relu", batch_size=32, seed=0)
    backend = NumpyBackend()
    backend.setup(threads=1)
    training.prepare(backend, model, train, data.x_train, data.y_train, data.num_classes)  # canonical weights of seed 0
    _, before = backend.evaluate(data.x_test, data.y_test, 128)
    losses = training.run_steps(backend, epoch_batches(len(data.x_train), 32, 0, 0))[0].losses
    _, after = backend.evaluate(data.x_test, data.y_test, 128)
    assert len(losses) == len(data.x_train) // 32 and losses[-1] < losses[0]
    assert after > before + 0.5  # one epoch: ~6% -> ~70%
    saved = np.load(backend.save_native(tmp_path))
    assert [k for k in saved] == [f"{s.layer}.{s.name}" for s in backend.net.specs]
    assert all(w.dtype == np.float32 for w in backend.get_weights())
    assert backend.rules() == R.CANONICAL  # the oracle names no deviation


# -- the layers of residual nets and transformers ------------------------------------------------------
def _layer_network(model: ModelSpec, shape: tuple[int, ...], n: int = 3, seed: int = 0, train: TrainSpec | None = None):
    train = train or TrainSpec()
    model = model.resolve(train.activation)
    net = R.Network(model, train, shape, 10)
    rng = np.random.default_rng(seed)
    net.set_weights([np.asarray(w, np.float64) for w in perturbed_weights(model, shape, seed)])
    return net, rng.random((n, *shape)), rng.integers(0, 10, n)


@pytest.mark.parametrize("layer", LAYER_MODELS)
def test_each_new_layers_backward_matches_central_differences(layer):
    """Every parameter of a small model around the layer (so its input gradient is checked as well)."""
    net, x, y = _layer_network(LAYER_MODELS[layer], LAYER_SHAPE, train=TrainSpec(activation="tanh"))
    _, grads, _ = net.loss_and_gradients(x, y)
    for index, grad in zip(net.trainable, grads, strict=True):
        expected = _numerical_gradient(net, x, y, None, index)
        np.testing.assert_allclose(grad, expected, rtol=1e-6, atol=1e-9 * max(1.0, np.abs(expected).max()),
                                   err_msg=net.specs[index].key)


@pytest.mark.parametrize("name", ["resnet", "vit"])
def test_resnet_and_vit_backward_match_central_differences(name):
    """Whole models at full size on two images: three entries of every trainable array, chosen at random."""
    net, x, y = _layer_network(MODERN_MODELS[name], (28, 28, 1), n=2, seed=1)
    _, grads, _ = net.loss_and_gradients(x, y)
    rng = np.random.default_rng(2)
    for index, grad in zip(net.trainable, grads, strict=True):
        param = net.params[index]
        for flat in rng.choice(param.size, size=min(3, param.size), replace=False):
            i = np.unravel_index(flat, param.shape)
            old = param[i]
            param[i] = old + 1e-6
            up = net.loss_and_gradients(x, y)[0]
            param[i] = old - 1e-6
            down = net.loss_and_gradients(x, y)[0]
            param[i] = old
            numeric = (up - down) / 2e-6
            assert grad[i] == pytest.approx(numeric, rel=1e-5, abs=1e-9), f"{net.specs[index].key}{i}"


def test_attention_is_softmax_of_scaled_scores_per_head_in_the_declared_layout():
    """The oracle's attention against a direct per-head loop over the canonical (D, D) kernels' column blocks."""
    rng = np.random.default_rng(0)
    x, heads, dim = rng.standard_normal((2, 5, 6)), 3, 6
    w = {name: rng.standard_normal((dim, dim) if name.endswith("kernel") else (dim,)) for name in ATTENTION_LAYOUT}
    out, _ = ops.attention_forward(x, w, heads, attention_scale(dim, heads))
    d = dim // heads
    merged = np.zeros_like(x)
    for h in range(heads):
        cols = slice(h * d, (h + 1) * d)
        q, k, v = (x @ w[f"{p}_kernel"][:, cols] + w[f"{p}_bias"][cols] for p in ("query", "key", "value"))
        scores = q @ k.transpose(0, 2, 1) / math.sqrt(d)
        probs = np.exp(scores) / np.exp(scores).sum(axis=-1, keepdims=True)
        merged[..., cols] = probs @ v
    np.testing.assert_allclose(out, merged @ w["output_kernel"] + w["output_bias"], rtol=1e-12)


def test_gelu_forms_and_layernorm_statistics():
    z = np.linspace(-4, 4, 81)
    exact, tanh = ops.gelu(z, "exact"), ops.gelu(z, "tanh")
    assert np.abs(exact - tanh).max() < 1e-3 and np.abs(exact - tanh).max() > 1e-5  # close, but not the same function
    np.testing.assert_allclose(ops.gelu(np.array([1.0]), "exact"), [0.8413447460685429])  # Phi(1)
    out, _ = ops.layernorm_forward(np.array([[1.0, 2.0, 3.0, 6.0]]), None, None, 1e-5)
    np.testing.assert_allclose(out.mean(), 0.0, atol=1e-12)
    np.testing.assert_allclose(out.var(), 3.5 / (3.5 + 1e-5), rtol=1e-12)  # biased variance 3.5


def test_batchnorm_statistics_inside_a_residual_update_like_top_level_ones():
    net, x, y = _layer_network(LAYER_MODELS["Residual_identity"], LAYER_SHAPE)
    before = {spec.key: p.copy() for spec, p in zip(net.specs, net.params, strict=True)}
    _, _, fwd = net.loss_and_gradients(x, y)
    net.update_running_stats(fwd)
    after = dict(zip((s.key for s in net.specs), net.params, strict=True))
    inner = fwd.caches["1.1"][0]  # the first BatchNorm inside the Residual at layer 1
    np.testing.assert_allclose(after["1.1.moving_mean"], 0.99 * before["1.1.moving_mean"] + 0.01 * inner.mean)
    assert not np.allclose(after["1.4.moving_variance"], before["1.4.moving_variance"])


def test_adamw_is_adam_after_the_decay_at_the_steps_rate():
    """torch.optim.AdamW's order: w *= 1 - lr*wd, then Adam's step from the same gradient."""
    g, w0, lr, wd = np.array([0.5, -0.2]), np.array([1.0, -2.0]), 0.01, 0.1
    params = [w0.copy()]
    R.Optimizer(TrainSpec(optimizer="adamw", learning_rate=lr, weight_decay=wd, epsilon=1e-8)).step(params, [g], [0])
    m, v = 0.1 * g, 0.001 * g**2
    expected = w0 * (1 - lr * wd) - lr * (m / 0.1) / (np.sqrt(v / 0.001) + 1e-8)
    np.testing.assert_allclose(params[0], expected, rtol=1e-12)
    with pytest.raises(ValueError, match="needs each step's rate"):
        R.Optimizer(TrainSpec(schedule="warmup_cosine")).step([w0.copy()], [g], [0])


def test_numpy_backend_trains_resnet_and_vit_at_each_steps_scheduled_rate():
    """The adapter feeds the oracle ``step_lr``: its trajectory is a hand-written loop over ``learning_rates``."""
    data = load_dataset("synthetic:14x14x1")
    x, y = data.x_train[:64], data.y_train[:64]
    for name in ("resnet", "vit"):
        model = MODERN_MODELS[name].resolve("relu")
        train = TrainSpec(optimizer="adamw", schedule="warmup_cosine", warmup_fraction=0.25, batch_size=16, epochs=2,
                          learning_rate=0.003)
        backend = NumpyBackend()
        backend.setup(threads=1)
        weights = training.prepare(backend, model, train, x, y, data.num_classes)
        losses = np.concatenate([e.result.losses for e in training.fit(backend, len(x), train)])
        net, opt = R.Network(model, train, x.shape[1:], data.num_classes), R.Optimizer(train)
        net.set_weights(weights)
        rates = learning_rates(train, len(x) // 16)
        batches = [b for epoch in range(2) for b in epoch_batches(len(x), 16, 0, epoch)]
        by_hand = [R.train_step(net, opt, x[b], y[b], lr=rates[step]) for step, b in enumerate(batches)]
        np.testing.assert_allclose(losses, by_hand, rtol=1e-12)
        assert rates[0] < rates[1] and rates[-1] < rates[3] and len(losses) == len(rates) == 8
        np.testing.assert_allclose(backend.get_weights()[0], net.params[0].astype(np.float32))


def test_the_layer_check_passes_the_numpy_adapter_and_fails_a_planted_attention_scale(monkeypatch):
    """tests/layer_models.py is what the adapters are held to: dividing scores by D instead of sqrt(D/heads) fails it."""
    backend = NumpyBackend()
    backend.setup(threads=1)
    for model in LAYER_MODELS.values():
        check_against_oracle(backend, model)

    class Planted(NumpyBackend):
        def _build(self) -> None:  # the oracle's answer is in hand by now: only this adapter's scores change
            super()._build()
            monkeypatch.setattr(network, "attention_scale", lambda dim, heads: 1.0 / dim)

    planted = Planted()
    planted.setup(threads=1)
    with pytest.raises(AssertionError, match="layer_SelfAttention: eval logits"):
        check_against_oracle(planted, LAYER_MODELS["SelfAttention"])

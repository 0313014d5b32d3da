import numpy as np
import pytest

from bench.errors import SpecError
from bench.spec.cost import forward_flops, train_flops
from bench.spec.model import SEED_MODELS, Conv2D, Dense, Flatten, ModelSpec
from bench.spec.shapes import layer_shapes, param_specs, parameter_count, same_padding
from bench.spec.train import TrainSpec
from bench.spec.weights import canonical_weights


def test_seed_models_have_the_design_parameter_counts():
    # Keras' model.summary() counts for the same layers on 28x28x1 MNIST.
    assert parameter_count(SEED_MODELS["mlp"], (28, 28, 1), 10) == 784 * 128 + 128 + 128 * 10 + 10
    assert parameter_count(SEED_MODELS["cnn"], (32, 32, 3), 10) == (
        3 * 3 * 3 * 32 + 32 + 3 * 3 * 32 * 64 + 64 + 3 * 3 * 64 * 128 + 128 + 6 * 6 * 128 * 64 + 64 + 64 * 10 + 10
    )
    # BatchNorm's moving statistics are parameters but not trainable.
    bn = SEED_MODELS["mlp_bn"]
    assert parameter_count(bn, (28, 28, 1), 10, trainable_only=False) - parameter_count(bn, (28, 28, 1), 10) == 2 * (128 + 64)


def test_cnn_shapes_on_both_image_sizes_and_refusal_on_digits():
    assert layer_shapes(SEED_MODELS["cnn"], (28, 28, 1), 10)[4] == (5, 5, 128)
    assert layer_shapes(SEED_MODELS["cnn"], (32, 32, 3), 10)[4] == (6, 6, 128)
    with pytest.raises(SpecError, match="does not fit the 2x2 input"):
        layer_shapes(SEED_MODELS["cnn"], (8, 8, 1), 10)


def test_dense_on_images_needs_flatten_and_last_layer_must_be_logits():
    with pytest.raises(SpecError, match="add a Flatten"):
        layer_shapes(ModelSpec(name="bad", layers=(Dense(units=10),)), (28, 28, 1), 10)
    with pytest.raises(SpecError, match="must end in Dense"):
        layer_shapes(ModelSpec(name="bad", layers=(Flatten(), Dense(units=10, activation="relu"))), (28, 28, 1), 10)


def test_same_padding_puts_the_extra_pixel_after_like_tensorflow():
    assert same_padding(28, 3, 2) == (0, 1)
    assert same_padding(28, 3, 1) == (1, 1)
    model = ModelSpec(name="s", layers=(Conv2D(filters=4, kernel=3, stride=2, padding="same"), Flatten(), Dense(units=10)))
    assert layer_shapes(model, (28, 28, 1), 10)[0] == (14, 14, 4)


def test_hidden_placeholder_resolves_and_unknown_activation_is_refused():
    resolved = SEED_MODELS["mlp"].resolve("tanh")
    assert resolved.layers[1].activation == "tanh"
    with pytest.raises(ValueError, match="unknown activation"):
        SEED_MODELS["mlp"].resolve("gelu")


def test_canonical_weights_are_glorot_uniform_and_reproducible():
    model = SEED_MODELS["mlp_bn"]
    a = canonical_weights(model, (28, 28, 1), 10, seed=3)
    b = canonical_weights(model, (28, 28, 1), 10, seed=3)
    c = canonical_weights(model, (28, 28, 1), 10, seed=4)
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert not np.array_equal(a[0], c[0])
    limit = np.sqrt(6 / (784 + 128))
    assert a[0].shape == (784, 128) and np.abs(a[0]).max() <= limit and np.abs(a[0]).max() > 0.9 * limit
    specs = param_specs(model, (28, 28, 1), 10)
    by_name = {s.name: w for s, w in zip(specs, a)}
    assert np.all(by_name["gamma"] == 1) and np.all(by_name["moving_variance"] == 1) and np.all(by_name["bias"] == 0)


def test_flops_of_the_mlp_match_the_hand_count():
    fwd = forward_flops(SEED_MODELS["mlp"].resolve("relu"), (28, 28, 1), 10)
    assert fwd == 2 * 784 * 128 + 128 + 128 + 2 * 128 * 10 + 10
    assert train_flops(SEED_MODELS["mlp"].resolve("relu"), (28, 28, 1), 10) == 3 * fwd


def test_train_spec_makes_every_default_explicit():
    spec = TrainSpec(optimizer="sgd")
    assert spec.lr == 0.01 and TrainSpec(optimizer="adam").lr == 0.001
    assert TrainSpec(learning_rate=0.5).lr == 0.5
    with pytest.raises(ValueError):
        TrainSpec(optimizer="adagrad")

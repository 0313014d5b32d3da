import numpy as np
import pytest

from bench.errors import BenchError, SpecError
from bench.run import grid
from bench.spec.cost import forward_flops, train_flops
from bench.spec.model import (
    BUILTIN_MODELS,
    GELU,
    SEED_MODELS,
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
from bench.spec.schedule import learning_rates, rate_at
from bench.spec.shapes import ATTENTION_LAYOUT, attention_scale, layer_shapes, param_specs, parameter_count, same_padding
from bench.spec.train import ADAMW_WEIGHT_DECAY, TrainSpec
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


# -- the layers of residual nets and transformers -----------------------------------------------------
MODERN = {name: BUILTIN_MODELS[name] for name in ("resnet", "vit")}


def test_resnet_shapes_keys_and_counts_follow_the_container_paths():
    resnet = MODERN["resnet"]
    assert layer_shapes(resnet, (28, 28, 1), 10) == [(28, 28, 16)] * 4 + [(14, 14, 32), (7, 7, 64), (64,), (10,)]
    specs = {p.key: p for p in param_specs(resnet, (28, 28, 1), 10)}
    assert list(specs)[:6] == ["0.kernel", "0.bias", "1.gamma", "1.beta", "1.moving_mean", "1.moving_variance"]
    # inside the Residual at 4: f's layers first (depth-first), then the projection
    block = [k for k in specs if k.startswith("4.")]
    assert block == ["4.0.kernel", "4.0.bias", "4.1.gamma", "4.1.beta", "4.1.moving_mean", "4.1.moving_variance",
                     "4.3.kernel", "4.3.bias", "4.4.gamma", "4.4.beta", "4.4.moving_mean", "4.4.moving_variance",
                     "4.projection.kernel", "4.projection.bias"]
    assert specs["4.0.kernel"].shape == (3, 3, 16, 32) and specs["4.projection.kernel"].shape == (1, 1, 16, 32)
    assert "3.projection.kernel" not in specs  # the first block keeps its shape: no projection
    convs = [(3, 3, 1, 16), (3, 3, 16, 16), (3, 3, 16, 16), (3, 3, 16, 32), (3, 3, 32, 32), (1, 1, 16, 32),
             (3, 3, 32, 64), (3, 3, 64, 64), (1, 1, 32, 64)]
    bn_channels = [16, 16, 16, 32, 32, 64, 64]
    expected = sum(np.prod(k) + k[-1] for k in convs) + 2 * sum(bn_channels) + 64 * 10 + 10
    assert parameter_count(resnet, (28, 28, 1), 10) == expected
    assert parameter_count(resnet, (28, 28, 1), 10, trainable_only=False) == expected + 2 * sum(bn_channels)


def test_vit_tokens_attention_layout_and_counts():
    vit = MODERN["vit"]
    assert layer_shapes(vit, (28, 28, 1), 10) == [(16, 64)] * 7 + [(64,), (10,)]
    specs = {p.key: p for p in param_specs(vit, (28, 28, 1), 10)}
    assert specs["0.kernel"].shape == (7, 7, 1, 64) and specs["1.embedding"].shape == (16, 64)
    assert [k.split(".", 2)[2] for k in specs if k.startswith("2.1.")] == list(ATTENTION_LAYOUT)
    assert specs["2.1.query_kernel"].shape == (64, 64) and specs["2.1.output_bias"].shape == (64,)
    assert specs["3.1.kernel"].shape == (64, 128) and specs["3.3.kernel"].shape == (128, 64)  # Dense on the last axis
    block = 2 * 64 + 4 * (64 * 64 + 64) + 2 * 64 + 64 * 128 + 128 + 128 * 64 + 64
    expected = 49 * 64 + 64 + 16 * 64 + 2 * block + 2 * 64 + 64 * 10 + 10
    assert parameter_count(vit, (28, 28, 1), 10) == expected
    assert attention_scale(64, 4) == 0.25


def test_a_residual_whose_layers_change_the_shape_needs_a_matching_projection():
    grow = (Conv2D(filters=8, kernel=3, stride=2, padding="same"),)
    model = ModelSpec(name="r", layers=(Residual(layers=grow), GlobalAvgPool(), Dense(units=10)))
    with pytest.raises(SpecError, match=r"layer 0 \(Residual\).*\(28, 28, 1\) into \(14, 14, 8\).*projection = 'conv'"):
        layer_shapes(model, (28, 28, 1), 10)
    with pytest.raises(SpecError, match=r"gives \(28, 28, 8\)"):  # projected, but without the stride
        layer_shapes(model.model_copy(update={"layers": (Residual(layers=grow, projection="conv"), *model.layers[1:])}),
                     (28, 28, 1), 10)
    fits = Residual(layers=grow, projection="conv", stride=2)
    assert layer_shapes(ModelSpec(name="r", layers=(fits, GlobalAvgPool(), Dense(units=10))), (28, 28, 1), 10)[0] == (14, 14, 8)
    with pytest.raises(ValueError, match="stride 2 needs projection = 'conv'"):
        Residual(layers=grow, projection="dense", stride=2)
    nested = Residual(layers=(Residual(layers=(Dense(units=4),), projection="dense"), LayerNorm()), projection="dense",
                      activation="hidden")
    model = ModelSpec(name="n", layers=(Flatten(), nested, Dense(units=10)))
    assert [p.key for p in param_specs(model, (3,), 10)][:4] == ["1.0.0.kernel", "1.0.0.bias", "1.0.projection.kernel",
                                                                 "1.0.projection.bias"]
    assert model.resolve("tanh").layers[1].activation == "tanh"


def test_token_layers_refuse_inputs_of_the_wrong_rank_in_one_line():
    cases = [
        ((SelfAttention(heads=3),), (16, 64), "3 heads do not divide the 64 features"),
        ((Flatten(), SelfAttention(heads=2)), (16, 64), "needs a token sequence"),
        ((PositionEmbedding(),), (28, 28, 1), "needs a token sequence"),
        ((PatchEmbed(patch=7, dim=8), Flatten(), PatchEmbed(patch=2, dim=8)), (28, 28, 1), "needs an image input"),
        ((PatchEmbed(patch=29, dim=8),), (28, 28, 1), "patch does not fit"),
        ((Flatten(), GlobalAvgPool()), (28, 28, 1), "needs an image .* or a token sequence"),
    ]
    for layers, shape, message in cases:
        with pytest.raises(SpecError, match=message) as caught:
            layer_shapes(ModelSpec(name="t", layers=(*layers, GlobalAvgPool(), Dense(units=10))), shape, 10)
        assert "\n" not in str(caught.value)
    with pytest.raises(SpecError, match="pool or flatten before it"):  # logits need one vector per sample
        layer_shapes(ModelSpec(name="t", layers=(PatchEmbed(patch=7, dim=8), Dense(units=10))), (28, 28, 1), 10)


def test_gelu_names_its_formula_and_layernorm_its_epsilon():
    with pytest.raises(ValueError, match="approximate"):
        GELU()
    assert LayerNorm().epsilon == 1e-5 and LayerNorm(epsilon=1e-6, affine=False).affine is False
    no_affine = ModelSpec(name="l", layers=(Flatten(), LayerNorm(affine=False), Dense(units=10)))
    assert [p.key for p in param_specs(no_affine, (4,), 10)] == ["2.kernel", "2.bias"]


def test_modern_canonical_weights_draw_every_kernel_glorot_and_positions_small():
    weights = dict(zip((p.key for p in param_specs(MODERN["vit"], (28, 28, 1), 10)),
                       canonical_weights(MODERN["vit"], (28, 28, 1), 10, seed=0), strict=True))
    limit = np.sqrt(6 / (64 + 64))
    assert 0.9 * limit < np.abs(weights["2.1.key_kernel"]).max() <= limit
    assert np.all(weights["2.1.key_bias"] == 0) and np.all(weights["2.0.gamma"] == 1) and np.all(weights["2.0.beta"] == 0)
    assert 0.015 < weights["1.embedding"].std() < 0.025
    # the seed models' draws are unchanged by the new names: the MLP's first kernel is the same array
    assert np.array_equal(canonical_weights(SEED_MODELS["mlp"], (28, 28, 1), 10, 0)[0],
                          canonical_weights(SEED_MODELS["mlp"].model_copy(), (28, 28, 1), 10, 0)[0])


def test_flops_of_the_new_layers_match_hand_counts():
    attention = ModelSpec(name="a", layers=(SelfAttention(heads=2), GlobalAvgPool(), Dense(units=10)))
    t, d = 4, 8
    assert forward_flops(attention, (t, d), 10) == (4 * t * (2 * d * d + d) + 4 * t * t * d + 4 * 2 * t * t) + t * d + (2 * d * 10 + 10)
    tokens = ModelSpec(name="d", layers=(Dense(units=3), GlobalAvgPool(), Dense(units=10)))
    assert forward_flops(tokens, (t, d), 10) == t * (2 * d * 3 + 3) + t * 3 + (2 * 3 * 10 + 10)
    residual = ModelSpec(name="r", layers=(Residual(layers=(Dense(units=5),), projection="dense"), Dense(units=10)))
    assert forward_flops(residual, (3,), 10) == (2 * 3 * 5 + 5) + (2 * 3 + 1) * 5 + 5 + (2 * 5 * 10 + 10)
    assert forward_flops(MODERN["resnet"].resolve("relu"), (28, 28, 1), 10) > forward_flops(MODERN["vit"], (28, 28, 1), 10) > 0


def test_adamw_decays_by_default_and_schedules_give_every_steps_rate():
    assert TrainSpec(optimizer="adamw").weight_decay == ADAMW_WEIGHT_DECAY
    assert TrainSpec(optimizer="adamw", weight_decay=0.0).weight_decay == 0.0 and TrainSpec().weight_decay == 0.0
    constant = learning_rates(TrainSpec(epochs=2), 5)
    assert constant.shape == (10,) and np.all(constant == 0.001)  # exactly the rate, as before schedules
    train = TrainSpec(schedule="warmup_cosine", warmup_fraction=0.2, epochs=2, learning_rate=0.1)
    rates = learning_rates(train, 10)
    np.testing.assert_allclose(rates[:4], [0.025, 0.05, 0.075, 0.1])  # 4 of the 20 steps warm up linearly
    np.testing.assert_allclose(rates[4], 0.1)
    np.testing.assert_allclose(rates[12], 0.05)  # half way through the cosine
    assert np.all(np.diff(rates[4:]) < 0) and 0 < rates[-1] < 0.002
    assert rate_at(rates, 10_000) == rates[-1]  # steps past the schedule keep its last rate


def test_a_toml_sweep_defines_a_nested_residual_model(tmp_path):
    path = tmp_path / "sweep.toml"
    path.write_text("""
[sweep]
models = ["tiny_resnet"]
schedules = ["warmup_cosine"]

[models.tiny_resnet]
layers = [
  {type = "Conv2D", filters = 4, kernel = 3, padding = "same"},
  {type = "Residual", projection = "conv", stride = 2, activation = "hidden", layers = [
      {type = "Conv2D", filters = 8, kernel = 3, stride = 2, padding = "same"}, {type = "BatchNorm"},
      {type = "Residual", layers = [{type = "LayerNorm", epsilon = 1e-6}, {type = "GELU", approximate = "tanh"}]}]},
  {type = "GlobalAvgPool"},
  {type = "Dense", units = 10},
]
""")
    settings, models = grid.read_toml(path)
    assert settings["schedules"] == ["warmup_cosine"]
    model = models["tiny_resnet"]
    assert model.layers[1].layers[2].layers[1] == GELU(approximate="tanh")
    assert "1.2.0.gamma" in [p.key for p in param_specs(model, (28, 28, 1), 10)]
    path.write_text('[models.bad]\nlayers = [{type = "Residual", layers = [{type = "GELU"}]}, {type = "Dense", units = 10}]\n')
    with pytest.raises(BenchError, match=r"layer 0\.0 \(GELU\) approximate") as caught:
        grid.read_toml(path)
    assert "\n" not in str(caught.value)


def test_the_modern_profile_trains_resnet_and_vit_the_way_they_are_trained():
    cells = grid.cells(grid.from_profile("modern"), ["numpy"], ["resnet", "vit"], 7200)
    assert [c.model.name for c in cells] == ["resnet", "vit"]
    assert {(c.train.optimizer, c.train.schedule, c.train.weight_decay, c.train.epochs) for c in cells} == {
        ("adamw", "warmup_cosine", ADAMW_WEIGHT_DECAY, 15)}
    assert all(c.cell_id.endswith("|sched=warmup_cosine") for c in cells)
    assert "resnet" not in grid.from_profile("quick").models  # the default sweep keeps its budget

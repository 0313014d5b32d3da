"""The Keras backend computes the spec: logits against a NumPy forward (and PyTorch when present),
losses against ``numpy_loss``, optimizer steps, modes, optimizer reset and state-free gradients."""

from __future__ import annotations

import gc

import numpy as np
import pytest

from tests.conftest import INSTALLED

if "tf" not in INSTALLED:  # importing the tf adapter would start Keras on TensorFlow in this process
    pytest.skip("Keras on TensorFlow is not this process's Keras engine (or not installed)", allow_module_level=True)

from backends.base import Unsupported  # noqa: E402
from backends.keras_backend import KerasBackend  # noqa: E402
from bench.measure import training  # noqa: E402
from bench.spec.data import epoch_batches, load_dataset  # noqa: E402
from bench.spec.losses import loss_value as numpy_loss  # noqa: E402
from bench.spec.model import ACTIVATIONS, LOSSES, OPTIMIZERS, SEED_MODELS, ModelSpec
from bench.spec.shapes import param_specs  # noqa: E402
from bench.spec.train import TrainSpec
from tests.conftest import perturbed_weights, reference_logits  # noqa: E402

MNIST = (28, 28, 1)
CIFAR = (32, 32, 3)


@pytest.fixture(scope="module")
def backend() -> KerasBackend:
    b = KerasBackend()
    b.setup(threads=2, device="cpu")
    return b


def _built(backend: KerasBackend, model: ModelSpec, train: TrainSpec, input_shape=MNIST, seed: int = 0) -> list[np.ndarray]:
    """Build with canonical weights; biases and BatchNorm parameters and statistics made non-trivial."""
    backend.build(model, train, input_shape, 10)
    weights = perturbed_weights(model, input_shape, seed)
    backend.set_weights(weights)
    return weights


def _prepared(backend: KerasBackend, model: ModelSpec, train: TrainSpec, n: int, data_seed: int = 1) -> list[np.ndarray]:
    """Ready to train (bench.measure.training) on ``n`` random images with labels 0..9, from perturbed weights."""
    weights = perturbed_weights(model.resolve(train.activation), MNIST, seed=0)
    return training.prepare(backend, model, train, _images(MNIST, n, data_seed), np.arange(n) % 10, 10, weights)


def _images(shape, n=8, seed=1) -> np.ndarray:
    return np.random.default_rng(seed).random((n, *shape), dtype=np.float32)


@pytest.mark.parametrize(
    "name,shape", [("mlp", MNIST), ("mlp_bn", MNIST), ("mlp_dropout", MNIST), ("cnn", MNIST), ("cnn", CIFAR)]
)
def test_seed_model_logits_match_the_numpy_reference(backend, name, shape):
    train = TrainSpec(activation="leaky_relu")
    model = SEED_MODELS[name].resolve("leaky_relu")
    weights = _built(backend, model, train, shape)
    x = _images(shape)
    out = backend.logits(x)
    assert out.dtype == np.float32 and out.shape == (8, 10)
    np.testing.assert_allclose(out, reference_logits(model, train, shape, weights, x), atol=1e-5, rtol=0)


@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_hidden_activations_are_the_spec_ones(backend, activation):
    """leaky_relu must use the suite's slope 0.01, not Keras' 0.2; the placeholder resolves too."""
    train = TrainSpec(activation=activation)
    weights = _built(backend, SEED_MODELS["mlp"], train)  # unresolved: 'hidden' is the train activation
    x = _images(MNIST)
    expected = reference_logits(SEED_MODELS["mlp"], train, MNIST, weights, x)
    np.testing.assert_allclose(backend.logits(x), expected, atol=1e-5, rtol=0)


def test_weights_round_trip_in_canonical_order(backend):
    model = SEED_MODELS["mlp_bn"]
    weights = _built(backend, model, TrainSpec())
    for expected, got in zip(weights, backend.get_weights()):
        np.testing.assert_array_equal(got, expected)


@pytest.mark.parametrize("loss", LOSSES)
def test_losses_match_numpy_loss(backend, loss):
    train = TrainSpec(loss=loss)
    _built(backend, SEED_MODELS["mlp"].resolve("tanh"), train)
    x, y = _images(MNIST, n=16), np.arange(16) % 10
    value, grads = backend.loss_and_gradients(x, y)
    assert value == pytest.approx(numpy_loss(backend.logits(x), y, loss), abs=1e-6)
    assert all(np.isfinite(g).all() and np.abs(g).sum() > 0 for g in grads)


@pytest.mark.parametrize("optimizer", OPTIMIZERS)
def test_one_step_with_each_optimizer_changes_weights(backend, optimizer):
    train = TrainSpec(optimizer=optimizer, batch_size=16)
    model = SEED_MODELS["mlp"].resolve("relu")  # no BatchNorm: a bias before BatchNorm has zero gradient
    before = _prepared(backend, model, train, n=64)
    losses = training.run_steps(backend, [np.arange(16)])[0].losses
    assert losses.shape == (1,) and np.isfinite(losses).all()
    after = backend.get_weights()
    for spec, w0, w1 in zip(param_specs(model, MNIST, 10), before, after):
        assert not np.array_equal(w0, w1), f"{spec.key} did not change"


def test_sgd_step_is_weights_minus_lr_times_gradients(backend):
    """train_step applies exactly the gradients loss_and_gradients reports, on the same rows."""
    train = TrainSpec(optimizer="sgd", learning_rate=0.1, batch_size=16)
    model = SEED_MODELS["mlp_bn"].resolve("sigmoid")
    x, y = _images(MNIST, n=32), np.arange(32) % 10
    before = training.prepare(backend, model, train, x, y, 10, perturbed_weights(model, MNIST, seed=0))
    loss, grads = backend.loss_and_gradients(x[:16], y[:16])
    assert training.run_steps(backend, [np.arange(16)])[0].losses[0] == pytest.approx(loss, abs=1e-6)
    trainable = [p.trainable for p in param_specs(model, MNIST, 10)]
    after = [w for w, t in zip(backend.get_weights(), trainable) if t]
    for w0, w1, g in zip([w for w, t in zip(before, trainable) if t], after, grads):
        np.testing.assert_allclose(w1, w0 - 0.1 * g, atol=1e-6)


def test_loss_and_gradients_leave_batchnorm_statistics_alone(backend):
    model = SEED_MODELS["mlp_bn"].resolve("relu")
    before = _built(backend, model, TrainSpec())
    backend.loss_and_gradients(_images(MNIST, n=16), np.arange(16) % 10)
    for expected, got in zip(before, backend.get_weights()):
        np.testing.assert_array_equal(got, expected)


def test_loss_and_gradients_leave_dropout_rng_alone(backend):
    """Dropout is active (training mode) yet two calls see the same masks: the RNG state is put back."""
    model = SEED_MODELS["mlp_dropout"].resolve("relu")
    _built(backend, model, TrainSpec())
    x, y = _images(MNIST, n=16), np.arange(16) % 10
    first, second = backend.loss_and_gradients(x, y), backend.loss_and_gradients(x, y)
    assert first[0] == second[0]
    assert first[0] != pytest.approx(numpy_loss(backend.logits(x), y, "cce"), abs=1e-4)  # masks were applied


def _three_steps(backend: KerasBackend, mode: str, model: ModelSpec) -> tuple[np.ndarray, list[np.ndarray]]:
    # Momentum, not Adam: Adam turns the rounding noise in the (zero) gradient of a bias before
    # BatchNorm into lr-sized steps, which would differ between modes without meaning anything.
    _prepared(backend, model, TrainSpec(optimizer="momentum", learning_rate=0.05, batch_size=32, mode=mode), n=96, data_seed=3)
    result, _ = training.run_steps(backend, epoch_batches(96, 32, seed=0, epoch=0))
    return result.losses, backend.get_weights()


def test_modes_give_the_same_losses(backend):
    model = SEED_MODELS["mlp_bn"].resolve("relu")
    reference, weights = _three_steps(backend, "graph", model)
    assert backend.mode == "graph" and backend.facts()["mode_description"].startswith("graph")
    for mode in ("eager", "xla"):
        losses, w = _three_steps(backend, mode, model)
        assert backend.mode == mode and backend.facts()["mode_description"].startswith(mode)
        np.testing.assert_allclose(losses, reference, atol=1e-5, rtol=0)
        for a, b in zip(w, weights):
            np.testing.assert_allclose(a, b, atol=1e-5, rtol=0)


def test_default_mode_is_graph(backend):
    _built(backend, SEED_MODELS["mlp"].resolve("relu"), TrainSpec(mode="default"))
    assert backend.mode == "graph" and backend.facts()["mode_description"].startswith("graph")


def test_reset_optimizer_restores_the_fresh_trajectory_without_retracing(backend):
    model = SEED_MODELS["mlp_bn"].resolve("relu")
    train = TrainSpec(optimizer="adam", batch_size=32)
    weights = _prepared(backend, model, train, n=96, data_seed=4)
    batches = epoch_batches(96, 32, seed=0, epoch=0)
    runs = []
    for _ in range(2):
        training.restart(backend, weights)
        runs.append(training.run_steps(backend, batches)[0].losses)
    np.testing.assert_array_equal(runs[0], runs[1])
    assert backend.trace_count() == 1


def test_bf16_keeps_float32_variables_and_logits(backend):
    model = SEED_MODELS["mlp"].resolve("relu")
    weights = _prepared(backend, model, TrainSpec(precision="bf16", batch_size=16), n=8)
    x = _images(MNIST)
    out = backend.logits(x)
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, reference_logits(model, TrainSpec(), MNIST, weights, x), atol=0.05)  # bf16: 8-bit mantissa
    assert np.isfinite(training.run_steps(backend, [np.arange(8)])[0].losses).all()
    assert all(w.dtype == np.float32 for w in backend.get_weights())


def _live_graphs() -> int:
    gc.collect()
    return sum(type(o).__name__ == "FuncGraph" for o in gc.get_objects())


def test_cells_free_their_traced_graphs(backend):
    """A sweep builds ~80 cells in one process: each cell's step graph must die with the cell."""

    def cell() -> None:
        _prepared(backend, SEED_MODELS["mlp"].resolve("relu"), TrainSpec(optimizer="adam", batch_size=16), n=16)
        training.run_steps(backend, [np.arange(16)])

    cell()
    after_one = _live_graphs()
    for _ in range(3):
        cell()
    assert _live_graphs() <= after_one


def test_unsupported_configurations(backend):
    with pytest.raises(Unsupported, match="tf32 needs an NVIDIA GPU"):
        backend.build(SEED_MODELS["mlp"].resolve("relu"), TrainSpec(precision="tf32"), MNIST, 10)
    with pytest.raises(Unsupported, match="no execution mode"):
        backend.build(SEED_MODELS["mlp"].resolve("relu"), TrainSpec(mode="compiled"), MNIST, 10)


def test_facts_record_keras_s_rules(backend):
    _built(backend, SEED_MODELS["mlp"].resolve("relu"), TrainSpec(optimizer="rmsprop", epsilon=1e-6))
    rules = backend.facts()["rules"]
    assert rules["rmsprop_eps"] == "inside_sqrt" and rules["adam_eps"] == "uncorrected"
    assert rules["bn_running_variance"] == "biased" and rules["momentum_form"] == "velocity"


def test_saved_model_reloads_with_the_same_logits(backend, tmp_path):
    import keras

    _built(backend, SEED_MODELS["mlp_bn"].resolve("leaky_relu"), TrainSpec())
    path = backend.save_native(tmp_path)
    x = _images(MNIST)
    reloaded = keras.models.load_model(path)
    np.testing.assert_allclose(reloaded(x, training=False).numpy(), backend.logits(x), atol=1e-6)


def test_mlp_adam_learns_mnist_sample(backend):
    data = load_dataset("mnist-sample", train_size=4000, val_split=0.0)
    train = TrainSpec(optimizer="adam", batch_size=64, epochs=1, seed=0)
    training.prepare(backend, SEED_MODELS["mlp"], train, data.x_train, data.y_train, 10)  # canonical weights of seed 0
    [epoch] = training.fit(backend, len(data.x_train), train)
    losses = epoch.result.losses
    assert len(losses) == 4000 // 64 and losses[-10:].mean() < losses[:10].mean()
    _, accuracy = backend.evaluate(data.x_test, data.y_test, batch_size=256)
    assert accuracy > 0.85

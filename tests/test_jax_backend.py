"""The JAX backend on real JAX/Flax/Optax at small sizes: same logits as PyTorch and a NumPy forward,
one compilation per cell, jit == eager, dropout masks that move, the optimizer formulas as
docs/architecture.md fixes them, a functional ``loss_and_gradients``, and an MLP that learns MNIST."""

from __future__ import annotations

import logging

import numpy as np
import pytest

pytest.importorskip("jax")
pytest.importorskip("flax")
pytest.importorskip("optax")

import jax  # noqa: E402

from backends.base import Unsupported  # noqa: E402
from backends.jax_backend import JaxBackend  # noqa: E402
from bench.measure import training  # noqa: E402
from bench.spec.data import epoch_batches, load_dataset  # noqa: E402
from bench.spec.losses import loss_value as numpy_loss  # noqa: E402
from bench.spec.model import SEED_MODELS, Activation, BatchNorm, Dense, Dropout, Flatten, ModelSpec
from bench.spec.train import TrainSpec
from tests.conftest import perturbed_weights, reference_logits  # noqa: E402

MNIST = (28, 28, 1)
BN_DROPOUT = ModelSpec(
    name="bn_dropout",
    layers=(Flatten(), Dense(units=32), BatchNorm(), Activation(activation="hidden"), Dropout(rate=0.2), Dense(units=10)),
)


@pytest.fixture(scope="module")
def data():
    return load_dataset("mnist-sample")


@pytest.fixture
def backend() -> JaxBackend:
    b = JaxBackend()
    b.setup(threads=1, device="cpu")
    return b


def built(backend: JaxBackend, model: ModelSpec, train: TrainSpec, shape=MNIST, weights=None) -> JaxBackend:
    model = model.resolve(train.activation)
    backend.build(model, train, shape, 10)
    backend.set_weights(weights if weights is not None else perturbed_weights(model, shape))
    return backend


def prepared(backend: JaxBackend, model: ModelSpec, train: TrainSpec, x: np.ndarray, y: np.ndarray, weights=None) -> JaxBackend:
    """Ready to train through ``bench.measure.training`` on (x, y), from perturbed weights unless given."""
    model = model.resolve(train.activation)
    weights = weights if weights is not None else perturbed_weights(model, tuple(x.shape[1:]))
    training.prepare(backend, model, train, x, y, 10, weights)
    return backend


@pytest.mark.parametrize("name, activation", [("mlp", "relu"), ("mlp_bn", "tanh")])
def test_logits_match_the_numpy_reference(backend, data, name, activation):
    train = TrainSpec(activation=activation)
    model = SEED_MODELS[name].resolve(activation)
    weights = perturbed_weights(model, MNIST)
    out = built(backend, model, train, weights=weights).logits(data.x_test[:64])
    assert out.dtype == np.float32 and out.shape == (64, 10)
    np.testing.assert_allclose(out, reference_logits(model, train, MNIST, weights, data.x_test[:64]), rtol=0, atol=1e-5)


def test_weights_round_trip_in_canonical_order(backend):
    model = SEED_MODELS["mlp_bn"]
    weights = perturbed_weights(model.resolve("relu"), MNIST)
    got = built(backend, model, TrainSpec(), weights=weights).get_weights()
    assert [w.shape for w in got] == [w.shape for w in weights]
    for a, b in zip(got, weights):
        np.testing.assert_array_equal(a, b)


def count_step_compiles(run) -> int:
    """Real XLA compilations of the train step while ``run()`` executes, read from JAX's compile log."""
    messages: list[str] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            messages.append(record.getMessage())

    handler = Collect()
    logging.getLogger("jax").addHandler(handler)
    try:
        with jax.log_compiles(True):
            run()
    finally:
        logging.getLogger("jax").removeHandler(handler)
    return sum(m.startswith("Compiling") and "_counted_step" in m for m in messages)


def test_train_step_compiles_once_across_steps_reset_and_new_weights(backend, data):
    b = prepared(backend, SEED_MODELS["mlp_bn"], TrainSpec(optimizer="adam", batch_size=32), data.x_train[:1024], data.y_train[:1024])
    batches = epoch_batches(1024, 32, seed=0, epoch=0)

    def run() -> None:
        assert training.run_steps(b, batches[:20])[0].losses.shape == (20,)
        assert b.compile_count == 1
        training.restart(b, b.get_weights())
        training.run_steps(b, batches[20:25])

    assert count_step_compiles(run) == 1
    assert b.compile_count == 1


def test_jit_and_eager_give_the_same_losses_and_weights(backend, data):
    """BatchNorm statistics and the dropout stream included: same keys, same masks in both modes.

    Momentum rather than Adam: the bias before BatchNorm has a gradient of pure rounding noise, which
    Adam's g / (|g| + eps) would blow up to full-size steps that differ between the two modes."""
    runs = {}
    for mode in ("jit", "eager"):
        b = prepared(backend, BN_DROPOUT, TrainSpec(optimizer="momentum", mode=mode, batch_size=32), data.x_train[:256], data.y_train[:256])
        result, _ = training.run_steps(b, epoch_batches(256, 32, seed=0, epoch=0)[:3])
        runs[mode] = (result.losses, b.get_weights())
    assert backend.compile_count == 0  # eager never traces the jitted step
    np.testing.assert_allclose(runs["jit"][0], runs["eager"][0], rtol=0, atol=1e-5)
    for a, b in zip(runs["jit"][1], runs["eager"][1]):
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-5)


def test_dropout_masks_change_every_step_and_restart_on_reset(backend, data):
    """The same batch with frozen weights (lr 1e-12): only the dropout mask can change the loss."""
    def losses(model: ModelSpec) -> tuple[np.ndarray, np.ndarray]:
        b = prepared(backend, model, TrainSpec(optimizer="sgd", learning_rate=1e-12, batch_size=64), data.x_train[:64], data.y_train[:64])
        batch = np.arange(64)
        first = training.run_steps(b, [batch] * 3)[0].losses
        b.reset_optimizer()  # what is tested: a reset restarts the dropout stream (the weights barely moved)
        return first, training.run_steps(b, [batch])[0].losses

    steps, after_reset = losses(SEED_MODELS["mlp_dropout"])
    assert len(set(steps.tolist())) == 3
    assert after_reset[0] == pytest.approx(steps[0], abs=1e-6)
    steps, _ = losses(SEED_MODELS["mlp"])
    np.testing.assert_allclose(steps, steps[0], rtol=0, atol=1e-6)


def first_step_expected(train: TrainSpec, w: np.ndarray, g: np.ndarray) -> np.ndarray:
    """The oracle's formulas for the first step from zero state (momentum buffer = g, v = (1-rho) g^2,
    Adam's bias-corrected moments m = g and v = g^2), decoupled decay on w."""
    lr, eps = train.lr, train.epsilon
    direction = {
        "sgd": g,
        "momentum": g,
        "rmsprop": g / (np.sqrt((1 - train.rho) * g**2) + eps),  # eps outside the square root
        "adam": g / (np.abs(g) + eps),
    }[train.optimizer]
    return w - lr * (direction + train.weight_decay * w)


@pytest.mark.parametrize(
    "train",
    [TrainSpec(optimizer="sgd"), TrainSpec(optimizer="momentum"), TrainSpec(optimizer="rmsprop"),
     TrainSpec(optimizer="adam"), TrainSpec(optimizer="adam", weight_decay=0.1)],
    ids=["sgd", "momentum", "rmsprop", "adam", "adam-wd"],
)
def test_one_step_of_each_optimizer_follows_its_formula(backend, data, train):
    b = prepared(backend, SEED_MODELS["mlp"], train, data.x_train[:128], data.y_train[:128])
    before = b.get_weights()
    loss, grads = b.loss_and_gradients(data.x_train[:128], data.y_train[:128])
    step_loss = training.run_steps(b, [np.arange(128)])[0].losses
    assert np.isfinite(step_loss).all() and step_loss[0] == pytest.approx(loss, abs=1e-6)
    for w, g, after in zip(before, grads, b.get_weights()):
        assert not np.array_equal(w, after)
        np.testing.assert_allclose(after, first_step_expected(train, w, g), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("loss", ["cce", "mse", "mae", "bce", "hinge"])
def test_losses_equal_the_spec_losses(backend, data, loss):
    b = built(backend, SEED_MODELS["mlp"], TrainSpec(loss=loss))
    x, y = data.x_test[:100], data.y_test[:100]
    value, _ = b.loss_and_gradients(x, y)  # mlp: training mode computes the same logits as eval mode
    assert value == pytest.approx(numpy_loss(b.logits(x), y, loss), abs=1e-6)


def test_loss_and_gradients_leaves_weights_statistics_and_optimizer_unchanged(backend, data):
    b = prepared(backend, SEED_MODELS["mlp_bn"], TrainSpec(optimizer="adam"), data.x_train[:64], data.y_train[:64])
    before = b.get_weights()
    loss, grads = b.loss_and_gradients(data.x_train[:64], data.y_train[:64])
    assert np.isfinite(loss) and len(grads) == sum(p.trainable for p in b.specs)
    for a, c in zip(before, b.get_weights()):
        np.testing.assert_array_equal(a, c)
    # a first Adam step still sees zero moments: its loss is the same
    assert training.run_steps(b, [np.arange(64)])[0].losses[0] == pytest.approx(loss, abs=1e-6)
    mean = [p.key for p in b.specs].index("2.moving_mean")
    assert not np.array_equal(before[mean], b.get_weights()[mean])  # the step, not the gradients, moves it


def test_tf32_on_cpu_is_unsupported(backend):
    with pytest.raises(Unsupported, match="tf32 needs an NVIDIA GPU"):
        backend.build(SEED_MODELS["mlp"].resolve("relu"), TrainSpec(precision="tf32"), MNIST, 10)


def test_unknown_mode_is_unsupported(backend):
    with pytest.raises(Unsupported, match="jit, eager"):
        backend.build(SEED_MODELS["mlp"].resolve("relu"), TrainSpec(mode="compiled"), MNIST, 10)


def test_bf16_computes_in_bf16_and_keeps_fp32_parameters(backend, data):
    x, y = data.x_train[:128], data.y_train[:128]
    weights = perturbed_weights(SEED_MODELS["mlp_bn"].resolve("relu"), MNIST)
    fp32 = built(backend, SEED_MODELS["mlp_bn"], TrainSpec(), weights=weights).logits(x)
    b = prepared(backend, SEED_MODELS["mlp_bn"], TrainSpec(precision="bf16"), x, y, weights=weights)
    low = b.logits(x)
    assert low.dtype == np.float32
    assert 0 < np.abs(low - fp32).max() < 0.1  # bf16 rounding is visible, and small
    assert np.isfinite(training.run_steps(b, [np.arange(128)])[0].losses).all()
    assert all(w.dtype == np.float32 for w in b.get_weights())


def test_save_native_writes_flax_msgpack_of_the_linen_variables(backend, tmp_path):
    import flax.serialization

    b = built(backend, SEED_MODELS["mlp_bn"], TrainSpec())
    path = b.save_native(tmp_path / "model")
    saved = flax.serialization.msgpack_restore(path.read_bytes())  # plain msgpack: no pickle, no target needed
    assert set(saved) == {"params", "batch_stats"}
    for p, w in zip(b.specs, b.get_weights()):
        collection, leaf = {"gamma": ("params", "scale"), "beta": ("params", "bias"), "moving_mean": ("batch_stats", "mean"),
                            "moving_variance": ("batch_stats", "var")}.get(p.name, ("params", p.name))
        np.testing.assert_array_equal(saved[collection][f"layer_{p.layer}"][leaf], w)


def test_setup_and_facts_record_the_choices(backend):
    info = backend.setup(threads=1, device="cpu")
    assert info.framework == "jax+flax+optax" and set(info.versions) == {"jax", "jaxlib", "flax", "optax"}
    assert info.device.startswith("cpu") and "xla_flags" in info.threads
    assert not jax.config.jax_enable_x64
    built(backend, SEED_MODELS["mlp"], TrainSpec(optimizer="rmsprop"))
    facts = backend.facts()
    assert facts["rules"]["rmsprop_eps"] == "outside_sqrt" and facts["rules"]["leaky_relu_grad_at_zero"] == "one"
    assert backend._net.precision.name == "HIGHEST" and "donated" in facts["mode_description"]
    assert backend.peak_memory().device_peak_bytes is None


def test_mlp_adam_learns_mnist_in_one_epoch(backend, data):
    train = TrainSpec(optimizer="adam", batch_size=64, epochs=1, seed=0)
    training.prepare(backend, SEED_MODELS["mlp"], train, data.x_train[:4000], data.y_train[:4000], 10)  # canonical weights
    [epoch] = training.fit(backend, 4000, train)
    losses = epoch.result.losses
    assert losses.shape == (62,) and losses[-10:].mean() < losses[:10].mean()
    _, accuracy = backend.evaluate(data.x_test, data.y_test, batch_size=500)
    assert accuracy > 0.85

"""Every installed backend honours the adapter protocol and computes the same model as the NumPy oracle.

The logits and gradient checks hold each framework against the oracle (bench/reference, run as the
``numpy`` backend, which every environment has), never against another framework: ``tox -e tf`` or
``tox -e jax`` installs one framework and still checks it. Both sides load the same weights (for
logits, with non-zero biases and BatchNorm statistics), so any difference is a translation bug
(layout, flatten order, padding, BatchNorm settings), not initialisation. None of the declared
framework rules (bench/spec/rules.py) enters these quantities: they are optimizer updates, running
statistics, and a LeakyReLU derivative at exactly zero, which random inputs never hit.

Tolerances: the oracle computes in float64, so what remains is the framework's own float32 rounding.
A dot product of n terms accumulated in float32 is off by about sqrt(n) x 6e-8 of its terms' size
(n is at most a few thousand here), far inside ``LOGITS_ATOL`` on logits of order 1; a gradient is a
batch mean of such products, so it gets a relative tolerance with an absolute floor for entries near
zero. These are the bounds the tests held when they compared two float32 frameworks, whose errors add.
"""

from __future__ import annotations

import ast
import importlib.util
from pathlib import Path

import numpy as np
import pytest

import backends
from backends.base import Unsupported, Untranslatable
from bench.measure import training
from bench.spec.data import epoch_batches
from bench.spec.model import (
    OPTIMIZERS,
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
from bench.spec.train import VOCABULARY, Augment, TrainSpec
from bench.spec.weights import canonical_weights
from tests.conftest import FRAMEWORKS, INSTALLED, loaded_backend, perturbed_weights, reference_logits

pytestmark = pytest.mark.skipif(not FRAMEWORKS, reason="no framework installed")

CASES = [(m, (28, 28, 1)) for m in SEED_MODELS] + [("cnn", (32, 32, 3))]
ALL_LAYERS = ModelSpec(
    name="all_layers",
    description="every layer type, 'same' padding with stride 2 (asymmetric pad), BatchNorm on images",
    layers=(
        Conv2D(filters=8, kernel=3, stride=2, padding="same", activation="linear"),
        BatchNorm(),
        Activation(activation="hidden"),
        AvgPool2D(size=2),
        Conv2D(filters=4, kernel=3, padding="same", activation="hidden"),
        MaxPool2D(size=2),
        Flatten(),
        Dropout(rate=0.3),
        Dense(units=10),
    ),
)
LOGIT_CASES = [(SEED_MODELS[m], shape) for m, shape in CASES] + [(ALL_LAYERS, (28, 28, 1))]
LOGITS_ATOL = 1e-5
"""Eval-mode logits, float32 against the float64 oracle."""
LOSS_RTOL = 1e-5
GRADIENT_RTOL, GRADIENT_ATOL = 1e-4, 1e-6
"""Training-mode gradients (canonical layouts), float32 against the float64 oracle."""


def _build(name: str, model: str, shape, train: TrainSpec | None = None, seed: int = 0):
    backend = loaded_backend(name)
    spec = SEED_MODELS[model].resolve((train or TrainSpec()).activation)
    backend.build(spec, train or TrainSpec(), shape, 10)
    weights = canonical_weights(spec, shape, 10, seed)
    backend.set_weights(weights)
    return backend, weights


def _batch(shape, n=16, seed=0):
    rng = np.random.default_rng(seed)
    return rng.random((n, *shape), dtype=np.float32), rng.integers(0, 10, n)


@pytest.mark.parametrize("name", FRAMEWORKS)
@pytest.mark.parametrize("model,shape", CASES)
def test_weights_round_trip_in_canonical_layout(name, model, shape):
    backend, weights = _build(name, model, shape)
    for a, b in zip(weights, backend.get_weights(), strict=True):
        assert a.shape == b.shape
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("name", FRAMEWORKS)
@pytest.mark.parametrize("model,shape", LOGIT_CASES, ids=[f"{m.name}-{'x'.join(map(str, s))}" for m, s in LOGIT_CASES])
@pytest.mark.parametrize("activation", ["relu", "leaky_relu", "sigmoid"])
def test_eval_logits_match_the_oracle(name, model, shape, activation):
    x, _ = _batch(shape)
    train = TrainSpec(activation=activation)
    weights = perturbed_weights(model.resolve(activation), shape)
    backend = loaded_backend(name)
    backend.build(model.resolve(activation), train, shape, 10)
    backend.set_weights(weights)
    np.testing.assert_allclose(backend.logits(x), reference_logits(model, train, shape, weights, x), rtol=0, atol=LOGITS_ATOL)


@pytest.mark.parametrize("name", FRAMEWORKS)
@pytest.mark.parametrize("model", ["mlp", "mlp_bn", "cnn"])
def test_training_mode_gradients_match_the_oracle(name, model):
    x, y = _batch((28, 28, 1), n=32)
    oracle, _ = _build("numpy", model, (28, 28, 1))
    loss_ref, grads_ref = oracle.loss_and_gradients(x, y)
    backend, _ = _build(name, model, (28, 28, 1))
    loss, grads = backend.loss_and_gradients(x, y)
    assert loss == pytest.approx(loss_ref, rel=LOSS_RTOL)
    for a, b in zip(grads, grads_ref, strict=True):
        np.testing.assert_allclose(a, b, rtol=GRADIENT_RTOL, atol=GRADIENT_ATOL)


@pytest.mark.parametrize("name", FRAMEWORKS)
def test_loss_and_gradients_leave_the_model_unchanged(name):
    backend, weights = _build(name, "mlp_bn", (28, 28, 1))
    x, y = _batch((28, 28, 1), n=32)
    backend.loss_and_gradients(x, y)
    for a, b in zip(weights, backend.get_weights()):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("name", FRAMEWORKS)
@pytest.mark.parametrize("optimizer", OPTIMIZERS)
def test_every_optimizer_steps_and_reset_replays_the_same_trajectory(name, optimizer, mnist_small):
    train = TrainSpec(optimizer=optimizer, batch_size=32)
    backend = loaded_backend(name)
    weights = training.prepare(backend, SEED_MODELS["mlp_bn"], train, mnist_small.x_train, mnist_small.y_train, 10)
    batches = epoch_batches(len(mnist_small.x_train), 32, seed=0, epoch=0)[:5]

    def trajectory():
        training.restart(backend, weights)
        return training.run_steps(backend, batches)[0].losses

    first, second = trajectory(), trajectory()
    assert first.shape == (5,) and np.all(np.isfinite(first))
    np.testing.assert_allclose(first, second, rtol=1e-6)
    assert not np.allclose(backend.get_weights()[0], weights[0])


@pytest.mark.parametrize("name", INSTALLED)
def test_a_new_build_a_reset_and_a_reload_never_report_an_earlier_runs_losses(name, mnist_small, tmp_path):
    backend = loaded_backend(name)
    train = TrainSpec(batch_size=32)
    rows = epoch_batches(len(mnist_small.x_train), 32, seed=0, epoch=0)

    def unread_steps() -> None:
        """A run cut short: steps dispatched whose losses nobody read (a failure mid-epoch, a warm-up)."""
        training.prepare(backend, SEED_MODELS["mlp"], train, mnist_small.x_train, mnist_small.y_train, 10)
        for batch in rows[:3]:
            backend.train_step(batch)

    unread_steps()
    backend.build(SEED_MODELS["mlp"].resolve("relu"), train, mnist_small.input_shape, 10)
    assert backend.finish_epoch().losses.size == 0, "a new build reported the previous build's losses"
    unread_steps()
    backend.reset_optimizer()
    assert backend.finish_epoch().losses.size == 0, "a reset reported the losses of the steps it undid"
    unread_steps()
    saved = backend.save_native(tmp_path)
    backend.train_step(rows[3])
    backend.load_native(saved)
    assert backend.finish_epoch().losses.size == 0, "a reload reported the losses of the model it replaced"
    backend.train_step(rows[0])
    assert backend.finish_epoch().losses.size == 1  # the buffer still collects this run's steps


@pytest.mark.parametrize("name", INSTALLED)
def test_a_step_before_the_data_of_this_build_is_placed_is_a_clear_error(name, mnist_small):
    backend = loaded_backend(name)
    training.prepare(backend, SEED_MODELS["mlp"], TrainSpec(batch_size=32), mnist_small.x_train, mnist_small.y_train, 10)
    backend.train_step(np.arange(32))  # placed by prepare: steps
    backend.build(SEED_MODELS["mlp"].resolve("relu"), TrainSpec(batch_size=32), mnist_small.input_shape, 10)
    with pytest.raises(RuntimeError, match=r"load_data\(\) must run after build\(\) and before train_step\(\)"):
        backend.train_step(np.arange(32))  # a new build: the last build's arrays are not this model's


@pytest.mark.parametrize("name", FRAMEWORKS)
@pytest.mark.parametrize("loss", ["cce", "mse", "mae", "bce", "hinge"])
def test_every_loss_matches_the_numpy_definition(name, loss):
    from bench.spec.losses import loss_value as numpy_loss

    x, y = _batch((28, 28, 1), n=32)
    backend, _ = _build(name, "mlp", (28, 28, 1), TrainSpec(loss=loss))
    value, _ = backend.loss_and_gradients(x, y)
    assert value == pytest.approx(numpy_loss(backend.logits(x), y, loss), rel=1e-5, abs=1e-6)


@pytest.mark.parametrize("name", FRAMEWORKS)
def test_mlp_adam_learns_real_mnist(name, mnist_small):
    train = TrainSpec(optimizer="adam", batch_size=32, epochs=2)
    backend = loaded_backend(name)
    training.prepare(backend, SEED_MODELS["mlp"], train, mnist_small.x_train, mnist_small.y_train, 10)
    losses = training.fit(backend, len(mnist_small.x_train), train)[-1].result.losses
    _, accuracy = backend.evaluate(mnist_small.x_test, mnist_small.y_test, 250)
    assert losses[-5:].mean() < 1.0 and accuracy > 0.8
    probabilities = backend.predict(mnist_small.x_test[:10], 10)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-5)


@pytest.mark.parametrize("name", FRAMEWORKS)
def test_tf32_on_a_cpu_is_refused_as_unsupported(name):
    backend = loaded_backend(name)  # configured with device="cpu"
    with pytest.raises(Unsupported, match="tf32"):
        backend.build(SEED_MODELS["mlp"].resolve("relu"), TrainSpec(precision="tf32"), (28, 28, 1), 10)


def _modes_handled(source: str) -> set[str]:
    """The mode names an adapter's code compares ``self.mode`` with, or looks up by ``self.mode``
    in a dict it declares (``COMPILE_OPTIONS.get(self.mode)``): the modes it implements itself."""
    tree = ast.parse(source)
    tables = {target.id: node.value for node in ast.walk(tree) if isinstance(node, ast.Assign)
              and isinstance(node.value, ast.Dict) for target in node.targets if isinstance(target, ast.Name)}

    def is_mode(node: ast.AST) -> bool:
        return isinstance(node, ast.Attribute) and node.attr == "mode" and isinstance(node.value, ast.Name) \
            and node.value.id == "self"

    def strings(node: ast.AST) -> set[str]:
        return {n.value for n in ast.walk(node) if isinstance(n, ast.Constant) and isinstance(n.value, str)}

    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Compare) and any(is_mode(n) for n in (node.left, *node.comparators)):
            found |= set().union(*(strings(n) for n in (node.left, *node.comparators) if not is_mode(n)))
        table = (node.value if isinstance(node, ast.Subscript) and is_mode(node.slice) else
                 node.func.value if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                 and node.func.attr == "get" and node.args and is_mode(node.args[0]) else None)
        if isinstance(table, ast.Attribute) and table.attr in tables:
            found |= {key.value for key in tables[table.attr].keys if isinstance(key, ast.Constant)}
    return found


def test_the_mode_scan_finds_each_way_an_adapter_tests_its_mode():
    planted = ("class A:\n    OPTIONS = {'jit': 1, 'jitt': 2}\n    def f(self):\n"
               "        return self.OPTIONS.get(self.mode), self.mode == 'xla', self.mode in ('eager', 'graph')\n")
    assert _modes_handled(planted) == {"jit", "jitt", "xla", "eager", "graph"}


@pytest.mark.parametrize("name", list(backends.REGISTRY))
def test_every_mode_an_adapter_handles_is_declared_in_its_registry_entry(name):
    """The registry entry owns a backend's modes (backends/__init__.py); an adapter only implements them,
    so a mode its code tests for but its entry lacks (a typo, a mode added in one place) is a bug.
    Read from the source, so the check runs without the framework."""
    entry = backends.REGISTRY[name]
    source = Path(importlib.util.find_spec(entry.module).origin).read_text(encoding="utf-8")
    handled = _modes_handled(source)
    assert handled <= set(entry.modes), f"{name} handles modes its entry lacks: {sorted(handled - set(entry.modes))}"
    assert not next(iter(entry.modes.values())).gpu_only, "the default mode must run on the CPU"
    if name in INSTALLED:
        assert type(loaded_backend(name)).modes is entry.modes, "the adapter must read its modes from the entry"


@pytest.mark.parametrize("name", FRAMEWORKS)
def test_save_writes_the_framework_file(name, tmp_path):
    backend, _ = _build(name, "mlp", (28, 28, 1))
    path = backend.save_native(tmp_path)
    assert path.exists() and path.stat().st_size > 100_000 * 4 * 0.9


# -- translation tables: exactly the spec's vocabulary, and a clear error for anything else --------
@pytest.mark.parametrize("name", INSTALLED)
def test_translation_tables_cover_exactly_the_spec_vocabulary(name):
    tables = type(loaded_backend(name)).TRANSLATIONS
    assert set(tables) == set(VOCABULARY)
    for kind, words in VOCABULARY.items():
        assert set(tables[kind]) == set(words), f"{name} {kind}: missing {set(words) - set(tables[kind])}, extra {set(tables[kind]) - set(words)}"


def _planted(kind: str) -> tuple[ModelSpec, TrainSpec]:
    """A valid mlp and train spec with one name replaced by one no adapter knows (validation bypassed)."""
    model, train = SEED_MODELS["mlp"].resolve("relu"), TrainSpec()
    if kind == "augment":  # planted through Augment.names by the test: the model and train spec stay valid
        return model, train
    if kind in ("optimizer", "loss"):
        return model, train.model_copy(update={kind: "nosuch"})  # no validation, nested specs kept as models
    if kind == "activation":
        layers = (model.layers[0], Dense.model_construct(units=128, activation="nosuch", type="Dense"), model.layers[2])
    else:
        layers = (model.layers[0], Dropout.model_construct(rate=0.0, type="Nosuch"), *model.layers[1:])
    return model.model_copy(update={"layers": layers}), train


@pytest.mark.parametrize("kind", list(VOCABULARY))
@pytest.mark.parametrize("name", INSTALLED)
def test_an_unknown_spec_name_is_a_clear_error_in_every_adapter(name, kind, monkeypatch):
    from bench.spec import shapes

    # shapes knows the planted layer (as a pass-through), so the adapter's own table is what is tested
    monkeypatch.setitem(shapes.LAYER_RULES, "Nosuch", shapes.LAYER_RULES["Dropout"])
    if kind == "augment":  # an augmentation the spec switches on that no adapter knows
        monkeypatch.setattr(Augment, "names", property(lambda self: ("nosuch",)))
    model, train = _planted(kind)
    with pytest.raises(Untranslatable, match=rf"no translation for {kind} '(nosuch|Nosuch)'"):
        loaded_backend(name).build(model, train, (28, 28, 1), 10)


def test_neutral_tables_cover_exactly_the_spec_vocabulary():
    from bench.reference import network, ops, optimizer
    from bench.spec import augment, cost, losses, shapes

    assert set(shapes.LAYER_RULES) == set(cost.FLOPS) == set(network.LAYERS) == set(VOCABULARY["layer"])
    assert set(ops.ACTIVATIONS) == set(VOCABULARY["activation"])
    assert set(losses.LOSS_TABLE) == set(VOCABULARY["loss"])
    assert set(optimizer.UPDATES) == set(VOCABULARY["optimizer"])
    assert set(augment.REFERENCE) == set(augment.DRAWS) == set(VOCABULARY["augment"])

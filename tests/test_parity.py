"""The parity ladder: it passes every installed backend, names the frameworks' documented
differences instead of absorbing them, catches planted bugs at the rung that owns them, runs each
framework in its own worker process, and refuses bad input with exit status 2.
"""

from __future__ import annotations

import multiprocessing
import os

import numpy as np
import pytest

import backends
from backends.numpy_backend import NumpyBackend
from bench import parity, reference
from bench.parity import equivalence
from bench.parity.ladder import RUNG, gradients_checked
from bench.parity.plan import not_compared
from bench.spec.model import SEED_MODELS
from bench.spec.rules import CANONICAL, RULE_OPTIONS, Rules
from bench.spec.train import TrainSpec
from tests.conftest import FRAMEWORKS, loaded_backend


def _ladder(instance, models, optimizers, activations, **kwargs) -> parity.ParityReport:
    return parity.run_parity([instance.name], models, optimizers, activations, statistical=False, instances={instance.name: instance}, **kwargs)


def _numpy(rules: Rules = CANONICAL) -> NumpyBackend:
    backend = NumpyBackend(rules)
    backend.setup(threads=1)
    return backend


def _failed_rungs(report: parity.ParityReport) -> set[str]:
    return {c.rung for c in report.failures}


# -- the frameworks' declared rules ---------------------------------------------------------------
EXPECTED_RULES = {
    "torch": Rules(bn_running_variance="unbiased"),
    "tf": Rules(rmsprop_eps="inside_sqrt", adam_eps="uncorrected", momentum_form="velocity"),
    "jax": Rules(leaky_relu_grad_at_zero="one"),
    "keras-jax": Rules(rmsprop_eps="inside_sqrt", adam_eps="uncorrected", momentum_form="velocity", leaky_relu_grad_at_zero="one"),
    "keras-torch": Rules(rmsprop_eps="inside_sqrt", adam_eps="uncorrected", momentum_form="velocity"),
}


@pytest.mark.parametrize("name", FRAMEWORKS)
def test_every_installed_framework_declares_typed_rules(name):
    backend = loaded_backend(name)
    backend.build(SEED_MODELS["mlp_bn"].resolve("relu"), TrainSpec(optimizer="adam"), (28, 28, 1), 10)
    assert backend.rules() == EXPECTED_RULES[name]
    assert set(backend.facts()["rules"]) == set(RULE_OPTIONS)  # one fixed key set for every backend
    job = parity.Job("mlp_bn", "relu", "rmsprop", "cce", True, True, True, True)
    relevant = parity.relevant_rules(backend.rules(), job)  # what can change an mlp_bn/rmsprop/relu result
    assert relevant == Rules(rmsprop_eps=EXPECTED_RULES[name].rmsprop_eps, bn_running_variance=EXPECTED_RULES[name].bn_running_variance)


def test_difference_is_relative_with_a_floor_of_one_percent_of_the_largest_value():
    expected = {"a": np.array([100.0, 1.0]), "b": np.array([0.0])}
    actual = {"a": np.array([100.0, 1.1]), "b": np.array([0.5])}
    abs_diff, rel, where = parity.difference(actual, expected, ["a", "b"])
    assert abs_diff == 0.5 and where == "b"
    assert rel == pytest.approx(0.5 / 1.0)  # floor = 1% of 100; b's expected 0 is judged against it
    assert parity.difference(actual, expected, ["a"])[1] == pytest.approx(0.1 / 2.0)
    assert parity.difference({"a": np.array([np.nan, 1.0])}, expected, ["a"])[1] == float("inf")


# -- the oracle against itself, declared deviations, undeclared ones -----------------------------
def test_the_oracle_passes_its_own_ladder_and_dropout_is_a_named_deviation():
    report = _ladder(_numpy(), ["mlp_dropout"], ["sgd"], ["relu"])
    assert report.ok and {c.rung for c in report.checks} == {r.name for r in parity.RUNGS} - {"bn_running_stats_1", "bn_running_stats"}
    assert all(c.rel_diff == 0.0 for c in report.checks if c.rung != "step_1")
    # the step rung applies the update in float64 to the gradients the oracle returned, in float32, as
    # any backend does: its own weights, also returned in float32, agree to float32 rounding
    assert next(c for c in report.checks if c.rung == "step_1").rel_diff < 1.2e-7
    assert all("dropout_masks" in c.deviations for c in report.checks if c.rung != "forward")


def test_a_declared_framework_rule_is_checked_against_that_rule_and_named():
    keras_adam = _numpy(Rules(adam_eps="uncorrected"))
    report = _ladder(keras_adam, ["mlp"], ["adam"], ["tanh"])
    assert report.ok
    step = next(c for c in report.checks if c.rung == "step_1")
    assert step.deviations == ("adam_eps_uncorrected",)
    assert step.rel_diff < 1.2e-7 and step.canonical_rel > 100 * step.tolerance  # a real difference, shown, not absorbed


class _UndeclaredTorchVariance(NumpyBackend):
    """Folds the unbiased variance like torch, but says 'biased': a framework difference left unsaid."""

    def __init__(self):
        super().__init__(Rules(bn_running_variance="unbiased"))

    def rules(self) -> Rules:
        return CANONICAL


def test_an_undeclared_framework_rule_fails_with_the_rule_named():
    backend = _UndeclaredTorchVariance()
    backend.setup(threads=1)
    report = _ladder(backend, ["mlp_bn"], ["sgd"], ["linear"])
    assert _failed_rungs(report) == {"bn_running_stats_1", "bn_running_stats"}
    assert "bn_unbiased_running_variance" in report.failures[0].note


# -- planted bugs ----------------------------------------------------------------------------------
class _KerasMomentumAsTorchDefault(NumpyBackend):
    """BatchNorm momentum 0.9 in the Keras sense: torch's default 0.1 passed through unconverted."""

    def build(self, model, train, input_shape, num_classes):
        super().build(model, train.model_copy(update={"bn_momentum": 0.9}), input_shape, num_classes)


def test_a_wrong_batchnorm_momentum_fails_only_the_running_statistics_rung():
    backend = _KerasMomentumAsTorchDefault()
    backend.setup(threads=1)
    report = _ladder(backend, ["mlp_bn"], ["sgd"], ["relu"])
    assert _failed_rungs(report) == {"bn_running_stats_1", "bn_running_stats"}


torch_only = pytest.mark.skipif("torch" not in FRAMEWORKS, reason="torch not installed")


@torch_only
def test_torch_with_its_default_batchnorm_momentum_fails_the_running_statistics_rung():
    from torch import nn

    from backends.torch_backend import TorchBackend

    class DefaultMomentum(TorchBackend):
        def build(self, model, train, input_shape, num_classes):
            super().build(model, train, input_shape, num_classes)
            for module in self.net.modules():
                if isinstance(module, nn.modules.batchnorm._BatchNorm):
                    module.momentum = 0.1  # torch's default, not the suite's 0.99 converted to 0.01

    backend = DefaultMomentum()
    backend.setup(threads=1)
    report = _ladder(backend, ["mlp_bn"], ["sgd"], ["relu"])
    assert _failed_rungs(report) == {"bn_running_stats_1", "bn_running_stats"}
    assert report.failures[0].rel_diff > 1e-2


@torch_only
def test_torch_flattening_in_c_h_w_order_fails_the_forward_rung(monkeypatch):
    from torch import nn

    from backends import torch_backend, torch_layers

    monkeypatch.setattr(torch_layers, "_FlattenHWC", nn.Flatten)  # torch's own NCHW flatten
    backend = torch_backend.TorchBackend()
    backend.setup(threads=1)
    report = _ladder(backend, ["cnn"], ["sgd"], ["tanh"])
    assert "forward" in _failed_rungs(report)
    assert next(c for c in report.checks if c.rung == "forward").rel_diff > 1e-2


# -- every installed framework, a compact ladder ---------------------------------------------------
@pytest.mark.parametrize("name", FRAMEWORKS)
def test_every_installed_framework_passes_a_compact_ladder(name):
    report = _ladder(loaded_backend(name), ["mlp_bn", "cnn"], ["momentum", "rmsprop", "adam"], ["leaky_relu"])
    assert not report.failures, [(c.job.label, c.rung, c.rel_diff, c.worst, c.note) for c in report.failures]
    assert {c.rung for c in report.checks} == {r.name for r in parity.RUNGS}
    assert "bias_before_batchnorm" in {d for c in report.checks for d in c.deviations}


def test_a_missing_framework_is_skipped_not_failed(monkeypatch):
    monkeypatch.setattr(backends, "unavailable_reason", lambda name: "torch not installed (pip install -e '.[torch]')")
    report = parity.run_parity(["torch"], ["mlp"], ["sgd"], ["relu"], statistical=False)
    assert report.ok and "torch not installed" in report.skipped["torch"] and not report.checks and not report.workers


# -- each framework in its own worker process -------------------------------------------------------
def _signature(report: parity.ParityReport) -> list[tuple]:
    return [(c.job.label, c.rung, c.passed, c.deviations) for c in report.checks]


@pytest.mark.skipif(not FRAMEWORKS, reason="no framework installed")
def test_the_worker_path_gives_the_checks_of_the_in_process_path():
    name = FRAMEWORKS[0]
    args = (["mlp_bn"], ["adam"], ["relu"])
    in_worker = parity.run_parity([name], *args, seeds=2, epochs=1)
    in_process = _ladder(loaded_backend(name), *args)
    assert in_worker.workers[name]["pid"] != os.getpid() and in_worker.workers[name]["versions"]
    assert not in_process.workers
    assert in_worker.ok and _signature(in_worker) == _signature(in_process)
    assert {c.rung for c in in_worker.checks} == {r.name for r in parity.RUNGS}
    for a, b in zip(in_worker.checks, in_process.checks):  # same arrays up to the thread count's rounding
        assert a.rel_diff <= a.tolerance and b.rel_diff <= b.tolerance
    [pair] = in_worker.statistical  # the worker's per-seed accuracies against the reference's, here
    assert (pair.a, pair.b) == ("reference", name) and len(pair.accuracies_b) == 2 and pair.passed


def test_a_worker_that_dies_fails_its_job_and_the_next_job_gets_a_fresh_worker():
    def kill_the_worker_on_momentum(text: str) -> None:
        if "/momentum/" in text:
            for child in multiprocessing.active_children():  # the worker this run started
                child.kill()

    report = parity.run_parity(["numpy"], ["mlp"], ["sgd", "momentum", "adam"], ["relu"], statistical=False,
                               progress=kill_the_worker_on_momentum)
    [error] = report.failures
    assert error.rung == "error" and error.job.optimizer == "momentum" and "worker process died" in error.note
    assert {c.job.optimizer for c in report.checks if c.passed} == {"sgd", "adam"}  # adam ran in a new worker


# -- the statistical rung and the command line -----------------------------------------------------
def test_tost_accepts_equal_accuracies_and_rejects_a_constant_gap_beyond_the_margin():
    same = equivalence.paired_tost("a", "b", [0.93, 0.95, 0.94], [0.93, 0.95, 0.94])
    assert same.passed and same.p_value == 0.0
    gap = equivalence.paired_tost("a", "b", [0.93, 0.95, 0.94], [0.90, 0.92, 0.91])
    assert not gap.passed
    noisy = equivalence.paired_tost("a", "b", [0.930, 0.950, 0.940, 0.935, 0.945], [0.933, 0.947, 0.938, 0.936, 0.944])
    assert noisy.passed and noisy.ci90[0] > -equivalence.MARGIN and noisy.ci90[1] < equivalence.MARGIN
    wide = equivalence.paired_tost("a", "b", [0.90, 0.96, 0.88, 0.97, 0.91], [0.95, 0.90, 0.96, 0.89, 0.95])
    assert not wide.passed  # mean gap small, but too noisy to show it is under the margin


def test_statistical_rung_finds_the_oracle_and_a_framework_equivalent():
    instances = {"reference": _numpy()}
    if FRAMEWORKS:
        instances[FRAMEWORKS[0]] = loaded_backend(FRAMEWORKS[0])
    accuracies = {name: [equivalence.final_accuracy(b, seed, epochs=1) for seed in range(2)] for name, b in instances.items()}
    results = equivalence.statistical_rung(accuracies)
    assert len(results) == len(instances) * (len(instances) - 1) // 2
    assert all(r.passed for r in results)
    assert all(acc > 0.5 for r in results for acc in r.accuracies_a + r.accuracies_b)


def test_cli_runs_the_ladder_and_returns_its_status(capsys):
    from bench.cli import main

    assert main(["parity", "--backend", "numpy", "--models", "mlp", "--optimizers", "sgd", "--activations", "relu", "--no-statistical"]) == 0
    out = capsys.readouterr().out
    assert "forward" in out and "steps_20" in out and "every rung passes" in out and "its own worker process" in out


@pytest.mark.parametrize(
    "argv,named",
    [
        (["--models", "nosuch"], "mlp, mlp_bn, mlp_dropout, cnn, resnet, vit, all"),
        (["--backend", "nosuch"], "torch, tf, jax, keras-jax, keras-torch, numpy, all, keras"),
        (["--optimizers", "x"], "sgd, momentum, rmsprop, adam, adamw, all"),
        (["--activations", "relu,x"], "relu, leaky_relu, tanh, sigmoid, linear, all"),
        (["--losses", "x"], "cce, mse, mae, bce, hinge, all"),
        (["--threads", "0", "--backend", "numpy"], "--threads 0: valid: 1 to"),
        (["--epsilon", "0"], "--epsilon must be positive"),
    ],
)
def test_cli_bad_input_is_one_line_and_exit_status_2(capsys, argv, named):
    from bench.cli import main

    assert main(["parity", *argv]) == 2
    captured = capsys.readouterr()
    assert captured.err.startswith("error: ") and captured.err.count("\n") == 1 and named in captured.err
    assert "Traceback" not in captured.err and "Parity ladder" not in captured.out


def test_every_rule_option_has_a_title_and_a_description():
    from bench.spec.rules import RULE_TEXT, RULE_TITLES, describe

    assert set(RULE_TEXT) == set(RULE_TITLES) == set(RULE_OPTIONS)
    assert all(set(RULE_TEXT[f]) == set(RULE_OPTIONS[f]) for f in RULE_OPTIONS)
    assert set(describe(Rules(adam_eps="uncorrected"))) == set(RULE_TITLES.values())
    assert set(parity.RULE_DEVIATIONS) == set(RULE_OPTIONS)  # every rule can be named as a deviation


class _RmspropEpsilonOutsideTheRoot(NumpyBackend):
    """Declares Keras' RMSprop (epsilon inside the root) but computes it outside: a planted optimizer bug."""

    def __init__(self):
        super().__init__(Rules(rmsprop_eps="outside_sqrt"))

    def rules(self) -> Rules:
        return Rules(rmsprop_eps="inside_sqrt")


class _GradientsOffBy(NumpyBackend):
    """Right optimizer, gradients 2e-4 off (relative) in its steps and its reports alike: what fp32
    rounding on an unlucky CPU can give."""

    def _build(self) -> None:
        super()._build()
        exact = self.net.loss_and_gradients

        def off(*args, **kwargs):
            loss, grads, fwd = exact(*args, **kwargs)
            return loss, [g * (1 + 2e-4) for g in grads], fwd

        self.net.loss_and_gradients = off


def test_the_step_rung_checks_the_update_rule_on_the_backends_own_gradients():
    """Each rung tests one thing: a wrong RMSprop epsilon placement fails the step rung (and the
    loss and gradient rungs pass); gradients a little off fail the gradient rung only, not the step."""
    wrong_update = _RmspropEpsilonOutsideTheRoot()
    wrong_update.setup(threads=1)
    assert _failed_rungs(_ladder(wrong_update, ["mlp"], ["rmsprop"], ["relu"])) >= {"step_1"}
    assert "gradients" not in _failed_rungs(_ladder(wrong_update, ["mlp"], ["rmsprop"], ["relu"]))
    rounded = _GradientsOffBy()
    rounded.setup(threads=1)
    report = _ladder(rounded, ["mlp"], ["rmsprop"], ["sigmoid"])
    assert "gradients" in _failed_rungs(report) and "step_1" not in _failed_rungs(report)


# -- residual nets, transformers and schedules --------------------------------------------------------
def test_the_ladder_runs_resnet_and_vit_and_reaches_batchnorm_inside_residual_blocks():
    report = _ladder(_numpy(), ["resnet", "vit"], ["adamw"], ["relu"])
    assert report.ok
    rungs = {model: {c.rung for c in report.checks if c.job.model == model} for model in ("resnet", "vit")}
    # convolutional: no 20 steps; normalised under a kinked activation: no gradient rung (GRADIENT_KINK_WHY)
    assert rungs["resnet"] == {"forward", "loss", "step_1", "bn_running_stats_1"}
    assert rungs["vit"] == {"forward", "loss", "gradients", "step_1", "losses_20", "steps_20"}
    stats = next(c for c in report.checks if c.rung == "bn_running_stats_1")
    assert stats.rel_diff == 0.0 and "bias_before_batchnorm" in next(c for c in report.checks if c.rung == "step_1").deviations
    # under Adam-type updates a bias before a BatchNorm, inside a block too, is left out of the step rungs
    assert {"3.0.bias", "3.1.moving_mean", "5.3.bias"} <= not_compared(report.checks[0].job)


def test_resnets_gradients_are_judged_under_a_smooth_activation_with_its_own_error_model():
    report = _ladder(_numpy(), ["resnet"], ["sgd"], ["tanh"])
    gradients = next(c for c in report.checks if c.rung == "gradients")
    assert report.ok and gradients.tolerance == RUNG["gradients"].normalised == 1e-2
    assert not gradients_checked("resnet", "leaky_relu") and gradients_checked("cnn", "relu")
    assert RUNG["gradients"].tolerance("cnn") == 1e-3  # the CNN keeps its own


def test_a_wrong_batchnorm_momentum_inside_residual_blocks_fails_the_one_step_statistics():
    backend = _KerasMomentumAsTorchDefault()
    backend.setup(threads=1)
    report = _ladder(backend, ["resnet"], ["sgd"], ["relu"])
    assert _failed_rungs(report) == {"bn_running_stats_1"}


class _OwnLearningRate(NumpyBackend):
    """Trains at the spec's base rate whatever the schedule: a framework scheduler, or none, instead of ``step_lr``."""

    def _step(self, batch, params):
        return super()._step(batch, params) if self.train.schedule == "constant" else self._unscheduled(batch)

    def _unscheduled(self, batch):
        return reference.train_step(self.net, self.optimizer, self.x[batch], self.y[batch], None, self.train.lr)


def test_a_backend_that_ignores_the_schedule_fails_the_step_rungs_only_under_a_schedule():
    backend = _OwnLearningRate()
    backend.setup(threads=1)
    assert _ladder(backend, ["mlp"], ["adamw"], ["relu"]).ok
    report = _ladder(backend, ["mlp"], ["adamw"], ["relu"], schedule="warmup_cosine")
    assert _failed_rungs(report) == {"step_1", "losses_20", "steps_20"}
    assert all(c.job.label == "mlp/adamw/relu/cce/warmup_cosine" for c in report.checks)

"""Which configurations the ladder runs, and which rules and arrays each one can be judged by.

Planning is pure data (no backend, no arrays), so the parent process can plan, the worker can run a
plan it is sent, and the comparison knows which documented rules could change a job's answer.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, replace

from bench.parity.ladder import ADAPTIVE, deviations_of, is_convolutional
from bench.spec.model import BUILTIN_MODELS, BatchNorm, Conv2D, Dense, Dropout, ModelSpec, Residual
from bench.spec.rules import CANONICAL, RULE_OPTIONS, Rules


@dataclass(frozen=True)
class Job:
    """One configuration of the ladder and which of its rungs to run."""

    model: str
    activation: str
    optimizer: str
    loss: str
    forward: bool  # forward
    gradients: bool  # loss and gradients
    step: bool  # step_1 and bn_running_stats_1
    multi_step: bool  # losses_20, steps_20 and bn_running_stats
    schedule: str = "constant"  # the learning-rate schedule of the step rungs, over the 20 steps

    @property
    def label(self) -> str:
        return f"{self.model}/{self.optimizer}/{self.activation}/{self.loss}" + (
            f"/{self.schedule}" if self.schedule != "constant" else "")


def plan(models: list[str], optimizers: list[str], activations: list[str], losses: list[str],
         schedule: str = "constant") -> list[Job]:
    """Forward, loss and gradients do not depend on the optimizer, nor the steps on the loss beyond its
    gradient: the first optimizer runs every rung once per loss, the others the step rungs only."""
    jobs = []
    for model, act in itertools.product(models, activations):
        for j, opt in enumerate(optimizers):
            jobs.append(Job(model, act, opt, losses[0], j == 0, j == 0, True, not is_convolutional(model), schedule))
        jobs += [Job(model, act, optimizers[0], loss, False, True, False, False, schedule) for loss in losses[1:]]
    return jobs


def relevant_rules(rules: Rules, job: Job) -> Rules:
    """``rules`` with every rule that cannot change this job's result set to the canonical one."""
    used = {
        "rmsprop_eps": job.optimizer == "rmsprop",
        "adam_eps": job.optimizer in ("adam", "adamw"),
        "bn_running_variance": BUILTIN_MODELS[job.model].has_batchnorm,
        "leaky_relu_grad_at_zero": job.activation == "leaky_relu",
        "momentum_form": job.optimizer == "momentum",
    }
    return replace(rules, **{f: getattr(CANONICAL, f) for f, u in used.items() if not u})


def rule_variants(job: Job) -> list[Rules]:
    """Every combination of documented rules that can change this job's result, fewest deviations first."""
    combos = {relevant_rules(Rules(*combo), job) for combo in itertools.product(*RULE_OPTIONS.values())}
    return sorted(combos, key=lambda r: len(deviations_of(r)))


def _without_dropout(layers: tuple) -> tuple:
    return tuple(Dropout(rate=0.0) if isinstance(layer, Dropout) else
                 layer.model_copy(update={"layers": _without_dropout(layer.layers)}) if isinstance(layer, Residual) else layer
                 for layer in layers)


def training_model(model: ModelSpec) -> ModelSpec:
    """The model the training-mode rungs run: Dropout rate 0, inside containers too (masks cannot match
    across frameworks)."""
    return model.model_copy(update={"layers": _without_dropout(model.layers)})


def _biases_before_batchnorm(layers: tuple, prefix: str = "") -> set[str]:
    keys = {key for i, (layer, after) in enumerate(itertools.pairwise(layers))
            if isinstance(layer, (Dense, Conv2D)) and isinstance(after, BatchNorm)
            for key in (f"{prefix}{i}.bias", f"{prefix}{i + 1}.moving_mean")}
    return keys.union(*(_biases_before_batchnorm(layer.layers, f"{prefix}{i}.")
                        for i, layer in enumerate(layers) if isinstance(layer, Residual)))


def not_compared(job: Job) -> set[str]:
    """Parameter keys the deviation ``bias_before_batchnorm`` leaves out of its rungs (a container's too)."""
    if job.optimizer not in ADAPTIVE:
        return set()
    return _biases_before_batchnorm(BUILTIN_MODELS[job.model].layers)

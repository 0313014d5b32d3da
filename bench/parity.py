"""The parity ladder: every backend checked against the NumPy oracle, rung by rung.

Same canonical weights and batch (the first 16 images of the bundled MNIST sample), then: forward
logits (eval mode) -> training-mode loss -> gradients -> one optimizer step -> the losses of 20
steps -> the weights after them -> BatchNorm running statistics, for each model, optimizer and
activation (design.md, "Parity"); then the statistical rung (``bench.equivalence``). A failing rung
points at one part of an adapter: forward = layers and layouts, gradients = loss and backward,
steps = the optimizer and the batch rows, running statistics = BatchNorm's momentum and variance.

The oracle is ``NumpyBackend`` driven through the same ``Backend`` calls as the framework under
test, so both sides run the identical experiment. Where a framework documents a formula different
from the suite's (docs/architecture.md, "Framework rules"), it declares it as its ``RULES``; the ladder checks it
against the oracle run with that rule (``reference.Rules``) and lists it as a named deviation with
the difference the canonical rule would show, so no framework difference hides in a tolerance.

Differences: abs = max |a - b|; rel = max |a - b| / (|b| + F), elementwise in float64 over every
array a rung compares, with the floor F = 1% of the largest |b| among them. Values at least 1% of
that scale are judged relative to themselves; smaller ones (cancelling sums, the near-zero gradient
of a little-used weight) relative to 1% of the scale. Tolerances apply to rel; ``RUNGS`` states
each with the largest value measured on torch 2.13, TF 2.21 / Keras 3.15, JAX 0.10 (CPU). The oracle
hands out float32 like every backend, which costs it at most 6e-8 relative.

RMSprop and Adam run with epsilon 1e-3 here, not the suite's 1e-7: where a gradient is near eps,
the update lr*g/(|g|+eps) multiplies the gradient's fp32 rounding by up to lr/eps (1e4 at 1e-7;
measured 8e-4 relative after one RMSprop step of mlp_bn), which says nothing about the framework.
At 1e-3, eps and sqrt(v) are of one order for typical gradients, so both terms of the update are
exercised, and the frameworks' epsilon placements differ more, so they are checked more sharply.
"""

from __future__ import annotations

import argparse
import itertools
import sys
from collections.abc import Callable
from dataclasses import dataclass, field, replace

import numpy as np
from rich.console import Console
from rich.table import Table

import backends
from backends.base import Backend, Unsupported
from backends.numpy_backend import NumpyBackend
from bench import equivalence, training
from bench.data import epoch_batches, load_dataset
from bench.errors import BackendUnavailable, BenchError, unknown
from bench.rules import CANONICAL, RULE_OPTIONS, Rules
from bench.shapes import param_specs
from bench.spec import (
    ACTIVATIONS,
    LOSSES,
    OPTIMIZERS,
    SEED_MODELS,
    BatchNorm,
    Conv2D,
    Dense,
    Dropout,
    MaxPool2D,
    ModelSpec,
    TrainSpec,
)
from bench.weights import canonical_weights

REL_FLOOR = 1e-2
BATCH = 16
N_ROWS = 64  # rows loaded for the 20-step rungs: 4 shuffled batches of 16 per epoch, as training draws them
N_STEPS = 20
INPUT_SHAPE = (28, 28, 1)  # the bundled MNIST sample: every seed model, the cnn included, fits it
NUM_CLASSES = 10
WEIGHT_SEED = 0
PARITY_EPSILON = 1e-3
ADAPTIVE = ("rmsprop", "adam")


def is_convolutional(model: str) -> bool:
    return any(isinstance(layer, (Conv2D, MaxPool2D)) for layer in SEED_MODELS[model].layers)


@dataclass(frozen=True)
class Rung:
    """A rung and its tolerance on rel: for dense models (the MLPs) and convolutional ones (None: not run)."""

    name: str
    dense: float
    conv: float | None
    why: str

    def tolerance(self, model: str) -> float | None:
        return self.conv if is_convolutional(model) else self.dense


RUNGS = (
    Rung("forward", 5e-5, 1e-4, "eval-mode logits: fp32 sums of 784 (mlp) or 3,200 (cnn) products; logits near zero "
         "keep the sum's rounding (measured up to 1.8e-5 dense, 4.7e-5 cnn)"),
    Rung("loss", 1e-6, 1e-6, "training-mode loss, a mean over the batch: rounding averages out (measured <= 1.5e-7)"),
    Rung("gradients", 1e-4, 1e-3, "a weight's gradient sums batch x position products of both signs (10,816 per conv1 "
         "entry); fp32 keeps less of a cancelling sum (measured up to 3.7e-5 dense, 5.6e-4 cnn: TF's conv "
         "backprop-filter under sigmoid)"),
    Rung("step_1", 1e-5, 1e-4, "trainable weights after one step; w - lr*update shrinks the gradient's rounding "
         "(measured up to 3.9e-6 dense, 2.2e-5 cnn)"),
    Rung("losses_20", 3e-5, None, "training loss of each of 20 steps over 4 shuffled batches (measured <= 1.0e-5)"),
    Rung("steps_20", 1e-4, None, "trainable weights after the 20 steps: rounding compounds (measured <= 4.4e-5)"),
    Rung("bn_running_stats", 1e-5, None, "BatchNorm moving mean and variance after the 20 steps (measured <= 1.6e-6)"),
)
RUNG = {r.name: r for r in RUNGS}
MULTI_STEP_WHY = (
    "The 20-step rungs run on the dense models only: the cnn makes ~1M ReLU/max-pool decisions per step, so one "
    "sits within fp32 rounding of its kink every few steps (cnn/sgd/relu: a conv unit at |z| = 1.4e-8 of its input "
    "scale flipped at step 17 on torch and TF alike, moving a bias by 7%), after which fp32 and float64 trajectories "
    "part; tanh and linear part too, through max-pool near-ties. The cnn's forward, loss, gradients and first step "
    "are checked; optimizer code is the same for every model."
)


@dataclass(frozen=True)
class Deviation:
    name: str
    rungs: tuple[str, ...]  # the rungs whose expected values it changes
    explanation: str


_TRAINED = ("step_1", "losses_20", "steps_20", "bn_running_stats")
DEVIATIONS = {
    d.name: d
    for d in (
        Deviation("rmsprop_eps_inside_sqrt", _TRAINED,
                  "Keras 3 RMSprop (and Optax's default eps_in_sqrt=True) divides by sqrt(v + eps); the canonical "
                  "rule (torch) by sqrt(v) + eps. Same eps, different damping where v is small."),
        Deviation("adam_eps_uncorrected", _TRAINED,
                  "Keras 3 Adam adds eps to the uncorrected sqrt(v): w -= lr*sqrt(1-b2^t)/(1-b1^t) * m/(sqrt(v)+eps), "
                  "the torch/Optax rule with eps scaled by 1/sqrt(1-b2^t) (31.6x at step 1)."),
        Deviation("bn_unbiased_running_variance", ("bn_running_stats",),
                  "torch's BatchNorm folds the unbiased batch variance var*m/(m-1) into running_var and cannot be "
                  "told otherwise; Keras and Flax fold the biased one. Normalisation in training is biased everywhere."),
        Deviation("leaky_relu_grad_at_zero_one", ("gradients",) + _TRAINED,
                  "JAX's leaky_relu is where(x >= 0, x, slope*x), so its derivative at exactly 0 is 1; torch and TF "
                  "give the slope. Exact zeros are common: a zero-bias conv over an image's blank background."),
        Deviation("momentum_velocity_form", _TRAINED,
                  "Keras 3 SGD keeps a velocity v = mu*v - lr*g and adds it (w += v); torch keeps a buffer "
                  "buf = mu*buf + g and subtracts lr*buf. Equal in exact arithmetic for a constant lr; the rounding differs."),
        Deviation("dropout_masks", ("loss", "gradients") + _TRAINED,
                  "frameworks never draw the same dropout masks, so the training-mode rungs of a dropout model run "
                  "it with Dropout rate 0; the forward rung keeps the dropout layers (eval mode ignores them)."),
        Deviation("bias_before_batchnorm", ("step_1", "steps_20", "bn_running_stats"),
                  "a bias right before a BatchNorm has zero gradient in exact arithmetic (the batch mean cancels it), "
                  "so its fp32 gradient is rounding noise that RMSprop/Adam turn into steps of up to ~lr, different "
                  "in every framework; under those optimizers that bias and the moving mean that follows it are not "
                  "compared (the moving variance, and every array under SGD/momentum, are)."),
    )
}
RULE_DEVIATIONS = {
    "rmsprop_eps": "rmsprop_eps_inside_sqrt",
    "adam_eps": "adam_eps_uncorrected",
    "bn_running_variance": "bn_unbiased_running_variance",
    "leaky_relu_grad_at_zero": "leaky_relu_grad_at_zero_one",
    "momentum_form": "momentum_velocity_form",
}


# -- documented rules: declared by the backend as a typed value, applied to the oracle -------------
def deviations_of(rules: Rules) -> list[str]:
    return [RULE_DEVIATIONS[f] for f in rules.deviations()]


# -- jobs ------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Job:
    """One configuration of the ladder and which of its rungs to run."""

    model: str
    activation: str
    optimizer: str
    loss: str
    forward: bool  # forward
    gradients: bool  # loss and gradients
    step: bool  # step_1
    multi_step: bool  # losses_20, steps_20 and bn_running_stats

    @property
    def label(self) -> str:
        return f"{self.model}/{self.optimizer}/{self.activation}/{self.loss}"


def plan(models: list[str], optimizers: list[str], activations: list[str], losses: list[str]) -> list[Job]:
    """Forward, loss and gradients do not depend on the optimizer, nor the steps on the loss beyond its
    gradient: the first optimizer runs every rung once per loss, the others the step rungs only."""
    jobs = []
    for model, act in itertools.product(models, activations):
        for j, opt in enumerate(optimizers):
            jobs.append(Job(model, act, opt, losses[0], j == 0, j == 0, True, not is_convolutional(model)))
        jobs += [Job(model, act, optimizers[0], loss, False, True, False, False) for loss in losses[1:]]
    return jobs


def relevant_rules(rules: Rules, job: Job) -> Rules:
    """``rules`` with every rule that cannot change this job's result set to the canonical one."""
    used = {
        "rmsprop_eps": job.optimizer == "rmsprop",
        "adam_eps": job.optimizer == "adam",
        "bn_running_variance": SEED_MODELS[job.model].has_batchnorm,
        "leaky_relu_grad_at_zero": job.activation == "leaky_relu",
        "momentum_form": job.optimizer == "momentum",
    }
    return replace(rules, **{f: getattr(CANONICAL, f) for f, u in used.items() if not u})


def rule_variants(job: Job) -> list[Rules]:
    """Every combination of documented rules that can change this job's result, fewest deviations first."""
    combos = {relevant_rules(Rules(*combo), job) for combo in itertools.product(*RULE_OPTIONS.values())}
    return sorted(combos, key=lambda r: len(deviations_of(r)))


def training_model(model: ModelSpec) -> ModelSpec:
    """The model the training-mode rungs run: Dropout rate 0 (masks cannot match across frameworks)."""
    layers = tuple(Dropout(rate=0.0) if isinstance(layer, Dropout) else layer for layer in model.layers)
    return model.model_copy(update={"layers": layers})


def not_compared(job: Job) -> set[str]:
    """Parameter keys the deviation ``bias_before_batchnorm`` leaves out of its rungs."""
    if job.optimizer not in ADAPTIVE:
        return set()
    layers = SEED_MODELS[job.model].layers
    return {
        key
        for i, (layer, after) in enumerate(itertools.pairwise(layers))
        if isinstance(layer, (Dense, Conv2D)) and isinstance(after, BatchNorm)
        for key in (f"{i}.bias", f"{i + 1}.moving_mean")
    }


# -- measuring one job on any backend --------------------------------------------------------------
@dataclass
class Batch:
    x: np.ndarray  # N_ROWS rows; the single-batch rungs use the first BATCH
    y: np.ndarray
    schedule: list[np.ndarray]  # N_STEPS batches of row indices


def fixed_batch() -> Batch:
    data = load_dataset("mnist-sample", val_split=0.0, train_size=N_ROWS)
    epochs = -(-N_STEPS // (N_ROWS // BATCH))
    schedule = [rows for epoch in range(epochs) for rows in epoch_batches(N_ROWS, BATCH, WEIGHT_SEED, epoch)]
    return Batch(data.x_train, data.y_train, schedule[:N_STEPS])


@dataclass
class Measured:
    """One backend's answers to one job: per rung, named arrays (parameter keys, 'logits', 'losses')."""

    values: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)
    rules: Rules = CANONICAL


def _train(backend: Backend, weights: list[np.ndarray], schedule: list[np.ndarray]) -> tuple[list[np.ndarray], np.ndarray]:
    training.restart(backend, weights)
    result, _ = training.run_steps(backend, schedule)
    return backend.get_weights(), result.losses


def measure(backend: Backend, job: Job, batch: Batch, epsilon: float = PARITY_EPSILON, mode: str = "default") -> Measured:
    """Run one job through the ``Backend`` protocol only: build, set_weights, logits, steps, get_weights."""
    model = SEED_MODELS[job.model].resolve(job.activation)
    train = TrainSpec(optimizer=job.optimizer, activation=job.activation, loss=job.loss, batch_size=BATCH, epsilon=epsilon, mode=mode)
    weights = canonical_weights(model, INPUT_SHAPE, NUM_CLASSES, WEIGHT_SEED)
    x, y = batch.x[:BATCH], batch.y[:BATCH]
    out = Measured()
    if job.forward:
        backend.build(model, train, INPUT_SHAPE, NUM_CLASSES)
        backend.set_weights(weights)
        out.values["forward"] = {"logits": backend.logits(x)}
    trained = training_model(model)
    if not job.forward or trained != model:
        backend.build(trained, train, INPUT_SHAPE, NUM_CLASSES)
    out.rules = backend.rules()
    specs = param_specs(trained, INPUT_SHAPE, NUM_CLASSES)
    if job.gradients:
        backend.set_weights(weights)
        loss, grads = backend.loss_and_gradients(x, y)
        out.values["loss"] = {"loss": np.array(loss)}
        out.values["gradients"] = dict(zip([s.key for s in specs if s.trainable], grads, strict=True))
    if job.step or job.multi_step:
        backend.load_data(batch.x, batch.y)
    if job.step:
        after, _ = _train(backend, weights, [np.arange(BATCH)])
        out.values["step_1"] = {s.key: w for s, w in zip(specs, after, strict=True) if s.trainable}
    if job.multi_step:
        after, losses = _train(backend, weights, batch.schedule)
        out.values["losses_20"] = {"losses": losses}
        out.values["steps_20"] = {s.key: w for s, w in zip(specs, after, strict=True) if s.trainable}
        if model.has_batchnorm:
            out.values["bn_running_stats"] = {s.key: w for s, w in zip(specs, after, strict=True) if not s.trainable}
    return out


class Oracle:
    """The NumPy reference's answers, one run per (job, rules), shared by every backend."""

    def __init__(self, batch: Batch, epsilon: float = PARITY_EPSILON):
        self.batch, self.epsilon = batch, epsilon
        self.cache: dict[tuple[Job, Rules], Measured] = {}
        self.backend = NumpyBackend()

    def answer(self, job: Job, rules: Rules) -> Measured:
        if (job, rules) not in self.cache:
            self.backend.RULES = rules
            self.cache[(job, rules)] = measure(self.backend, job, self.batch, self.epsilon)
        return self.cache[(job, rules)]


# -- comparing -------------------------------------------------------------------------------------
def difference(actual: dict[str, np.ndarray], expected: dict[str, np.ndarray], keys: list[str]) -> tuple[float, float, str]:
    """(max abs, max rel, the array where rel peaks) over ``keys``; rel as the module docstring defines it."""
    floor = REL_FLOOR * max((float(np.abs(expected[k]).max()) for k in keys if np.size(expected[k])), default=0.0)
    worst_abs, worst_rel, where = 0.0, 0.0, ""
    for k in keys:
        a, b = np.asarray(actual[k], np.float64), np.asarray(expected[k], np.float64)
        if a.shape != b.shape or not np.all(np.isfinite(a)):
            return float("inf"), float("inf"), k
        if b.size == 0:
            continue
        diff = np.abs(a - b)
        rel = float((diff / (np.abs(b) + floor)).max()) if floor > 0 else float(diff.max())
        worst_abs = max(worst_abs, float(diff.max()))
        if rel >= worst_rel:
            worst_rel, where = rel, k
    return worst_abs, worst_rel, where


@dataclass
class Check:
    backend: str
    job: Job
    rung: str  # a RUNGS name, or "error" when the backend raised
    abs_diff: float
    rel_diff: float
    passed: bool
    worst: str = ""  # the array where rel peaks
    deviations: tuple[str, ...] = ()
    canonical_rel: float | None = None  # what the canonical rules would show, where a rule deviation applies
    note: str = ""

    @property
    def tolerance(self) -> float | None:
        return RUNG[self.rung].tolerance(self.job.model) if self.rung in RUNG else None


def compare(name: str, job: Job, got: Measured, oracle: Oracle) -> list[Check]:
    """Checks of one job's rungs against the oracle run with the rules the backend declares."""
    rules = relevant_rules(got.rules, job)
    want = oracle.answer(job, rules)
    skip = not_compared(job)
    checks = []
    for rung in (r.name for r in RUNGS if r.name in got.values):
        skipped_here = skip if rung in DEVIATIONS["bias_before_batchnorm"].rungs else set()
        keys = [k for k in want.values[rung] if k not in skipped_here]
        abs_diff, rel_diff, worst = difference(got.values[rung], want.values[rung], keys)
        tolerance = RUNG[rung].tolerance(job.model)
        check = Check(name, job, rung, abs_diff, rel_diff, rel_diff <= tolerance, worst)
        named = [d for d in deviations_of(rules) if rung in DEVIATIONS[d].rungs]
        if named:
            check.canonical_rel = difference(got.values[rung], oracle.answer(job, CANONICAL).values[rung], keys)[1]
        if SEED_MODELS[job.model].has_dropout and rung in DEVIATIONS["dropout_masks"].rungs:
            named.append("dropout_masks")
        if skipped_here:
            named.append("bias_before_batchnorm")
        check.deviations = tuple(named)
        if not check.passed and rung != "forward":
            check.note = _undeclared_rule_hint(job, got, oracle, rung, keys, rules)
        checks.append(check)
    return checks


def _undeclared_rule_hint(job: Job, got: Measured, oracle: Oracle, rung: str, keys: list[str], declared: Rules) -> str:
    """On a failure: would another documented rule explain it? (still a failure: the rule is undeclared)"""
    for rules in rule_variants(job):
        if rules != declared:
            rel = difference(got.values[rung], oracle.answer(job, rules).values[rung], keys)[1]
            if rel <= RUNG[rung].tolerance(job.model):
                return f"matches the reference with {', '.join(deviations_of(rules)) or 'the canonical rules'}: declare it in the backend's RULES"
    return ""


# -- running ---------------------------------------------------------------------------------------
@dataclass
class ParityReport:
    checks: list[Check] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)
    statistical: list[equivalence.EquivalenceResult] = field(default_factory=list)

    @property
    def failures(self) -> list[Check]:
        return [c for c in self.checks if not c.passed]

    @property
    def ok(self) -> bool:
        return not self.failures and all(r.passed for r in self.statistical)


def run_parity(
    backend_names: list[str],
    models: list[str],
    optimizers: list[str],
    activations: list[str],
    losses: list[str] = ("cce",),
    epsilon: float = PARITY_EPSILON,
    mode: str = "default",
    threads: int = 1,
    statistical: bool = True,
    seeds: int = equivalence.SEEDS,
    epochs: int = equivalence.EPOCHS,
    instances: dict[str, Backend] | None = None,
    progress: Callable[[str], None] | None = None,
) -> ParityReport:
    """Run the ladder (and the statistical rung) for each backend.

    ``instances`` supplies backends by name, set up already (tests plant bugs this way); the others
    come from the registry. A backend whose framework is missing is reported as skipped, not failed.
    """
    report = ParityReport()
    ready: dict[str, Backend] = {}
    for name in backend_names:
        if instances and name in instances:
            ready[name] = instances[name]
            continue
        try:
            ready[name] = backends.load(name)
        except BackendUnavailable as exc:
            report.skipped[name] = str(exc)
            continue
        ready[name].setup(threads)
    batch = fixed_batch()
    oracle = Oracle(batch, epsilon)
    oracle.backend.setup(threads)
    jobs = plan(list(models), list(optimizers), list(activations), list(losses))
    for name, backend in ready.items():
        for job in jobs:
            if progress:
                progress(f"{name}: {job.label}")
            try:
                got = measure(backend, job, batch, epsilon, mode)
            except Unsupported as exc:
                report.skipped[name] = str(exc)
                break
            except Exception as exc:  # noqa: BLE001 - a crash fails this job; the ladder goes on with the next
                report.checks.append(Check(name, job, "error", float("inf"), float("inf"), False, note=f"{type(exc).__name__}: {exc}"))
                continue
            report.checks += compare(name, job, got, oracle)
    if statistical and ready:
        if progress:
            progress(f"statistical rung: {seeds} seeds of mlp/adam on digits")
        anchor = NumpyBackend()
        anchor.setup(threads)
        report.statistical = equivalence.statistical_rung({"reference": anchor, **ready}, seeds, epochs)
    return report


# -- output ----------------------------------------------------------------------------------------
def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.1e}"


def _ladder_table(report: ParityReport, names: list[str]) -> Table:
    table = Table(title="Parity ladder vs the NumPy reference: largest rel difference per rung (where), tolerance dense/cnn")
    table.add_column("rung")
    table.add_column("tolerance", justify="right")
    for name in names:
        table.add_column(name)
    rungs = [r.name for r in RUNGS] + (["error"] if any(c.rung == "error" for c in report.checks) else [])
    for rung in rungs:
        cells = []
        for name in names:
            group = [c for c in report.checks if c.backend == name and c.rung == rung]
            if not group:
                cells.append("[dim]skipped[/dim]" if name in report.skipped else "[dim]n/a[/dim]")
                continue
            worst = max(group, key=lambda c: c.rel_diff)
            failed = sum(not c.passed for c in group)
            mark = f"[red]FAIL {failed}/{len(group)}[/red]" if failed else f"[green]pass {len(group)}[/green]"
            cells.append(f"{_fmt(worst.rel_diff)} {mark}\n[dim]{worst.job.label} {worst.worst}[/dim]")
        tolerance = f"{_fmt(RUNG[rung].dense)} / {_fmt(RUNG[rung].conv)}" if rung in RUNG else "-"
        table.add_row(rung, tolerance, *cells)
    return table


def _deviation_table(report: ParityReport) -> Table | None:
    groups: dict[tuple[str, str], list[Check]] = {}
    for c in report.checks:
        for d in c.deviations:
            groups.setdefault((c.backend, d), []).append(c)
    if not groups:
        return None
    table = Table(title="Named deviations: each backend checked against the reference with its documented rule")
    for column in ("backend", "deviation", "rungs", "rel vs its rule", "rel if canonical"):
        table.add_column(column, overflow="fold")
    for (name, d), group in groups.items():
        canonical = [c.canonical_rel for c in group if c.canonical_rel is not None and d in RULE_DEVIATIONS.values()]
        rungs = ", ".join(dict.fromkeys(c.rung for c in group))
        table.add_row(name, d, rungs, _fmt(max(c.rel_diff for c in group)), _fmt(max(canonical)) if canonical else "-")
    return table


def _failure_table(report: ParityReport, limit: int = 40) -> Table:
    table = Table(title=f"Failures ({len(report.failures)}, first {limit} shown)" if len(report.failures) > limit else "Failures")
    for column in ("backend", "model/optimizer/activation/loss", "rung", "rel", "abs", "tolerance", "where / note"):
        table.add_column(column, overflow="fold")
    for c in report.failures[:limit]:
        table.add_row(c.backend, c.job.label, c.rung, _fmt(c.rel_diff), _fmt(c.abs_diff), _fmt(c.tolerance), " ".join(filter(None, (c.worst, c.note))))
    return table


def _equivalence_tables(report: ParityReport) -> tuple[Table, Table]:
    accuracies: dict[str, list[float]] = {}
    for r in report.statistical:
        accuracies.setdefault(r.a, r.accuracies_a)
        accuracies.setdefault(r.b, r.accuracies_b)
    seeds = Table(title="Statistical rung: mlp/adam/relu on digits, final test accuracy per seed (same weights and batches per seed)")
    seeds.add_column("backend")
    for i in range(len(next(iter(accuracies.values())))):
        seeds.add_column(f"seed {i}", justify="right")
    seeds.add_column("mean", justify="right")
    for name, values in accuracies.items():
        seeds.add_row(name, *(f"{v:.4f}" for v in values), f"{np.mean(values):.4f}")
    pairs = Table(title=f"Paired TOST: equivalent if the mean gap is within +-{equivalence.MARGIN:.0%} at alpha {equivalence.ALPHA}")
    for column in ("pair", "mean gap", "90% CI", "TOST p", "equivalent"):
        pairs.add_column(column)
    for r in report.statistical:
        pairs.add_row(
            f"{r.a} vs {r.b}", f"{r.mean_difference:+.4f}", f"[{r.ci90[0]:+.4f}, {r.ci90[1]:+.4f}]",
            f"{r.p_value:.2g}", "[green]yes[/green]" if r.passed else "[red]NO[/red]",
        )
    return seeds, pairs


def render(report: ParityReport, console: Console) -> None:
    """Print the ladder (rung x backend), the named deviations, failures and the statistical rung."""
    names = list(dict.fromkeys([c.backend for c in report.checks] + list(report.skipped)))
    console.print(_ladder_table(report, names))
    deviations = _deviation_table(report)
    if deviations is not None:
        console.print(deviations)
        for d in dict.fromkeys(d for c in report.checks for d in c.deviations):
            console.print(f"  [bold]{d}[/bold]: {DEVIATIONS[d].explanation}")
    if report.failures:
        console.print(_failure_table(report))
    if report.statistical:
        for table in _equivalence_tables(report):
            console.print(table)
    for name, reason in report.skipped.items():
        console.print(f"[yellow]skipped[/yellow] {name}: {reason}")
    console.print(f"rel = max|a-b| / (|b| + 1% of the rung's largest |b|); RMSprop/Adam epsilon {PARITY_EPSILON:g} (see bench/parity.py)")
    for r in RUNGS:
        console.print(f"  {r.name}: {r.why}")
    console.print(f"  {MULTI_STEP_WHY}")
    verdict = "[green]parity: every rung passes[/green]" if report.ok else (
        f"[red]parity: {len(report.failures)} failed checks, "
        f"{sum(not r.passed for r in report.statistical)} non-equivalent pairs[/red]"
    )
    console.print(verdict)


# -- command line ----------------------------------------------------------------------------------
def _choices(values: list[str] | None, valid: tuple[str, ...] | list[str], default: tuple[str, ...] | list[str]) -> list[str]:
    """Comma-separated or repeated option values, 'all' for every valid one; an unknown name is an error."""
    if not values:
        return list(default)
    items = [v.strip() for value in values for v in value.split(",") if v.strip()]
    if "all" in items:
        return list(valid)
    for item in items:
        if item not in valid:
            raise BenchError(unknown("value", item, [*valid, "all"]))
    return list(dict.fromkeys(items))


def _backend_names(values: list[str] | None) -> list[str]:
    """Registry names from --backend values; 'all' means the compared frameworks (not the oracle)."""
    items = [v.strip() for value in values or ["all"] for v in value.split(",") if v.strip()]
    names = [n for item in items for n in (backends.FRAMEWORK_BACKENDS if item == "all" else [backends.canonical_name(item)])]
    return list(dict.fromkeys(names))


def add_parity_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--backend", action="append", help="backend(s) to check, comma-separated or repeated (default: "
                        f"all = {', '.join(backends.FRAMEWORK_BACKENDS)}; 'numpy' checks the oracle against itself)")
    parser.add_argument("--models", action="append", help=f"default: all ({', '.join(SEED_MODELS)})")
    parser.add_argument("--optimizers", action="append", help=f"default: all ({', '.join(OPTIMIZERS)})")
    parser.add_argument("--activations", action="append", help=f"default: all ({', '.join(ACTIVATIONS)})")
    parser.add_argument("--losses", action="append", help=f"losses for the loss and gradient rungs (default: cce; all = {', '.join(LOSSES)})")
    parser.add_argument("--epsilon", type=float, default=PARITY_EPSILON, help=f"RMSprop/Adam epsilon (default {PARITY_EPSILON:g}, why: bench/parity.py)")
    parser.add_argument("--mode", default="default", help="execution mode of every backend (default: each backend's first)")
    parser.add_argument("--threads", type=int, default=1, help="threads per backend (default 1)")
    parser.add_argument("--no-statistical", action="store_true", help="skip the statistical rung (accuracy over seeds)")
    parser.add_argument("--seeds", type=int, default=equivalence.SEEDS, help=f"seeds of the statistical rung (default {equivalence.SEEDS})")
    parser.add_argument("--epochs", type=int, default=equivalence.EPOCHS, help=f"epochs of the statistical rung (default {equivalence.EPOCHS})")


def main_parity(args: argparse.Namespace) -> int:
    """Run the ladder from parsed arguments and print it; exit status 1 on any failure."""
    console = Console() if sys.stdout.isatty() else Console(width=140)  # files and pipes get whole tables
    with console.status("parity") as status:
        report = run_parity(
            _backend_names(args.backend),
            _choices(args.models, list(SEED_MODELS), list(SEED_MODELS)),
            _choices(args.optimizers, OPTIMIZERS, OPTIMIZERS),
            _choices(args.activations, ACTIVATIONS, ACTIVATIONS),
            _choices(args.losses, LOSSES, ["cce"]),
            epsilon=args.epsilon,
            mode=args.mode,
            threads=args.threads,
            statistical=not args.no_statistical,
            seeds=args.seeds,
            epochs=args.epochs,
            progress=lambda text: status.update(f"parity: {text}"),
        )
    render(report, console)
    return 0 if report.ok else 1

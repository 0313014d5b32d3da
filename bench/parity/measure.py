"""Measuring one job on any backend, through the ``Backend`` protocol only.

The same function answers for a framework (in its worker process) and for the NumPy oracle (in the
parent), so both sides run the identical experiment: same canonical weights, same rows, same batch
order, same lifecycle (``bench.measure.training``). What it returns is plain NumPy arrays and the backend's
typed rules, so it crosses a process boundary unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from backends.base import Backend
from backends.numpy_backend import NumpyBackend
from bench.measure import training
from bench.parity.ladder import (
    BATCH,
    INPUT_SHAPE,
    N_ROWS,
    N_STEPS,
    NUM_CLASSES,
    PARITY_EPSILON,
    STEP_EPOCHS,
    WEIGHT_SEED,
    gradients_checked,
)
from bench.parity.plan import Job, training_model
from bench.reference.optimizer import Optimizer
from bench.spec.data import epoch_batches, load_dataset
from bench.spec.model import BUILTIN_MODELS
from bench.spec.rules import CANONICAL, Rules
from bench.spec.schedule import learning_rates, rate_at
from bench.spec.shapes import param_specs
from bench.spec.train import TrainSpec
from bench.spec.weights import canonical_weights


@dataclass
class Batch:
    """The ladder's data: the first rows of the bundled MNIST sample and the 20 steps' row order."""

    x: np.ndarray  # N_ROWS rows; the single-batch rungs use the first BATCH
    y: np.ndarray
    schedule: list[np.ndarray]  # N_STEPS batches of row indices


def fixed_batch() -> Batch:
    data = load_dataset("mnist-sample", val_split=0.0, train_size=N_ROWS)
    schedule = [rows for epoch in range(STEP_EPOCHS) for rows in epoch_batches(N_ROWS, BATCH, WEIGHT_SEED, epoch)]
    return Batch(data.x_train, data.y_train, schedule[:N_STEPS])


@dataclass
class Measured:
    """One backend's answers to one job: per rung, named arrays (parameter keys, 'logits', 'losses')."""

    values: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)
    rules: Rules = CANONICAL
    step_gradients: dict[str, np.ndarray] = field(default_factory=dict)
    """The backend's own gradients of the batch its first step trains on: the step rung applies the
    oracle's update to these, so it checks the update rule alone, not the gradients again."""


def _train(backend: Backend, weights: list[np.ndarray], schedule: list[np.ndarray]) -> tuple[list[np.ndarray], np.ndarray]:
    training.restart(backend, weights)
    result, _ = training.run_steps(backend, schedule)
    return backend.get_weights(), result.losses


def job_train(job: Job, epsilon: float = PARITY_EPSILON, mode: str = "default") -> TrainSpec:
    """The training spec every side of a job runs: its learning-rate schedule spans the 20 steps."""
    return TrainSpec(optimizer=job.optimizer, activation=job.activation, loss=job.loss, batch_size=BATCH,
                     epsilon=epsilon, mode=mode, schedule=job.schedule, epochs=STEP_EPOCHS)


def measure(backend: Backend, job: Job, batch: Batch, epsilon: float = PARITY_EPSILON, mode: str = "default") -> Measured:
    """Run one job: build, set_weights, logits, loss and gradients, steps, get_weights."""
    model = BUILTIN_MODELS[job.model].resolve(job.activation)
    train = job_train(job, epsilon, mode)
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
    if job.gradients or job.step:
        backend.set_weights(weights)
        loss, grads = backend.loss_and_gradients(x, y)
        gradients = dict(zip([s.key for s in specs if s.trainable], grads, strict=True))
        if job.gradients:
            out.values["loss"] = {"loss": np.array(loss)}
            if gradients_checked(job.model, job.activation):
                out.values["gradients"] = gradients
        out.step_gradients = gradients
    if job.step or job.multi_step:
        backend.load_data(batch.x, batch.y)
    if job.step:
        after, _ = _train(backend, weights, [np.arange(BATCH)])
        out.values["step_1"] = {s.key: w for s, w in zip(specs, after, strict=True) if s.trainable}
        if model.has_batchnorm:
            out.values["bn_running_stats_1"] = {s.key: w for s, w in zip(specs, after, strict=True) if not s.trainable}
    if job.multi_step:
        after, losses = _train(backend, weights, batch.schedule)
        out.values["losses_20"] = {"losses": losses}
        out.values["steps_20"] = {s.key: w for s, w in zip(specs, after, strict=True) if s.trainable}
        if model.has_batchnorm:
            out.values["bn_running_stats"] = {s.key: w for s, w in zip(specs, after, strict=True) if not s.trainable}
    return out


class Oracle:
    """The NumPy reference's answers, one run per (job, rules), shared by every backend."""

    def __init__(self, batch: Batch, epsilon: float = PARITY_EPSILON, threads: int = 1) -> None:
        self.batch, self.epsilon = batch, epsilon
        self.cache: dict[tuple[Job, Rules], Measured] = {}
        self.backend = NumpyBackend()
        self.backend.setup(threads)

    def answer(self, job: Job, rules: Rules) -> Measured:
        if (job, rules) not in self.cache:
            self.backend.RULES = rules
            self.cache[(job, rules)] = measure(self.backend, job, self.batch, self.epsilon)
        return self.cache[(job, rules)]

    def step(self, job: Job, rules: Rules, gradients: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """The trainable weights after one step of the oracle's update rule (``rules``) from the
        canonical weights, fed ``gradients`` (a backend's own): what that backend's first step must give
        if its optimizer is right, whatever the rounding of its gradients."""
        model = training_model(BUILTIN_MODELS[job.model].resolve(job.activation))
        specs = param_specs(model, INPUT_SHAPE, NUM_CLASSES)
        params = [np.array(w, np.float64) for w in canonical_weights(model, INPUT_SHAPE, NUM_CLASSES, WEIGHT_SEED)]
        trainable = [i for i, spec in enumerate(specs) if spec.trainable]
        train = job_train(job, self.epsilon)
        Optimizer(train, rules).step(params, [np.asarray(gradients[specs[i].key], np.float64) for i in trainable],
                                     trainable, rate_at(learning_rates(train, N_ROWS // BATCH), 0))
        return {specs[i].key: params[i] for i in trainable}

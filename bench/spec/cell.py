"""What one measurement is: a cell of the sweep grid, its axes, and how long its throughput windows may run.

A cell is backend x model x training spec x dataset x repeat. ``AXES`` declares what tells two cells
apart, once: the cell's identity (``cell_id``), the record fields that describe it (``config``), the
sweep's product (bench/run/grid.py) and every grouping of the reports derive from it, so they agree
(docs/architecture.md, "Cells").
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from bench.spec.augment import record_fields
from bench.spec.model import ModelSpec
from bench.spec.semantics import HARMONISED
from bench.spec.train import Augment, TrainSpec

DEFAULT_MIN_SECONDS = 0.25


@dataclass(frozen=True)
class WindowPlan:
    """How long one throughput window must last, how many windows a cell may take, and their time budget."""

    min_seconds: float = DEFAULT_MIN_SECONDS
    max_windows: int = 5
    budget_seconds: float = 1.0
    """Windows beyond ``MIN_WINDOWS`` (bench/measure/throughput.py) are taken while all windows would still fit in this time."""


@dataclass(frozen=True)
class Cell:
    """One point of the sweep grid; ``repeat`` r trains from seed ``train.seed`` (already offset)."""

    backend: str
    model: ModelSpec
    train: TrainSpec
    dataset: str
    repeat: int = 0
    target_accuracy: float = 0.9
    probe_steps: int = 100
    """Individually synchronised steps timed after warm-up for step-time percentiles (0: none); the
    default is the fewest any percentile is given from (bench/results/stats.py MIN_STEP_SAMPLES)."""
    window: WindowPlan = WindowPlan()
    sizes: tuple[int | None, int | None, int | None] = (None, None, None)
    """Rows of the train, validation and test splits this cell uses (None: all), for a model that
    costs far more per sample than the others (``Sweep.model_sizes``)."""
    split_sources: tuple[str, str, str] | None = None
    """Where each of those sizes came from, in words (the profile, a config key or a flag)."""
    throughput_only: bool = False
    """Measured for speed only: trained on a slice too small for its accuracy to be a result."""

    @property
    def cell_id(self) -> str:
        """Every axis' value joined by '|', in ``AXES`` order, less the values an axis leaves out
        (``Axis.id_omits``): unaugmented, harmonised, constant-rate cells keep the id they had before those axes
        existed, so old runs still resume."""
        values = ((axis, axis.read(self)) for axis in AXES)
        return "|".join(axis.id_format.format(value) for axis, value in values if value != axis.id_omits)

    @staticmethod
    def refused_id(backend: str, model: str) -> str:
        """The id of a model refused before any of its cells was built (it does not fit the data)."""
        return f"{backend}|{model}|refused"

    def config(self) -> dict:
        """The record fields that describe this cell (bench/results/record.py declares them)."""
        t = self.train
        return {
            "cell_id": self.cell_id, "repeat": self.repeat, "seed": t.seed, "requested_mode": t.mode,
        } | {axis.field: axis.read(self) for axis in AXES} | hyperparameters(t) | {
            "target_accuracy": self.target_accuracy, "throughput_only": self.throughput_only,
            "min_window_seconds": self.window.min_seconds,
            "window_budget_seconds": self.window.budget_seconds,
        } | record_fields(t.augment) | (
            {"split_sources": dict(zip(("train", "val", "test"), self.split_sources, strict=True))}
            if self.split_sources else {})


def hyperparameters(t: TrainSpec) -> dict:
    """The values a semantics policy may change, as a record states them (the effective ones once built)."""
    return {
        "momentum": t.momentum if t.optimizer == "momentum" else 0.0,
        "rho": t.rho, "beta1": t.beta1, "beta2": t.beta2, "epsilon": t.epsilon, "weight_decay": t.weight_decay,
        "warmup_fraction": t.warmup_fraction if t.schedule != "constant" else 0.0,
        "bn_momentum": t.bn_momentum, "bn_epsilon": t.bn_epsilon, "leaky_relu_slope": t.leaky_relu_slope,
    }


@dataclass(frozen=True)
class Axis:
    """One axis of the sweep grid: a way two cells can differ."""

    field: str
    """The record field that holds the axis' value, and the report column of the same name."""
    sweep: str
    """The Sweep field (bench/run/grid.py) that lists the axis' values: the grid is their product."""
    sets: str | None
    """The TrainSpec field a value of the grid sets; None: a field of the Cell itself."""
    read: Callable[[Cell], object]
    """The axis' value in a cell, as its record states it (the learning rate in use, the augmentation's label)."""
    id_format: str = "{}"
    """How the value is written in ``cell_id``."""
    id_omits: object = None
    """A value left out of ``cell_id`` (None: none is): the value every cell had before the axis existed,
    so a run folder written then still resumes; a record without the field had it too."""
    backend_specific: bool = False
    """Its values belong to one backend (its name, its execution modes), so backends are compared
    across the other axes (``CONFIG_AXES`` in reports/records.py)."""


def _train(name: str) -> Callable[[Cell], object]:
    return lambda cell: getattr(cell.train, name)


AXES: tuple[Axis, ...] = (
    Axis("backend", "backends", None, lambda cell: cell.backend, backend_specific=True),
    Axis("model", "models", None, lambda cell: cell.model.name),
    Axis("optimizer", "optimizers", "optimizer", _train("optimizer")),
    Axis("activation", "activations", "activation", _train("activation")),
    Axis("loss", "losses", "loss", _train("loss")),
    Axis("batch_size", "batch_sizes", "batch_size", _train("batch_size"), "bs{}"),
    Axis("epochs", "epochs", "epochs", _train("epochs"), "ep{}"),
    Axis("learning_rate", "learning_rate", "learning_rate", lambda cell: cell.train.lr, "lr{:g}"),
    Axis("precision", "precisions", "precision", _train("precision")),
    Axis("mode", "modes", "mode", _train("mode"), backend_specific=True),
    Axis("dataset", "dataset", None, lambda cell: cell.dataset),
    Axis("semantics_policy", "semantics", "semantics", _train("semantics"), id_omits=HARMONISED),
    Axis("augment", "augment", "augment", lambda cell: cell.train.augment.label, "aug={}", id_omits=Augment().label),
    Axis("schedule", "schedules", "schedule", _train("schedule"), "sched={}", id_omits="constant"),
)
"""What tells two cells apart, in ``cell_id`` order (the grid's nesting too: the last varies fastest)."""

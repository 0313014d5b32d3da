"""What one measurement is: a cell of the sweep grid, and how long its throughput windows may run.

A cell is backend x model x training spec x dataset x repeat. Its identity (``cell_id``), the record
fields that describe it (``config``) and the sweep's product all come from here, so the grid, the
record schema and the reports agree on what tells two cells apart (docs/architecture.md, "Cells").
"""

from __future__ import annotations

from dataclasses import dataclass

from bench.spec.augment import record_fields
from bench.spec.model import ModelSpec
from bench.spec.train import TrainSpec

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
    probe_steps: int = 20
    """Individually synchronised steps timed after warm-up for step-time percentiles (0: none)."""
    window: WindowPlan = WindowPlan()
    sizes: tuple[int | None, int | None, int | None] = (None, None, None)
    """Rows of the train, validation and test splits this cell uses (None: all), for a model that
    costs far more per sample than the others (``Sweep.model_sizes``)."""

    @property
    def cell_id(self) -> str:
        """Unaugmented, harmonised cells keep the id they had before those axes existed, so old runs still resume."""
        t = self.train
        policy = [] if t.semantics == "harmonised" else [t.semantics]
        return "|".join(
            [self.backend, self.model.name, t.optimizer, t.activation, t.loss, f"bs{t.batch_size}",
             f"ep{t.epochs}", f"lr{t.lr:g}", t.precision, t.mode, self.dataset, *policy]
            + ([f"aug={t.augment.label}"] if t.augment.active else [])
        )

    @staticmethod
    def refused_id(backend: str, model: str) -> str:
        """The id of a model refused before any of its cells was built (it does not fit the data)."""
        return f"{backend}|{model}|refused"

    def config(self) -> dict:
        """The record fields that describe this cell (bench/results/record.py declares them)."""
        t = self.train
        return {
            "cell_id": self.cell_id, "repeat": self.repeat, "backend": self.backend, "model": self.model.name,
            "optimizer": t.optimizer, "activation": t.activation, "loss": t.loss, "batch_size": t.batch_size,
            "epochs": t.epochs, "learning_rate": t.lr, "seed": t.seed, "precision": t.precision,
            "requested_mode": t.mode, "mode": t.mode, "semantics_policy": t.semantics,
        } | hyperparameters(t) | {
            "target_accuracy": self.target_accuracy, "min_window_seconds": self.window.min_seconds,
            "window_budget_seconds": self.window.budget_seconds,
        } | record_fields(t.augment)


def hyperparameters(t: TrainSpec) -> dict:
    """The values a semantics policy may change, as a record states them (the effective ones once built)."""
    return {
        "momentum": t.momentum if t.optimizer == "momentum" else 0.0,
        "rho": t.rho, "beta1": t.beta1, "beta2": t.beta2, "epsilon": t.epsilon, "weight_decay": t.weight_decay,
        "bn_momentum": t.bn_momentum, "bn_epsilon": t.bn_epsilon, "leaky_relu_slope": t.leaky_relu_slope,
    }

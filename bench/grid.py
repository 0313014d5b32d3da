"""The sweep: settings from profiles, TOML and flags, expanded into the grid of cells.

Precedence is profile < TOML file < command-line flags, so a saved sweep can be rerun and tweaked.
Every value of the grid is explicit in each cell's TrainSpec and therefore in each record.
"""

from __future__ import annotations

import itertools
import tomllib
from dataclasses import dataclass, field, fields, replace
from pathlib import Path

from pydantic import TypeAdapter, ValidationError

from bench.errors import BenchError, SpecError
from bench.harness import Cell
from bench.shapes import check_fits
from bench.spec import ACTIVATIONS, LOSSES, OPTIMIZERS, PRECISIONS, SEED_MODELS, Layer, ModelSpec, TrainSpec
from bench.throughput import MIN_WINDOWS, WindowPlan

PROFILES: dict[str, dict] = {
    # Every seed model x optimizer x activation on all backends within 5 minutes on 2 cores, with
    # accuracies that mean something: the MLPs train 2 epochs on the whole bundled sample (7,200 /
    # 800 / 2,000; mlp with Adam and ReLU reaches ~0.92), and two throughput windows per cell. The CNN
    # costs ~100x an MLP per sample (1-3 ms per training sample per backend on one core), so it
    # trains on a 256-row slice (validated and tested on 256 rows) and is marked not converged
    # rather than presented as a result.
    "quick": {"train_size": None, "test_size": None, "epochs": 2, "batch_sizes": [64], "val_split": 0.1,
              "probe_steps": 0, "window_budget": 0.5, "model_sizes": {"cnn": {"train": 256, "val": 256, "test": 256}}},
    # The whole bundled sample (7,200 / 800 / 2,000), a few epochs: figures worth comparing.
    "full": {"train_size": None, "test_size": None, "epochs": 3, "batch_sizes": [128], "val_split": 0.1,
             "window_budget": 2.0},
    # The seed document's own settings: 10 epochs, batch 32, validation split 0.2.
    "seed": {"train_size": None, "test_size": None, "epochs": 10, "batch_sizes": [32], "val_split": 0.2,
             "window_budget": 2.0},
}
DEFAULT_PROFILE = "quick"


@dataclass
class Sweep:
    """Everything a run sweeps over, after merging profile, TOML file and flags."""

    backends: list[str] = field(default_factory=lambda: ["all"])
    models: list[str] = field(default_factory=lambda: list(SEED_MODELS))
    optimizers: list[str] = field(default_factory=lambda: list(OPTIMIZERS))
    activations: list[str] = field(default_factory=lambda: list(ACTIVATIONS))
    losses: list[str] = field(default_factory=lambda: ["cce"])
    batch_sizes: list[int] = field(default_factory=lambda: [64])
    precisions: list[str] = field(default_factory=lambda: ["fp32"])
    modes: list[str] = field(default_factory=lambda: ["default"])
    epochs: int = 1
    learning_rate: float | None = None
    repeats: int = 1
    seed: int = 0
    dataset: str = "mnist-sample"
    data_dir: str | None = None
    train_size: int | None = None
    test_size: int | None = None
    val_split: float = 0.1
    target_accuracy: float = 0.9
    probe_steps: int = 20
    min_window: float = 0.25
    """Seconds a throughput window lasts at least (bench.throughput)."""
    window_budget: float = 1.0
    """Seconds all of a cell's throughput windows may take before no further window is added."""
    max_windows: int = 5
    model_sizes: dict[str, dict[str, int]] = field(default_factory=dict)
    """Per model, rows of the splits it uses ({"train": n, "val": n, "test": n}, each optional)."""
    custom_models: dict[str, ModelSpec] = field(default_factory=dict)
    models_explicit: bool = False

    def model_specs(self) -> dict[str, ModelSpec]:
        return SEED_MODELS | self.custom_models


SWEEP_KEYS = {f.name for f in fields(Sweep)} - {"custom_models", "models_explicit"}


def from_profile(name: str) -> Sweep:
    if name not in PROFILES:
        raise BenchError(f"unknown profile {name!r}; valid: {', '.join(PROFILES)}")
    return replace(Sweep(), **PROFILES[name])


def apply_toml(sweep: Sweep, path: Path) -> Sweep:
    """Merge a TOML file: a [sweep] table of Sweep keys and [models.NAME] tables with a layers list."""
    try:
        document = tomllib.loads(Path(path).read_text())
    except FileNotFoundError:
        raise BenchError(f"config file not found: {path}") from None
    except tomllib.TOMLDecodeError as exc:
        raise BenchError(f"config file {path} is not valid TOML: {exc}") from None
    unknown_tables = set(document) - {"sweep", "models"}
    if unknown_tables:
        raise BenchError(f"config file {path}: unknown table(s) {sorted(unknown_tables)}; valid: [sweep], [models.NAME]")
    settings = document.get("sweep", {})
    unknown = set(settings) - SWEEP_KEYS
    if unknown:
        raise BenchError(f"config file {path}: unknown [sweep] key(s) {sorted(unknown)}; valid: {', '.join(sorted(SWEEP_KEYS))}")
    custom = {}
    for name, table in document.get("models", {}).items():
        try:
            layers = TypeAdapter(tuple[Layer, ...]).validate_python(table.get("layers", []))
            custom[name] = ModelSpec(name=name, layers=layers, description=table.get("description", "from " + str(path)))
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first["loc"])
            raise BenchError(f"config file {path}: model {name!r} layer {where}: {first['msg']}") from None
    sweep = replace(sweep, **settings, custom_models=sweep.custom_models | custom)
    if "models" in settings:
        sweep.models_explicit = True
    return sweep


def _check_names(kind: str, names: list[str], valid) -> None:
    for name in names:
        if name not in valid:
            raise BenchError(f"unknown {kind} {name!r}; valid: {', '.join(valid)}")


def validate(sweep: Sweep) -> None:
    """Reject unknown names with one line that lists the valid ones."""
    _check_names("model", sweep.models, list(sweep.model_specs()))
    _check_names("optimizer", sweep.optimizers, OPTIMIZERS)
    _check_names("activation", sweep.activations, ACTIVATIONS)
    _check_names("loss", sweep.losses, LOSSES)
    _check_names("precision", sweep.precisions, PRECISIONS)
    if sweep.repeats < 1 or sweep.epochs < 1:
        raise BenchError("--repeats and --epochs must be at least 1")
    if not sweep.min_window > 0 or sweep.window_budget < 0:
        raise BenchError(f"--min-window must be positive and --window-budget at least 0, got {sweep.min_window} "
                         f"and {sweep.window_budget}")
    if sweep.max_windows < MIN_WINDOWS:
        raise BenchError(f"max_windows must be at least {MIN_WINDOWS}, got {sweep.max_windows}")
    for model, sizes in sweep.model_sizes.items():
        if not isinstance(sizes, dict) or set(sizes) - set(SPLITS) or not all(
                isinstance(n, int) and n > 0 for n in sizes.values()):
            raise BenchError(f"model_sizes for {model!r} must map {', '.join(SPLITS)} to positive row counts, "
                             f"got {sizes!r}")
    for size in sweep.batch_sizes:
        if size < 1:
            raise BenchError(f"batch size must be a positive integer (or 'full'), got {size}")


SPLITS = ("train", "val", "test")


def refuse_misfits(sweep: Sweep, input_shape: tuple[int, ...], num_classes: int) -> tuple[list[str], dict[str, str]]:
    """Models that fit the data, and the reasons of those that don't.

    A model the user named explicitly that cannot fit is an error (one line, exit 2); a default
    model that cannot fit (the CNN on 8x8 digits) is left out and reported as skipped.
    """
    fitting, refused = [], {}
    for name in sweep.models:
        try:
            check_fits(sweep.model_specs()[name], input_shape, num_classes)
            fitting.append(name)
        except SpecError as exc:
            if sweep.models_explicit:
                raise
            refused[name] = str(exc)
    return fitting, refused


def cells(sweep: Sweep, backends: list[str], models: list[str], n_train: int) -> list[Cell]:
    """Every combination, grouped by backend (one worker each) and repeat-major within a backend,
    so a stopped run has whole repeats of the sweep rather than many repeats of a few cells."""
    specs = sweep.model_specs()
    plan = WindowPlan(sweep.min_window, sweep.max_windows, sweep.window_budget)
    grid = []
    for backend, repeat in itertools.product(backends, range(sweep.repeats)):
        for model, optimizer, activation, loss, batch, precision, mode in itertools.product(
            models, sweep.optimizers, sweep.activations, sweep.losses, sweep.batch_sizes, sweep.precisions, sweep.modes
        ):
            sizes = sweep.model_sizes.get(model, {})
            rows = min(n_train, sizes.get("train", n_train))
            train = TrainSpec(
                optimizer=optimizer, activation=activation, loss=loss,
                batch_size=rows if batch == 0 else batch, epochs=sweep.epochs,
                learning_rate=sweep.learning_rate, seed=sweep.seed + repeat, precision=precision, mode=mode,
            )
            grid.append(Cell(backend, specs[model], train, sweep.dataset, repeat, sweep.target_accuracy,
                             sweep.probe_steps, plan, tuple(sizes.get(split) for split in SPLITS)))
    return grid

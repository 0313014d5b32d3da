"""The sweep: settings from profiles, TOML and flags, expanded into the grid of cells.

Precedence is profile < TOML file < command-line flags, so a saved sweep can be rerun and tweaked.
Every value of the grid is explicit in each cell's TrainSpec and therefore in each record. Every
value is checked as it is merged, by the Sweep's own field types, and an error names the flag or
TOML key it came from, the value and what is valid, before the run writes anything.
"""

from __future__ import annotations

import itertools
import tomllib
from collections.abc import Mapping
from dataclasses import field, fields, replace
from pathlib import Path
from typing import Annotated, Literal, get_args

from pydantic import AfterValidator, BeforeValidator, ConfigDict, Field, TypeAdapter, ValidationError
from pydantic.dataclasses import dataclass
from pydantic.fields import FieldInfo

import backends
from backends.compile_cache import POLICIES as CACHE_POLICIES
from bench.errors import BenchError, DatasetError, SpecError, did_you_mean, unknown
from bench.measure.throughput import MIN_WINDOWS
from bench.results.store import read_small
from bench.spec.cell import AXES, Cell, WindowPlan
from bench.spec.data import check_name
from bench.spec.model import (
    ACTIVATIONS,
    BUILTIN_MODELS,
    LOSSES,
    OPTIMIZERS,
    PRECISIONS,
    SEED_MODELS,
    SEED_OPTIMIZERS,
    Layer,
    ModelSpec,
)
from bench.spec.semantics import HARMONISED, POLICIES
from bench.spec.shapes import check_fits
from bench.spec.train import SCHEDULES, Augment, TrainSpec

PROFILES: dict[str, dict] = {
    # Every seed model x optimizer x activation on all backends within 5 minutes on 2 cores, with
    # accuracies that mean something: the MLPs train 2 epochs on the whole bundled sample (7,200 /
    # 800 / 2,000; mlp with Adam and ReLU reaches ~0.92), and two throughput windows per cell. The CNN
    # costs ~100x an MLP per sample (0.7 ms per training sample on torch and tf, 2.8 ms on JAX, whose
    # CPU convolution gradients are slow), so it trains on a 128-row slice (validated and tested on
    # 128 rows), which measures its throughput and compile time, and is marked not converged rather
    # than presented as a result.
    "quick": {"train_size": None, "test_size": None, "epochs": 2, "batch_sizes": [64], "val_split": 0.1,
              "window_budget": 0.5, "model_sizes": {"cnn": {"train": 128, "val": 128, "test": 128}},
              "throughput_only": ["cnn"]},
    # The whole bundled sample (7,200 / 800 / 2,000), a few epochs: figures worth comparing.
    "full": {"train_size": None, "test_size": None, "epochs": 3, "batch_sizes": [128], "val_split": 0.1,
             "window_budget": 2.0},
    # Residual nets and transformers at the settings they are trained with: AdamW, a warm-up then a cosine
    # decay, 15 epochs of the whole bundled sample. Measured on the oracle and a plain torch loop (1 thread):
    # vit 0.939 test accuracy after 10 epochs, 0.9465 after 20; resnet 0.96 after 7, 0.986 after 15 (its
    # eval-mode BatchNorm statistics, momentum 0.99, need ~700 steps to forget their initial variance of 1:
    # 0.13 after 2 epochs). One activation: vit's GELU ignores the axis.
    "modern": {"models": ["resnet", "vit"], "optimizers": ["adamw"], "activations": ["relu"],
               "schedules": ["warmup_cosine"], "train_size": None, "test_size": None, "epochs": 15,
               "batch_sizes": [64], "val_split": 0.1, "window_budget": 2.0},
    # The seed document's own settings: 10 epochs, batch 32, validation split 0.2.
    "seed": {"train_size": None, "test_size": None, "epochs": 10, "batch_sizes": [32], "val_split": 0.2,
             "window_budget": 2.0},
}
DEFAULT_PROFILE = "quick"


def _names_in(kind: str, valid: tuple[str, ...]) -> AfterValidator:
    def check(names: list[str]) -> list[str]:
        for name in names:
            if name not in valid:
                raise ValueError(unknown(kind, name, valid))
        return names

    return AfterValidator(check)


def _backend_names(names: list[str]) -> list[str]:
    try:
        backends.expand(names)
    except BenchError as exc:
        raise ValueError(str(exc)) from None
    return names


def _dataset_name(name: str) -> str:
    try:
        check_name(name)
    except DatasetError as exc:
        raise ValueError(str(exc)) from None
    return name


def _augment_axis(value: object) -> list[Augment]:
    try:
        return augment_axis(value)
    except SpecError as exc:
        raise ValueError(str(exc)) from None


def _names(what: str) -> FieldInfo:
    return Field(min_length=1, description=f"a non-empty list of {what}")


@dataclass(config=ConfigDict(strict=True, extra="forbid"))
class Sweep:
    """Everything a run sweeps over, after merging profile, TOML file and flags.

    A pydantic dataclass in strict mode, so its field types are the one set of rules for a flag and
    for the same key in a TOML [sweep] table: a string is never a number, a float never a count, a
    list never a scalar. Every construction validates, ``dataclasses.replace`` included.
    """

    backends: Annotated[list[str], _names("backend names or 'all'"), AfterValidator(_backend_names)] = field(
        default_factory=lambda: ["all"])
    models: Annotated[list[str], _names("model names")] = field(default_factory=lambda: list(SEED_MODELS))
    optimizers: Annotated[list[str], _names("optimizers"), _names_in("optimizer", OPTIMIZERS)] = field(
        default_factory=lambda: list(SEED_OPTIMIZERS))
    activations: Annotated[list[str], _names("activations"), _names_in("activation", ACTIVATIONS)] = field(
        default_factory=lambda: list(ACTIVATIONS))
    losses: Annotated[list[str], _names("losses"), _names_in("loss", LOSSES)] = field(default_factory=lambda: ["cce"])
    batch_sizes: Annotated[list[Annotated[int, Field(ge=1)] | Literal["full"]],
                           _names("positive integers or 'full'")] = field(default_factory=lambda: [64])
    precisions: Annotated[list[str], _names("precisions"), _names_in("precision", PRECISIONS)] = field(
        default_factory=lambda: ["fp32"])
    modes: Annotated[list[str], _names("execution modes ('default' or a backend's own)")] = field(
        default_factory=lambda: ["default"])
    semantics: Annotated[list[str], _names("semantics policies"), _names_in("semantics policy", POLICIES)] = field(
        default_factory=lambda: [HARMONISED])
    augment: Annotated[list[Augment], BeforeValidator(_augment_axis)] = field(default_factory=lambda: [Augment()])
    schedules: Annotated[list[str], _names("learning-rate schedules"), _names_in("learning-rate schedule", SCHEDULES)] = field(
        default_factory=lambda: ["constant"])
    epochs: Annotated[int, Field(ge=1, description="an integer >= 1")] = 1
    learning_rate: Annotated[float | None, Field(gt=0, allow_inf_nan=False, description="a finite number > 0, e.g. 0.001")] = None
    repeats: Annotated[int, Field(ge=1, description="an integer >= 1")] = 1
    seed: Annotated[int, Field(ge=0, lt=2**31, description="an integer from 0 to 2147483647")] = 0
    dataset: Annotated[str, AfterValidator(_dataset_name)] = "mnist-sample"
    data_dir: Annotated[str | None, Field(description="a folder path")] = None
    train_size: Annotated[int | None, Field(ge=1, description="an integer >= 1 (samples before the validation split)")] = None
    test_size: Annotated[int | None, Field(ge=1, description="an integer >= 1")] = None
    val_split: Annotated[float, Field(ge=0, lt=1, allow_inf_nan=False, description="a fraction in [0, 1)")] = 0.1
    target_accuracy: Annotated[float, Field(gt=0, le=1, allow_inf_nan=False, description="a fraction in (0, 1]")] = 0.9
    probe_steps: Annotated[int, Field(ge=0, description="an integer >= 0")] = Cell.probe_steps
    min_window: Annotated[float, Field(gt=0, allow_inf_nan=False, description="seconds > 0 a throughput window lasts at least")] = WindowPlan.min_seconds
    window_budget: Annotated[float, Field(ge=0, allow_inf_nan=False, description="seconds >= 0 a cell's extra windows may take")] = WindowPlan.budget_seconds
    max_windows: Annotated[int, Field(ge=MIN_WINDOWS, description=f"an integer >= {MIN_WINDOWS}")] = WindowPlan.max_windows
    compile_cache: Annotated[Literal[CACHE_POLICIES], Field(description=", ".join(CACHE_POLICIES))] = CACHE_POLICIES[0]
    """Persistent compilation caches: warm (kept across cells and runs), cold (emptied before each cell) or off."""
    model_sizes: Annotated[dict[str, dict[Literal["train", "val", "test"], Annotated[int, Field(ge=1)]]],
                           Field(description="per model, positive row counts of its train/val/test splits")] = field(default_factory=dict)
    """Per model, rows of the splits it uses ({"train": n, "val": n, "test": n}, each optional)."""
    throughput_only: Annotated[list[str], Field(description="a list of model names")] = field(default_factory=list)
    """Models this sweep measures for speed only (the quick profile's CNN, on a 128-row slice): their
    records say so, and the reports show their throughput, not an accuracy that was never meant to be one."""
    custom_models: dict[str, ModelSpec] = field(default_factory=dict)
    models_explicit: bool = False
    size_sources: dict[str, str] = field(default_factory=dict)
    """Where ``train_size``, ``val_split``, ``test_size`` and ``model_sizes`` came from (the profile, a
    config key or a flag), so every record can say where its split sizes came from; not a setting."""

    def model_specs(self) -> dict[str, ModelSpec]:
        return BUILTIN_MODELS | self.custom_models


SWEEP_KEYS = {f.name for f in fields(Sweep)} - {"custom_models", "models_explicit", "size_sources"}
SIZE_KEYS = ("train_size", "val_split", "test_size", "model_sizes")
LAYERS = TypeAdapter(Annotated[list[Layer], Field(min_length=1)])
LAYER_CLASSES = {cls.model_fields["type"].default: cls for cls in get_args(get_args(Layer)[0])}
MODEL_KEYS = ("layers", "description")
LAYER_EXAMPLE = '{type = "Dense", units = 10}'


def _explain(label: str, error: dict, description: str | None = None) -> str:
    """One pydantic error as '<label> <value>: <what is wrong>; valid: <description>'."""
    if error["type"] == "value_error":  # our own validators' messages already name the value and the valid ones
        return f"{label}: {error['ctx']['error']}"
    message = error["msg"][:1].lower() + error["msg"][1:]
    return f"{label} {error['input']!r}: {message}" + (f"; valid: {description}" if description else "")


GOVERNED_SPLITS: dict[str, tuple[str, ...]] = {"train_size": ("train", "val"), "test_size": ("test",)}
"""The per-model split sizes (``Sweep.model_sizes``) that a global size replaces: ``train_size``
counts the rows before the validation split, so it decides both the train and the validation rows."""


def merge(sweep: Sweep, values: Mapping[str, object], where: Mapping[str, str]) -> Sweep:
    """``sweep`` with ``values`` set, each checked by the Sweep's rules; an error names ``where[key]``,
    the flag or TOML key the value came from (the caller checks the keys).

    Later levels win (profile < TOML < flags), per-model sizes included: a global size set here
    drops the per-model sizes of an earlier level that it governs (``GOVERNED_SPLITS``), so
    ``--train-size 2048`` gives every model 2,048 rows, not the profile's 128 to the CNN; per-model
    sizes set at the same level are more specific and stay."""
    governed = {split for key, splits in GOVERNED_SPLITS.items() if key in values for split in splits}
    if governed and "model_sizes" not in values:
        kept = {model: {split: n for split, n in sizes.items() if split not in governed}
                for model, sizes in sweep.model_sizes.items()}
        values = {**values, "model_sizes": {model: sizes for model, sizes in kept.items() if sizes}}
    if governed and "throughput_only" not in values:  # sizes the user chose make an accuracy that counts
        values = {**values, "throughput_only": []}
    try:
        merged = replace(sweep, **values)
    except ValidationError as exc:
        error = exc.errors()[0]
        key = str(error["loc"][0])
        description = Sweep.__pydantic_fields__[key].description
        raise BenchError(_explain(where.get(key, key), error, description)) from None
    if "models" in values:
        merged.models_explicit = True
    specs = merged.model_specs()
    for key in ("models", "throughput_only"):
        for name in getattr(merged, key):
            if name not in specs:
                raise BenchError(f"{where.get(key, key)}: {unknown('model', name, list(specs))}")
    return merged


def from_profile(name: str) -> Sweep:
    if name not in PROFILES:
        raise BenchError(f"--profile: {unknown('profile', name, list(PROFILES))}")
    return replace(Sweep(), **PROFILES[name])


def _table(value: object, what: str, path: Path) -> dict:
    if not isinstance(value, dict):
        raise BenchError(f"config file {path}: {what} must be a table, got {value!r}")
    return value


def read_toml(path: Path) -> tuple[dict, dict[str, ModelSpec]]:
    """A TOML file's [sweep] table (its keys checked; merge checks the values) and its [models.NAME] models."""
    try:
        document = tomllib.loads(read_small(Path(path), "sweep TOML file").decode("utf-8"))
    except FileNotFoundError:
        raise BenchError(f"config file not found: {path}") from None
    except IsADirectoryError:
        raise BenchError(f"config file {path} is a directory; valid: a TOML file") from None
    except OSError as exc:
        raise BenchError(f"cannot read config file {path}: {exc.strerror or exc}") from None
    except UnicodeDecodeError as exc:
        raise BenchError(f"config file {path} is not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    except tomllib.TOMLDecodeError as exc:
        raise BenchError(f"config file {path} is not valid TOML: {exc}") from None
    for table in document:
        if table not in ("sweep", "models"):
            raise BenchError(f"config file {path}: {unknown('table', f'[{table}]', ('[sweep]', '[models.NAME]'))}")
    settings = _table(document.get("sweep", {}), "[sweep]", path)
    for key in settings:
        if key not in SWEEP_KEYS:
            raise BenchError(f"config file {path}: {unknown('[sweep] key', key, sorted(SWEEP_KEYS))}")
    models = _table(document.get("models", {}), "[models]", path)
    return settings, {name: _custom_model(name, table, path) for name, table in models.items()}


def _custom_model(name: str, table: object, path: Path) -> ModelSpec:
    where = f"config file {path}: [models.{name}]"
    if name in BUILTIN_MODELS:
        raise BenchError(f"{where} redefines the built-in model {name!r}; valid: a new name (built-in: {', '.join(BUILTIN_MODELS)})")
    table = _table(table, f"[models.{name}]", path)
    for key in table:
        if key not in MODEL_KEYS:
            raise BenchError(f"{where}: {unknown('key', key, MODEL_KEYS)}")
    if "layers" not in table:
        raise BenchError(f"{where} has no layers list; valid: layers = [{LAYER_EXAMPLE}, ...]")
    description = table.get("description", f"from {path}")
    if not isinstance(description, str):
        raise BenchError(f"{where} description {description!r}: valid: a string")
    try:
        layers = LAYERS.validate_python(table["layers"], strict=True)  # strict: "64" is not a unit count
    except ValidationError as exc:
        raise BenchError(_layer_problem(where, exc)) from None
    return ModelSpec(name=name, layers=tuple(layers), description=description)


def augment_axis(value: str | dict | list) -> list[Augment]:
    """The augmentation axis from ``--augment`` flags or the TOML ``augment`` key.

    A string is one augmentation (``flip,rotate=15``) or several separated by ``;``; a table is one
    (``{flip = "h", rotate = 15}``); a list holds any of these. ``none`` (no augmentation) is always
    on the axis, first: the report's cost of augmentation compares cells of the same run.
    """
    found = [Augment()]
    for item in value if isinstance(value, list) else [value]:
        if isinstance(item, Augment):
            found.append(item)
        elif isinstance(item, dict):
            found.append(Augment.from_table(item))
        elif isinstance(item, str):
            found += [Augment.parse(part) for part in item.split(";")]
        else:
            raise SpecError(f"augment: expected text such as 'flip,rotate=15' or a table, got {item!r}")
    return list(dict.fromkeys(found))


def _layer_problem(model: str, exc: ValidationError) -> str:
    """The most useful of a layers list's errors; an unknown key (with a suggestion) before the missing one."""
    errors = exc.errors()
    error = next((e for e in errors if e["type"] == "extra_forbidden"), errors[0])
    loc = error["loc"]
    if not loc:  # the list itself
        return _explain(f"{model} layers", error, "a non-empty list of layer tables")
    path, rest = [str(loc[0])], loc[1:]
    while len(rest) >= 3 and rest[1] == "layers" and isinstance(rest[2], int):  # into a Residual's layers
        path, rest = [*path, str(rest[2])], rest[3:]
    where = f"{model} layer {'.'.join(path)}"
    if error["type"] == "union_tag_invalid":
        return f"{where}: {unknown('layer type', error['ctx']['tag'], list(LAYER_CLASSES))}"
    if error["type"] == "union_tag_not_found":
        return f"{where} has no type; valid: type = one of {', '.join(LAYER_CLASSES)}"
    if len(rest) < 2:  # not a table
        return _explain(where, error, "a table such as " + LAYER_EXAMPLE)
    kind, key = rest[0], rest[1]
    if error["type"] == "extra_forbidden":
        valid = [name for name in LAYER_CLASSES[kind].model_fields if name != "type"]
        return f"{where} ({kind}): unknown key {key!r}{did_you_mean(key, valid)}; valid: {', '.join(valid) or 'none'}"
    return _explain(f"{where} ({kind}) {key}", error)


def validate(sweep: Sweep, backend_names: list[str], where: Mapping[str, str]) -> None:
    """What no single value can say: every requested execution mode exists in a selected backend."""
    offered = {backend: backends.REGISTRY[backend].modes for backend in backend_names}
    valid = ["default", "best", *dict.fromkeys(m for modes in offered.values() for m in modes)]
    for mode in sweep.modes:
        if mode not in valid:
            raise BenchError(
                f"{where.get('modes', '--modes')} {mode!r}: no selected backend ({', '.join(backend_names)}) has this "
                f"execution mode{did_you_mean(mode, valid)}; valid: {', '.join(valid)}")


def check_batches(sweep: Sweep, n_train: int, where: Mapping[str, str]) -> None:
    """Every batch size fits the training samples left after the validation split (else no step runs)."""
    for size in sweep.batch_sizes:
        if size != "full" and size > n_train:
            source = f"{where['train_size']} {sweep.train_size}" if sweep.train_size is not None else sweep.dataset
            raise BenchError(
                f"{where.get('batch_sizes', '--batch-size')} {size}: larger than the {n_train} training samples "
                f"({source} less the {sweep.val_split:g} validation split); valid: a batch size up to {n_train}, "
                "or more training samples")


SPLITS = ("train", "val", "test")


def split_sources(sweep: Sweep, model: str) -> tuple[str, str, str]:
    """Where the train, validation and test sizes of ``model``'s cells came from, in words."""
    own = sweep.model_sizes.get(model, {})

    def origin(key: str) -> str:
        return sweep.size_sources.get(key, f"default {key}")

    def per_model(split: str) -> str:
        return f"{origin('model_sizes')} ({model}: {own[split]} rows)"

    train = (per_model("train") if "train" in own else
             f"{origin('train_size')} ({sweep.train_size} rows before the validation split)" if sweep.train_size
             else "the dataset's whole training split")
    val = per_model("val") if "val" in own else f"{origin('val_split')} ({sweep.val_split:g} of the training rows)"
    test = (per_model("test") if "test" in own else
            f"{origin('test_size')} ({sweep.test_size} rows)" if sweep.test_size else "the dataset's whole test split")
    return train, val, test


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


def cells(sweep: Sweep, backend_names: list[str], models: list[str], n_train: int, on_gpu: bool = False) -> list[Cell]:
    """Every combination of the axes' values (bench.spec.cell.AXES: the product nests in their order),
    grouped by backend (one worker each) and repeat-major within a backend, so a stopped run has whole
    repeats of the sweep rather than many repeats of a few cells. The backend, model and mode axes
    take one backend at a time, the ``models`` that fit the data and that backend's modes (``best``
    expanded); a ``full`` batch is the model's training rows.

    ``on_gpu``: the run may use a GPU, so ``best`` includes GPU-only modes (CUDA graphs)."""
    specs = sweep.model_specs()
    plan = WindowPlan(sweep.min_window, sweep.max_windows, sweep.window_budget)
    grid = []
    for backend, repeat in itertools.product(backend_names, range(sweep.repeats)):
        lists = {axis.field: _listed(getattr(sweep, axis.sweep)) for axis in AXES} | {
            "backend": [backend], "model": models, "mode": backends.expand_modes(backend, sweep.modes, on_gpu)}
        for combination in itertools.product(*lists.values()):
            point = dict(zip(lists, combination))
            sizes = sweep.model_sizes.get(point["model"], {})
            if point["batch_size"] == "full":
                point["batch_size"] = min(n_train, sizes.get("train", n_train))
            train = TrainSpec(seed=sweep.seed + repeat, **{axis.sets: point[axis.field] for axis in AXES if axis.sets})
            grid.append(Cell(backend, specs[point["model"]], train, point["dataset"], repeat, sweep.target_accuracy,
                             sweep.probe_steps, plan, tuple(sizes.get(split) for split in SPLITS),
                             split_sources(sweep, point["model"]), point["model"] in sweep.throughput_only))
    return grid


def _listed(value: object) -> list:
    """A Sweep field's values as a list: an axis the sweep holds one value of (epochs, dataset) is one long."""
    return value if isinstance(value, list) else [value]

"""The result record: the one declaration of every field a line of ``results.jsonl`` may hold.

Every writer (the harness, the executor's failure and skip paths, the CLI's refused models) builds
its records here, so a field is named, typed and described once; ``reports/`` derives its columns
from the same declaration. Records carry ``schema_version`` (like asv's ``api_version``), and
bench/results/upgrades.py, beside this schema, turns a stored record of any earlier version into a
current one, so no reader knows history. Writing is strict (an undeclared field is a bug in the
writer); reading is tolerant (old records miss fields, which read as None; fields this version does
not know, such as a record's hand-added notes, are kept as extras).

To add a field: declare it below with a type and a one-line description, set it where the value is
measured, and bump ``SCHEMA_VERSION`` only when an existing field changes meaning or type (adding
an optional field keeps old records valid, so it needs no bump; where its absence in older records
means a value, say so in upgrades.py's ``ABSENT_MEANS``). A bump also adds the step from the old
version to upgrades.py's ``STEPS``. A metric the reports show also gets one row in ``reports/metrics.py``.
"""

from __future__ import annotations

import types
import typing
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from bench.spec.cell import Cell
from bench.spec.model import LOSSES, OPTIMIZERS, PRECISIONS

SCHEMA_VERSION = 2
"""Version written into every new record (bench/results/upgrades.py reads the older ones)."""


class Status(StrEnum):
    """How a cell's repeat ended: the one declaration of the statuses and of what each one means.

    ``final``: the cell is done, so a resume keeps its record and does not run it again (failed and
    timed-out cells are tried again). ``problem``: the reports list it among the cells that did not
    finish well. ``trained``: training ran (to the end, or until it diverged), so the record holds
    the mode that ran and its curves. Members are ``str``, so results.jsonl and the reports' frames
    hold the plain values ("ok", ...) and compare equal to them.
    """

    #           value       final  problem  trained
    OK =        "ok",       True,  False,   True
    SKIPPED =   "skipped",  True,  True,    False
    FAILED =    "failed",   False, True,    False
    DIVERGED =  "diverged", True,  True,    True
    TIMEOUT =   "timeout",  False, True,    False

    def __new__(cls, value: str, final: bool, problem: bool, trained: bool) -> Status:
        member = str.__new__(cls, value)
        member._value_ = value
        member.final, member.problem, member.trained = final, problem, trained
        return member


WRITE_REQUIRED = ("cell_id", "repeat", "backend", "status")
"""Fields no new record may lack: they say which cell a record is about and how it ended."""


def _field(description: str, **extra: Any) -> Any:
    return Field(default=None, description=description, json_schema_extra=extra or None)


def _curve(description: str) -> Any:
    return _field(description, per_epoch=True)


class ResultRecord(BaseModel):
    """One cell and repeat of a run: its configuration, where it ran, how it ended and what it measured."""

    model_config = ConfigDict(extra="allow")

    schema_version: int = Field(default=SCHEMA_VERSION,
                                description="Version of this schema the record was written with (absent: 1)")

    # identity and outcome
    run_id: str | None = _field("Name of the run (its folder's name)")
    cell_id: str | None = _field("The cell: backend, model and training axes joined by '|' (bench/spec/cell.py Cell.cell_id)")
    repeat: int | None = _field("Repeat index; repeat r trains from seed + r")
    status: Status | None = _field("How the cell ended (Status); reason says why it was skipped, diverged or timed "
                                   "out, error why it failed")
    reason: str | None = _field("Why the cell was skipped, diverged or timed out")
    error: str | None = _field("The exception that failed the cell, as 'Type: message'")
    traceback: str | None = _field("Full traceback of a failed cell")
    code_hash: str | None = _field("Hash of the measuring code that ran the cell (bench/run/code_identity.py); "
                                   "a resume refuses other code")
    code_commit: str | None = _field("Git commit of the suite's checkout, '-dirty' when its tree had uncommitted "
                                     "or untracked changes (None outside a checkout)")

    # configuration (bench/spec/cell.py: Cell.config, from AXES)
    backend: str | None = _field("Suite backend name: torch, tf, jax, keras-jax, keras-torch or numpy")
    framework: str | None = _field("Framework and version the backend ran, e.g. 'torch 2.13.0'")
    engine: str | None = _field("The framework whose kernels ran the maths (torch, tensorflow, jax, numpy): "
                                "a wrapper and its engine's own adapter name the same one")
    wrapper: str | None = _field("The library between the spec and the engine ('keras' for Keras 3 on any "
                                 "engine); None where the backend is the framework's own API")
    model: str | None = _field("Model spec name")
    optimizer: str | None = _field(f"Optimizer: {', '.join(OPTIMIZERS)}")
    activation: str | None = _field("Hidden activation of the model")
    loss: str | None = _field(f"Loss name: {', '.join(LOSSES)}")
    batch_size: int | None = _field("Samples per training step")
    epochs: int | None = _field("Timed training epochs")
    learning_rate: float | None = _field("Learning rate actually used")
    seed: int | None = _field("Seed of the weights and batch order (already offset by the repeat)")
    precision: str | None = _field(f"Precision: {', '.join(PRECISIONS)}")
    requested_mode: str | None = _field("Execution mode asked for ('default' or a backend mode)")
    mode: str | None = _field("Execution mode the backend ran (eager, compiled, graph, jit, ...)")
    momentum: float | None = _field("SGD momentum (PyTorch form); 0 unless the optimizer is momentum")
    rho: float | None = _field("RMSprop decay")
    beta1: float | None = _field("Adam first-moment decay")
    beta2: float | None = _field("Adam second-moment decay")
    epsilon: float | None = _field("Optimizer epsilon passed to every framework")
    weight_decay: float | None = _field("Decoupled weight decay")
    schedule: str | None = _field("Learning-rate schedule: constant or warmup_cosine (bench/spec/schedule.py)")
    warmup_fraction: float | None = _field("Share of the steps the warmup_cosine schedule warms up over (0 for constant)")
    bn_momentum: float | None = _field("BatchNorm momentum, Keras sense (weight of the old statistic)")
    bn_epsilon: float | None = _field("BatchNorm epsilon")
    leaky_relu_slope: float | None = _field("Negative slope of leaky ReLU")
    target_accuracy: float | None = _field("Validation accuracy that time_to_target_seconds waits for")

    # data (bench/spec/data.py Dataset.describe)
    dataset: str | None = _field("Dataset name")
    input_shape: list[int] | None = _field("Shape of one sample, channels last")
    num_classes: int | None = _field("Number of classes")
    n_train: int | None = _field("Training samples")
    n_val: int | None = _field("Validation samples (held out of the training split)")
    n_test: int | None = _field("Test samples")
    data_source: str | None = _field("Where the data came from (bundled file, folder, generator)")
    split_sources: dict[str, str] | None = _field(
        "Where the train, val and test sizes came from: the profile, a config key or a flag (bench/run/grid.py)")
    throughput_only: bool | None = _field(
        "Measured for speed only (a profile's slice too small for an accuracy): reports show no accuracy for it")

    # where it ran (bench/run/executors/local.py worker facts)
    threads: int | None = _field("Intra-op threads the suite gave every backend")
    cpu_set: list[int] | None = _field("CPU cores the worker was pinned to")
    device: str | None = _field("Device the backend ran on, as the framework names it")
    device_kind: str | None = _field("cpu or gpu: where the cell ran (backends/device.py; the NumPy reference: cpu only)")
    device_environment: dict[str, str] | None = _field(
        "What the worker's environment was given before its framework loaded: the one visible GPU "
        "(CUDA_VISIBLE_DEVICES), TF memory growth, JAX preallocation off (backends/device.py environment)")
    fresh_worker_per_cell: bool | None = _field(
        "The cell ran in a worker started for it alone: on a GPU, for a framework that cannot reset its "
        "peak-memory reading (JAX)")
    backend_threads: dict[str, int | str] | None = _field("Thread pools as the framework reports them")
    framework_versions: dict[str, str] | None = _field("Versions of the framework's packages in the worker")
    worker_pid: int | None = _field("Process id of the worker that ran the cell")
    host: str | None = _field("Host name of the machine the worker ran on (a Ray cluster has several)")
    niceness: int | None = _field("The worker's scheduling niceness (0 normal; a deprioritised worker measures less)")
    rules: dict[str, str] | None = _field("The framework rules the backend follows (bench/spec/rules.py: one fixed key set)")
    mode_description: str | None = _field("What the execution mode runs (tf.function, jax.jit, ...)")

    # model cost (bench/spec/shapes.py, bench/spec/cost.py)
    param_count: int | None = _field("Trainable and non-trainable parameters")
    flops_per_sample_forward: int | None = _field("FLOPs of one forward pass of one sample")
    flops_per_sample_train: int | None = _field("FLOPs of one training step per sample (forward + backward)")

    # warm-up and step times (bench/measure/harness.py)
    started_at: str | None = _field("UTC time the cell started, ISO 8601")
    timing_method: str | None = _field("How the training clock was read")
    first_step_seconds: float | None = _field("The first training step alone, synchronised (tracing, compilation)")
    warmup_seconds: float | None = _field("Seconds of warm-up: the first step alone (older records: plus the "
                                          "step-time probe, which now runs after the throughput windows)")
    step_time_ms_p50: float | None = _field("Median of individually synchronised steps, ms (None: fewer than "
                                            "bench/results/stats.py MIN_STEP_SAMPLES steps)")
    step_time_ms_p90: float | None = _field("90th percentile step time, ms (same rule)")
    step_time_ms_p99: float | None = _field("99th percentile step time, ms (same rule)")
    step_time_samples: int | None = _field("Individually synchronised steps the percentiles come from (they need "
                                           "MIN_STEP_SAMPLES; 0 when the probe would not fit the window budget)")
    step_time_source: str | None = _field("Which steps were timed: the accuracy epochs' own (a backend whose steps "
                                          "are synchronous) or the probe's, each with its own synchronisation")
    compile_seconds: float | None = _field("First step minus a mean steady-state step: the compile cost")
    warm_first_step_seconds: float | None = _field("Under --compile-cache cold: the first step again, its compiled code "
                                                   "loaded from the persistent cache the cold compile filled")
    warm_compile_seconds: float | None = _field("warm_first_step_seconds minus a steady-state step: the warm compile cost")

    # steady-state training
    epoch_train_loss: list[float | None] | None = _curve("Mean training loss of each epoch")
    epoch_val_loss: list[float | None] | None = _curve("Validation loss after each epoch")
    epoch_val_accuracy: list[float | None] | None = _curve("Validation accuracy after each epoch")
    epoch_seconds: list[float | None] | None = _curve("Wall seconds of each timed epoch")
    final_train_loss: float | None = _field("Mean training loss of the last epoch")
    val_accuracy: float | None = _field("Validation accuracy after the last epoch")
    train_seconds: float | None = _field("Wall seconds of all timed epochs")
    train_samples_per_s: float | None = _field("Training throughput over the timed epochs")
    cpu_seconds_per_sample: float | None = _field("CPU seconds of the worker's work per training sample over the "
                                                  "throughput windows' epochs only (no validation, no RSS sampler)")
    time_to_target_seconds: float | None = _field("Training seconds until validation accuracy reached the target")
    device_seconds: float | None = _field("Device (GPU) time of the timed epochs (None on the CPU: device_time_method says why)")
    device_time_method: str | None = _field("How device time was measured, or why there is none ('not recorded' in "
                                            "records written before every backend said)")
    achieved_gflops: float | None = _field("Training FLOP rate, GFLOP/s")
    peak_fraction: float | None = _field("achieved_gflops over peak_gflops: the matmul peak of the cell's own device "
                                         "and precision")
    peak_gflops: float | None = _field("The matmul peak peak_fraction divides by: on a GPU the engine's at the cell's "
                                       "precision, measured once per run; on the CPU the NumPy fp32 peak")
    peak_method: str | None = _field("How peak_gflops was measured")

    # evaluation and memory
    test_loss: float | None = _field("Loss on the test split")
    test_accuracy: float | None = _field("Accuracy on the test split")
    inference_samples_per_s: float | None = _field("Prediction throughput on the test split: the median of the "
                                                   "inference windows")
    inference_window_seconds: float | None = _field("Length of the shortest kept inference window (>= the minimum)")
    inference_window_samples_per_s: list[float] | None = _field("Samples/s of each kept inference window")
    inference_window_passes: int | None = _field("Whole prediction passes over the test split in one inference window")
    inference_remeasured: int | None = _field("Inference windows measured again because other load disturbed them")
    inference_batch_size: int | None = _field("Rows per prediction batch (the test split's size when smaller)")
    peak_rss_bytes: int | None = _field("Peak resident memory of the worker while training")
    peak_device_bytes: int | None = _field("Peak device memory while training (None on the CPU: "
                                           "device_memory_method says why); host memory is peak_rss_bytes")
    memory_method: str | None = _field("How host and device memory were measured")
    device_memory_method: str | None = _field("How peak_device_bytes was read and over what span, or why there is "
                                              "none ('not recorded' in records written before every backend said)")
    duration_seconds: float | None = _field("Wall seconds the whole cell took, set-up to evaluation")
    # measurement windows, load and phases (bench/measure/throughput.py, bench/measure/load.py, bench/results/phases.py)
    min_window_seconds: float | None = _field("The shortest throughput window asked for (--min-window)")
    window_budget_seconds: float | None = _field("Seconds a cell may spend on extra throughput windows (--window-budget)")
    throughput_window_seconds: float | None = _field("Length of the shortest kept throughput window (>= the minimum)")
    throughput_window_epochs: int | None = _field("Whole epochs in one throughput window")
    throughput_windows: int | None = _field("How many windows the throughput median is taken over")
    throughput_window_samples_per_s: list[float] | None = _field("Samples/s of each kept window")
    throughput_spread: float | None = _field("(max - min) / median of the windows' samples/s")
    throughput_remeasured: int | None = _field("Windows measured again because other load disturbed them")
    noisy: bool | None = _field("True when a window stayed disturbed by other load after re-measuring")
    noise_reason: str | None = _field("The figure that tripped the noise check (foreign CPU, steal, load)")
    foreign_cpu_cores: float | None = _field("Other processes' CPU time over the worst window, in cores (the noise check's unit)")
    foreign_cpu_fraction: float | None = _field("Other processes' CPU time over the worst window, per core of the set")
    steal_fraction: float | None = _field("CPU steal over the worst window, where the kernel reports it")
    load_average: float | None = _field("1-minute load average after the last window")
    time_build_seconds: float | None = _field("Seconds building the model and loading weights and data")
    time_compile_seconds: float | None = _field("Seconds of warm-up: the first (compiling) step")
    time_train_seconds: float | None = _field("Seconds of the accuracy epochs")
    time_eval_seconds: float | None = _field("Seconds of validation, test evaluation and inference throughput")
    time_window_seconds: float | None = _field("Seconds of extra epochs timed only for throughput, and of the step-time probe")
    compile_cache: str | None = _field("Where the cell's compiled code came from: off (no persistent cache), cold "
                                       "(compiled here), warm (all loaded from the persistent cache); None: nothing compiled")
    compile_cache_policy: str | None = _field("The run's --compile-cache: cold (caches emptied before each cell), warm "
                                              "(kept across cells and runs) or off (persistent caches disabled)")
    graphs: int | None = _field("Graphs the compiler captured for the compiled training step (torch: dynamo's "
                                "unique graphs; None where the mode compiles nothing)")
    graph_breaks: int | None = _field("Graph breaks inside the compiled training step (0: one graph)")
    graph_break_reasons: list[str] | None = _field("Why each graph break happened, as the compiler says it")
    cudagraphs: str | None = _field("torch compiled-cudagraphs: 'used', or 'skipped: ' and inductor's reason "
                                    "(None in every other mode and on the CPU)")
    converged: bool | None = _field("False when the training budget was too short to converge (bench/measure/harness.py)")
    convergence_note: str | None = _field("Why a cell counts as not converged")
    worker_setup_seconds: float | None = _field("Seconds the worker took to import and set up its framework")
    semantics_policy: str | None = _field("harmonised (the suite's values, canonical weights) or native (the framework's own defaults)")
    init: str | None = _field("How the initial weights were drawn (canonical NumPy glorot, or the framework's own initialisers)")
    init_source: str | None = _field("canonical (loaded by the suite) or framework (drawn by the framework itself)")
    bn_momentum_framework: float | None = _field("BatchNorm momentum as passed to the framework, in its own sense")
    augment: str | None = _field("The augmentation's canonical label ('none' for plain cells; bench/spec/augment.py)")
    augment_interpolation: str | None = _field("Interpolation of rotate and zoom (None when not augmenting)")
    augment_fill: str | None = _field("Fill of pixels that come from outside the image (None when not augmenting)")
    augment_order: str | None = _field("The order the transforms are applied in and their clipping rules")
    model_path: str | None = _field("Folder of the saved model (native and neutral files), relative to the run folder")

    @classmethod
    def build(cls, **fields: Any) -> ResultRecord:
        """A new record at the current schema version; an undeclared or missing key field is a writer's bug."""
        record = cls.model_validate(fields | {"schema_version": SCHEMA_VERSION})
        if record.model_extra:
            raise TypeError(f"fields not in the record schema: {', '.join(sorted(record.model_extra))}; "
                            "declare them in bench/results/record.py")
        missing = [name for name in WRITE_REQUIRED if getattr(record, name) is None]
        if missing:
            raise TypeError(f"a result record needs {', '.join(missing)}")
        return record

    @classmethod
    def for_cell(cls, cell: Cell, **fields: Any) -> ResultRecord:
        """A record of ``cell``: its configuration, then ``fields`` (which win, e.g. the resolved mode)."""
        return cls.build(**(cell.config() | fields))

    @classmethod
    def refused(cls, backend: str, model: str, dataset: str, reason: str) -> ResultRecord:
        """The one record of a model left out of a sweep because it cannot fit the data."""
        return cls.build(cell_id=Cell.refused_id(backend, model), repeat=0, backend=backend, model=model,
                         dataset=dataset, status=Status.SKIPPED, reason=reason)

    def with_fields(self, **fields: Any) -> ResultRecord:
        """This record with more fields set (the worker's facts, the run id), validated again."""
        return type(self).build(**(self.to_json_dict() | fields))

    def to_json_dict(self) -> dict[str, Any]:
        """The fields its writer set (and the version), in schema order, as JSON-ready values."""
        return self.model_dump(mode="json", exclude_unset=True) | {"schema_version": self.schema_version}


def _kind(annotation: Any) -> str:
    """'text', 'number', 'flag' (True/False) or 'nested' (lists and dicts), from a field's type."""
    args = typing.get_args(annotation) if typing.get_origin(annotation) in (typing.Union, types.UnionType) else ()
    base = next((a for a in args if a is not type(None)), annotation)
    origin = typing.get_origin(base) or base
    if origin in (list, dict):
        return "nested"
    if origin is bool:
        return "flag"
    if origin in (int, float):
        return "number"
    if isinstance(origin, type) and issubclass(origin, str):  # str, and Status
        return "text"
    raise TypeError(f"record field type {annotation!r} is not text, a number, a list or a dict")


FIELDS: tuple[str, ...] = tuple(ResultRecord.model_fields)
"""Every declared field, in schema order."""
FIELD_KINDS: dict[str, str] = {name: _kind(info.annotation) for name, info in ResultRecord.model_fields.items()}
PER_EPOCH_FIELDS: tuple[str, ...] = tuple(
    name for name, info in ResultRecord.model_fields.items() if (info.json_schema_extra or {}).get("per_epoch")
)
"""Lists with one value per timed epoch (the training curves)."""

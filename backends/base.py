"""The adapter protocol and the bookkeeping every adapter shares, written once.

The harness drives a backend through the public methods here only, so a measurement means the same
thing on every framework. Arrays cross the boundary as NumPy in the canonical layouts of
``bench.spec.shapes`` (Dense kernel (in, out), Conv kernel HWIO, images NHWC, float32, integer labels).

The public methods are template methods (as Keras 3's ``backend/common``): they do the shared work
(device policy, mode and precision checks, weight-list validation, the pending-loss buffer, loss
and probabilities in NumPy) and call narrow hooks (``_setup``, ``_build``, ``_step``, ...) that an
adapter implements. An adapter also declares, as class data, its translation tables keyed by the
spec's vocabulary (``TRANSLATIONS``), its execution modes as its registry entry declares them
(``modes = REGISTRY[name].modes``, backends/__init__.py), the framework rules it follows (``RULES``),
and its own defaults for the ``native`` semantics policy (``NATIVE``, bench.spec.semantics). See
docs/architecture.md, "Adding a backend".

Lifecycle, per process: ``setup`` once (threads, device), then per cell ``build`` ->
``set_weights`` (or, under the native policy, ``initialise_natively``) -> ``load_data`` ->
steps/epochs -> ``evaluate``/``predict``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from backends import REGISTRY, Mode, compile_cache, device
from backends.device import DEVICES, DeviceOps, DeviceTimer, MemoryReading
from bench.spec.augment import Params, check_image_input
from bench.spec.losses import loss_value, probabilities
from bench.spec.model import ModelSpec
from bench.spec.rules import CANONICAL, Rules
from bench.spec.schedule import learning_rates, rate_at
from bench.spec.semantics import HARMONISED_INIT, Native
from bench.spec.shapes import ParamSpec, param_specs
from bench.spec.train import TrainSpec


class Unsupported(Exception):
    """This backend cannot run the requested configuration (mode, precision, device); the cell is skipped."""


class Untranslatable(LookupError):
    """A spec name this adapter has no translation for: a bug in the adapter, never silently substituted."""


@dataclass
class EpochResult:
    """Per-step training losses of one epoch and, where the device can time itself, its busy time."""

    losses: np.ndarray
    device_seconds: float | None = None


@dataclass
class BackendInfo:
    """Facts about the framework as configured in this process; stored with every result."""

    framework: str
    versions: dict[str, str]
    device: str
    threads: dict[str, int | str] = field(default_factory=dict)


class Backend(ABC):
    """One framework's implementation of the spec. Subclasses live in ``backends/<name>_backend.py``."""

    name: ClassVar[str]
    framework: ClassVar[str]
    modes: ClassVar[Mapping[str, Mode]]
    """Execution modes, read from the backend's registry entry (the one declaration); the first is the
    default ('default' in a TrainSpec). A GPU-only mode is refused as Unsupported on the CPU."""
    RULES: ClassVar[Rules] = CANONICAL
    """The formulas this framework follows where frameworks differ (bench.spec.rules)."""
    TRANSLATIONS: ClassVar[Mapping[str, Mapping[str, Any]]]
    """Per kind of spec name (layer, activation, loss, optimizer, augment): name -> this framework's version.

    An ``augment`` entry is ``(images, that transform's parameters, the Augment spec) -> images``, on
    the framework's tensors in the adapter's own image layout, following bench/spec/augment.py's reference.
    """
    NATIVE: ClassVar[Native | None] = None
    """This framework's own defaults (the native semantics policy); None: it has none (the NumPy oracle)."""

    PAD_EVAL_BATCHES: ClassVar[bool] = False
    """Pad the last partial batch of a multi-batch evaluation to the full batch size, so a compiled
    forward pass sees one shape per cell instead of compiling again for the remainder."""

    on_gpu: bool = False
    ops: DeviceOps | None = None
    """The framework's device as its runtime module reads it (backends/device.py), set by ``setup``;
    None for the NumPy reference, which has no device but the CPU."""
    _timer: DeviceTimer | None = None
    cache_policy: str = compile_cache.POLICIES[0]
    """The run's ``--compile-cache`` policy (backends/compile_cache.py), read at ``setup``."""
    train: TrainSpec
    model: ModelSpec
    specs: list[ParamSpec]

    # -- process ---------------------------------------------------------------------------------
    def setup(self, threads: int, device: str = "cpu") -> BackendInfo:
        """Configure threads and device once per process, before any framework op runs."""
        if device not in DEVICES:
            raise Unsupported(f"unknown device {device!r}; valid: {', '.join(DEVICES)}")
        visible = self._gpu_visible()
        if device == "gpu" and not visible:
            raise Unsupported(f"device 'gpu' requested but {self.framework} sees no GPU")
        self.on_gpu = device != "cpu" and visible
        self.cache_policy = compile_cache.policy()
        info = self._setup(threads)
        self.ops = self._device_ops()
        self._timer = self.ops.timer(self.synchronize) if self.on_gpu and self.ops is not None else None
        return info

    def _gpu_visible(self) -> bool:
        """Whether the framework sees a GPU, asked without starting its runtime."""
        return False

    def _device_ops(self) -> DeviceOps | None:
        """The runtime module's ``Ops`` for ``self.on_gpu`` (called once ``_setup`` has configured the device)."""
        return None

    @abstractmethod
    def _setup(self, threads: int) -> BackendInfo:
        """Apply the thread count and ``self.on_gpu``; report what is in force."""

    # -- model -----------------------------------------------------------------------------------
    def build(self, model: ModelSpec, train: TrainSpec, input_shape: tuple[int, ...], num_classes: int) -> None:
        """Translate a model (its ``hidden`` placeholder resolved) and its training spec.

        Under ``train.semantics == "native"`` the backend trains ``native_train(train)``: its
        framework's values replace the suite's (``self.train`` is what it runs). Raises Unsupported
        for a mode, precision or policy this backend or device cannot run, and Untranslatable for a
        spec name the adapter's tables lack.
        """
        self.mode = self.resolve_mode(train.mode)
        if self.modes[self.mode].gpu_only and not self.on_gpu:
            raise Unsupported(f"{self.name} mode {self.mode!r} needs a CUDA GPU; this run is on the CPU")
        if train.precision == "tf32" and not self.on_gpu:
            raise Unsupported("tf32 needs an NVIDIA GPU")
        train = self.native_train(train) if train.semantics == "native" else train
        self.train, self.model = train, model.resolve(train.activation)
        if self.native:
            self.model = self.NATIVE.model(self.model)  # the framework's layer defaults where the spec leaves them
        self.input_shape, self.num_classes = tuple(input_shape), num_classes
        self.specs = param_specs(self.model, self.input_shape, num_classes)
        check_image_input(train.augment, self.input_shape)
        self._augmentations: list[tuple[str, Callable]] = [(n, self.translate("augment", n)) for n in train.augment.names]
        self._data_placed = False
        self._build()
        self.reset_optimizer()

    @abstractmethod
    def _build(self) -> None:
        """Build the framework model and optimizer from ``self.model``, ``self.train``, ``self.specs``."""

    @classmethod
    def translate(cls, kind: str, name: str) -> Any:
        """This adapter's translation of a spec name; Untranslatable (naming the valid ones) if absent."""
        table = cls.TRANSLATIONS.get(kind, {})
        if name not in table:
            raise Untranslatable(f"the {cls.name} backend has no translation for {kind} {name!r}; "
                                 f"it translates: {', '.join(table) or 'nothing'}")
        return table[name]

    @classmethod
    def resolve_mode(cls, mode: str) -> str:
        """The concrete execution mode for a requested one ('default' means this backend's first)."""
        if mode == "default":
            return next(iter(cls.modes))
        if mode not in cls.modes:
            raise Unsupported(f"{cls.name} has no execution mode {mode!r}; valid: {', '.join(cls.modes)}")
        return mode

    def native_train(self, train: TrainSpec) -> TrainSpec:
        """``train`` with this framework's own defaults where frameworks differ (the native policy).

        Everything else (data, batches, model, learning rate, epochs, mode) stays the sweep's.
        """
        if self.NATIVE is None:
            raise Unsupported(f"{self.name} has no framework defaults of its own: it runs the harmonised policy only")
        return train.model_copy(update={**self.NATIVE.overrides, "semantics": "native"})

    def initialise_natively(self) -> list[np.ndarray]:
        """Redraw the built model's parameters with the framework's own default initialisers, seeded
        by the train seed as a user would seed them; returns them in canonical order and layouts.

        The native policy starts here instead of from the canonical weights, and undoes its warm-up
        by loading the returned arrays back.
        """
        self._initialise_natively()
        return self.get_weights()

    def _initialise_natively(self) -> None:
        """Draw the framework's default initial parameters and statistics (seeded by ``self.train.seed``)."""
        raise Unsupported(f"{self.name} has no initialisers of its own: it starts from the canonical weights only")

    def set_weights(self, weights: list[np.ndarray]) -> None:
        """Load canonical weights (order and layouts of ``bench.spec.shapes.param_specs``)."""
        if len(weights) != len(self.specs):
            raise ValueError(f"expected {len(self.specs)} canonical arrays, got {len(weights)}")
        for p, w in zip(self.specs, weights):
            if tuple(np.shape(w)) != p.shape:
                raise ValueError(f"weight {p.key} has shape {tuple(np.shape(w))}, expected {p.shape}")
        self._set_weights([np.asarray(w, dtype=np.float32) for w in weights])

    @abstractmethod
    def _set_weights(self, weights: list[np.ndarray]) -> None:
        """Load validated float32 canonical arrays into the framework's parameters and statistics."""

    @abstractmethod
    def get_weights(self) -> list[np.ndarray]:
        """Current weights, canonical order and layouts, BatchNorm running statistics included."""

    def reset_optimizer(self) -> None:
        """Fresh optimizer state (step count 0), reusing compiled code: warm-up must not leak into training.

        The losses of steps not yet read back belong to the training this undoes, so they are dropped
        with it. This is the one place the pending-loss buffer is discarded (``finish_epoch`` empties
        it by reading it); ``build`` and ``load_native`` end here, so a new build, a reset and a reload
        never report an earlier run's losses, and no adapter touches the buffer.
        """
        self._pending: list[Any] = []
        self._steps_taken = 0
        self._reset_optimizer()

    @abstractmethod
    def _reset_optimizer(self) -> None:
        """Put the framework's optimizer state back to a fresh one's (in place where that keeps compiled code)."""

    # -- training --------------------------------------------------------------------------------
    def load_data(self, x: np.ndarray, y: np.ndarray) -> None:
        """Place the training arrays where the steps read them (once per build, off the clock), and
        compute the rate of every step of the train spec's schedule over them (bench/spec/schedule.py)."""
        self._place_data(x, y)
        self._data_placed = True
        self.learning_rates = learning_rates(self.train, len(x) // self.train.batch_size)

    @abstractmethod
    def _place_data(self, x: np.ndarray, y: np.ndarray) -> None:
        """The training arrays on the device, as this framework's steps read them."""

    def train_step(self, batch: np.ndarray, augment: Params | None = None) -> None:
        """One optimizer step on rows ``batch`` of the loaded data, in training mode.

        ``augment`` is this step's augmentation parameters (bench/spec/augment.py), required exactly when
        the train spec augments; the step transforms its images with them on the device, inside the
        step. May return before the device finishes (asynchronous dispatch); the loss stays on the
        device until ``finish_epoch``.
        """
        if not self._data_placed:
            raise RuntimeError("load_data() must run after build() and before train_step()")
        if (augment is None) == bool(self._augmentations):
            raise ValueError(f"train_step needs augmentation parameters exactly when the train spec augments "
                             f"(augment={self.train.augment.label!r}, parameters {'missing' if augment is None else 'given'})")
        self.step_lr = rate_at(self.learning_rates, self._steps_taken)
        self._pending.append(self._step(np.asarray(batch), augment))
        self._steps_taken += 1

    step_lr: float
    """The learning rate of the step being dispatched, from the schedule (``learning_rates``, counted from
    the last ``reset_optimizer``): every adapter feeds its optimizer this value, never a scheduler of its own."""

    @abstractmethod
    def _step(self, batch: np.ndarray, augment: Params | None) -> Any:
        """Dispatch one step (augmenting its images with ``augment`` when given) at rate ``self.step_lr``;
        return its loss as the framework holds it (not read back)."""

    def _augment(self, x: Any, params: Mapping[str, Any]) -> Any:
        """The train spec's transforms, in order, through this adapter's ``augment`` table.

        Plain Python over framework tensors: it runs inside an eager torch step, a tf.function trace
        or a jax.jit trace alike, so each framework applies the transforms natively on its device.
        """
        for name, transform in self._augmentations:
            x = transform(x, params[name], self.train.augment)
        return x

    def augmented(self, x: np.ndarray, params: Params) -> np.ndarray:
        """Images ``x`` (float32 NHWC) augmented as a training step would with ``params``, back in NumPy:
        what tests hold against bench/spec/augment.py's reference."""
        if not self._augmentations:
            raise ValueError("the train spec has no augmentation")
        return np.asarray(self._augmented(np.asarray(x, np.float32), params), dtype=np.float32)

    @abstractmethod
    def _augmented(self, x: np.ndarray, params: Params) -> Any:
        """``_augment`` on ``x`` as the training step runs it (same compilation mode), as an array."""

    def begin_epoch(self) -> None:
        """Before the first step of a timed epoch: start the device clock (on a GPU)."""
        if self._timer is not None:
            self._timer.start()

    def finish_epoch(self) -> EpochResult:
        """Wait for every pending step and return the per-step losses since the last call."""
        device_seconds = self._epoch_device_seconds()
        self.synchronize()
        losses = self._read_losses(self._pending) if self._pending else np.zeros(0)
        self._pending = []
        return EpochResult(np.asarray(losses, dtype=np.float64).reshape(-1), device_seconds)

    def _epoch_device_seconds(self) -> float | None:
        """Device time since ``begin_epoch`` (None on the CPU, and for steps timed without ``begin_epoch``)."""
        return self._timer.stop() if self._timer is not None else None

    def device_time_method(self) -> str:
        """How ``device_seconds`` is measured, or why it is null (docs/architecture.md, "Devices")."""
        if self._timer is not None:
            return self._timer.method
        return device.CPU_ONLY if self.ops is None else device.CPU_DEVICE_TIME

    @abstractmethod
    def _read_losses(self, pending: list[Any]) -> np.ndarray:
        """The pending losses as one NumPy array (the epoch's one read-back)."""

    @property
    def synchronous_steps(self) -> bool:
        """Whether ``train_step`` returns only once its work is done (no asynchronous dispatch), so the
        clock read as each step returns times that step: the harness then takes step-time percentiles
        from the accuracy epochs instead of a probe. False unless an adapter knows its framework is."""
        return False

    def synchronize(self) -> None:
        """Block until all dispatched work (losses and parameters) is done."""
        self._synchronize(self._pending)

    @abstractmethod
    def _synchronize(self, pending: list[Any]) -> None:
        """Wait for the dispatched steps: their parameters and the ``pending`` losses not yet read back
        (handed over as to ``_read_losses``, for a framework whose loss may finish after the update)."""

    # -- inference -------------------------------------------------------------------------------
    @abstractmethod
    def logits(self, x: np.ndarray) -> np.ndarray:
        """Eval-mode logits for one batch."""

    def pads_eval_batches(self) -> bool:
        """Whether ``evaluate`` and ``predict`` pad a last partial batch (``PAD_EVAL_BATCHES``, or a mode's need)."""
        return self.PAD_EVAL_BATCHES

    def _all_logits(self, x: np.ndarray, batch_size: int) -> np.ndarray:
        outs = []
        pad = self.pads_eval_batches()
        for i in range(0, len(x), batch_size):
            chunk = x[i : i + batch_size]
            rows = len(chunk)
            if pad and i and rows < batch_size:  # eval mode: padding rows change no real row
                chunk = np.concatenate([chunk, np.zeros((batch_size - rows, *chunk.shape[1:]), chunk.dtype)])
            outs.append(self.logits(chunk)[:rows])
        return np.concatenate(outs)

    def predict(self, x: np.ndarray, batch_size: int) -> np.ndarray:
        """Eval-mode class probabilities (softmax of the logits; sigmoid for the bce loss)."""
        return probabilities(self._all_logits(x, batch_size), self.train.loss)

    def evaluate(self, x: np.ndarray, y: np.ndarray, batch_size: int) -> tuple[float, float]:
        """Eval-mode mean loss and accuracy over the whole array."""
        out = self._all_logits(x, batch_size)
        return loss_value(out, y, self.train.loss), float(np.mean(out.argmax(axis=1) == y))

    @abstractmethod
    def loss_and_gradients(self, x: np.ndarray, y: np.ndarray) -> tuple[float, list[np.ndarray]]:
        """Training-mode loss and gradients of the trainable parameters (canonical order and layouts).

        Must leave the model's state (BatchNorm statistics, optimizer) unchanged: parity calls it.
        """

    # -- measurement and artifacts ---------------------------------------------------------------
    def reset_peak_memory(self) -> None:
        """Start a new peak-device-memory window (on the CPU, and on JAX which cannot reset, nothing)."""
        if self.on_gpu and self.ops is not None:
            self.ops.reset_peak_memory()

    def peak_memory(self) -> MemoryReading:
        """Peak device memory since ``reset_peak_memory``, and how it was read; None with the reason on the CPU."""
        if self.on_gpu and self.ops is not None:
            return self.ops.peak_memory()
        return MemoryReading(None, device.CPU_ONLY if self.ops is None else device.CPU_DEVICE_MEMORY)

    @property
    def fresh_worker_per_cell(self) -> bool:
        """Whether each cell needs a worker of its own: on a GPU, where the framework cannot reset its
        peak-memory reading (JAX), a fresh process is what makes the reading one cell's."""
        return self.on_gpu and self.ops is not None and not self.ops.PEAK_RESETS

    @abstractmethod
    def save_native(self, directory: Path) -> Path:
        """Write the current model in the framework's own format, for that framework's users; returns
        the file. No pickle. The neutral format every backend reads is ``bench.models.saved``."""

    def load_native(self, path: Path) -> None:
        """Read a file written by ``save_native`` into this backend's model, built with the same spec,
        and start a fresh optimizer (``reset_optimizer``): the loaded weights are where training restarts.

        Never unpickles (torch loads with ``weights_only=True``).
        """
        self._load_native(path)
        self.reset_optimizer()

    @abstractmethod
    def _load_native(self, path: Path) -> None:
        """Load the file's weights (and statistics) into the built model's parameters."""

    @property
    def native(self) -> bool:
        """Whether the built model runs the native semantics policy."""
        return getattr(self, "train", None) is not None and self.train.semantics == "native"

    def compile_cache(self) -> str | None:
        """Where the compiled code since the last build came from: 'off' (no persistent compilation
        cache), 'cold' (compiled here and stored in the cache) or 'warm' (all of it loaded from the
        cache); None when the mode compiles nothing."""
        return "off" if self.modes[self.mode].compiles else None

    def forget_compiled(self, disk: bool) -> None:
        """Drop the compiled code this process holds, and with ``disk`` empty the persistent caches
        too, so the next build compiles from nothing (``--compile-cache cold``; backends/compile_cache.py)."""

    def compiled_graphs(self) -> dict[str, Any]:
        """What the compiler captured of the training step since the last build (``graphs``,
        ``graph_breaks``, ``graph_break_reasons``); empty where the framework does not say."""
        return {}

    def rules(self) -> Rules:
        """The framework rules of the built model (bench.spec.rules), read by parity and the report."""
        return self.NATIVE.rules if self.native else self.RULES

    def bn_momentum_parameter(self, bn_momentum: float) -> float:
        """The spec's BatchNorm momentum (weight of the old statistic) as this framework's own argument."""
        return bn_momentum

    def facts(self) -> dict[str, Any]:
        """What a record says this backend ran: its engine and wrapper (from its registry entry), its
        typed rules, the execution mode's meaning, the semantics policy and what it changed (initial
        weights, BatchNorm momentum as passed)."""
        entry = REGISTRY[self.name]
        return {
            "engine": entry.engine, "wrapper": entry.wrapper,
            "rules": self.rules().as_dict(), "mode_description": self.modes[self.mode].description,
            "semantics_policy": self.train.semantics,
            "init": self.NATIVE.init if self.native else HARMONISED_INIT,
            "init_source": "framework" if self.native else "canonical",
            "bn_momentum_framework": self.bn_momentum_parameter(self.train.bn_momentum),
            "compile_cache_policy": self.cache_policy,
        }


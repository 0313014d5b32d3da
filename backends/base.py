"""The adapter protocol and the bookkeeping every adapter shares, written once.

The harness drives a backend through the public methods here only, so a measurement means the same
thing on every framework. Arrays cross the boundary as NumPy in the canonical layouts of
``bench.shapes`` (Dense kernel (in, out), Conv kernel HWIO, images NHWC, float32, integer labels).

The public methods are template methods (as Keras 3's ``backend/common``): they do the shared work
(device policy, mode and precision checks, weight-list validation, the pending-loss buffer, loss
and probabilities in NumPy) and call narrow hooks (``_setup``, ``_build``, ``_step``, ...) that an
adapter implements. An adapter also declares, as class data, its translation tables keyed by the
spec's vocabulary (``TRANSLATIONS``), its execution modes, and the framework rules it follows
(``RULES``). See docs/architecture.md, "Adding a backend".

Lifecycle, per process: ``setup`` once (threads, device), then per cell ``build`` ->
``set_weights`` -> ``load_data`` -> steps/epochs -> ``evaluate``/``predict``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from bench.losses import loss_value, probabilities
from bench.rules import CANONICAL, Rules
from bench.shapes import ParamSpec, param_specs
from bench.spec import ModelSpec, TrainSpec

DEVICES = ("cpu", "gpu", "auto")


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
class MemoryReading:
    """Peak device memory since the last reset, and how it was read (None on CPU-only runs)."""

    device_peak_bytes: int | None
    method: str


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
    modes: ClassVar[dict[str, str]]
    """Execution modes (name -> what it runs); the first is the default ('default' in a TrainSpec)."""
    RULES: ClassVar[Rules] = CANONICAL
    """The formulas this framework follows where frameworks differ (bench.rules)."""
    TRANSLATIONS: ClassVar[Mapping[str, Mapping[str, Any]]]
    """Per kind of spec name (layer, activation, loss, optimizer): name -> this framework's version."""

    PAD_EVAL_BATCHES: ClassVar[bool] = False
    """Pad the last partial batch of a multi-batch evaluation to the full batch size, so a compiled
    forward pass sees one shape per cell instead of compiling again for the remainder."""

    on_gpu: bool = False
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
        return self._setup(threads)

    def _gpu_visible(self) -> bool:
        """Whether the framework sees a GPU, asked without starting its runtime."""
        return False

    @abstractmethod
    def _setup(self, threads: int) -> BackendInfo:
        """Apply the thread count and ``self.on_gpu``; report what is in force."""

    # -- model -----------------------------------------------------------------------------------
    def build(self, model: ModelSpec, train: TrainSpec, input_shape: tuple[int, ...], num_classes: int) -> None:
        """Translate a model (its ``hidden`` placeholder resolved) and its training spec.

        Raises Unsupported for a mode or precision this backend or device cannot run, and
        Untranslatable for a spec name the adapter's tables lack.
        """
        self.mode = self.resolve_mode(train.mode)
        if train.precision == "tf32" and not self.on_gpu:
            raise Unsupported("tf32 needs an NVIDIA GPU")
        self.train, self.model = train, model.resolve(train.activation)
        self.input_shape, self.num_classes = tuple(input_shape), num_classes
        self.specs = param_specs(self.model, self.input_shape, num_classes)
        self._pending: list[Any] = []
        self._build()

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

    def set_weights(self, weights: list[np.ndarray]) -> None:
        """Load canonical weights (order and layouts of ``bench.shapes.param_specs``)."""
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

    @abstractmethod
    def reset_optimizer(self) -> None:
        """Fresh optimizer state (step count 0), reusing compiled code: warm-up must not leak into training."""

    # -- training --------------------------------------------------------------------------------
    @abstractmethod
    def load_data(self, x: np.ndarray, y: np.ndarray) -> None:
        """Place the training arrays where the steps read them (once, off the clock)."""

    def train_step(self, batch: np.ndarray) -> None:
        """One optimizer step on rows ``batch`` of the loaded data, in training mode.

        May return before the device finishes (asynchronous dispatch); the loss stays on the device
        until ``finish_epoch``.
        """
        self._pending.append(self._step(np.asarray(batch)))

    @abstractmethod
    def _step(self, batch: np.ndarray) -> Any:
        """Dispatch one step; return its loss as the framework holds it (not read back)."""

    def begin_epoch(self) -> None:
        """Hook before the first step of a timed epoch (start device timers)."""

    def finish_epoch(self) -> EpochResult:
        """Wait for every pending step and return the per-step losses since the last call."""
        device_seconds = self._epoch_device_seconds()
        self.synchronize()
        losses = self._read_losses(self._pending) if self._pending else np.zeros(0)
        self._pending = []
        return EpochResult(np.asarray(losses, dtype=np.float64).reshape(-1), device_seconds)

    def _epoch_device_seconds(self) -> float | None:
        """Device busy time since ``begin_epoch`` where the device can time itself (None on CPU)."""
        return None

    @abstractmethod
    def _read_losses(self, pending: list[Any]) -> np.ndarray:
        """The pending losses as one NumPy array (the epoch's one read-back)."""

    @abstractmethod
    def synchronize(self) -> None:
        """Block until all dispatched work (loss and parameters) is done."""

    # -- inference -------------------------------------------------------------------------------
    @abstractmethod
    def logits(self, x: np.ndarray) -> np.ndarray:
        """Eval-mode logits for one batch."""

    def _all_logits(self, x: np.ndarray, batch_size: int) -> np.ndarray:
        outs = []
        for i in range(0, len(x), batch_size):
            chunk = x[i : i + batch_size]
            rows = len(chunk)
            if self.PAD_EVAL_BATCHES and i and rows < batch_size:  # eval mode: padding rows change no real row
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
        """Start a new peak-device-memory window (no-op on CPU)."""

    def peak_memory(self) -> MemoryReading:
        return MemoryReading(None, "none (cpu)")

    @abstractmethod
    def save(self, directory: Path) -> Path:
        """Write the trained model in the framework's own format; returns the file written."""

    def compile_cache(self) -> str:
        """Where this cell's compiled code came from: 'off' (no persistent compilation cache),
        'cold' (compiled here and stored in the cache) or 'warm' (all of it loaded from the cache)."""
        return "off"

    def rules(self) -> Rules:
        """The framework rules of the built model (bench.rules), read by parity and the report."""
        return self.RULES

    def facts(self) -> dict[str, Any]:
        """What a record says this backend ran: its typed rules and the execution mode's meaning."""
        return {"rules": self.rules().as_dict(), "mode_description": self.modes[self.mode]}


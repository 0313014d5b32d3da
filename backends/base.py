"""The adapter protocol: what every framework backend implements, and nothing framework-specific.

The harness drives a backend through these methods only, so a measurement means the same thing on
every framework. Arrays cross the boundary as NumPy in the canonical layouts of ``bench.shapes``
(Dense kernel (in, out), Conv kernel HWIO, images NHWC, float32, integer labels); what happens
inside (device placement, layouts, compilation) is the adapter's business.

Lifecycle, per process: ``setup`` once (threads, device), then per cell ``build`` ->
``set_weights`` -> ``load_data`` -> steps/epochs -> ``evaluate``/``predict``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

import numpy as np

from bench.spec import ModelSpec, TrainSpec


class Unsupported(Exception):
    """This backend cannot run the requested configuration (mode, precision, device); the cell is skipped."""


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
    modes: ClassVar[tuple[str, ...]]
    """Execution modes this backend offers; the first is the default ('default' in a TrainSpec)."""

    # -- process ---------------------------------------------------------------------------------
    @abstractmethod
    def setup(self, threads: int, device: str = "cpu") -> BackendInfo:
        """Configure threads and device once per process, before any framework op runs."""

    # -- model -----------------------------------------------------------------------------------
    @abstractmethod
    def build(self, model: ModelSpec, train: TrainSpec, input_shape: tuple[int, ...], num_classes: int) -> None:
        """Translate a resolved model and its training spec (optimizer, loss, mode, precision).

        Raises Unsupported for a mode or precision this backend or device cannot run.
        """

    def resolve_mode(self, mode: str) -> str:
        """The concrete execution mode for a requested one ('default' means this backend's first)."""
        if mode == "default":
            return self.modes[0]
        if mode not in self.modes:
            raise Unsupported(f"{self.name} has no execution mode {mode!r}; valid: {', '.join(self.modes)}")
        return mode

    @abstractmethod
    def set_weights(self, weights: list[np.ndarray]) -> None:
        """Load canonical weights (order and layouts of ``bench.shapes.param_specs``)."""

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

    @abstractmethod
    def train_step(self, batch: np.ndarray) -> None:
        """One optimizer step on rows ``batch`` of the loaded data, in training mode.

        May return before the device finishes (asynchronous dispatch); keeps the loss on the device
        for ``finish_epoch``.
        """

    def begin_epoch(self) -> None:
        """Hook before the first step of a timed epoch (start device timers)."""

    @abstractmethod
    def finish_epoch(self) -> EpochResult:
        """Wait for every pending step and return the per-step losses since the last call."""

    @abstractmethod
    def synchronize(self) -> None:
        """Block until all dispatched work (loss and parameters) is done."""

    # -- inference -------------------------------------------------------------------------------
    @abstractmethod
    def logits(self, x: np.ndarray) -> np.ndarray:
        """Eval-mode logits for one batch."""

    def predict(self, x: np.ndarray, batch_size: int) -> np.ndarray:
        """Eval-mode class probabilities (softmax of the logits; sigmoid for the bce loss)."""
        out = np.concatenate([self.logits(x[i : i + batch_size]) for i in range(0, len(x), batch_size)])
        return probabilities(out, self.loss_name)

    def evaluate(self, x: np.ndarray, y: np.ndarray, batch_size: int) -> tuple[float, float]:
        """Eval-mode mean loss and accuracy over the whole array."""
        out = np.concatenate([self.logits(x[i : i + batch_size]) for i in range(0, len(x), batch_size)])
        return float(numpy_loss(out, y, self.loss_name)), float(np.mean(out.argmax(axis=1) == y))

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
    def save_native(self, directory: Path) -> Path:
        """Write the current model in the framework's own format, for that framework's users; returns
        the file. No pickle. The neutral format every backend reads is ``bench.saved``."""

    @abstractmethod
    def load_native(self, path: Path) -> None:
        """Read a file written by ``save_native`` into this backend's model, built with the same spec.

        Never unpickles (torch loads with ``weights_only=True``); the optimizer state is reset.
        """

    @abstractmethod
    def semantics(self) -> dict[str, str]:
        """The framework-level facts this backend chose or could not change (design.md's table).

        For example where the optimizer's epsilon sits, BatchNorm momentum as passed, the mode.
        Stored with each record so a reader sees what was compared.
        """

    @property
    @abstractmethod
    def loss_name(self) -> str:
        """The loss of the built TrainSpec."""


def probabilities(logits: np.ndarray, loss: str) -> np.ndarray:
    """Softmax of the logits, or the per-class sigmoid for the bce loss (the spec's ``predict``)."""
    z = logits.astype(np.float64)
    if loss == "bce":
        return 1.0 / (1.0 + np.exp(-z))
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def numpy_loss(logits: np.ndarray, labels: np.ndarray, loss: str) -> float:
    """The spec's losses on logits, mean over the batch (and over classes for the per-class losses).

    cce: softmax cross-entropy; mse/mae: softmax output against one-hot; bce: per-class sigmoid
    cross-entropy against one-hot; hinge: max(0, 1 - t * z) with t in {-1, +1} on the raw logits.
    """
    z = logits.astype(np.float64)
    n, k = z.shape
    onehot = np.eye(k)[labels]
    if loss == "cce":
        shifted = z - z.max(axis=1, keepdims=True)
        logp = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
        return float(-logp[np.arange(n), labels].mean())
    if loss in ("mse", "mae"):
        diff = probabilities(z, "cce") - onehot
        return float((diff**2).mean() if loss == "mse" else np.abs(diff).mean())
    if loss == "bce":
        return float((np.maximum(z, 0) - z * onehot + np.log1p(np.exp(-np.abs(z)))).mean())
    if loss == "hinge":
        return float(np.maximum(0.0, 1.0 - (2 * onehot - 1) * z).mean())
    raise ValueError(f"unknown loss {loss!r}")

"""The neutral saved-model format: canonical weights in safetensors plus a JSON manifest.

Each framework's own file (``Backend.save_native``) serves that framework's users; this format
serves everyone. Any backend builds the model from the manifest's spec and loads the weights with
``set_weights``, so a model trained on one framework predicts the same classes on every other.

A model folder holds:

- ``weights.safetensors``: the arrays of ``Backend.get_weights()`` (BatchNorm running statistics
  included) in the canonical layouts of ``bench.spec.shapes``, keyed by ``ParamSpec.key`` ("1.kernel");
- ``model.json``: format and version, the sha256 of the weights file, the resolved model spec,
  the train spec, input shape, number of classes, the parameter list, and where the model came from
  (backend, framework versions, cell id);
- the framework's native file, named in the manifest.

Nothing here imports a framework or unpickles: safetensors is a JSON header plus raw little-endian
buffers, and the manifest is validated by pydantic before any weight is read. The weights are
hashed and parsed from the same bytes, so the file checked is the file loaded.
"""

from __future__ import annotations

import hashlib
import json
import math
import shlex
import struct
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import numpy as np
import safetensors.numpy
from pydantic import BaseModel, ConfigDict, ValidationError
from safetensors import SafetensorError

from backends.base import Backend
from bench.errors import BenchError, SavedModelError
from bench.results.record import Status
from bench.results.store import file_stem, read_small
from bench.spec.data import ARRAY_BUDGET_BYTES, gib
from bench.spec.model import ModelSpec
from bench.spec.shapes import ParamSpec, param_specs
from bench.spec.train import TrainSpec

FORMAT = "bench-neutral-model"
FORMAT_VERSION = 1
MANIFEST = "model.json"
WEIGHTS = "weights.safetensors"
MODELS_FOLDER = "models"
"""Saved models live in ``<run folder>/models/<one folder per cell and repeat>/``."""
LAYOUTS = "Dense kernel (in, out); Conv2D kernel HWIO; inputs NHWC float32 in [0, 1]; Flatten in H, W, C order"
MODEL_FOLDER_LIMIT = 130
"""Characters of a model folder's readable part (the cell id cut to 120, then the repeat), before its hash."""
SAFETENSORS_HEADER_LIMIT = 2**20
"""Largest safetensors JSON header read: a few hundred bytes per tensor."""


class SavedParameter(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")
    key: str
    shape: tuple[int, ...]
    trainable: bool


class Manifest(BaseModel):
    """``model.json``: everything needed to rebuild the model on any backend and to check its weights."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    format: Literal["bench-neutral-model"]
    format_version: Literal[1]
    weights_file: str
    weights_sha256: str
    native_file: str | None
    model: ModelSpec
    train: TrainSpec
    input_shape: tuple[int, ...]
    num_classes: int
    parameters: tuple[SavedParameter, ...]
    layouts: str
    source: dict[str, Any]
    """Where the weights came from: backend, framework, framework versions, cell id, repeat, test accuracy."""


@dataclass
class NeutralModel:
    """A loaded neutral model: its manifest and the canonical weights in ``param_specs`` order."""

    manifest: Manifest
    weights: list[np.ndarray]
    folder: Path

    @property
    def model(self) -> ModelSpec:
        return self.manifest.model

    @property
    def train(self) -> TrainSpec:
        return self.manifest.train

    @property
    def input_shape(self) -> tuple[int, ...]:
        return self.manifest.input_shape

    @property
    def num_classes(self) -> int:
        return self.manifest.num_classes


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def save_neutral(
    folder: Path,
    model: ModelSpec,
    train: TrainSpec,
    input_shape: tuple[int, ...],
    num_classes: int,
    weights: list[np.ndarray],
    source: dict[str, Any],
    native_file: str | None = None,
) -> Path:
    """Write ``weights.safetensors`` then ``model.json`` (last, so a crash mid-save leaves no valid
    manifest); returns the manifest's path. ``model`` must be resolved (no 'hidden' activation)."""
    specs = param_specs(model, tuple(input_shape), num_classes)
    if len(weights) != len(specs):
        raise ValueError(f"expected {len(specs)} canonical arrays, got {len(weights)}")
    for spec, w in zip(specs, weights):
        if tuple(np.shape(w)) != spec.shape:
            raise ValueError(f"weight {spec.key} has shape {np.shape(w)}, expected {spec.shape}")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tensors = {s.key: np.ascontiguousarray(w, dtype=np.float32) for s, w in zip(specs, weights)}
    blob = safetensors.numpy.save(tensors, metadata={"format": FORMAT, "format_version": str(FORMAT_VERSION)})
    (folder / WEIGHTS).write_bytes(blob)
    manifest = Manifest(
        format=FORMAT, format_version=FORMAT_VERSION, weights_file=WEIGHTS, weights_sha256=sha256(blob),
        native_file=native_file, model=model, train=train, input_shape=tuple(input_shape), num_classes=num_classes,
        parameters=tuple(SavedParameter(key=s.key, shape=s.shape, trainable=s.trainable) for s in specs),
        layouts=LAYOUTS, source=source,
    )
    path = folder / MANIFEST
    path.write_text(json.dumps(manifest.model_dump(mode="json"), indent=2) + "\n")
    return path


def find_manifest(path: Path) -> Path:
    """The model.json a ``--model`` path means: a model folder, its model.json, or a file beside it
    (the weights or the native file, which a user sees first); anything else is one line saying
    which path to give."""
    if not path.exists():
        raise SavedModelError(f"saved model not found: {path}")
    if path.is_dir():
        if (path / MANIFEST).is_file():
            return path / MANIFEST
        inside = sorted(path.glob(f"*/{MANIFEST}")) or sorted(path.glob(f"{MODELS_FOLDER}/*/{MANIFEST}"))
        if inside:
            raise SavedModelError(f"{path} is not a model folder but holds {len(inside)} saved model(s): give one of them, "
                                  f"e.g. --model {shlex.quote(str(inside[0].parent))}")
        raise SavedModelError(f"saved model manifest missing: {path / MANIFEST} (a model folder holds {MANIFEST} and "
                              f"{WEIGHTS}; give the folder, its {MANIFEST} or its {WEIGHTS})")
    if path.suffix == ".json" or not (path.parent / MANIFEST).is_file():
        return path
    return path.parent / MANIFEST


def _read_manifest(path: Path) -> Manifest:
    if not path.is_file():
        raise SavedModelError(f"saved model manifest missing: {path} (a model folder holds {MANIFEST} and {WEIGHTS})")
    try:
        document = json.loads(read_small(path, MANIFEST).decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise SavedModelError(f"saved model manifest corrupt: {path} is not valid JSON ({exc}); give a model folder, "
                              f"its {MANIFEST} or its {WEIGHTS}") from None
    except BenchError as exc:  # far larger than a manifest can be
        raise SavedModelError(f"saved model manifest corrupt: {exc}") from None
    if not isinstance(document, dict) or document.get("format") != FORMAT:
        raise SavedModelError(f"{path} is not a {FORMAT} manifest (no \"format\": \"{FORMAT}\")")
    try:
        return Manifest.model_validate(document)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "(top level)"
        raise SavedModelError(f"saved model manifest {path} is invalid at {where}: {first['msg']}") from None


def _check_parameters(manifest: Manifest, path: Path) -> list[ParamSpec]:
    """The manifest's parameter list must be what its own spec implies: a hand-edited or mismatched
    manifest is refused before any backend builds from it."""
    try:
        specs = param_specs(manifest.model, manifest.input_shape, manifest.num_classes)
    except Exception as exc:  # SpecError (model does not fit) or a malformed spec
        raise SavedModelError(f"saved model manifest {path}: the model does not fit its input: {exc}") from None
    implied = [(s.key, s.shape, s.trainable) for s in specs]
    listed = [(p.key, p.shape, p.trainable) for p in manifest.parameters]
    if implied != listed:
        raise SavedModelError(f"saved model manifest {path}: its parameter list does not match its model spec")
    return specs


def _read_weights(path: Path, specs: list[ParamSpec]) -> bytes:
    """The weights file's bytes, its size checked first against what the spec implies: a file padded
    to gigabytes, or a spec implying more than ``ARRAY_BUDGET_BYTES``, is refused before it is read.
    A shorter file is read (it is small) and fails its checksum as truncated."""
    data = sum(4 * math.prod(s.shape) for s in specs)
    if data > ARRAY_BUDGET_BYTES:
        raise SavedModelError(f"saved model {path.parent}: its spec implies {gib(data)} of float32 weights, over the "
                              f"{gib(ARRAY_BUDGET_BYTES)} limit")
    size = path.stat().st_size
    with open(path, "rb") as handle:
        prefix = handle.read(8)
        header = struct.unpack("<Q", prefix)[0] if len(prefix) == 8 else 0
        if size > 8 + min(header, SAFETENSORS_HEADER_LIMIT) + data:
            raise SavedModelError(f"saved model weights corrupt: {path} is {size:,} bytes, more than the {MANIFEST} "
                                  f"spec's {data:,} bytes of float32 weights and a safetensors header take "
                                  "(padded, not float32, or another file)")
        return prefix + handle.read()


def load_neutral(path: Path) -> NeutralModel:
    """Read a model folder, its ``model.json`` or a file beside it: manifest validated, sizes and
    checksum verified, weights parsed and checked against the spec. Every problem is a
    SavedModelError naming the file."""
    path = Path(path)
    manifest_path = find_manifest(path)
    manifest = _read_manifest(manifest_path)
    if path != manifest_path and path.is_file() and path.name not in (manifest.weights_file, manifest.native_file):
        raise SavedModelError(f"--model {path}: not a file of the saved model in {path.parent}; give the folder, its "
                              f"{MANIFEST} or its {WEIGHTS}")
    specs = _check_parameters(manifest, manifest_path)
    folder = manifest_path.parent
    weights_path = folder / manifest.weights_file
    if Path(manifest.weights_file).name != manifest.weights_file:
        raise SavedModelError(f"saved model manifest {manifest_path}: weights_file must be a file name in its folder")
    if not weights_path.is_file():
        raise SavedModelError(f"saved model weights missing: {weights_path}")
    blob = _read_weights(weights_path, specs)
    actual = sha256(blob)
    if actual != manifest.weights_sha256:
        raise SavedModelError(
            f"saved model weights corrupt: {weights_path} has sha256 {actual[:16]}..., "
            f"{MANIFEST} records {manifest.weights_sha256[:16]}... (truncated, edited or from another save)"
        )
    try:
        tensors = safetensors.numpy.load(blob)
    except (SafetensorError, ValueError) as exc:
        raise SavedModelError(f"saved model weights corrupt: {weights_path} is not a readable safetensors file ({exc})") from None
    expected = {s.key for s in specs}
    if set(tensors) != expected:
        missing, extra = sorted(expected - set(tensors)), sorted(set(tensors) - expected)
        raise SavedModelError(f"saved model weights {weights_path} do not match the spec: missing {missing}, unexpected {extra}")
    weights = []
    for s in specs:
        w = tensors[s.key]
        if w.dtype != np.float32 or w.shape != s.shape:
            raise SavedModelError(f"saved model weight {s.key} in {weights_path} is {w.dtype}{list(w.shape)}, expected float32{list(s.shape)}")
        weights.append(w)
    return NeutralModel(manifest, weights, folder)


def model_folder_name(cell_id: str, repeat: int) -> str:
    """A readable, filesystem-safe, bounded and unique folder name for one cell and repeat: the cell
    id's fields joined by '_' (at most 120 characters), the repeat, and a short hash of the exact id
    and repeat (``store.file_stem``)."""
    return file_stem(f"{cell_id.replace('|', '_')[:120]}_r{repeat}", MODEL_FOLDER_LIMIT, key=f"{cell_id}#{repeat}")


def save_trained_model(backend: Backend, record: dict, model: ModelSpec, run_dir: Path) -> dict:
    """Save a finished cell's model (native file and neutral format) under ``run_dir/models/``.

    The manifest's train spec is the one the backend ran (``backend.train``): under the native policy
    that holds the framework's own epsilon, slope and momentum, so every backend, the oracle too,
    rebuilds the model with the values it was trained with (``bench predict``). Runs in the worker
    after evaluation, off the clock. Returns the record fields to add: ``model_path`` (relative to the
    run folder), or a failed status when the disk refuses.
    """
    relative = Path(MODELS_FOLDER) / model_folder_name(record["cell_id"], record["repeat"])
    folder = Path(run_dir) / relative
    source = {
        "backend": backend.name, "framework": backend.framework, "versions": record.get("framework_versions", {}),
        "cell_id": record["cell_id"], "repeat": record["repeat"], "dataset": record.get("dataset"),
        "test_accuracy": record.get("test_accuracy"),
        "saved_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    try:
        folder.mkdir(parents=True, exist_ok=True)
        native = backend.save_native(folder)
        save_neutral(folder, model, backend.train, tuple(record["input_shape"]), record["num_classes"],
                     backend.get_weights(), source, native_file=native.name)
    except OSError as exc:
        return {"status": Status.FAILED, "error": f"saving the model to {folder} failed: {exc.strerror or exc}"}
    return {"model_path": relative.as_posix()}

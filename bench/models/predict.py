"""``bench predict``: a neutral saved model on any installed backend, over a ``.npy`` or IDX ``.gz`` file.

The model is rebuilt from its manifest's spec and given its canonical weights with ``set_weights``,
so it does not matter which framework trained it. Everything the user can get wrong (backend name,
model path, checksum, input file, input shape, size and values) is checked before a framework is
imported, and is one ``error:`` line with exit 2. Sizes are checked from headers before anything
is allocated, so a small hostile file cannot exhaust memory (docs/architecture.md, "Saved models").

It runs in this process: one short command, one framework, nothing to keep apart; the device
variables a sweep's workers get (backends/device.py ``environment``: one visible GPU, JAX's 75 %
preallocation off, TF's memory growth on) are set before the framework loads. Inference is
always fp32 in the backend's default mode (the weights are stored in fp32, and a mode such as
torch's ``compiled`` does not exist on every backend).
"""

from __future__ import annotations

import argparse
import math
import os
import sys
from pathlib import Path

import numpy as np

import backends
from backends import device
from backends.base import Unsupported
from bench.errors import BackendUnavailable, BenchError
from bench.measure.load import usable_cores
from bench.models.saved import NeutralModel, load_neutral
from bench.spec.data import ARRAY_BUDGET_BYTES, gib, read_idx, scale_images
from bench.spec.semantics import HARMONISED

DEFAULT_BATCH = 500


def add_predict_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, type=Path,
                   help="a saved model folder (RUN/models/...), its model.json or its weights.safetensors")
    p.add_argument("--backend", required=True, help=f"{', '.join(backends.REGISTRY)}: any installed backend, "
                   "whichever trained the model")
    p.add_argument("--input", required=True, type=Path,
                   help=".npy array (N, *input shape) of floats in [0, 1] or uint8 (scaled by 1/255), or an IDX .gz of uint8 images")
    p.add_argument("--probabilities", action="store_true", help="print each row's class probabilities after its class")
    p.add_argument("--batch-size", type=int, default=DEFAULT_BATCH, help=f"rows per forward pass (default {DEFAULT_BATCH})")
    p.add_argument("--device", default="cpu", choices=device.DEVICES)
    p.add_argument("--gpu", type=int, default=0, metavar="INDEX", help="the GPU to use with --device gpu or auto (default 0)")


def _expected(input_shape: tuple[int, ...]) -> str:
    return "(" + ", ".join(["N", *map(str, input_shape)]) + ") with N >= 1"


def check_declared_shape(shape: tuple[int, ...], input_shape: tuple[int, ...], path: Path, itemsize: int = 1) -> None:
    """A file's declared array shape, before its data is read: rows of the model's input (a missing
    trailing channel of 1 allowed, as the datasets allow it), and no more rows than
    ``ARRAY_BUDGET_BYTES`` holds, as stored (``itemsize`` bytes a value) or as the float32 copy the
    backend gets, whichever is larger. A header claiming billions of rows is refused here."""
    image = tuple(shape[1:])
    if len(shape) < 1 or shape[0] < 1 or (image != tuple(input_shape) and image + (1,) != tuple(input_shape)):
        raise BenchError(f"input {path} has shape {tuple(shape)}; the model expects {_expected(input_shape)}")
    row_bytes = max(4, itemsize) * math.prod(input_shape)
    if shape[0] * row_bytes > ARRAY_BUDGET_BYTES:
        raise BenchError(f"input {path} has {shape[0]:,} rows, {gib(shape[0] * row_bytes)} in memory, over the "
                         f"{gib(ARRAY_BUDGET_BYTES)} limit; valid: at most {ARRAY_BUDGET_BYTES // row_bytes:,} rows "
                         "of this model's input per file")


NPY_HEADERS = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}
"""The .npy header versions ``np.save`` writes for plain arrays (3.0 only adds UTF-8 field names of structured dtypes)."""


def _read_npy(path: Path, input_shape: tuple[int, ...]) -> np.ndarray:
    """An .npy array whose header is checked (dtype, shape, size, file length) before its data is
    read; nothing is unpickled."""
    with open(path, "rb") as handle:
        try:
            version = np.lib.format.read_magic(handle)
            if version not in NPY_HEADERS:
                raise ValueError(f"format version {version[0]}.{version[1]}; valid: 1.0, 2.0")
            shape, fortran_order, dtype = NPY_HEADERS[version](handle)
        except ValueError as exc:
            raise BenchError(f"input {path} is not a readable .npy array ({exc})") from None
        if dtype.hasobject or not (dtype == np.uint8 or dtype.kind == "f"):
            raise BenchError(f"input {path} has dtype {dtype}; valid: float (values in [0, 1]) or uint8 (scaled by 1/255)")
        check_declared_shape(shape, input_shape, path, dtype.itemsize)
        count = math.prod(shape)
        stored = os.fstat(handle.fileno()).st_size - handle.tell()
        if stored != count * dtype.itemsize:
            raise BenchError(f"input {path} holds {stored:,} bytes of data; its header declares {tuple(shape)} {dtype}, "
                             f"{count * dtype.itemsize:,} bytes (truncated or padded)")
        data = np.fromfile(handle, dtype=dtype, count=count)
    return data.reshape(shape, order="F" if fortran_order else "C")


def _read_idx(path: Path, input_shape: tuple[int, ...]) -> np.ndarray:
    return read_idx(path, check_dims=lambda dims: check_declared_shape(dims, input_shape, path))


READERS = {".npy": _read_npy, ".gz": _read_idx}
"""Input file types by suffix; each checks the declared shape against the model before reading data."""


def _in_domain(x: np.ndarray, path: Path) -> np.ndarray:
    """Float rows must be what the model was trained on: finite values in [0, 1]. NaN or inf would
    be predicted as class 0 with NaN probabilities, and 0-255 floats as whatever saturates; both
    are refused, never rescaled (a float image's scale cannot be told from its values)."""
    finite = np.isfinite(x)
    if not finite.all():
        bad = np.flatnonzero(~finite.reshape(len(x), -1).all(axis=1))
        raise BenchError(f"input {path} has {int((~finite).sum()):,} NaN or infinite value(s), first in row {bad[0]}; "
                         "valid: finite floats in [0, 1]")
    low, high = float(x.min()), float(x.max())
    if low < 0.0 or high > 1.0:
        raise BenchError(f"input {path} has values from {low:g} to {high:g}; valid: floats in [0, 1] (divide 0-255 "
                         "images by 255) or uint8 images (scaled by 1/255)")
    return x


def read_input(path: Path, input_shape: tuple[int, ...]) -> np.ndarray:
    """The rows to classify as float32 (N, *input_shape); uint8 images are scaled by 1/255 as the datasets are.

    Everything is checked before it is allocated (the header's shape against the model, the size
    against ``ARRAY_BUDGET_BYTES``) or before it reaches a backend (finite values in [0, 1])."""
    if not path.exists():
        raise BenchError(f"input file not found: {path}")
    if not path.is_file():  # a folder, a device (/dev/zero never ends), a pipe
        raise BenchError(f"input {path} is not a regular file; valid: a .npy or IDX .gz file")
    reader = READERS.get(path.suffix)
    if reader is None:
        raise BenchError(f"input {path}: unknown file type {path.suffix!r}; valid: .npy, IDX .gz (e.g. t10k-images-idx3-ubyte.gz)")
    x = reader(path, input_shape)
    x = scale_images(x) if x.dtype == np.uint8 else _in_domain(x, path).astype(np.float32)
    return x if x.shape[1:] == tuple(input_shape) else x[..., None]


def predict(saved: NeutralModel, backend_name: str, x: np.ndarray, batch_size: int, device: str = "cpu") -> np.ndarray:
    """Class probabilities of ``x`` from the saved model on one backend, in this process."""
    threads = len(usable_cores())
    backend = backends.load(backend_name)
    # the values the model was trained with, passed explicitly: a native-policy model keeps its
    # framework's epsilon and slope on every backend instead of taking this backend's defaults
    train = saved.train.model_copy(update={"mode": "default", "precision": "fp32", "semantics": HARMONISED})
    try:
        backend.setup(threads, device)
        backend.build(saved.model, train, saved.input_shape, saved.num_classes)
    except Unsupported as exc:
        raise BenchError(f"backend {backend_name!r} cannot run this model here: {exc}") from None
    backend.set_weights(saved.weights)
    return backend.predict(x, batch_size)


def main_predict(args: argparse.Namespace) -> int:
    try:
        name = backends.canonical_name(args.backend)
    except BackendUnavailable:  # its message offers 'all', which names no single backend
        raise BenchError(f"unknown backend {args.backend!r}; valid: {', '.join(backends.REGISTRY)} (one of them)") from None
    reason = backends.unavailable_reason(name)
    if reason:
        raise BackendUnavailable(f"backend {name!r} is not available: {reason}")
    if args.batch_size < 1:
        raise BenchError(f"--batch-size must be a positive integer, got {args.batch_size}")
    if args.gpu < 0:
        raise BenchError(f"--gpu {args.gpu}: valid: a GPU index, 0 or more (nvidia-smi -L lists them)")
    saved = load_neutral(args.model)
    x = read_input(args.input, saved.input_shape)
    os.environ.update(device.environment(args.device, args.gpu))  # before predict imports the framework
    probabilities = predict(saved, name, x, args.batch_size, args.device)
    classes = probabilities.argmax(axis=1)
    if args.probabilities:
        lines = [f"{c} " + " ".join(f"{p:.6f}" for p in row) for c, row in zip(classes, probabilities)]
    else:
        lines = [str(c) for c in classes]
    sys.stdout.write("\n".join(lines) + "\n")
    counts = np.bincount(classes, minlength=saved.num_classes)
    sys.stderr.write(
        f"{len(x)} rows predicted by {name} with {saved.folder} (trained on {saved.manifest.source.get('backend', '?')}); "
        f"class counts: {' '.join(f'{k}:{n}' for k, n in enumerate(counts))}\n"
    )
    return 0

"""``bench predict``: a neutral saved model on any installed backend, over a ``.npy`` or IDX ``.gz`` file.

The model is rebuilt from its manifest's spec and given its canonical weights with ``set_weights``,
so it does not matter which framework trained it. Everything the user can get wrong (backend name,
model folder, checksum, input file, input shape) is checked before a framework is imported, and is
one ``error:`` line with exit 2.

It runs in this process: one short command, one framework, nothing to keep apart. Inference is
always fp32 in the backend's default mode (the weights are stored in fp32, and a mode such as
torch's ``compiled`` does not exist on every backend).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

import backends
from backends.base import Unsupported
from bench.errors import BackendUnavailable, BenchError
from bench.measure.load import usable_cores
from bench.models.saved import NeutralModel, load_neutral
from bench.spec.data import read_idx, scale_images
from bench.spec.semantics import HARMONISED

DEFAULT_BATCH = 500


def add_predict_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, type=Path, help="a saved model folder (RUN/models/...) or its model.json")
    p.add_argument("--backend", required=True, help="torch, tf, jax or numpy: any installed backend, whichever trained the model")
    p.add_argument("--input", required=True, type=Path,
                   help=".npy array (N, *input shape) of floats in [0, 1] or uint8 (scaled by 1/255), or an IDX .gz of uint8 images")
    p.add_argument("--probabilities", action="store_true", help="print each row's class probabilities after its class")
    p.add_argument("--batch-size", type=int, default=DEFAULT_BATCH, help=f"rows per forward pass (default {DEFAULT_BATCH})")
    p.add_argument("--device", default="cpu", choices=("cpu", "gpu", "auto"))


def read_input(path: Path) -> np.ndarray:
    """The rows to classify as float32; uint8 images are scaled by 1/255 as the datasets are."""
    if not path.is_file():
        raise BenchError(f"input file not found: {path}")
    if path.suffix == ".npy":
        try:
            x = np.load(path, allow_pickle=False)
        except (ValueError, OSError, EOFError) as exc:
            raise BenchError(f"input {path} is not a readable .npy array without pickled objects ({exc})") from None
    elif path.suffix == ".gz":
        x = read_idx(path)
    else:
        raise BenchError(f"input {path}: unknown file type {path.suffix!r}; valid: .npy, IDX .gz (e.g. t10k-images-idx3-ubyte.gz)")
    if x.dtype == np.uint8:
        return scale_images(x)
    if not np.issubdtype(x.dtype, np.floating):
        raise BenchError(f"input {path} has dtype {x.dtype}; valid: float (values in [0, 1]) or uint8 (scaled by 1/255)")
    return np.asarray(x, dtype=np.float32)


def fit_input(x: np.ndarray, input_shape: tuple[int, ...], path: Path) -> np.ndarray:
    """``x`` as (N, *input_shape); a missing trailing channel of 1 is added, as the datasets do."""
    if x.ndim >= 1 and x.shape[1:] + (1,) == tuple(input_shape):
        x = x[..., None]
    if x.ndim < 1 or tuple(x.shape[1:]) != tuple(input_shape) or len(x) == 0:
        expected = ", ".join(["N", *map(str, input_shape)])
        raise BenchError(f"input {path} has shape {tuple(x.shape)}; the model expects ({expected}) with N >= 1")
    return x


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
    saved = load_neutral(args.model)
    x = fit_input(read_input(args.input), saved.input_shape, args.input)
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

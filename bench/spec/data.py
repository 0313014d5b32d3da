"""Datasets as NumPy arrays, and the one batch order every backend trains on.

Every backend receives the same float32 NHWC arrays scaled to [0, 1], the same train/val/test
split and the same per-epoch batch indices drawn in NumPy from the seed, with the last partial
batch dropped (docs/architecture.md, "Data flow"). Files are verified by checksum; nothing is downloaded.
"""

from __future__ import annotations

import gzip
import hashlib
import math
import os
import re
import struct
import tarfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass, replace
from importlib import resources
from pathlib import Path

import numpy as np

from bench.errors import DatasetError, unknown

DATASETS = ("mnist-sample", "mnist", "fashion_mnist", "cifar10", "digits", "synthetic")
SPLIT_SEED = 20240521  # fixed: the split never depends on the run's seed, so runs stay comparable

IDX_FILES = {
    "mnist": {
        "train-images-idx3-ubyte.gz": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
        "train-labels-idx1-ubyte.gz": "d53e105ee54ea40749a09fcbcd1e9432",
        "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
        "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c",
    },
    "fashion_mnist": {
        "train-images-idx3-ubyte.gz": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
        "train-labels-idx1-ubyte.gz": "25c81989df183df01b3e8a0aad5dffbe",
        "t10k-images-idx3-ubyte.gz": "bef4ecab320f06d8554ea6380940ec79",
        "t10k-labels-idx1-ubyte.gz": "bb300cfdad3c16e7a12a480ee83cd310",
    },
}
SYNTHETIC_SAMPLES = 6000
ARRAY_BUDGET_BYTES = 2 * 2**30
"""Largest float32 image array a dataset shape or a file's header may make the suite allocate: a synthetic
shape, an IDX file, a ``bench predict`` input. Sizes are checked against it before anything is allocated,
so a typo or a small hostile file (a header claiming billions of rows, a decompression bomb) is one line."""
IDX_UNSIGNED_BYTE = b"\x00\x00\x08"
"""The first three bytes of an IDX file of unsigned bytes; the fourth is the number of dimensions."""
SYNTHETIC_SHAPE = re.compile(r"(\d+)x(\d+)x(\d+)")
CIFAR10_TARBALL = ("cifar-10-binary.tar.gz", "c32a1d4ab5d03f1284b67883e8d87530")
CIFAR10_RECORD = 1 + 32 * 32 * 3
CIFAR10_BATCH_BYTES = 10000 * CIFAR10_RECORD


@dataclass
class Dataset:
    """A ready split: train (for steps), val (for curves and time-to-accuracy), test (final figures)."""

    name: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    num_classes: int
    source: str

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.x_train.shape[1:])

    def head(self, train: int | None = None, val: int | None = None, test: int | None = None) -> Dataset:
        """The first rows of each split (None keeps a split whole): a model far costlier per sample
        than the others can train on a slice of the same data in the same run. Views, no copies."""
        if train is val is test is None:
            return self
        return replace(self, x_train=self.x_train[:train], y_train=self.y_train[:train], x_val=self.x_val[:val],
                       y_val=self.y_val[:val], x_test=self.x_test[:test], y_test=self.y_test[:test])

    def describe(self) -> dict:
        return {
            "dataset": self.name,
            "input_shape": list(self.input_shape),
            "num_classes": self.num_classes,
            "n_train": len(self.x_train),
            "n_val": len(self.x_val),
            "n_test": len(self.x_test),
            "data_source": self.source,
        }


def default_cache_dir() -> Path:
    return Path(os.environ.get("BENCH_DATA_DIR", Path.home() / ".cache" / "bench" / "datasets"))


def md5(path: Path) -> str:
    digest = hashlib.md5()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def verified(path: Path, expected_md5: str) -> Path:
    if not path.is_file():
        raise DatasetError(f"dataset file missing: {path}")
    actual = md5(path)
    if actual != expected_md5:
        raise DatasetError(f"dataset file corrupt: {path} has md5 {actual}, expected {expected_md5}")
    return path


def gib(n_bytes: int) -> str:
    """A byte count in GiB for a message ('2 GiB', '2.9 GiB', '670,552.3 GiB')."""
    return f"{n_bytes / 2**30:,.1f}".removesuffix(".0") + " GiB"


def read_idx(path: Path, check_dims: Callable[[tuple[int, ...]], None] | None = None) -> np.ndarray:
    """Parse a gzipped IDX file (the MNIST format): magic, big-endian dimensions, uint8 data.

    Decompression streams, so a small file cannot make it allocate more than its header declares:
    the header is read first, its dimensions must fit ``ARRAY_BUDGET_BYTES`` as float32 images and
    pass ``check_dims`` (``bench predict`` checks them against the model's input), then exactly the
    declared bytes are decompressed and one more is asked for: a file that inflates past its
    header (a decompression bomb) is refused after reading the declared size, never the rest.
    """
    try:
        with gzip.open(path, "rb") as stream:
            magic = stream.read(4)
            if len(magic) < 4 or magic[:3] != IDX_UNSIGNED_BYTE:
                raise DatasetError(f"dataset file corrupt: {path} is not an unsigned-byte IDX file")
            packed = stream.read(4 * magic[3])
            if len(packed) < 4 * magic[3]:
                raise DatasetError(f"dataset file corrupt: {path} ends inside its IDX header")
            dims = struct.unpack(f">{magic[3]}I", packed)
            size = math.prod(dims)
            if 4 * size > ARRAY_BUDGET_BYTES:
                raise DatasetError(f"{path}: its IDX header declares {dims} images, {gib(4 * size)} as float32, over the "
                                   f"{gib(ARRAY_BUDGET_BYTES)} limit")
            if check_dims is not None:
                check_dims(dims)
            data = stream.read(size)
            if len(data) != size:
                raise DatasetError(f"dataset file corrupt: {path} holds {len(data)} bytes of data, header says {dims}")
            if stream.read(1):
                raise DatasetError(f"dataset file corrupt: {path} holds more data than its header's {dims} "
                                   "(the rest was not decompressed)")
    except (OSError, EOFError, zlib.error) as exc:
        raise DatasetError(f"dataset file corrupt: {path} is not a readable gzip file ({exc})") from None
    return np.frombuffer(data, dtype=np.uint8).reshape(dims)


def scale_images(raw: np.ndarray) -> np.ndarray:
    """uint8 (N, H, W) or (N, H, W, C) to float32 NHWC in [0, 1]: what every model is trained and
    served on (``bench predict`` applies it to uint8 input too)."""
    x = raw.astype(np.float32) / 255.0
    return x[..., None] if x.ndim == 3 else x


def _split(x: np.ndarray, y: np.ndarray, n_test: int) -> tuple[np.ndarray, ...]:
    order = np.random.default_rng(SPLIT_SEED).permutation(len(x))
    train, test = order[: len(x) - n_test], order[len(x) - n_test :]
    return x[train], y[train], x[test], y[test]


def _load_mnist_sample() -> tuple[np.ndarray, ...]:
    folder = resources.files("bench") / "datasets" / "mnist_t10k"
    sums = dict(reversed(line.split()) for line in (folder / "MD5SUMS").read_text().splitlines() if line.strip())
    images = read_idx(verified(Path(str(folder / "t10k-images-idx3-ubyte.gz")), sums["t10k-images-idx3-ubyte.gz"]))
    labels = read_idx(verified(Path(str(folder / "t10k-labels-idx1-ubyte.gz")), sums["t10k-labels-idx1-ubyte.gz"]))
    return _split(scale_images(images), labels.astype(np.int64), n_test=2000)


def _load_idx_pair(name: str, directory: Path) -> tuple[np.ndarray, ...]:
    folder = directory / name if (directory / name).is_dir() else directory
    files = {f: read_idx(verified(folder / f, digest)) for f, digest in IDX_FILES[name].items()}
    return (
        scale_images(files["train-images-idx3-ubyte.gz"]),
        files["train-labels-idx1-ubyte.gz"].astype(np.int64),
        scale_images(files["t10k-images-idx3-ubyte.gz"]),
        files["t10k-labels-idx1-ubyte.gz"].astype(np.int64),
    )


def _cifar_batches(directory: Path) -> dict[str, bytes]:
    """The six binary batches, from the official tarball (md5-checked) or an extracted folder."""
    names = [f"data_batch_{i}.bin" for i in range(1, 6)] + ["test_batch.bin"]
    tarball = directory / CIFAR10_TARBALL[0]
    if tarball.is_file():
        verified(tarball, CIFAR10_TARBALL[1])
        with tarfile.open(tarball) as archive:
            return {n: archive.extractfile(f"cifar-10-batches-bin/{n}").read() for n in names}
    folder = directory / "cifar-10-batches-bin" if (directory / "cifar-10-batches-bin").is_dir() else directory
    batches = {}
    for n in names:
        path = folder / n
        if not path.is_file():
            raise DatasetError(f"dataset file missing: {path} (or put {CIFAR10_TARBALL[0]} in {directory})")
        size = path.stat().st_size  # before reading: a hostile or wrong file may be gigabytes
        if size != CIFAR10_BATCH_BYTES:
            raise DatasetError(f"dataset file corrupt: {path} has {size} bytes, expected {CIFAR10_BATCH_BYTES}")
        batches[n] = path.read_bytes()
    return batches


def _load_cifar10(directory: Path) -> tuple[np.ndarray, ...]:
    def decode(blob: bytes) -> tuple[np.ndarray, np.ndarray]:
        records = np.frombuffer(blob, dtype=np.uint8).reshape(-1, CIFAR10_RECORD)
        images = records[:, 1:].reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)  # CHW planes -> NHWC
        return scale_images(images), records[:, 0].astype(np.int64)

    batches = _cifar_batches(directory)
    train = [decode(batches[f"data_batch_{i}.bin"]) for i in range(1, 6)]
    x_test, y_test = decode(batches["test_batch.bin"])
    return np.concatenate([x for x, _ in train]), np.concatenate([y for _, y in train]), x_test, y_test


def _load_digits() -> tuple[np.ndarray, ...]:
    try:
        from sklearn.datasets import load_digits
    except ImportError as exc:
        raise DatasetError("dataset 'digits' needs scikit-learn (pip install scikit-learn)") from exc
    digits = load_digits()
    x = (digits.images / 16.0).astype(np.float32)[..., None]
    return _split(x, digits.target.astype(np.int64), n_test=360)


def parse_synthetic(name: str) -> tuple[int, int, int]:
    """'synthetic' or 'synthetic:HxWxC' -> image shape (default 28x28x1).

    A shape is three positive integers, and its images must fit the memory budget: the driver and
    every worker hold the whole array, so a typo like 2240x2240x3 would otherwise swap or crash.
    """
    _, _, shape = name.partition(":")
    match = SYNTHETIC_SHAPE.fullmatch((shape or "28x28x1").lower())
    if not match:
        raise DatasetError(f"bad synthetic shape {shape!r}; valid: synthetic:HxWxC with three positive integers, "
                           "e.g. synthetic:32x32x3")
    h, w, c = (int(v) for v in match.groups())
    if min(h, w, c) < 1:
        raise DatasetError(f"bad synthetic shape {shape!r}: a dimension is 0; valid: positive integers, "
                           "e.g. synthetic:32x32x3")
    need = SYNTHETIC_SAMPLES * h * w * c * 4
    if need > ARRAY_BUDGET_BYTES:
        most = ARRAY_BUDGET_BYTES // (4 * SYNTHETIC_SAMPLES)
        raise DatasetError(
            f"synthetic:{h}x{w}x{c} would need {gib(need)} ({SYNTHETIC_SAMPLES} float32 images), over "
            f"the {gib(ARRAY_BUDGET_BYTES)} limit; valid: at most {most:,} values per image (H*W*C), "
            "e.g. synthetic:160x160x3")
    return h, w, c


def check_name(name: str) -> None:
    """Reject an unknown dataset, a shape on a dataset other than synthetic, or a bad synthetic shape."""
    base, colon, _ = name.partition(":")
    if base not in DATASETS:
        raise DatasetError(unknown("dataset", base, DATASETS) + " (synthetic:HxWxC for a shape)")
    if base == "synthetic":
        parse_synthetic(name)
    elif colon:
        raise DatasetError(f"bad dataset {name!r}: only synthetic takes a shape (synthetic:HxWxC); valid: {base}")


def _load_synthetic(name: str, n: int = SYNTHETIC_SAMPLES, num_classes: int = 10) -> tuple[np.ndarray, ...]:
    """Random images labelled by a fixed random linear teacher: learnable, any shape, for speed runs."""
    shape = parse_synthetic(name)
    rng = np.random.default_rng(SPLIT_SEED)
    x = rng.random((n, *shape), dtype=np.float32)
    teacher = rng.standard_normal((int(np.prod(shape)), num_classes)).astype(np.float32)
    y = (x.reshape(n, -1) - 0.5) @ teacher
    return _split(x, y.argmax(axis=1).astype(np.int64), n_test=n // 5)


def load_dataset(
    name: str,
    data_dir: Path | None = None,
    val_split: float = 0.1,
    train_size: int | None = None,
    test_size: int | None = None,
) -> Dataset:
    """Load a dataset by name; the last ``val_split`` of the train split becomes validation (as Keras does).

    ``train_size``/``test_size`` keep the first rows of each split (quick profiles); the order is
    fixed, so every backend and every rerun sees the same rows.
    """
    check_name(name)
    base = name.split(":")[0]
    if not 0.0 <= val_split < 1.0:
        raise DatasetError(f"validation split must be in [0, 1), got {val_split}")
    directory = Path(data_dir) if data_dir else default_cache_dir()
    if base == "mnist-sample":
        parts, source = _load_mnist_sample(), "bundled MNIST t10k (CC BY-SA 3.0), split 8000/2000"
    elif base in IDX_FILES:
        parts, source = _load_idx_pair(base, directory), f"IDX files in {directory}"
    elif base == "cifar10":
        parts, source = _load_cifar10(directory), f"CIFAR-10 binary in {directory}"
    elif base == "digits":
        parts, source = _load_digits(), "scikit-learn digits (bundled), split 1437/360"
    else:
        parts, source = _load_synthetic(name), "synthetic (random images, linear teacher labels)"
    x_train, y_train, x_test, y_test = parts
    if train_size is not None:
        x_train, y_train = x_train[:train_size], y_train[:train_size]
    if test_size is not None:
        x_test, y_test = x_test[:test_size], y_test[:test_size]
    n_val = int(round(len(x_train) * val_split))
    cut = len(x_train) - n_val
    return Dataset(
        name=name,
        x_train=np.ascontiguousarray(x_train[:cut]),
        y_train=y_train[:cut],
        x_val=np.ascontiguousarray(x_train[cut:]),
        y_val=y_train[cut:],
        x_test=np.ascontiguousarray(x_test),
        y_test=y_test,
        num_classes=10,
        source=source,
    )


def epoch_batches(n: int, batch_size: int, seed: int, epoch: int) -> np.ndarray:
    """Row indices of each batch of one epoch, shape (n_batches, batch_size): shuffled from the seed,
    the last partial batch dropped, identical for every backend."""
    if batch_size > n:
        raise DatasetError(f"batch size {batch_size} is larger than the {n} training samples")
    order = np.random.default_rng([seed, epoch]).permutation(n)
    n_batches = n // batch_size
    return order[: n_batches * batch_size].reshape(n_batches, batch_size)

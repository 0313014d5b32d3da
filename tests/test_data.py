import gzip
import os

import numpy as np
import pytest

from bench.errors import DatasetError
from bench.spec.data import CIFAR10_BATCH_BYTES, epoch_batches, load_dataset, read_idx


def test_bundled_sample_is_the_real_mnist_test_set_split_8000_2000():
    data = load_dataset("mnist-sample", val_split=0.0)
    assert data.x_train.shape == (8000, 28, 28, 1) and data.x_test.shape == (2000, 28, 28, 1)
    assert data.x_train.dtype == np.float32 and 0.0 == data.x_train.min() and data.x_train.max() == 1.0
    labels = np.concatenate([data.y_train, data.y_test])
    # Published class counts of the MNIST t10k set.
    assert np.bincount(labels).tolist() == [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]


def test_validation_split_comes_from_the_end_of_train():
    data = load_dataset("mnist-sample", val_split=0.2)
    assert (len(data.x_train), len(data.x_val), len(data.x_test)) == (6400, 1600, 2000)


def test_batches_are_deterministic_shuffled_and_drop_the_last_partial_batch():
    a = epoch_batches(1000, 64, seed=1, epoch=0)
    assert a.shape == (15, 64)
    assert np.array_equal(a, epoch_batches(1000, 64, seed=1, epoch=0))
    assert not np.array_equal(a, epoch_batches(1000, 64, seed=1, epoch=1))
    assert len(np.unique(a)) == 15 * 64


def test_missing_and_corrupt_files_name_the_file(tmp_path):
    with pytest.raises(DatasetError, match="dataset file missing: .*train-images-idx3-ubyte.gz"):
        load_dataset("mnist", data_dir=tmp_path)
    for name in ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"):
        (tmp_path / name).write_bytes(b"corrupted download")
    with pytest.raises(DatasetError, match="dataset file corrupt: .*train-images-idx3-ubyte.gz has md5"):
        load_dataset("mnist", data_dir=tmp_path)
    bad = tmp_path / "broken.gz"
    bad.write_bytes(b"not gzip at all")
    with pytest.raises(DatasetError, match="broken.gz is not a readable gzip"):
        read_idx(bad)
    truncated = tmp_path / "short.gz"
    truncated.write_bytes(gzip.compress(bytes([0, 0, 8, 1, 0, 0, 0, 9, 1, 2])))
    with pytest.raises(DatasetError, match="short.gz holds 2 bytes"):
        read_idx(truncated)


def test_declared_sizes_are_checked_before_anything_is_read(tmp_path):
    huge = tmp_path / "huge.gz"  # 4e9 x 28 x 28 declared in a 40-byte file
    huge.write_bytes(gzip.compress(bytes([0, 0, 8, 3]) + (4_000_000_000).to_bytes(4, "big") + bytes([0, 0, 0, 28]) * 2))
    with pytest.raises(DatasetError, match=r"huge.gz: its IDX header declares \(4000000000, 28, 28\) images, .* over the 2 GiB limit"):
        read_idx(huge)
    seen = []
    more = tmp_path / "more.gz"
    more.write_bytes(gzip.compress(bytes([0, 0, 8, 1, 0, 0, 0, 2]) + bytes(10)))
    with pytest.raises(DatasetError, match="more.gz holds more data than its header's"):
        read_idx(more, check_dims=seen.append)
    assert seen == [(2,)]  # the caller saw the declared shape before any data was read
    batches = tmp_path / "cifar-10-batches-bin"
    batches.mkdir()
    for name in [f"data_batch_{i}.bin" for i in range(1, 6)] + ["test_batch.bin"]:
        (batches / name).touch()
        os.truncate(batches / name, 10 * 2**30)  # sparse: no disk used
    with pytest.raises(DatasetError, match=f"data_batch_1.bin has {10 * 2**30} bytes, expected {CIFAR10_BATCH_BYTES}"):
        load_dataset("cifar10", data_dir=tmp_path)


def test_unknown_dataset_lists_the_valid_ones():
    with pytest.raises(DatasetError, match="valid: mnist-sample, mnist, fashion_mnist, cifar10, digits, synthetic"):
        load_dataset("imagenet")


def test_digits_and_synthetic_shapes():
    assert load_dataset("digits").input_shape == (8, 8, 1)
    synthetic = load_dataset("synthetic:32x32x3")
    assert synthetic.input_shape == (32, 32, 3) and len(np.unique(synthetic.y_train)) > 5

import gzip

import numpy as np
import pytest

from bench.errors import DatasetError
from bench.spec.data import epoch_batches, load_dataset, read_idx


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


def test_unknown_dataset_lists_the_valid_ones():
    with pytest.raises(DatasetError, match="valid: mnist-sample, mnist, fashion_mnist, cifar10, digits, synthetic"):
        load_dataset("imagenet")


def test_digits_and_synthetic_shapes():
    assert load_dataset("digits").input_shape == (8, 8, 1)
    synthetic = load_dataset("synthetic:32x32x3")
    assert synthetic.input_shape == (32, 32, 3) and len(np.unique(synthetic.y_train)) > 5

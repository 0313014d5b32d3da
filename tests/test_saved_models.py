"""Saved models: trained on one backend, saved neutrally, they predict the same on every other.

The trainer is PyTorch (a few Adam steps on a slice of the bundled MNIST sample, so BatchNorm's
running statistics are no longer 0 and 1). Every other installed backend loads the neutral files
and must give the same argmax and logits within the parity ladder's forward tolerance. Each
framework's native file loads back into that framework; corrupt, truncated or mismatched files are
one clear error; and nothing is ever unpickled.
"""

from __future__ import annotations

import gzip
import json
import os
import pickle
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import safetensors.numpy

import backends
from bench.errors import SavedModelError
from bench.models import saved as saved_format
from bench.models.saved import load_neutral, model_folder_name, save_neutral
from bench.spec.data import epoch_batches, load_dataset, read_idx, scale_images
from bench.spec.model import BUILTIN_MODELS, SEED_MODELS
from bench.spec.shapes import param_specs
from bench.spec.train import TrainSpec
from bench.spec.weights import canonical_weights
from tests.conftest import INSTALLED, loaded_backend, perturbed_weights

ROOT = Path(__file__).resolve().parents[1]
SHAPE = (28, 28, 1)
TRAINER = "torch"
FORWARD_REL = 1e-4
"""The parity ladder's forward tolerance (the CNN's; the MLPs' is 5e-5): max |a - b| over max(|b|, 1% of max |b|)."""
REL_FLOOR = 1e-2

needs_trainer = pytest.mark.skipif(TRAINER not in INSTALLED, reason="the cross-framework check trains on torch")


def rel_diff(actual: np.ndarray, expected: np.ndarray) -> float:
    expected = np.asarray(expected, np.float64)
    floor = REL_FLOOR * np.abs(expected).max()
    return float((np.abs(np.asarray(actual, np.float64) - expected) / np.maximum(np.abs(expected), floor)).max())


@pytest.fixture(scope="module")
def slice_():
    return load_dataset("mnist-sample", train_size=256, test_size=200, val_split=0.0)


@pytest.fixture(scope="module")
def trained(slice_, tmp_path_factory):
    """Per built-in model (the seed models, resnet and vit): the torch-trained model saved neutrally, and
    torch's logits on the test rows."""
    out = {}
    backend = loaded_backend(TRAINER)
    for name in BUILTIN_MODELS:
        model = BUILTIN_MODELS[name].resolve("relu")
        train = TrainSpec(optimizer="adam", learning_rate=0.01, batch_size=32, seed=1)
        backend.build(model, train, SHAPE, 10)
        backend.set_weights(canonical_weights(model, SHAPE, 10, train.seed))
        backend.load_data(slice_.x_train, slice_.y_train)
        for rows in epoch_batches(len(slice_.x_train), train.batch_size, train.seed, 0):
            backend.train_step(rows)
        backend.finish_epoch()
        folder = tmp_path_factory.mktemp(name)
        weights = backend.get_weights()
        save_neutral(folder, model, train, SHAPE, 10, weights, {"backend": TRAINER})
        out[name] = (folder, weights, backend.logits(slice_.x_test))
    return out


@needs_trainer
def test_batchnorm_statistics_are_trained_and_saved_bit_for_bit(trained):
    folder, weights, _ = trained["mlp_bn"]
    loaded = load_neutral(folder)
    for saved, original in zip(loaded.weights, weights, strict=True):
        np.testing.assert_array_equal(saved, original)
    specs = param_specs(loaded.model, SHAPE, 10)
    means = [w for s, w in zip(specs, loaded.weights) if s.name == "moving_mean"]
    variances = [w for s, w in zip(specs, loaded.weights) if s.name == "moving_variance"]
    assert len(means) == 2 and all(np.abs(m).max() > 1e-3 for m in means)
    assert all(np.abs(v - 1.0).max() > 1e-3 for v in variances)


@needs_trainer
@pytest.mark.parametrize("name", [b for b in INSTALLED if b != TRAINER])
@pytest.mark.parametrize("model", list(BUILTIN_MODELS))
def test_a_torch_trained_model_predicts_the_same_on_every_backend(trained, slice_, name, model):
    folder, _, expected = trained[model]
    loaded = load_neutral(folder / saved_format.MANIFEST)
    backend = loaded_backend(name)
    backend.build(loaded.model, loaded.train, loaded.input_shape, loaded.num_classes)
    backend.set_weights(loaded.weights)
    logits = backend.logits(slice_.x_test)
    assert rel_diff(logits, expected) <= FORWARD_REL
    np.testing.assert_array_equal(logits.argmax(axis=1), expected.argmax(axis=1))


@needs_trainer
@pytest.mark.parametrize("name", INSTALLED)
@pytest.mark.parametrize("model", ["mlp_bn", "cnn"])
def test_native_file_round_trips_in_its_own_framework(trained, slice_, name, model, tmp_path):
    _, weights, _ = trained[model]
    spec = SEED_MODELS[model].resolve("relu")
    backend = loaded_backend(name)
    backend.build(spec, TrainSpec(), SHAPE, 10)
    backend.set_weights(weights)
    x = slice_.x_test[:32]
    before = backend.logits(x)
    path = backend.save_native(tmp_path)
    backend.build(spec, TrainSpec(), SHAPE, 10)  # a fresh model with other weights
    backend.set_weights(perturbed_weights(spec, SHAPE, seed=7))
    assert rel_diff(backend.logits(x), before) > 1e-2
    backend.load_native(path)
    np.testing.assert_allclose(backend.logits(x), before, rtol=1e-6, atol=1e-6)
    for restored, original in zip(backend.get_weights(), weights, strict=True):
        np.testing.assert_array_equal(restored, original)


class _Planted:
    """Unpickling this creates a folder: proof that a loader ran pickle's code path."""

    def __init__(self, sentinel: Path) -> None:
        self.sentinel = sentinel

    def __reduce__(self):
        return os.mkdir, (str(self.sentinel),)


@pytest.mark.parametrize("name", [b for b in ("torch", "numpy") if b in INSTALLED])
def test_native_loaders_never_unpickle(name, tmp_path):
    spec = SEED_MODELS["mlp"].resolve("relu")
    backend = loaded_backend(name)
    backend.build(spec, TrainSpec(), SHAPE, 10)
    sentinel = tmp_path / "pickle-ran"
    if name == "torch":
        import torch

        path = tmp_path / "model.pt"
        torch.save({"0.weight": _Planted(sentinel)}, path)
    else:
        path = tmp_path / "model.npz"
        np.savez(path, **{"1.kernel": np.array([_Planted(sentinel)], dtype=object)})
    with pytest.raises((pickle.UnpicklingError, ValueError, RuntimeError)):
        backend.load_native(path)
    assert not sentinel.exists()


# -- the neutral format alone: no framework needed ----------------------------------------------------


@pytest.fixture
def neutral(tmp_path) -> Path:
    model = SEED_MODELS["mlp_bn"].resolve("tanh")
    folder = tmp_path / "model"
    save_neutral(folder, model, TrainSpec(activation="tanh"), SHAPE, 10, perturbed_weights(model, SHAPE), {"backend": "test"})
    return folder


def _rewrite_checksum(folder: Path) -> None:
    manifest = json.loads((folder / "model.json").read_text())
    manifest["weights_sha256"] = saved_format.sha256((folder / "weights.safetensors").read_bytes())
    (folder / "model.json").write_text(json.dumps(manifest))


def test_neutral_files_hold_the_spec_and_canonical_keys(neutral):
    manifest = json.loads((neutral / "model.json").read_text())
    assert manifest["format"] == "bench-neutral-model" and manifest["format_version"] == 1
    assert manifest["model"]["layers"][3] == {"type": "Activation", "activation": "tanh"}
    assert manifest["train"]["activation"] == "tanh" and manifest["input_shape"] == [28, 28, 1]
    tensors = safetensors.numpy.load_file(neutral / "weights.safetensors")
    assert set(tensors) == {p["key"] for p in manifest["parameters"]} and "2.moving_variance" in tensors
    loaded = load_neutral(neutral)
    assert loaded.model == SEED_MODELS["mlp_bn"].resolve("tanh") and loaded.train.activation == "tanh"
    for w, expected in zip(loaded.weights, perturbed_weights(loaded.model, SHAPE), strict=True):
        np.testing.assert_array_equal(w, expected)


@pytest.mark.parametrize(
    "damage,message",
    [
        (lambda f: (f / "weights.safetensors").write_bytes((f / "weights.safetensors").read_bytes()[:5000]), "has sha256"),
        (lambda f: (f / "weights.safetensors").write_bytes(b"\x00" * 64), "has sha256"),
        (lambda f: (f / "model.json").write_text((f / "model.json").read_text().replace('"weights_sha256": "', '"weights_sha256": "0')),
         "records 0"),
        (lambda f: ((f / "weights.safetensors").write_bytes((f / "weights.safetensors").read_bytes()[:5000]), _rewrite_checksum(f)),
         "not a readable safetensors file"),
        (lambda f: (safetensors.numpy.save_file({k: v.astype(np.float64) for k, v in safetensors.numpy.load_file(
            f / "weights.safetensors").items()}, f / "weights.safetensors"), _rewrite_checksum(f)),
         "bytes, more than the model.json spec's .* bytes of float32 weights"),
        (lambda f: os.truncate(f / "weights.safetensors", 10 * 2**30), "is 10,737,418,240 bytes, more than"),  # sparse: no disk used
        (lambda f: os.truncate(f / "model.json", 5 * 2**30), "model.json is 5,368,709,120 bytes, more than any model.json"),
        (lambda f: (f / "model.json").unlink(), "manifest missing"),
        (lambda f: (f / "weights.safetensors").unlink(), "weights missing"),
        (lambda f: (f / "model.json").write_text("{\"format\": "), "not valid JSON"),
        (lambda f: (f / "model.json").write_text((f / "model.json").read_text().replace('"units": 64', '"units": 65')),
         "parameter list does not match"),
        (lambda f: (f / "model.json").write_text((f / "model.json").read_text().replace('"num_classes": 10', '"num_classes": "ten"')),
         "invalid at num_classes"),
    ],
    ids=["truncated", "zeroed", "checksum-mismatch", "truncated-with-matching-checksum", "float64", "padded-to-gigabytes",
         "gigabyte-manifest", "no-manifest",
         "no-weights", "broken-json", "spec-edited", "bad-field"],
)
def test_damaged_neutral_files_are_one_clear_error(neutral, damage, message):
    damage(neutral)
    with pytest.raises(SavedModelError, match=message):
        load_neutral(neutral)


def test_model_folder_names_are_readable_safe_and_unique():
    cell = "torch|mlp_bn|adam|relu|cce|bs64|ep1|lr0.001|fp32|default|synthetic:32x32x3"
    name = model_folder_name(cell, 0)
    assert name.startswith("torch_mlp_bn_adam_relu_cce_bs64_ep1_lr0.001_fp32_default_synthetic-32x32x3_r0_")
    assert model_folder_name(cell, 1) != name
    assert model_folder_name("torch|a/b|x", 0) != model_folder_name("torch|a:b|x", 0)
    assert all(c.isalnum() or c in "._-" for c in model_folder_name("t|../../etc|x y", 0))


def test_predict_reads_idx_files_like_the_same_images_as_npy(neutral, tmp_path, capsys):
    from bench import cli

    idx = ROOT / "bench" / "datasets" / "mnist_t10k" / "t10k-images-idx3-ubyte.gz"
    npy = tmp_path / "images.npy"
    np.save(npy, scale_images(read_idx(idx))[:300])
    outputs = []
    for source in (idx, npy):
        assert cli.main(["predict", "--model", str(neutral), "--backend", "numpy", "--input", str(source), "--probabilities"]) == 0
        outputs.append(capsys.readouterr().out.splitlines())
    assert len(outputs[0]) == 10000 and outputs[0][:300] == outputs[1]
    first = outputs[1][0].split()
    assert len(first) == 11 and int(first[0]) == int(np.argmax([float(p) for p in first[1:]]))
    assert abs(sum(float(p) for p in first[1:]) - 1.0) < 1e-4


# -- the command line -------------------------------------------------------------------------------


def bench(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "bench", *args], capture_output=True, text=True, cwd=ROOT, timeout=600)


def _npy_header_only(path: Path, shape: tuple, descr: str = "<f4") -> Path:
    """An .npy file of a header and no data: what a hostile file claiming ``shape`` looks like."""
    with open(path, "wb") as handle:
        np.lib.format.write_array_header_1_0(handle, {"descr": descr, "fortran_order": False, "shape": shape})
    return path


def _images(path: Path, values: np.ndarray, dtype=np.float32) -> Path:
    np.save(path, values.astype(dtype).reshape(-1, 28, 28, 1))
    return path


def _idx(path: Path, dims: tuple[int, ...], data: bytes = b"") -> Path:
    path.write_bytes(gzip.compress(bytes([0, 0, 8, len(dims)]) + struct.pack(f">{len(dims)}I", *dims) + data))
    return path


def test_predict_input_and_model_errors_are_one_line_and_exit_2(neutral, tmp_path, capsys):
    from bench import cli

    good = tmp_path / "x.npy"
    np.save(good, np.zeros((2, 28, 28, 1), np.float32))
    wrong = tmp_path / "wrong.npy"
    np.save(wrong, np.zeros((2, 32, 32, 3), np.float32))
    truncated = tmp_path / "truncated"
    shutil.copytree(neutral, truncated)
    (truncated / "weights.safetensors").write_bytes((truncated / "weights.safetensors").read_bytes()[:1000])
    run = tmp_path / "run"
    shutil.copytree(neutral, run / "models" / "m1")
    rows = np.random.default_rng(0).random((3, 28 * 28))
    nan, inf = rows.copy(), rows.copy()
    nan[1, 5], inf[2, 0] = np.nan, -np.inf
    cut = tmp_path / "cut.npy"
    cut.write_bytes(good.read_bytes()[:-10])
    hostile = {  # a few bytes each, claiming gigabytes, or values outside the model's domain
        "huge-header": (_npy_header_only(tmp_path / "huge.npy", (10**9, 28, 28)), "has 1,000,000,000 rows, 2,920.6 GiB in memory, over the 2 GiB limit"),
        "huge-header-float64": (_npy_header_only(tmp_path / "huge64.npy", (10**12, 28, 28, 1), "<f8"), "over the 2 GiB limit"),
        "negative-shape": (_npy_header_only(tmp_path / "negative.npy", (-5, 28, 28)), "has shape (-5, 28, 28); the model expects (N, 28, 28, 1)"),
        "header-without-data": (_npy_header_only(tmp_path / "empty.npy", (1000, 28, 28)), "holds 0 bytes of data; its header declares (1000, 28, 28)"),
        "truncated-data": (cut, "(truncated or padded)"),
        "object-dtype": (_npy_header_only(tmp_path / "objects.npy", (2, 28, 28), "|O"), "has dtype object; valid: float"),
        "complex-dtype": (_npy_header_only(tmp_path / "complex.npy", (2, 28, 28), "<c8"), "has dtype complex64"),
        "nan": (_images(tmp_path / "nan.npy", nan), "has 1 NaN or infinite value(s), first in row 1; valid: finite floats in [0, 1]"),
        "infinite": (_images(tmp_path / "inf.npy", inf), "first in row 2"),
        "0-255-floats": (_images(tmp_path / "f255.npy", rows * 255), "valid: floats in [0, 1] (divide 0-255 images by 255)"),
        "standardised": (_images(tmp_path / "z.npy", (rows - 0.5) / 0.3), "has values from -"),
        "beyond-float32": (_images(tmp_path / "big.npy", rows * 1e300, np.float64), "e+299; valid: floats in [0, 1]"),
        "idx-huge-header": (_idx(tmp_path / "huge-idx3-ubyte.gz", (4_000_000_000, 28, 28)), "over the 2 GiB limit"),
        "idx-wrong-shape": (_idx(tmp_path / "wrong-idx3-ubyte.gz", (2, 32, 32), bytes(2048)), "the model expects (N, 28, 28, 1)"),
        "idx-no-rows": (_idx(tmp_path / "none-idx3-ubyte.gz", (0, 28, 28)), "has shape (0, 28, 28)"),
        "idx-inflates-past-header": (_idx(tmp_path / "more-idx3-ubyte.gz", (2, 28, 28), bytes(3 * 784)), "holds more data than its header's (2, 28, 28)"),
    }
    cases = [
        (["--model", str(neutral), "--backend", "mxnet", "--input", str(good)], "unknown backend 'mxnet'; valid: torch, tf, jax, keras-jax, keras-torch, numpy"),
        (["--model", str(neutral), "--backend", "numpy", "--input", str(wrong)], "the model expects (N, 28, 28, 1)"),
        (["--model", str(truncated), "--backend", "numpy", "--input", str(good)], "saved model weights corrupt"),
        (["--model", str(tmp_path / "none"), "--backend", "numpy", "--input", str(good)], "saved model not found"),
        (["--model", str(run), "--backend", "numpy", "--input", str(good)], f"holds 1 saved model(s): give one of them, e.g. --model {run}/models/m1"),
        (["--model", str(good), "--backend", "numpy", "--input", str(good)], "give a model folder, its model.json or its weights.safetensors"),
    ] + [(["--model", str(neutral), "--backend", "numpy", "--input", str(path)], message) for path, message in hostile.values()]
    for args, message in cases:  # in process: each is refused before any framework is imported
        assert cli.main(["predict", *args]) == 2
        captured = capsys.readouterr()
        lines = captured.err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0] and not captured.out, captured.err


def test_predict_takes_the_model_folder_its_manifest_or_any_of_its_files(neutral, tmp_path, capsys):
    from bench import cli

    images = tmp_path / "x.npy"
    np.save(images, np.random.default_rng(1).random((4, 28, 28)).astype(np.float32))  # no channel axis: added
    (neutral / "model.pt").write_bytes(b"the native file")
    manifest = json.loads((neutral / "model.json").read_text())
    (neutral / "model.json").write_text(json.dumps(manifest | {"native_file": "model.pt"}))
    outputs = []
    for path in (neutral, neutral / "model.json", neutral / "weights.safetensors", neutral / "model.pt"):
        assert cli.main(["predict", "--model", str(path), "--backend", "numpy", "--input", str(images)]) == 0
        outputs.append(capsys.readouterr().out)
    assert len(set(outputs)) == 1 and len(outputs[0].split()) == 4
    (neutral / "notes.txt").write_text("not the model")
    assert cli.main(["predict", "--model", str(neutral / "notes.txt"), "--backend", "numpy", "--input", str(images)]) == 2
    assert "not a file of the saved model" in capsys.readouterr().err


def test_an_idx_decompression_bomb_is_refused_within_a_memory_limit(neutral, tmp_path):
    """A 1 MB gzip that inflates to 1 GiB past its small header, read under a 768 MiB address-space
    limit: decompressing it whole (as a regression would) dies of MemoryError, streaming refuses it."""
    member = gzip.compress(bytes(64 * 2**20), 9)  # 64 MiB of zeros, about 64 KB compressed
    bomb = _idx(tmp_path / "bomb-idx3-ubyte.gz", (3, 28, 28), bytes(3 * 784))
    with open(bomb, "ab") as handle:  # further gzip members: the stream goes on after the declared data
        handle.write(member * 16)
    limit = 768 * 2**20
    capped = ("import resource, sys\n"  # set in the child itself: no fork-time hook in a process that runs threads
              f"resource.setrlimit(resource.RLIMIT_AS, ({limit}, {limit}))\n"
              "from bench.cli import main\n"
              "sys.exit(main(sys.argv[1:]))\n")
    result = subprocess.run([sys.executable, "-c", capped, "predict", "--model", str(neutral), "--backend", "numpy",
                             "--input", str(bomb)], capture_output=True, text=True, cwd=ROOT, timeout=120,
                            env=os.environ | {"OPENBLAS_NUM_THREADS": "1"})
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    assert result.stderr.count("\n") == 1 and "holds more data than its header's (3, 28, 28)" in result.stderr


@pytest.mark.slow
@needs_trainer
def test_run_save_then_predict_on_other_frameworks_gives_identical_classes(tmp_path):
    out = tmp_path / "run"
    run = bench("run", "--backend", "torch", "--models", "mlp_bn", "--optimizers", "adam", "--activations", "relu",
                "--train-size", "512", "--save", "--out", str(out), "--no-report")
    assert run.returncode == 0, run.stderr + run.stdout
    (record,) = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    folder = out / record["model_path"]
    assert record["model_path"].startswith("models/torch_mlp_bn_adam_relu_")
    assert {p.name for p in folder.iterdir()} == {"model.json", "weights.safetensors", "model.pt"}
    manifest = json.loads((folder / "model.json").read_text())
    assert manifest["source"]["cell_id"] == record["cell_id"] and manifest["source"]["versions"]["torch"].startswith("2.")

    test = load_dataset("mnist-sample")  # the bundled test split, all 2,000 rows
    np.save(tmp_path / "test.npy", test.x_test)
    predicted = {}
    others = [b for b in ("jax", "tf", "keras-jax", "keras-torch") if backends.unavailable_reason(b) is None]
    for name in others:  # each `bench predict` is a process of its own: any Keras engine
        result = bench("predict", "--model", str(folder), "--backend", name, "--input", str(tmp_path / "test.npy"))
        assert result.returncode == 0, result.stderr
        predicted[name] = np.array(result.stdout.split(), dtype=int)
        assert len(predicted[name]) == 2000
        # the run evaluated the first n_test rows of the same split on torch: same classes, same accuracy
        assert np.mean(predicted[name][: record["n_test"]] == test.y_test[: record["n_test"]]) == record["test_accuracy"]
    for name in others[1:]:
        np.testing.assert_array_equal(predicted[name], predicted[others[0]])

    (folder / "weights.safetensors").write_bytes((folder / "weights.safetensors").read_bytes()[:-100])
    broken = bench("predict", "--model", str(folder), "--backend", "jax", "--input", str(tmp_path / "test.npy"))
    assert broken.returncode == 2 and len(broken.stderr.strip().splitlines()) == 1 and "corrupt" in broken.stderr


@pytest.mark.skipif("tf" not in INSTALLED, reason="Keras' own leaky-ReLU slope (0.3) is what makes this visible")
def test_a_native_policy_model_predicts_the_same_on_every_backend_the_oracle_included(slice_, tmp_path):
    """A model trained under the native policy carries the values it ran (Keras' LeakyReLU slope and
    BatchNorm epsilon), and every backend rebuilds it with them instead of with its own defaults."""
    from bench.models.predict import predict
    from bench.models.saved import save_trained_model

    trainer = loaded_backend("tf")
    model = SEED_MODELS["mlp_bn"].resolve("leaky_relu")
    train = TrainSpec(optimizer="adam", activation="leaky_relu", batch_size=32, seed=1, semantics="native")
    trainer.build(model, train, SHAPE, 10)
    trainer.set_weights(canonical_weights(model, SHAPE, 10, 1))
    trainer.load_data(slice_.x_train, slice_.y_train)
    for rows in epoch_batches(len(slice_.x_train), train.batch_size, train.seed, 0):
        trainer.train_step(rows)
    trainer.finish_epoch()
    assert trainer.train.leaky_relu_slope != TrainSpec().leaky_relu_slope  # Keras' own slope, not the suite's
    record = {"cell_id": "tf|mlp_bn|native", "repeat": 0, "input_shape": list(SHAPE), "num_classes": 10}
    fields = save_trained_model(trainer, record, model, tmp_path)
    saved = load_neutral(tmp_path / fields["model_path"])
    assert saved.train.leaky_relu_slope == trainer.train.leaky_relu_slope
    assert saved.train.bn_epsilon == trainer.train.bn_epsilon
    expected = trainer.predict(slice_.x_test, 100)
    for name in ["numpy", *(b for b in ("torch", "jax") if b in INSTALLED)]:
        assert rel_diff(predict(saved, name, slice_.x_test, 100), expected) < FORWARD_REL, name

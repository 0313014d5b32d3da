"""Data augmentation: the spec, the NumPy reference, every backend's native transforms against it, and a run.

Tolerances: flips, crop, brightness and noise move or add float32 values, so every backend must
equal the reference bit for bit. Rotate and zoom interpolate: each framework computes the sampling
coordinates in float32 (the reference in float64), an error of about 1e-7 relative to coordinates
up to ~30 pixels; bilinear interpolation of values in [0, 1] (zero outside, borders included) turns
that into at most a few 1e-6 (measured <= 1e-6), so ATOL_RESAMPLED = 1e-5. A wrong angle sign or
a swapped axis moves whole pixels and misses it by ~0.1 to 1.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from backends.base import Unsupported
from bench.errors import BenchError, SpecError
from bench.measure import training
from bench.run import grid
from bench.spec import augment
from bench.spec.cell import Cell
from bench.spec.model import SEED_MODELS
from bench.spec.train import AUGMENTATIONS, Augment, TrainSpec
from tests.conftest import ALL, FRAMEWORKS, INSTALLED, loaded_backend

ROOT = Path(__file__).resolve().parents[1]
ATOL_RESAMPLED = 1e-5
EXACT = ("hflip", "vflip", "crop", "brightness", "noise")
SHAPE = (10, 7, 2)  # not square and two channels, so a swapped axis or channel mix-up shows
EVERYTHING = Augment.parse("flip=hv,crop=3,rotate=40,zoom=0.3,brightness=0.3,noise=0.1")


def _images(n: int = 6, shape: tuple[int, ...] = SHAPE, seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).random((n, *shape), dtype=np.float32)


def _only(name: str) -> Augment:
    return Augment(**{name: getattr(EVERYTHING, name)})


# -- the spec --------------------------------------------------------------------------------------
def test_names_with_parameters_defaults_and_flip_modes_parse_and_print_back():
    spec = Augment.parse("flip,rotate=15,zoom=0.1,crop=4,brightness=0.2,noise=0.05")
    assert spec == Augment(hflip=True, rotate=15, zoom=0.1, crop=4, brightness=0.2, noise=0.05)
    assert spec.names == ("hflip", "crop", "rotate", "zoom", "brightness", "noise")
    assert Augment.parse("rotate,noise") == Augment(rotate=15, noise=0.05)  # bare names take the defaults
    assert Augment.parse("flip=v").names == ("vflip",) and Augment.parse("flip=hv").names == ("hflip", "vflip")
    assert Augment.parse("hflip,vflip") == Augment.parse("flip=hv")
    for text in ("none", "", "hflip", "flip=hv,crop=3,rotate=40", EVERYTHING.label):
        assert Augment.parse(Augment.parse(text).label) == Augment.parse(text)
    assert Augment().label == "none" and not Augment().active
    assert Augment.from_table({"flip": "v", "rotate": 30, "noise": True, "zoom": False}) == Augment(vflip=True, rotate=30, noise=0.05)


@pytest.mark.parametrize("text,message", [
    ("blur", "unknown augmentation 'blur'"), ("flip=x", "bad flip mode 'x'"), ("rotate=-3", "greater than or equal to 0"),
    ("zoom=1", "less than 1"), ("crop=2.5", "valid integer"), ("hflip=2", "hflip takes no value"),
    ("flip,hflip", "given twice"),
])
def test_bad_augmentations_are_spec_errors_that_say_what_is_valid(text, message):
    with pytest.raises(SpecError, match=message):
        Augment.parse(text)


def test_the_sweep_axis_always_runs_the_plain_cells_beside_the_augmented_ones():
    assert grid.augment_axis("flip,rotate") == [Augment(), Augment(hflip=True, rotate=15)]
    assert grid.augment_axis(["none;flip", {"noise": 0.1}, "hflip"]) == [Augment(), Augment(hflip=True), Augment(noise=0.1)]
    plain, augmented = (TrainSpec(augment=a) for a in grid.augment_axis("flip"))
    model = SEED_MODELS["mlp"]
    assert Cell("torch", model, plain, "digits").cell_id == "torch|mlp|adam|relu|cce|bs128|ep1|lr0.001|fp32|default|digits"
    assert Cell("torch", model, augmented, "digits").cell_id.endswith("|digits|aug=hflip")
    config = Cell("torch", model, augmented, "digits").config()
    assert config["augment"] == "hflip" and config["augment_interpolation"] == "bilinear" and config["augment_fill"] == "constant 0"
    assert Cell("torch", model, plain, "digits").config()["augment_interpolation"] is None


def test_a_toml_sweep_takes_augment_as_text_or_table(tmp_path):
    def read(text: str) -> list[Augment]:
        path.write_text(text)
        settings, _ = grid.read_toml(path)
        return grid.merge(grid.Sweep(), settings, {"augment": f"config file {path}: [sweep] augment"}).augment

    path = tmp_path / "sweep.toml"
    assert read('[sweep]\naugment = ["flip,rotate=10", {crop = 2}]\n') == [Augment(), Augment(hflip=True, rotate=10), Augment(crop=2)]
    assert read('[sweep.augment]\nflip = "hv"\nnoise = true\n') == [Augment(), Augment(hflip=True, vflip=True, noise=0.05)]
    with pytest.raises(BenchError, match=r"\[sweep\] augment.*unknown augmentation 'sharpen'"):
        read('[sweep]\naugment = "sharpen"\n')


# -- the parameters ----------------------------------------------------------------------------------
def test_parameters_come_from_seed_and_epoch_alone_with_one_stream_per_transform():
    epoch = augment.draw_epoch(EVERYTHING, SHAPE, 4, 6, seed=3, epoch=1)
    again = augment.draw_epoch(EVERYTHING, SHAPE, 4, 6, seed=3, epoch=1)
    assert len(epoch) == 4 and all(np.array_equal(epoch[2][n], again[2][n]) for n in EVERYTHING.names)
    assert not np.array_equal(epoch[0]["rotate"], augment.draw_epoch(EVERYTHING, SHAPE, 4, 6, 3, 2)[0]["rotate"])
    assert np.array_equal(epoch[1]["rotate"], augment.draw_epoch(_only("rotate"), SHAPE, 4, 6, 3, 1)[1]["rotate"])
    step = epoch[3]
    assert step["hflip"].dtype == bool and step["hflip"].shape == (6,)
    assert step["crop"].shape == (6, 2) and step["crop"].min() >= 0 and step["crop"].max() <= 2 * EVERYTHING.crop
    assert np.abs(step["rotate"]).max() <= np.deg2rad(40) and step["zoom"].min() >= 0.7 and step["zoom"].max() <= 1.3
    assert step["noise"].shape == (6, *SHAPE) and step["noise"].dtype == np.float32
    assert set(augment.param_shapes(EVERYTHING, SHAPE)) == set(EVERYTHING.names)


# -- the NumPy reference -------------------------------------------------------------------------------
def test_reference_flip_twice_rotate_zero_zoom_one_and_a_centred_crop_are_identities():
    x, n = _images(), 6
    flip = np.array([True, False, True, True, False, True])
    for name in ("hflip", "vflip"):
        once = augment.REFERENCE[name](x, flip, EVERYTHING)
        assert not np.array_equal(once, x) and np.array_equal(augment.REFERENCE[name](once, flip, EVERYTHING), x)
    assert np.array_equal(augment.REFERENCE["rotate"](x, np.zeros(n, np.float32), EVERYTHING), x)
    assert np.array_equal(augment.REFERENCE["zoom"](x, np.ones(n, np.float32), EVERYTHING), x)
    pad = EVERYTHING.crop
    assert np.array_equal(augment.REFERENCE["crop"](x, np.full((n, 2), pad, np.int32), EVERYTHING), x)
    shifted = augment.REFERENCE["crop"](x, np.zeros((n, 2), np.int32), EVERYTHING)  # window at the padded corner
    assert np.array_equal(shifted[:, pad:, pad:], x[:, :-pad, :-pad]) and not shifted[:, :pad].any() and not shifted[:, :, :pad].any()


def test_reference_rotation_is_counter_clockwise_and_exact_at_quarter_turns():
    x = _images(shape=(8, 8, 1))
    quarter = augment.REFERENCE["rotate"](x, np.full(6, np.pi / 2, np.float32), EVERYTHING)
    np.testing.assert_allclose(quarter, np.rot90(x, 1, axes=(1, 2)), atol=1e-6)  # rot90: counter-clockwise on screen
    zoomed = augment.REFERENCE["zoom"](x, np.full(6, 2.0, np.float32), EVERYTHING)  # pixel 3 samples 3.5 - 0.5 / 2
    expected = 0.5625 * x[:, 3, 3] + 0.1875 * (x[:, 3, 4] + x[:, 4, 3]) + 0.0625 * x[:, 4, 4]
    np.testing.assert_allclose(zoomed[:, 3, 3], expected, atol=1e-6)
    out = augment.REFERENCE["zoom"](x, np.full(6, 0.5, np.float32), EVERYTHING)  # shrink: a zero frame appears
    assert not out[:, 0].any() and not out[:, -1].any() and out[:, 3:5, 3:5].any()


def test_reference_brightness_and_noise_add_exactly_then_clip_to_the_data_range():
    x, n = _images(), 6
    delta = np.linspace(-0.3, 0.3, n).astype(np.float32)
    assert np.array_equal(augment.REFERENCE["brightness"](x, delta, EVERYTHING), np.clip(x + delta[:, None, None, None], 0, 1))
    noise = 0.2 * np.random.default_rng(2).standard_normal(x.shape).astype(np.float32)
    out = augment.REFERENCE["noise"](x, noise, EVERYTHING)
    assert out.dtype == np.float32 and np.array_equal(out, np.clip(x + noise, 0, 1)) and out.min() == 0 and out.max() == 1


# -- every backend against the reference ------------------------------------------------------------
def _check_against_reference(name: str, spec: Augment, shape: tuple[int, ...] = SHAPE, step: int = 0, mode: str = "default") -> None:
    """Build ``name`` with ``spec`` and hold its native augmentation of fixed random images against the reference."""
    backend = loaded_backend(name)
    backend.build(SEED_MODELS["mlp"], TrainSpec(augment=spec, mode=mode), shape, 10)
    x = _images(shape=shape)
    params = augment.draw_epoch(spec, shape, step + 1, len(x), seed=7, epoch=0)[step]
    out, expected = backend.augmented(x, params), augment.apply(spec, x, params)
    assert out.shape == expected.shape and out.dtype == np.float32
    if set(spec.names) <= set(EXACT):
        np.testing.assert_array_equal(out, expected, err_msg=f"{name} {spec.label}")
    else:
        np.testing.assert_allclose(out, expected, rtol=0, atol=ATOL_RESAMPLED, err_msg=f"{name} {spec.label}")


@pytest.mark.parametrize("transform", AUGMENTATIONS)
@pytest.mark.parametrize("name", INSTALLED)
def test_each_backend_transforms_like_the_reference(name, transform):
    _check_against_reference(name, _only(transform))


@pytest.mark.parametrize("name", INSTALLED)
def test_each_backend_runs_the_whole_pipeline_like_the_reference_in_every_mode(name):
    backend = type(loaded_backend(name))
    for mode in backend.modes:
        # TensorFlow cannot resample under XLA (see the Keras test below); CUDA graphs need a GPU
        if mode != "xla" and not backend.modes[mode].gpu_only:
            _check_against_reference(name, EVERYTHING, step=2, mode=mode)
    _check_against_reference(name, Augment(rotate=180, zoom=0.5), shape=(28, 28, 1))


@pytest.mark.parametrize("name", FRAMEWORKS)
def test_a_planted_wrong_angle_sign_fails_the_reference_check(name, monkeypatch):
    backend_class = type(loaded_backend(name))
    native = backend_class.TRANSLATIONS["augment"]["rotate"]
    monkeypatch.setitem(backend_class.TRANSLATIONS["augment"], "rotate", lambda x, angle, a: native(x, -angle, a))
    with pytest.raises(AssertionError, match="Mismatched elements"):
        _check_against_reference(name, _only("rotate"))


def test_a_wrong_angle_sign_in_the_reference_fails_every_backend(monkeypatch):
    if not FRAMEWORKS:
        pytest.skip("no framework installed")
    monkeypatch.setattr(augment, "rotation_inverse", lambda angle, rotation=augment.rotation_inverse: rotation(-angle))
    for name in FRAMEWORKS:
        with pytest.raises(AssertionError, match="Mismatched elements"):
            _check_against_reference(name, _only("rotate"))


# -- inside the training step --------------------------------------------------------------------------
def _train(name: str, spec: Augment, data, steps: int = 4) -> np.ndarray:
    backend = loaded_backend(name)
    train = TrainSpec(batch_size=32, augment=spec)
    training.prepare(backend, SEED_MODELS["mlp"], train, data.x_train, data.y_train, 10)
    batches, params = training.schedule(len(data.x_train), train, backend.input_shape, 0)
    return training.run_steps(backend, batches[:steps], params)[0].losses


@pytest.mark.parametrize("name", FRAMEWORKS)
def test_an_augmented_step_trains_like_the_reference_on_the_transformed_images(name, mnist_small):
    """The step really transforms its batch: its losses follow the oracle trained on the same
    augmentation and leave the plain run's."""
    spec = Augment.parse("flip,crop=2,rotate,zoom,brightness,noise")
    losses = _train(name, spec, mnist_small)
    np.testing.assert_allclose(losses, _train("numpy", spec, mnist_small), rtol=2e-4)
    assert np.abs(losses[1:] - _train(name, Augment(), mnist_small)[1:]).min() > 1e-3


@pytest.mark.parametrize("name", INSTALLED)
def test_steps_refuse_missing_or_unexpected_parameters_and_flat_inputs(name, mnist_small):
    backend = loaded_backend(name)
    training.prepare(backend, SEED_MODELS["mlp"], TrainSpec(augment=Augment(hflip=True)), mnist_small.x_train, mnist_small.y_train, 10)
    with pytest.raises(ValueError, match="parameters missing"):
        backend.train_step(np.arange(8))
    with pytest.raises(SpecError, match=r"needs image inputs \(H, W, C\); this input has shape \(64,\)"):
        backend.build(SEED_MODELS["mlp"], TrainSpec(augment=Augment(noise=0.1)), (64,), 10)


def test_the_jax_step_compiles_once_with_augmentation(mnist_small):
    if "jax" not in INSTALLED:
        pytest.skip("jax not installed")
    backend = loaded_backend("jax")
    _train("jax", EVERYTHING, mnist_small, steps=3)
    training.restart(backend, backend.get_weights())
    batches, params = training.schedule(len(mnist_small.x_train), TrainSpec(batch_size=32, augment=EVERYTHING), (28, 28, 1), 1)
    training.run_steps(backend, batches[:3], params)
    assert backend.compile_count == 1


def test_keras_traces_once_and_refuses_resampling_under_xla(mnist_small):
    if "tf" not in INSTALLED:
        pytest.skip("tensorflow not installed")
    backend = loaded_backend("tf")
    _train("tf", EVERYTHING, mnist_small, steps=3)
    assert backend.trace_count() == 1
    with pytest.raises(Unsupported, match="no XLA kernel"):
        backend.build(SEED_MODELS["mlp"], TrainSpec(mode="xla", augment=Augment(rotate=10)), (28, 28, 1), 10)
    _check_against_reference("tf", Augment(hflip=True, vflip=True, crop=2, brightness=0.2, noise=0.1), mode="xla")


@pytest.mark.parametrize("value,message", [
    ("blur", "unknown augmentation 'blur' in 'blur'; valid: none, flip[=h|v|hv], hflip"),
    ("none;rotate=200", "augmentation rotate='200' in 'rotate=200': Input should be less than or equal to 180"),
])
def test_a_bad_augment_flag_is_one_line_and_exit_2(value, message):
    result = subprocess.run([sys.executable, "-m", "bench", "run", "--augment", value], capture_output=True, text=True,
                            cwd=ROOT, timeout=300)
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1 and message in lines[0], result.stderr


# -- a run, end to end ---------------------------------------------------------------------------------
@pytest.mark.parametrize("dataset,model,extra", [pytest.param("digits", "mlp", [], marks=pytest.mark.slow),
                                                 ("mnist-sample", "cnn", ["--train-size", "512"])])
def test_an_augmented_run_completes_every_cell_and_reports_the_cost_per_backend(tmp_path, dataset, model, extra):
    if not ALL:
        pytest.skip("no framework installed")
    out = tmp_path / "run"
    result = subprocess.run(
        [sys.executable, "-m", "bench", "run", "--backend", "all", "--dataset", dataset, "--models", model,
         "--optimizers", "adam", "--activations", "relu", "--augment", "flip,rotate,noise", "--out", str(out), *extra],
        capture_output=True, text=True, cwd=ROOT, timeout=900)
    assert result.returncode == 0, result.stderr + result.stdout
    records = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    finished = [r for r in records if r["backend"] in ALL]
    assert {r["status"] for r in finished} == {"ok"} and len(finished) == 2 * len(ALL)
    assert {r["augment"] for r in finished} == {"none", "hflip,rotate=15,noise=0.05"}
    augmented = [r for r in finished if r["augment"] != "none"]
    assert all(r["augment_interpolation"] == "bilinear" and r["augment_fill"] == "constant 0" for r in augmented)
    html = (out / "report.html").read_text()
    assert 'id="augmentation"' in html and "Throughput ratio" in html
    import pandas as pd

    table = pd.read_csv(out / "augmentation.csv")
    assert sorted(table["backend"]) == sorted(ALL) and (table["throughput_ratio"] > 0).all()


# -- the report ----------------------------------------------------------------------------------------
def test_the_report_gives_each_backend_its_augmentation_cost_against_its_plain_twins(tmp_path):
    import pandas as pd

    from reports import build_report
    from reports.headline import headlines
    from reports.records import load_run, plain_records
    from tests.test_reports import make_record, write_run

    rng, records, facts = np.random.default_rng(0), [], augment.record_fields(Augment(hflip=True))
    for backend, mode, cost in (("torch", "eager", 0.8), ("jax", "jit", 0.4)):
        for repeat in range(3):
            plain = make_record(backend, mode, "mlp", "adam", "relu", repeat, rng, noise=0.01)
            flipped = make_record(backend, mode, "mlp", "adam", "relu", repeat, rng, speed_factor=cost, noise=0.01)
            records += [plain | augment.record_fields(Augment()),
                        flipped | facts | {"cell_id": flipped["cell_id"] + "|aug=hflip", "test_accuracy": plain["test_accuracy"] - 0.02}]
    result = build_report(write_run(tmp_path / "run", records))
    table = pd.read_csv(result.augmentation_csv).set_index("backend")
    assert table.loc["torch", "throughput_ratio"] == pytest.approx(0.8, rel=0.05)
    assert table.loc["jax", "throughput_ratio"] == pytest.approx(0.4, rel=0.05)
    assert table["test_accuracy_change"].to_list() == pytest.approx([-0.02, -0.02]) and set(table["augment"]) == {"hflip"}
    html = result.html.read_text()
    assert 'id="augmentation"' in html and "0.8" in html and "constant 0" in html
    assert (tmp_path / "run" / "figures" / "augmentation_cost.png").is_file()
    heads = headlines(plain_records(load_run(tmp_path / "run").records), "torch")  # the headline compares plain training
    torch_row = next(r for r in heads[0].rows if r.variant == "torch")
    assert torch_row.entries["train_samples_per_s"].value.value == pytest.approx(52_000, rel=0.05)

    plain_only = build_report(write_run(tmp_path / "plain", [r for r in records if r["augment"] == "none"]))
    assert 'id="augmentation"' not in plain_only.html.read_text() and pd.read_csv(plain_only.augmentation_csv).empty

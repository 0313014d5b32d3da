"""The command line as a user meets it: the command table, the listing, the fairness text and a real
run folder (bad input: test_bad_input.py)."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import pytest

from backends.device import CPU_DEVICE_TIME
from bench.cli import COMMANDS
from bench.measure import harness, load, throughput, verdicts
from bench.results.phases import PHASES
from bench.results.record import SCHEMA_VERSION
from bench.run.executors import process
from bench.run.fairness import fairness_rules
from bench.spec import augment, cell, semantics
from reports.headline import headlines
from reports.metrics import HEADLINE
from reports.records import load_run

ROOT = Path(__file__).resolve().parents[1]


def bench(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "bench", *args], capture_output=True, text=True,
                          cwd=cwd or ROOT, timeout=600)


def test_list_names_everything_and_which_backends_are_installed():
    result = bench("list")
    assert result.returncode == 0
    for word in ("torch", "tf", "jax", "numpy", "mlp_bn", "momentum", "leaky_relu", "mnist-sample", "hinge"):
        assert word in result.stdout


def test_an_unknown_command_is_one_line_naming_the_commands_and_exit_2():
    result = bench("frobnicate")
    assert result.returncode == 2 and result.stdout == ""
    assert len(result.stderr.splitlines()) == 1 and "frobnicate" in result.stderr, result.stderr
    assert all(name in result.stderr for name in COMMANDS)


def test_a_command_loads_only_its_own_modules():
    """``bench list`` stays fast: parity's scipy.stats and the reports' pandas are not imported for it."""
    script = ("import contextlib, io, sys; from bench.cli import main\n"
              "with contextlib.redirect_stdout(io.StringIO()): code = main(['list'])\n"
              "print(code, *sorted(m for m in ('bench.parity', 'pandas', 'scipy.stats') if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert result.stdout.split() == ["0"], result.stdout + result.stderr


@pytest.mark.parametrize(("module", "name", "value", "rule", "shown"), [
    (semantics, "HARMONISED_INIT", "lecun_normal", "initial weights", "(lecun_normal,"),
    (harness, "TIMING_METHOD", "a sundial", "timing", "; a sundial;"),
    (augment, "INTERPOLATION", "bicubic", "augmentation", "bicubic interpolation"),
    (augment, "FILL", "reflect", "augmentation", "reflect fill"),
    (augment, "ORDER", "noise, hflip", "augmentation", "order noise, hflip"),
    (throughput, "MIN_WINDOWS", 4, "throughput", "at least 4 auto-ranged windows"),
    (cell, "DEFAULT_MIN_SECONDS", 0.75, "throughput", "at least 0.75 s"),
    (load, "FOREIGN_CPU_LIMIT", 0.4, "throughput", "more than 0.4 core"),
    (load, "STEAL_LIMIT", 0.2, "throughput", "more than 20% of each core"),
    (throughput, "MAX_REMEASURES", 5, "throughput", "at most 5 times"),
    (verdicts, "LOSS_BOUND", 5e7, "divergence", "above 5e+07"),
    (verdicts, "EXPLOSION_FACTOR", 250.0, "divergence", "above 250x"),
    (process, "OMP_WAIT_POLICY", "ACTIVE", "threads", "OMP_WAIT_POLICY=ACTIVE"),
])
def test_the_fairness_text_is_rendered_from_the_constants_it_describes(monkeypatch, module, name, value, rule, shown):
    before = fairness_rules()[rule]
    monkeypatch.setattr(module, name, value)
    after = fairness_rules()[rule]
    assert shown not in before and shown in after, after


def test_a_run_writes_the_folder_records_every_outcome_and_resumes(tmp_path):
    pytest.importorskip("torch")
    config = tmp_path / "sweep.toml"
    config.write_text(
        '[sweep]\noptimizers = ["adam", "sgd"]\nactivations = ["relu"]\ntrain_size = 600\ntest_size = 200\n'
        '[models.tiny]\nlayers = [{type = "Flatten"}, {type = "Dense", units = 16, activation = "hidden"},'
        ' {type = "Dense", units = 10}]\n'
    )
    out = tmp_path / "run"
    args = ["run", "--backend", "torch", "--config", str(config), "--models", "tiny,mlp", "--out", str(out)]
    first = bench(*args, "--learning-rate", "0.001")
    assert first.returncode == 0, first.stderr + first.stdout
    for name in ("results.jsonl", "environment.json", "results.csv", "summary.csv", "report.html"):
        assert (out / name).is_file(), name
    records = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert len(records) == 4 and {r["status"] for r in records} == {"ok"}
    assert {r["model"] for r in records} == {"tiny", "mlp"}
    assert {(r["schema_version"], r["run_id"]) for r in records} == {(SCHEMA_VERSION, "run")}
    for head in headlines(load_run(out).records, "torch"):  # the terminal shows the report's headline
        entry = head.rows[0].entries
        for metric in HEADLINE:
            assert metric.format(entry[metric.field].value.value) in first.stdout, (head.model, metric.field)
    header = next(line.split() for line in first.stdout.splitlines() if line.split()[:1] == ["backend"])
    assert header == ["backend", "start", *(phase.column for phase in PHASES), "other", "total", "cache"]
    environment = json.loads((out / "environment.json").read_text())
    assert environment["versions"]["torch"].startswith("2.") and environment["matmul_peak_gflops"] > 0
    assert environment["device"]["device"] == "cpu" and environment["device"]["worker_environment"]["JAX_PLATFORMS"] == "cpu"
    assert {(r["device_kind"], r["device_time_method"], r["peak_gflops"]) for r in records} == {
        ("cpu", CPU_DEVICE_TIME, environment["matmul_peak_gflops"])}

    again = bench(*args, "--learning-rate", "0.001")
    assert again.returncode == 0 and "0 cells to run (4 already" in again.stdout
    assert len((out / "results.jsonl").read_text().splitlines()) == 4

    other = bench(*args, "--learning-rate", "1e6", "--activations", "linear")  # one folder holds one sweep
    assert other.returncode == 2 and "learning_rate: 0.001 -> 1000000.0" in other.stderr
    assert "activations" in other.stderr and len((out / "results.jsonl").read_text().splitlines()) == 4

    diverging = bench(*args[:-1], str(tmp_path / "diverging"), "--learning-rate", "1e6", "--activations", "linear")
    assert diverging.returncode == 0, diverging.stderr
    statuses = [json.loads(line)["status"] for line in (tmp_path / "diverging" / "results.jsonl").read_text().splitlines()]
    assert "diverged" in statuses


@pytest.mark.parametrize("dataset", ["synthetic", "digits", "mnist", "mnist-sample"])
@pytest.mark.parametrize("sizes", [{"test_size": 64}, {"train_size": 300, "test_size": 64}])
def test_the_sizes_a_config_file_sets_reach_the_sweep_on_every_dataset(dataset, sizes, tmp_path):
    """A branch once cleared train_size and test_size on any dataset but the bundled sample, to undo the
    quick profile's slice; the profiles slice nothing now (Sweep.model_sizes does), and it dropped a
    file's test_size on downloaded and generated datasets."""
    from bench.run import flags

    config = tmp_path / "sweep.toml"
    config.write_text(f'[sweep]\ndataset = "{dataset}"\n' + "".join(f"{key} = {value}\n" for key, value in sizes.items()))
    parser = argparse.ArgumentParser()
    flags.add_run_arguments(parser)
    sweep, where = flags.build_sweep(parser.parse_args(["--config", str(config)]))
    assert (sweep.dataset, sweep.train_size, sweep.test_size) == (dataset, sizes.get("train_size"), 64)
    assert where["test_size"] == f"config file {config}: [sweep] test_size"


@pytest.mark.parametrize(("flags", "toml", "cnn_sizes"), [
    ([], "", (128, 128, 128)),  # the quick profile's slice stands when nothing overrides it
    (["--train-size", "2048"], "", (None, None, 128)),  # a flag beats the profile's per-model train/val rows
    ([], "train_size = 2048\n", (None, None, 128)),  # so does the config file
    ([], "test_size = 64\n", (128, 128, None)),
    ([], "train_size = 2048\ntest_size = 64\n", (None, None, None)),
    # per-model sizes given at the same level as a global size are more specific, and stay
    ([], "train_size = 2048\n[sweep.model_sizes.cnn]\ntrain = 256\n", (256, None, None)),
    (["--train-size", "1024"], "[sweep.model_sizes.cnn]\ntrain = 256\nval = 64\n", (None, None, None)),
])
def test_an_explicit_size_beats_the_per_model_sizes_of_an_earlier_level(flags, toml, cnn_sizes, tmp_path):
    """Flags override profiles, per-model sizes included: a user who asks for 2,048 training rows gets
    them for the CNN too, not the quick profile's 128-row slice (the cells' sizes say what they train on)."""
    from bench.run import flags as run_flags
    from bench.run import grid

    argv = list(flags)
    if toml:
        config = tmp_path / "sweep.toml"
        config.write_text("[sweep]\n" + toml)
        argv += ["--config", str(config)]
    parser = argparse.ArgumentParser()
    run_flags.add_run_arguments(parser)
    sweep, _ = run_flags.build_sweep(parser.parse_args(argv + ["--models", "mlp,cnn", "--backend", "numpy"]))
    cells = grid.cells(sweep, ["numpy"], ["mlp", "cnn"], 2048)
    assert {c.sizes for c in cells if c.model.name == "cnn"} == {cnn_sizes}
    assert {c.sizes for c in cells if c.model.name == "mlp"} == {(None, None, None)}
    # the quick profile measures its sliced CNN for speed only; sizes the user chose make it a result again
    assert {c.throughput_only for c in cells if c.model.name == "cnn"} == {cnn_sizes == (128, 128, 128)}
    assert not any(c.throughput_only for c in cells if c.model.name == "mlp")
    # every record says where each size came from
    for one in cells:
        sources = one.config()["split_sources"]
        assert set(sources) == {"train", "val", "test"}
        if one.model.name == "cnn" and cnn_sizes[0] == 128:
            assert sources["train"] == "profile 'quick' model_sizes (cnn: 128 rows)"
        if "--train-size" in flags:
            assert sources["train"].startswith("--train-size (")


def test_a_default_model_that_cannot_fit_is_skipped_once_with_the_reason(tmp_path):
    pytest.importorskip("torch")
    out = tmp_path / "digits"
    args = ["run", "--backend", "torch", "--dataset", "digits", "--optimizers", "adam", "--activations", "relu",
            "--epochs", "1", "--min-window", "0.05", "--window-budget", "0.5",
            "--out", str(out)]
    assert bench(*args).returncode == 0
    assert bench(*args).returncode == 0  # resumed: nothing new, nothing duplicated
    records = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert all(r["schema_version"] == SCHEMA_VERSION for r in records)
    assert sorted((r["model"], r["status"]) for r in records) == [
        ("cnn", "skipped"), ("mlp", "ok"), ("mlp_bn", "ok"), ("mlp_dropout", "ok")]
    assert "does not fit" in next(r["reason"] for r in records if r["model"] == "cnn")

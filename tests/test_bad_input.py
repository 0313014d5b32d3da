"""Every bad input a user can give is one line on stderr and exit status 2: no traceback, and a run
folder given as ``--out`` is left byte for byte as it was (nothing is written before all input is checked).

The table runs the CLI in-process (``bench.cli.main``) for speed; a few real ``python -m bench``
processes show that no traceback reaches a terminal. Argument placeholders: ``{run}`` is an existing
run folder, ``{tmp}`` a fresh folder holding the case's ``files``.
"""

from __future__ import annotations

import errno
import json
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import matplotlib
import numpy as np
import pandas as pd
import pytest
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

import backends
from bench.cli import main
from bench.errors import BenchError
from bench.results import store as store_module
from bench.results.record import SCHEMA_VERSION
from bench.results.store import RunStore, read_records
from reports import build_report
from reports.escape import csv_cell, plain
from tests.test_reports import make_record, make_records, write_run

ROOT = Path(__file__).resolve().parents[1]
SMALL = "run --backend numpy --models mlp --optimizers adam --activations relu"
"""The prefix of every ``run`` case: a sweep of seconds, should a case wrongly get past the checks.
A case's own flags come after it and win."""
MLP_TOML = '[models.tiny]\nlayers = [{type = "Flatten"}, {type = "Dense", units = 10}]\n'


@dataclass(frozen=True)
class Case:
    args: str
    message: str
    files: dict[str, str | bytes] = field(default_factory=dict)
    patch: Callable[[pytest.MonkeyPatch], None] | None = None


def _no_jax(monkeypatch: pytest.MonkeyPatch) -> None:
    real = backends.missing_packages
    monkeypatch.setattr(backends, "missing_packages", lambda name: ["jax"] if name == "jax" else real(name))


def _no_ray_cluster(monkeypatch: pytest.MonkeyPatch) -> None:
    """A short connection timeout, and a Ray temporary folder where no cluster has left its address."""
    empty = Path(tempfile.gettempdir()) / "bench-test-no-ray-cluster"
    empty.mkdir(exist_ok=True)
    monkeypatch.setenv("BENCH_RAY_CONNECT_TIMEOUT", "3")
    monkeypatch.setenv("RAY_TMPDIR", str(empty))
    monkeypatch.delenv("RAY_ADDRESS", raising=False)


def _ray(flags: str, message: str) -> Case:
    return Case(f"{SMALL} --executor ray {flags}", message, patch=_no_ray_cluster)


def _toml(text: str, message: str) -> Case:
    return Case(f"{SMALL} --config {{tmp}}/sweep.toml", message, {"sweep.toml": text})


OTHER_RUN = {"other/results.jsonl": json.dumps({"cell_id": "torch|resnet|elsewhere", "repeat": 0, "status": "ok",
                                                "backend": "torch", "model": "resnet"}) + "\n"}
NEWER_RUN = {"newer/results.jsonl": json.dumps({"cell_id": "a", "repeat": 0, "status": "ok", "backend": "torch"}) + "\n"
             + json.dumps({"schema_version": SCHEMA_VERSION + 1, "cell_id": "b", "repeat": 0, "status": "ok"}) + "\n"}
NEWER_MESSAGE = f"newer/results.jsonl, line 2: a record was written by record schema version {SCHEMA_VERSION + 1}"

CASES = {
    # names, each with what is valid and, for a typo, the likely intent
    "unknown backend": Case(f"{SMALL} --backend mxnet", "--backend: unknown backend 'mxnet'; valid: torch, tf, jax, keras-jax, keras-torch, numpy, all, keras"),
    "backend typo": Case(f"{SMALL} --backend jaxx", "unknown backend 'jaxx' (did you mean 'jax'?)"),
    "unknown model": Case(f"{SMALL} --models xyz", "--models: unknown model 'xyz'; valid: mlp, mlp_bn, mlp_dropout, cnn, resnet, vit"),
    "model typo": Case(f"{SMALL} --models mpl", "unknown model 'mpl' (did you mean 'mlp'?)"),
    "unknown optimizer": Case(f"{SMALL} --optimizers adagrad", "unknown optimizer 'adagrad'; valid: sgd, momentum, rmsprop, adam, adamw"),
    "optimizer typo": Case(f"{SMALL} --optimizers adma", "--optimizers: unknown optimizer 'adma' (did you mean 'adam'?)"),
    "unknown activation": Case(f"{SMALL} --activations gelu", "unknown activation 'gelu'"),
    "activation typo": Case(f"{SMALL} --activations rleu", "(did you mean 'relu'?)"),
    "loss typo": Case(f"{SMALL} --losses hinje", "--losses: unknown loss 'hinje' (did you mean 'hinge'?)"),
    "precision": Case(f"{SMALL} --precision tf31", "--precision: unknown precision 'tf31' (did you mean 'tf32'?)"),
    "unknown dataset": Case(f"{SMALL} --dataset imagenet", "unknown dataset 'imagenet'"),
    "dataset typo": Case(f"{SMALL} --dataset fashion-mnist", "(did you mean 'fashion_mnist'?)"),
    "profile typo": Case(f"{SMALL} --profile quik", "--profile: unknown profile 'quik' (did you mean 'quick'?)"),
    "empty list": Case(f"{SMALL} --models ,", "--models []: list should have at least 1 item"),
    "mode no backend has": Case(f"{SMALL} --backend numpy --modes compiled",
                                "--modes 'compiled': no selected backend (numpy) has this execution mode; valid: default, best, eager"),
    "mode typo": Case(f"{SMALL} --backend torch --modes compile", "(did you mean 'compiled'?); valid: default, best, eager, compiled"),
    # numbers out of range: the flag, the value and what is valid
    "negative learning rate": Case(f"{SMALL} --learning-rate -0.1", "--learning-rate -0.1: input should be greater than 0; valid: a finite number > 0"),
    "zero learning rate": Case(f"{SMALL} --learning-rate 0", "--learning-rate 0.0: input should be greater than 0"),
    "NaN learning rate": Case(f"{SMALL} --learning-rate nan", "--learning-rate nan: input should be a finite number"),
    "infinite learning rate": Case(f"{SMALL} --learning-rate inf", "--learning-rate inf: input should be a finite number"),
    "zero threads": Case(f"{SMALL} --threads 0", "--threads 0: valid: 1 to"),
    "more threads than cores": Case(f"{SMALL} --threads 100000", "--threads 100000: valid: 1 to"),
    "zero cell timeout": Case(f"{SMALL} --cell-timeout 0", "--cell-timeout 0.0: valid: a finite number of seconds > 0"),
    "negative cell timeout": Case(f"{SMALL} --cell-timeout -5", "--cell-timeout -5.0"),
    "NaN cell timeout": Case(f"{SMALL} --cell-timeout nan", "--cell-timeout nan"),
    "negative train size": Case(f"{SMALL} --train-size -100", "--train-size -100: input should be greater than or equal to 1"),
    "train size under one batch": Case(f"{SMALL} --train-size 40",
                                       "profile 'quick' batch_sizes 64: larger than the 36 training samples (--train-size 40 less "
                                       "the 0.1 validation split); valid: a batch size up to 36"),
    "batch larger than the training set": Case(f"{SMALL} --batch-size 64,10000",
                                               "--batch-size 10000: larger than the 7200 training samples"),
    "zero batch size": Case(f"{SMALL} --batch-size 0", "--batch-size 0: input should be greater than or equal to 1"),
    "text batch size": Case(f"{SMALL} --batch-size many", "--batch-size 'many': not an integer; valid: positive integers or 'full'"),
    "target zero": Case(f"{SMALL} --target 0", "--target 0.0: input should be greater than 0; valid: a fraction in (0, 1]"),
    "target over one": Case(f"{SMALL} --target 1.01", "--target 1.01: input should be less than or equal to 1"),
    "negative seed": Case(f"{SMALL} --seed -1", "--seed -1: input should be greater than or equal to 0"),
    "validation split one": Case(f"{SMALL} --val-split 1", "--val-split 1.0: input should be less than 1; valid: a fraction in [0, 1)"),
    "negative validation split": Case(f"{SMALL} --val-split -0.1", "--val-split -0.1"),
    "zero repeats": Case(f"{SMALL} --repeats 0", "--repeats 0: input should be greater than or equal to 1"),
    "float epochs": Case(f"{SMALL} --epochs 1.5", "argument --epochs: invalid int value: '1.5'"),
    "unknown flag": Case(f"{SMALL} --learningrate 0.1", "unrecognized arguments: --learningrate"),
    "bad device": Case(f"{SMALL} --device tpu", "argument --device: invalid choice: 'tpu'"),
    "unknown compile cache": Case(f"{SMALL} --compile-cache hot",
                                  "--compile-cache 'hot': input should be 'warm', 'cold' or 'off'; valid: warm, cold, off"),
    # synthetic shapes
    "synthetic zero": Case(f"{SMALL} --dataset synthetic:0x28x1", "bad synthetic shape '0x28x1': a dimension is 0"),
    "synthetic negative": Case(f"{SMALL} --dataset synthetic:-28x28x1", "bad synthetic shape '-28x28x1'; valid: synthetic:HxWxC"),
    "synthetic malformed": Case(f"{SMALL} --dataset synthetic:28x28", "bad synthetic shape '28x28'"),
    "synthetic terabytes": Case(f"{SMALL} --dataset synthetic:100000x100000x3",
                                "synthetic:100000x100000x3 would need 670,552.3 GiB (6000 float32 images), over the 2 GiB limit"),
    "shape on a real dataset": Case(f"{SMALL} --dataset mnist:32x32x3", "only synthetic takes a shape"),
    # dataset files, the model, the machine
    "missing dataset file": Case(f"{SMALL} --dataset mnist --data-dir {{tmp}}/none", "dataset file missing: "),
    "corrupt dataset file": Case(f"{SMALL} --dataset mnist --data-dir {{tmp}}",
                                 "dataset file corrupt: ", {"train-images-idx3-ubyte.gz": b"half a download"}),
    "model that does not fit": Case(f"{SMALL} --dataset digits --models cnn", "does not fit the 2x2 input"),
    "framework not installed": Case(f"{SMALL} --backend jax", "--backend: backend 'jax' is not available: jax not installed",
                                    patch=_no_jax),
    "unwritable output folder": Case(f"{SMALL} --out {{tmp}}/a-file/run", "cannot write to output folder", {"a-file": ""}),
    # the TOML file
    "config not found": Case(f"{SMALL} --config {{tmp}}/none.toml", "config file not found"),
    "config is a directory": Case(f"{SMALL} --config {{tmp}}", "is a directory; valid: a TOML file"),
    "config not UTF-8": _toml("\udcff", "is not UTF-8 text"),
    "broken TOML": _toml("[sweep]\nmodels = [\n", "is not valid TOML"),
    "unknown table": _toml("[sweeps]\n", "unknown table '[sweeps]' (did you mean '[sweep]'?); valid: [sweep], [models.NAME]"),
    "sweep not a table": _toml("sweep = 3\n", "[sweep] must be a table, got 3"),
    "unknown sweep key": _toml("[sweep]\nlearnig_rate = 0.1\n", "unknown [sweep] key 'learnig_rate' (did you mean 'learning_rate'?)"),
    "string for a number": _toml('[sweep]\nepochs = "3"\n', "[sweep] epochs '3': input should be a valid integer; valid: an integer >= 1"),
    "string learning rate": _toml('[sweep]\nlearning_rate = "1e-3"\n', "[sweep] learning_rate '1e-3': input should be a valid number"),
    "float repeats": _toml("[sweep]\nrepeats = 2.0\n", "[sweep] repeats 2.0: input should be a valid integer"),
    "boolean seed": _toml("[sweep]\nseed = true\n", "[sweep] seed True: input should be a valid integer"),
    "number for a list": _toml("[sweep]\nbatch_sizes = 64\n", "[sweep] batch_sizes 64: input should be a valid list"),
    "string for a list": _toml('[sweep]\nmodels = "mlp"\n', "[sweep] models 'mlp': input should be a valid list"),
    "TOML value out of range": _toml("[sweep]\nval_split = 1.5\n", "[sweep] val_split 1.5: input should be less than 1"),
    "TOML unknown backend": _toml('[sweep]\nbackends = ["mxnet"]\n', "[sweep] backends: unknown backend 'mxnet'"),
    "TOML mode no backend has": Case(f"{SMALL} --backend torch --config {{tmp}}/sweep.toml",
                                     "[sweep] modes 'jit': no selected backend (torch) has this execution mode",
                                     {"sweep.toml": '[sweep]\nmodes = ["jit"]\n'}),
    "TOML undefined model": _toml('[sweep]\nmodels = ["tiny", "big"]\n' + MLP_TOML,
                                  "[sweep] models: unknown model 'big'; valid: mlp, mlp_bn, mlp_dropout, cnn, resnet, vit, tiny"),
    "custom model redefines a built-in": _toml('[models.mlp]\nlayers = [{type = "Dense", units = 10}]\n',
                                               "[models.mlp] redefines the built-in model 'mlp'"),
    "unknown key in a model table": _toml(MLP_TOML + 'activation = "relu"\n', "[models.tiny]: unknown key 'activation'"),
    "model key typo": _toml('[models.tiny]\nlayer = []\n', "unknown key 'layer' (did you mean 'layers'?); valid: layers, description"),
    "model without layers": _toml('[models.tiny]\ndescription = "x"\n', "[models.tiny] has no layers list"),
    "model not a table": _toml("[models]\ntiny = 3\n", "[models.tiny] must be a table, got 3"),
    "empty layers": _toml("[models.tiny]\nlayers = []\n", "[models.tiny] layers []: list should have at least 1 item"),
    "layer type typo": _toml('[models.tiny]\nlayers = [{type = "Dens", units = 10}]\n',
                             "layer 0: unknown layer type 'Dens' (did you mean 'Dense'?); valid: Flatten, Dense"),
    "layer key typo": _toml('[models.tiny]\nlayers = [{type = "Dense", unit = 10}]\n',
                            "layer 0 (Dense): unknown key 'unit' (did you mean 'units'?); valid: units, activation"),
    "layer string for a number": _toml('[models.tiny]\nlayers = [{type = "Dense", units = "10"}]\n',
                                       "layer 0 (Dense) units '10': input should be a valid integer"),
    "layer activation typo": _toml('[models.tiny]\nlayers = [{type = "Dense", units = 10, activation = "tahn"}]\n',
                                   "unknown activation 'tahn' (did you mean 'tanh'?)"),
    # a Ray cluster that cannot be reached: found before the run folder is created
    "unreachable Ray address": _ray("--ray-address 127.0.0.1:1",
                                    "--ray-address 127.0.0.1:1: no Ray cluster answered within 3 s ($BENCH_RAY_CONNECT_TIMEOUT"),
    "Ray auto without a cluster": _ray("--ray-address auto", "--ray-address auto: cannot connect to a Ray cluster "
                                                            "(ConnectionError: Could not find any running Ray instance"),
    "empty Ray address": _ray("--ray-address ''", "--ray-address '': empty; valid: auto, HOST:PORT or ray://HOST:PORT"),
    "NaN GPUs per cell": _ray("--gpus-per-cell nan", "--gpus-per-cell must be a finite number, 0 or more, got nan"),
    "Ray timeout not a number": Case(f"{SMALL} --executor ray --ray-address auto", "BENCH_RAY_CONNECT_TIMEOUT='soon': valid",
                                     patch=lambda mp: mp.setenv("BENCH_RAY_CONNECT_TIMEOUT", "soon")),
    # the other subcommands
    "report of no folder": Case("report {tmp}/none", "does not exist"),
    "compare with nothing in common": Case("compare {tmp}/other {run} --fail-on 0.05", "share no cell", OTHER_RUN),
    "report of a newer record schema": Case("report {tmp}/newer", NEWER_MESSAGE, NEWER_RUN),
    "compare with a newer record schema": Case("compare {run} {tmp}/newer", NEWER_MESSAGE, NEWER_RUN),
    "parity unknown model": Case("parity --models nosuch", "--models: unknown value 'nosuch'; valid: mlp, mlp_bn, mlp_dropout, cnn, resnet, vit, all"),
    "parity unknown backend": Case("parity --backend nosuch", "unknown backend 'nosuch'"),
}


def snapshot(folder: Path) -> dict[str, tuple[bytes, int]]:
    """Every file under ``folder`` with its bytes and modification time."""
    return {str(p.relative_to(folder)): (p.read_bytes(), p.stat().st_mtime_ns) for p in sorted(folder.rglob("*"))
            if p.is_file()} | {str(p.relative_to(folder)) + "/": (b"", 0) for p in folder.rglob("*") if p.is_dir()}


@pytest.fixture(scope="module")
def run_folder(tmp_path_factory) -> Path:
    """An existing run folder, as `bench run` leaves one: records (one cut short by a crash) and environment."""
    folder = write_run(tmp_path_factory.mktemp("existing") / "run", make_records(repeats=1)[:6])
    with open(folder / "results.jsonl", "a") as handle:
        handle.write('{"cell_id": "torch|cut')
    return folder


def _argv(case: Case, run: Path, tmp: Path) -> list[str]:
    for name, content in case.files.items():
        path = tmp / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content, encoding="utf-8", errors="surrogateescape")
    argv = shlex.split(case.args.format(run=run, tmp=tmp))
    if argv[0] == "run" and "--out" not in argv:
        argv += ["--out", str(run)]
    return argv


def _main(argv: list[str]) -> int:
    try:
        return main(argv)
    except SystemExit as exc:  # argparse's usage errors
        return exc.code


@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
def test_bad_input_is_one_line_exit_2_and_changes_nothing(case, run_folder, tmp_path, capsys, monkeypatch):
    if case.patch:
        case.patch(monkeypatch)
    before = snapshot(run_folder)
    argv = _argv(case, run_folder, tmp_path)
    code = _main(argv)
    out, err = capsys.readouterr()
    assert code == 2, (code, out, err)
    assert err.count("\n") == 1 and err.startswith("error: "), err
    assert case.message in err, err
    assert "Traceback" not in out + err
    assert snapshot(run_folder) == before
    if argv[0] == "run" and str(run_folder) in argv:  # a fresh --out is not even created
        fresh = tmp_path / "fresh"
        assert _main([a if a != str(run_folder) else str(fresh) for a in argv]) == 2
        assert not fresh.exists()
        capsys.readouterr()


@pytest.mark.parametrize("args,message", [
    (f"{SMALL} --learning-rate nan --out {{run}}", "--learning-rate nan"),
    (f"{SMALL} --config {{tmp}}/sweep.toml --out {{run}}", "[sweep] repeats 2.0"),
    ("compare {tmp}/other {run} --fail-on 0.05", "share no cell"),
])
def test_no_traceback_reaches_the_terminal(args, message, run_folder, tmp_path):
    before = snapshot(run_folder)
    case = Case(args, message, OTHER_RUN | {"sweep.toml": "[sweep]\nrepeats = 2.0\n"})
    result = subprocess.run([sys.executable, "-m", "bench", *_argv(case, run_folder, tmp_path)],
                            capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert result.returncode == 2 and result.stderr.count("\n") == 1 and message in result.stderr, result.stderr
    assert "Traceback" not in result.stdout + result.stderr
    assert snapshot(run_folder) == before


def test_a_full_disk_while_appending_is_one_error_and_keeps_the_records(tmp_path):
    store = RunStore(tmp_path)
    store.append({"cell_id": "a", "repeat": 0, "status": "ok"})
    store.results = Path("/dev/full")  # the kernel's always-full device: ENOSPC on flush
    with pytest.raises(BenchError, match=r"cannot append to /dev/full: No space left on device; the records before are kept"):
        store.append({"cell_id": "b", "repeat": 0, "status": "ok"})


def test_a_write_cut_short_by_the_size_limit_leaves_a_line_readers_skip(tmp_path):
    """A real partial write: RLIMIT_FSIZE lets the record half in, then the kernel refuses (EFBIG)."""
    store = RunStore(tmp_path)
    store.append({"cell_id": "a", "repeat": 0, "status": "ok"})
    limit = store.results.stat().st_size + 20
    script = (
        "import resource, signal, sys; from pathlib import Path\n"
        "from bench.errors import BenchError; from bench.results.store import RunStore\n"
        "signal.signal(signal.SIGXFSZ, signal.SIG_IGN)\n"
        f"resource.setrlimit(resource.RLIMIT_FSIZE, ({limit}, {limit}))\n"
        "try:\n"
        f"    RunStore(Path({str(tmp_path)!r})).append({{'cell_id': 'b' * 200, 'repeat': 0, 'status': 'ok'}})\n"
        "except BenchError as exc:\n"
        "    print(exc); sys.exit(2)\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert result.returncode == 2 and "File too large" in result.stdout, result.stdout + result.stderr
    assert store.results.stat().st_size == limit  # a torn line is on disk
    records, skipped = read_records(store.results)
    assert [r["cell_id"] for r in records] == ["a"] and skipped == 1
    store.append({"cell_id": "c", "repeat": 0, "status": "ok"})
    assert [r["cell_id"] for r in read_records(store.results)[0]] == ["a", "c"]


def test_a_full_disk_during_a_run_is_exit_2_with_one_line(tmp_path, capsys, monkeypatch):
    def full(fd: int) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(store_module.os, "fsync", full)
    # digits: the default CNN cannot fit 8x8 images, so its skip is the first record, appended before any worker starts
    code = main(["run", "--backend", "numpy", "--dataset", "digits", "--optimizers", "adam", "--activations", "relu",
                 "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "No space left on device" in err, err


NASTY = [r"$\frac{1$", "$x$", r"a\$b", "=HYPERLINK(\"http://x\")", "+1", "-cmd", "@SUM(A1)", "^_{}%#&~\\"]


def test_plain_text_draws_exactly_like_matplotlib_with_mathtext_off():
    def pixels(text: str, **kwargs) -> bytes:
        fig = Figure(figsize=(3, 0.5))
        fig.text(0.02, 0.3, text, **kwargs)
        canvas = FigureCanvasAgg(fig)
        canvas.draw()
        return bytes(canvas.buffer_rgba())

    assert matplotlib.rcParams["text.usetex"] is False
    with pytest.raises(ValueError):  # the hazard: a model name matplotlib cannot draw at all
        pixels(NASTY[0])
    for text in NASTY:
        assert pixels(plain(text)) == pixels(text, parse_math=False), text


def test_a_report_builds_with_mathtext_and_formula_model_names(tmp_path):
    rng = np.random.default_rng(0)
    records = [make_record("torch", "eager", "mlp", "adam", "relu", r, rng) | {"model": name, "cell_id": f"torch|{name}"}
               for name in NASTY[:5] for r in range(2)]
    result = build_report(write_run(tmp_path / "run", records))
    assert len(result.figures) >= 2
    for table in (result.results_csv, result.summary_csv, result.curves_csv):
        models = set(pd.read_csv(table, keep_default_na=False)["model"])
        assert models == {r"$\frac{1$", "$x$", r"a\$b", "'=HYPERLINK(\"http://x\")", "'+1"}, table
    assert pd.read_csv(result.results_csv)["learning_rate"].dtype == float  # numbers stay numbers


def test_only_text_that_would_start_a_formula_gets_the_apostrophe():
    cells = ["=1+1", "+1", "-1", "@A1", "\tx", "\rx", "mlp", "a=b", "", None, -1.5, 3]
    assert [csv_cell(c) for c in cells] == ["'=1+1", "'+1", "'-1", "'@A1", "'\tx", "'\rx", "mlp", "a=b", "", None, -1.5, 3]


def test_compare_csv_neutralises_formulas(tmp_path):
    from reports.compare import compare_runs

    rng = np.random.default_rng(1)
    runs = [write_run(tmp_path / side, [make_record("torch", "eager", "mlp", "adam", "relu", r, rng)
                                        | {"model": "=1+1", "cell_id": "=1+1"} for r in range(3)]) for side in "ab"]
    compare_runs(*runs, out=tmp_path / "out")
    rows = pd.read_csv(tmp_path / "out" / "compare.csv")
    assert set(rows["model"]) == {"'=1+1"} and set(rows["cell_id"]) == {"'=1+1"}


def test_a_run_with_markup_and_mathtext_model_names_finishes_with_its_report(tmp_path, capsys):
    """Names are free text: rich markup in the summary table and mathtext in the figures stay literal."""
    layers = 'layers = [{type = "Flatten"}, {type = "Dense", units = 10}]\n'
    config = tmp_path / "sweep.toml"
    config.write_text(f"[models.'$\\frac{{1$']\n{layers}[models.'[/x] =1+1']\n{layers}", encoding="utf-8")
    out = tmp_path / "run"
    code = main(["run", "--backend", "numpy", "--config", str(config), "--models", r"$\frac{1$,[/x] =1+1",
                 "--optimizers", "sgd", "--activations", "relu", "--train-size", "256", "--out", str(out)])
    printed = capsys.readouterr().out
    assert code == 0 and "[/x] =1+1" in printed and (out / "report.html").is_file()
    assert set(pd.read_csv(out / "results.csv")["model"]) == {r"$\frac{1$", "[/x] =1+1"}


def test_long_and_colliding_model_names_get_bounded_unique_figure_files(tmp_path, capsys):
    """A name of 300 characters, and names that read alike once made safe (a/b, a_b, a:b): the run and
    every later report build, each model with its own figures, every file name short enough for any disk."""
    names = ["n" * 150 + "/" + "é" * 150, "a/b", "a_b", "a:b"]
    layers = 'layers = [{type = "Flatten"}, {type = "Dense", units = 10}]\n'
    config = tmp_path / "sweep.toml"
    config.write_text("".join(f"[models.{json.dumps(name)}]\n{layers}" for name in names), encoding="utf-8")
    out = tmp_path / "run"
    code = main(["run", "--backend", "numpy", "--config", str(config), "--models", ",".join(names), "--optimizers", "sgd",
                 "--activations", "relu", "--train-size", "256", "--epochs", "1", "--min-window", "0.05", "--window-budget", "0",
                 "--save", "--out", str(out)])
    assert code == 0, capsys.readouterr()
    for again in (True, False):  # the run's own report, then `bench report`
        figures = sorted(p.name for p in (out / "figures").iterdir())
        assert all(len(name.encode()) <= 100 for name in figures)
        assert len([name for name in figures if name.startswith("curves_")]) == len(names), figures
        assert not again or main(["report", str(out)]) == 0
    assert len({p.name for p in (out / "models").iterdir()}) == len(names)
    page = (out / "report.html").read_text(encoding="utf-8")
    assert all(name in page for name in names[1:]) and names[0] in page


def test_files_far_larger_than_they_can_be_are_refused_before_they_are_read(run_folder, tmp_path, capsys):
    """Sparse files (no disk used) of gigabytes where a few KiB belong: one line each, or one skipped line."""
    config = tmp_path / "sweep.toml"
    config.touch()
    os.truncate(config, 5 * 2**30)
    assert main([*shlex.split(SMALL), "--config", str(config), "--out", str(tmp_path / "new")]) == 2
    assert "sweep.toml is 5,368,709,120 bytes, more than any sweep TOML file" in capsys.readouterr().err
    assert not (tmp_path / "new").exists()

    run = tmp_path / "run"
    shutil.copytree(run_folder, run)
    os.truncate(run / "environment.json", 5 * 2**30)
    with open(run / "results.jsonl", "ab") as handle:  # a "line" of 40 MiB of NULs, then a good record again
        handle.write(b"\n" + bytes(40 * 2**20) + b"\n" + (run_folder / "results.jsonl").read_bytes().splitlines()[0] + b"\n")
    assert main(["report", str(run)]) == 0
    out = capsys.readouterr().out
    assert "skipped 2 incomplete or unreadable line(s)" in out, out  # the crash's cut line and the huge one
    assert "more than any environment.json" in (run / "report.html").read_text(encoding="utf-8")

    (run / "run.json").touch()
    os.truncate(run / "run.json", 5 * 2**30)
    assert main(["run", "--resume", str(run)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "run.json is 5,368,709,120 bytes, more than any run.json" in err, err

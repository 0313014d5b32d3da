"""Workers isolate backends: a crash or a hang costs one cell, never the sweep. Executors are one registry."""

from __future__ import annotations

import argparse
import importlib.util
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

import backends
from bench.cli import main, parser
from bench.errors import BenchError
from bench.run import executors
from bench.run.executors.local import CellWorker, WorkerSettings, run_sweep
from bench.run.executors.process import worker_cpu_set
from bench.spec.cell import Cell, WindowPlan
from bench.spec.model import SEED_MODELS
from bench.spec.train import TrainSpec

ROOT = Path(__file__).resolve().parents[1]
QUICK_WINDOWS = WindowPlan(min_seconds=0.05, budget_seconds=0.1)  # a cell well inside the 3 s timeout
SETTINGS = WorkerSettings(threads=1, cpu_set=worker_cpu_set(1), device="cpu", data_dir=None,
                          val_split=0.1, train_size=600, test_size=200)
needs_torch = pytest.mark.skipif(importlib.util.find_spec("torch") is None, reason="torch not installed")


def _cells(n: int, model: str = "mlp") -> list[Cell]:
    return [Cell("torch", SEED_MODELS[model], TrainSpec(batch_size=32, seed=i, epochs=2), "mnist-sample", repeat=i,
                 window=QUICK_WINDOWS) for i in range(n)]


@needs_torch
def test_a_worker_killed_mid_cell_fails_that_cell_and_the_sweep_finishes():
    records = []
    kill_at = {"index": 1}

    def on_start(cell, pid):
        if cell.repeat == kill_at["index"]:
            os.kill(pid, signal.SIGKILL)

    run_sweep(_cells(3), SETTINGS, records.append, on_cell_start=on_start)
    assert [r.status for r in records] == ["ok", "failed", "ok"]
    assert "died with exit code -9" in records[1].error
    assert records[0].worker_pid != records[2].worker_pid  # a fresh worker took over
    assert records[0].threads == 1 and records[0].backend_threads["intra_op"] == 1
    assert records[0].cpu_set == list(SETTINGS.cpu_set)
    # the device policy was applied before torch loaded, and is recorded
    assert records[0].device_kind == "cpu" and records[0].fresh_worker_per_cell is False
    assert records[0].device_environment == {"CUDA_VISIBLE_DEVICES": "", "JAX_PLATFORMS": "cpu",
                                             "XLA_PYTHON_CLIENT_PREALLOCATE": "false", "TF_FORCE_GPU_ALLOW_GROWTH": "true"}


@needs_torch
def test_a_worker_that_cannot_reset_its_peak_memory_runs_one_cell_only(monkeypatch):
    """JAX on a GPU says so when ready (``fresh_worker_per_cell``); each of its cells gets a fresh worker."""
    ready = CellWorker.wait_ready

    def says_fresh(self):
        message = ready(self)
        self.facts["fresh_worker_per_cell"] = True
        return message

    monkeypatch.setattr(CellWorker, "wait_ready", says_fresh)
    records = []
    run_sweep(_cells(2), SETTINGS, records.append)
    assert [r.status for r in records] == ["ok", "ok"] and records[0].worker_pid != records[1].worker_pid


@needs_torch
def test_a_cell_past_its_timeout_is_recorded_and_the_worker_replaced():
    records = []
    cells = [Cell("torch", SEED_MODELS["cnn"], TrainSpec(batch_size=32, epochs=50), "mnist-sample")] + _cells(1)
    run_sweep(cells, SETTINGS, records.append, cell_timeout=3.0)
    assert [r.status for r in records] == ["timeout", "ok"]
    assert "no result within 3 s" in records[0].reason


def test_a_backend_that_is_not_installed_is_skipped_with_the_reason(monkeypatch):
    monkeypatch.setattr(backends, "unavailable_reason", lambda name: "tensorflow not installed (pip install -e '.[tf]')")
    records = []
    run_sweep([Cell("tf", SEED_MODELS["mlp"], TrainSpec(), "mnist-sample")], SETTINGS, records.append)
    assert records[0].status == "skipped" and "tensorflow not installed" in records[0].reason


@needs_torch
def test_finished_cells_are_not_run_again():
    cells = _cells(2)
    records = []
    run_sweep(cells, SETTINGS, records.append, done={(cells[0].cell_id, 0)})
    assert [r.repeat for r in records] == [1]


# -- the registry -----------------------------------------------------------------------------------
def _run_arguments() -> dict[str, argparse.Action]:
    sub = next(a for a in parser("run")._actions if isinstance(a, argparse._SubParsersAction))
    return {flag: action for action in sub.choices["run"]._actions for flag in action.option_strings}


def test_the_registry_is_exactly_what_bench_run_executor_accepts():
    run = _run_arguments()
    assert list(run["--executor"].choices) == list(executors.EXECUTORS)
    assert run["--executor"].default in executors.EXECUTORS
    for name, executor in executors.EXECUTORS.items():
        assert f"{name}: {executor.description}" in run["--executor"].help
        assert set(executor.flags) <= set(run)  # each executor's own flags are run flags


def test_an_unknown_executor_is_one_line_and_exit_2():
    result = subprocess.run([sys.executable, "-m", "bench", "run", "--executor", "frob"],
                            capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert result.returncode == 2 and result.stderr.count("\n") == 1, result.stderr
    assert "invalid choice: 'frob'" in result.stderr and "'local', 'ray'" in result.stderr
    recorded = argparse.Namespace(executor="frob")  # a name a resumed run recorded, which argparse does not check
    with pytest.raises(BenchError, match="^unknown executor 'frob'; valid: local, ray$"):
        executors.check(recorded)


def test_another_executors_flag_is_one_line_and_writes_nothing(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["run", "--backend", "numpy", "--models", "mlp", "--gpus-per-cell", "1", "--out", str(out)]) == 2
    assert capsys.readouterr().err == "error: --ray-address and --gpus-per-cell apply to --executor ray only\n"
    assert not out.exists()


@pytest.mark.skipif(importlib.util.find_spec("ray") is None, reason="ray not installed")
def test_the_registry_imports_no_ray_until_a_ray_run_starts():
    code = "import sys, bench.cli; print(sorted({'ray'} & set(sys.modules)))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert result.stdout.strip() == "[]", result.stderr
    options = argparse.Namespace(executor="ray", ray_address=None, gpus_per_cell=-1.0)
    with pytest.raises(BenchError, match="--gpus-per-cell must be a finite number, 0 or more, got -1"):
        executors.check(options)

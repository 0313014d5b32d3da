"""Workers isolate backends: a crash or a hang costs one cell, never the sweep."""

from __future__ import annotations

import os
import signal

import pytest

import backends
from bench.run.executors.local import WorkerSettings, run_sweep
from bench.spec.cell import Cell, WindowPlan
from bench.spec.model import SEED_MODELS
from bench.spec.train import TrainSpec

pytest.importorskip("torch")

QUICK_WINDOWS = WindowPlan(min_seconds=0.05, budget_seconds=0.1)  # a cell well inside the 3 s timeout
SETTINGS = WorkerSettings(threads=1, cpu_set=(sorted(os.sched_getaffinity(0))[0],), device="cpu", data_dir=None,
                          val_split=0.1, train_size=600, test_size=200, peak_gflops=None)


def _cells(n: int, model: str = "mlp") -> list[Cell]:
    return [Cell("torch", SEED_MODELS[model], TrainSpec(batch_size=32, seed=i, epochs=2), "mnist-sample", repeat=i,
                 window=QUICK_WINDOWS) for i in range(n)]


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


def test_finished_cells_are_not_run_again():
    cells = _cells(2)
    records = []
    run_sweep(cells, SETTINGS, records.append, done={(cells[0].cell_id, 0)})
    assert [r.repeat for r in records] == [1]

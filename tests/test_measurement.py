"""Numbers a sceptic accepts: windows long enough, a busy machine detected, explosions diverged,
unconverged training marked, and a default profile whose accuracies mean something."""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

import backends
from bench.measure.harness import run_cell
from bench.measure.inference import INFERENCE_WINDOWS
from bench.measure.load import FOREIGN_CPU_LIMIT, LoadMonitor, LoadReading, Snapshot
from bench.measure.memory import PeakRssSampler
from bench.measure.throughput import MAX_REMEASURES, MIN_WINDOWS, Windows
from bench.measure.verdicts import Diverged, check_losses, convergence
from bench.run import grid
from bench.spec.cell import Cell, WindowPlan
from bench.spec.model import SEED_MODELS
from bench.spec.train import TrainSpec
from tests.conftest import FRAMEWORKS, INSTALLED, loaded_backend

SMALL_WINDOWS = WindowPlan(min_seconds=0.05, max_windows=5, budget_seconds=0.1)


def _cell(backend: str, window: WindowPlan = SMALL_WINDOWS, **train) -> Cell:
    spec = TrainSpec(batch_size=32, epochs=2, **train)
    return Cell(backend, SEED_MODELS["mlp"], spec, "mnist-sample", window=window)


@pytest.mark.parametrize("backend", FRAMEWORKS)
def test_every_ok_record_has_windows_of_at_least_the_minimum_and_its_phase_times(backend, mnist_small):
    record = run_cell(loaded_backend(backend), _cell(backend), mnist_small).to_json_dict()
    assert record["status"] == "ok", record.get("error")
    rates = record["throughput_window_samples_per_s"]
    assert record["throughput_window_seconds"] >= SMALL_WINDOWS.min_seconds
    assert len(rates) == record["throughput_windows"] >= MIN_WINDOWS
    assert record["train_samples_per_s"] == pytest.approx(statistics.median(rates))
    assert record["throughput_window_epochs"] >= 1 and record["min_window_seconds"] == SMALL_WINDOWS.min_seconds
    phases = [record[f"time_{p}_seconds"] for p in ("build", "compile", "train", "eval", "window")]
    assert all(t >= 0 for t in phases) and sum(phases) <= record["duration_seconds"]
    assert record["time_train_seconds"] == pytest.approx(record["train_seconds"])
    assert record["compile_cache"] in {"torch": (None,), "tf": ("off",), "jax": ("cold", "warm"),
                                       "keras-jax": ("cold", "warm"), "keras-torch": (None,)}[backend]
    assert (record["engine"], record["wrapper"]) == (backends.REGISTRY[backend].engine, backends.REGISTRY[backend].wrapper)
    inference = record["inference_window_samples_per_s"]
    assert record["inference_window_seconds"] >= SMALL_WINDOWS.min_seconds and len(inference) == INFERENCE_WINDOWS
    assert record["inference_samples_per_s"] == pytest.approx(statistics.median(inference))
    assert isinstance(record["converged"], bool) and record["convergence_note"]


@pytest.mark.parametrize("backend", INSTALLED)
def test_an_exploding_loss_is_diverged_on_every_installed_backend(backend, mnist_small):
    """Adam at lr 1e6 sends the loss to ~1e15 within two steps: finite, so only the explosion rule sees it."""
    record = run_cell(loaded_backend(backend), _cell(backend, learning_rate=1e6), mnist_small).to_json_dict()
    assert record["status"] == "diverged", record.get("error") or record.get("reason")
    assert "exploded" in record["reason"] or "became nan" in record["reason"]


def test_jax_records_a_cold_then_a_warm_persistent_compilation_cache(mnist_small):
    """A network no earlier run compiled is 'cold' (compiled, stored); the same cell again is 'warm'."""
    pytest.importorskip("jax")
    from bench.spec.model import Dense, Flatten, ModelSpec

    # Two widths this cache has not seen: 262,144 pairs, where one width of 4,000 met an earlier
    # run's about once in 50 runs on a machine that had run this test some 75 times.
    first_width, second_width = (17 + w for w in divmod(time.time_ns() % 512**2, 512))
    model = ModelSpec(name="fresh", layers=(Flatten(), Dense(units=first_width, activation="hidden"),
                                            Dense(units=second_width, activation="hidden"), Dense(units=10)))
    cell = Cell("jax", model, TrainSpec(batch_size=32, epochs=2), "mnist-sample", window=SMALL_WINDOWS)
    first, second = (run_cell(loaded_backend("jax"), cell, mnist_small).to_json_dict() for _ in range(2))
    assert (first["compile_cache"], second["compile_cache"]) == ("cold", "warm")
    assert second["time_compile_seconds"] < first["time_compile_seconds"]


def test_the_divergence_rule():
    check_losses(np.array([2.3, 2.0, 1.5]), 2.3, 0)  # a falling loss is fine
    check_losses(np.array([2.3, 2000.0]), 2.3, 0)  # below 1000x the first
    with pytest.raises(Diverged, match="exploded to 2.4e\\+03 .* at epoch 3, step 2"):
        check_losses(np.array([2.3, 2400.0]), 2.3, 2)
    with pytest.raises(Diverged, match="exploded .*at most 1e\\+06"):
        check_losses(np.array([5e3, 2e6]), 5e3, 0)  # the absolute bound, whatever the start
    with pytest.raises(Diverged, match="became nan at epoch 1, step 3"):
        check_losses(np.array([2.3, 2.2, np.nan]), 2.3, 0)


def test_the_convergence_rule():
    assert convergence([0.90, 0.92], [0.5, 0.3], 0.92, 10)[0]
    converged, note = convergence([0.71, 0.79], [0.9, 0.7], 0.79, 10)
    assert not converged and "still rising fast: +8.0 pp" in note
    converged, note = convergence([0.35, 0.41], [2.0, 1.9], 0.41, 10)
    assert not converged and "below 0.55" in note
    assert not convergence([0.93], [0.3], 0.93, 10)[0]  # one epoch cannot show a plateau
    assert convergence([], [0.30, 0.28], 0.95, 10)[0]  # no validation split: the training loss decides
    assert not convergence([], [0.50, 0.30], 0.95, 10)[0]


class _Epochs:
    """Consecutive load readings on a set of ``cores`` cores, as the monitor gives them epoch after
    epoch: this process keeps every core busy, other processes add ``foreign`` cores on top."""

    def __init__(self, cores: int = 2) -> None:
        self.cores, self.now = cores, Snapshot(wall=0.0, busy=0.0, steal=0.0, own=0.0)

    def reading(self, seconds: float, foreign: float = 0.0) -> LoadReading:
        start, own = self.now, self.cores * seconds
        self.now = Snapshot(start.wall + seconds, start.busy + own + foreign * seconds, start.steal, start.own + own,
                            start.work + own)
        return LoadReading(start, self.now, self.cores)


def test_windows_grow_to_the_minimum_and_later_windows_do_the_same_work():
    windows, epochs = Windows(WindowPlan(min_seconds=0.25, max_windows=5, budget_seconds=0.0)), _Epochs()
    for _ in range(3):
        windows.add(0.1, 1000, epochs.reading(0.1))
    assert len(windows.kept) == 1 and windows.kept[0].epochs == 3 and windows.wants_more()
    for _ in range(3):
        windows.add(0.09, 1000, epochs.reading(0.09))  # a faster window still takes 3 epochs
    assert [w.epochs for w in windows.kept] == [3, 3] and not windows.wants_more()
    fields = windows.record()
    assert fields["throughput_window_seconds"] == pytest.approx(0.27) and fields["throughput_windows"] == 2
    assert fields["train_samples_per_s"] == pytest.approx(statistics.median([3000 / 0.3, 3000 / 0.27]))
    assert fields["noisy"] is False and fields["throughput_remeasured"] == 0


def test_windows_are_added_while_they_fit_the_budget_up_to_the_maximum():
    windows, epochs = Windows(WindowPlan(min_seconds=0.25, max_windows=4, budget_seconds=0.8)), _Epochs()
    for _ in range(3):
        windows.add(0.3, 1000, epochs.reading(0.3))
    assert not windows.wants_more()  # 3 x 0.3 s spent; a fourth would pass the 0.8 s budget
    roomy = Windows(WindowPlan(min_seconds=0.25, max_windows=4, budget_seconds=100.0))
    for _ in range(4):
        roomy.add(0.3, 1000, epochs.reading(0.3))
    assert not roomy.wants_more() and len(roomy.kept) == 4


def test_a_disturbed_window_is_measured_again_and_kept_as_noisy_once_the_bound_is_reached():
    windows, epochs = Windows(WindowPlan(min_seconds=0.25, budget_seconds=0.0)), _Epochs()
    windows.add(0.3, 1000, epochs.reading(0.3, foreign=0.9))
    assert windows.kept == [] and len(windows.replaced) == 1 and windows.wants_more()
    windows.add(0.3, 1000, epochs.reading(0.3))
    for _ in range(MAX_REMEASURES):
        windows.add(0.3, 1000, epochs.reading(0.3, foreign=0.6))
    fields = windows.record()
    assert fields["throughput_remeasured"] == MAX_REMEASURES and fields["throughput_windows"] == 2
    assert fields["noisy"] is True and "foreign CPU 0.60 core(s) of the 2-core set" in fields["noise_reason"]
    assert fields["foreign_cpu_cores"] == pytest.approx(0.6) and fields["foreign_cpu_fraction"] == pytest.approx(0.3)


def test_a_window_is_read_once_from_its_first_epoch_to_its_last():
    """Per-epoch readings would add one tick error per epoch; the window's reading is one span. The
    gap between epochs (validation, off the clock) is inside it, so load there counts too."""
    windows, epochs = Windows(WindowPlan(min_seconds=0.25, budget_seconds=0.0)), _Epochs()
    windows.add(0.1, 1000, epochs.reading(0.1))
    epochs.reading(0.05, foreign=1.0)  # validation between the epochs, another process busy
    windows.add(0.1, 1000, epochs.reading(0.1))
    windows.add(0.1, 1000, epochs.reading(0.1))
    load = windows.kept[0].load
    assert load.seconds == pytest.approx(0.35) and load.foreign_cpu_seconds == pytest.approx(0.05)
    assert load.foreign_cpu_cores == pytest.approx(0.05 / 0.35)
    # ... but the CPU per training sample is the epochs' own: the validation between them is left out
    epochs.reading(0.2)  # the worker validating with both cores
    assert windows.record()["cpu_seconds_per_sample"] == pytest.approx(3 * 2 * 0.1 / 3000)


def test_the_work_cpu_leaves_out_the_helper_threads():
    """The RSS sampler's own CPU is not the training's: the monitor subtracts what a helper says it used."""
    used = {"seconds": 0.0}

    def helper() -> None:
        end = time.thread_time() + 0.2
        while time.thread_time() < end:
            pass
        used["seconds"] = time.thread_time()

    plain, minding = LoadMonitor(), LoadMonitor(helper_cpu=lambda: used["seconds"])
    starts = plain.snapshot(), minding.snapshot()
    thread = threading.Thread(target=helper)
    thread.start()
    thread.join()
    assert plain.since(starts[0]).work_cpu_seconds >= 0.2
    assert minding.since(starts[1]).work_cpu_seconds < 0.05


def test_the_rss_sampler_counts_its_own_cpu():
    with PeakRssSampler(interval=0.001) as sampler:
        time.sleep(0.1)
    assert 0 < sampler.cpu_seconds < 0.1 and sampler.peak > 0


def test_the_foreign_cpu_limit_is_in_cores_whatever_the_size_of_the_set():
    """A step waits for its slowest thread: one other busy process matters on 2 cores and on 16."""
    for cores in (2, 16):
        busy = _Epochs(cores).reading(1.0, foreign=0.5)
        assert busy.foreign_cpu_fraction == pytest.approx(0.5 / cores)
        assert "foreign CPU 0.50 core(s)" in busy.disturbance
        assert _Epochs(cores).reading(1.0, foreign=0.2).disturbance is None


def _burner(cpus: list[int]) -> subprocess.Popen:
    """A second process spinning on one core of this process's CPU set."""
    code = f"import os\nos.sched_setaffinity(0, {{{cpus[0]}}})\nwhile True:\n    pass\n"
    return subprocess.Popen([sys.executable, "-c", code])


@pytest.fixture
def burner():
    if not hasattr(os, "sched_setaffinity"):
        pytest.skip("needs CPU affinity (Linux)")
    process = _burner(sorted(os.sched_getaffinity(0)))
    time.sleep(0.3)  # let it start spinning
    yield process
    process.kill()
    process.wait()


def test_the_monitor_sees_another_process_burn_a_core(burner):
    monitor = LoadMonitor()
    start = monitor.snapshot()
    time.sleep(0.5)
    reading = monitor.since(start)
    assert reading.foreign_cpu_cores >= 0.8
    assert reading.disturbance and "foreign CPU" in reading.disturbance


BURNER_WINDOWS = WindowPlan(min_seconds=0.25, max_windows=2, budget_seconds=0.0)
"""Windows of the default length: on 0.05 s windows the 10 ms tick error alone is 0.1 core."""


def test_a_cell_run_while_another_process_burns_a_core_is_flagged_noisy_or_was_remeasured(burner, mnist_small):
    """The busy process shares a core with one of the cell's threads and takes half of it or more
    (0.6 to 0.8 core on a 2-core machine, against a limit of 0.25), while the cell's throughput falls
    to a fraction of its quiet figure."""
    pytest.importorskip("torch")
    record = run_cell(loaded_backend("torch"), _cell("torch", BURNER_WINDOWS), mnist_small).to_json_dict()
    assert record["status"] == "ok", record.get("error")
    assert record["noisy"] or record["throughput_remeasured"] > 0
    if record["noisy"]:
        assert record["foreign_cpu_cores"] > FOREIGN_CPU_LIMIT and "foreign CPU" in record["noise_reason"]


def test_the_default_profile_trains_the_mlps_on_the_whole_sample_and_keeps_every_axis():
    sweep = grid.from_profile(grid.DEFAULT_PROFILE)
    cells = grid.cells(sweep, ["torch", "tf", "jax"], list(sweep.models), n_train=7200)
    assert len(cells) == 3 * 4 * 4 * 5 == 240
    mlp = next(c for c in cells if c.model.name == "mlp")
    assert mlp.sizes == (None, None, None) and mlp.train.epochs >= 2
    assert sweep.train_size is None and mlp.window.min_seconds == 0.25
    assert all(c.window.min_seconds >= 0.25 for c in cells)


def test_a_bad_window_setting_is_a_one_line_error():
    from tests.test_cli import bench

    result = bench("run", "--backend", "numpy", "--min-window", "0")
    assert result.returncode == 2 and "--min-window 0.0: input should be greater than 0" in result.stderr and result.stderr.count("\n") == 1
    assert len(result.stderr.strip().splitlines()) == 1


def test_a_cold_cache_run_compiles_every_cell_from_nothing_then_times_it_warm(tmp_path):
    """--compile-cache cold: a repeat of the same cell finds the caches emptied again (cold, not warm),
    and each cell's second compile, from what it stored, is the warm figure beside the cold one."""
    pytest.importorskip("jax")
    out = tmp_path / "run"
    done = subprocess.run([sys.executable, "-m", "bench", "run", "--backend", "jax", "--models", "mlp", "--optimizers",
                           "adam", "--activations", "relu", "--dataset", "digits", "--repeats", "2", "--compile-cache",
                           "cold", "--out", str(out), "--no-report"], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    records = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert [(r["compile_cache"], r["compile_cache_policy"]) for r in records] == [("cold", "cold")] * 2
    for record in records:
        assert record["warm_first_step_seconds"] < record["first_step_seconds"], record
        assert 0 <= record["warm_compile_seconds"] < record["compile_seconds"]
    assert any((out / "compile-cache" / "jax").iterdir())  # the run's own folder, not the shared one

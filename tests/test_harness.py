"""The harness measures every figure docs/architecture.md promises and records every outcome as a status."""

from __future__ import annotations

import math
import statistics

import pytest

from backends import device
from bench.measure.harness import run_cell
from bench.measure.inference import EVAL_BATCH, INFERENCE_WINDOWS
from bench.measure.peaks import MatmulPeaks
from bench.spec.cell import Cell, WindowPlan
from bench.spec.model import SEED_MODELS
from bench.spec.train import TrainSpec
from tests.conftest import loaded_backend

pytest.importorskip("torch")

MEASURED = [
    "test_accuracy", "test_loss", "final_train_loss", "val_accuracy", "train_samples_per_s", "train_seconds",
    "step_time_ms_p50", "step_time_ms_p90", "step_time_ms_p99", "compile_seconds", "first_step_seconds",
    "inference_samples_per_s", "cpu_seconds_per_sample", "peak_rss_bytes", "param_count",
    "flops_per_sample_forward", "flops_per_sample_train", "achieved_gflops", "peak_fraction",
    "throughput_window_seconds", "throughput_spread", "inference_window_seconds", "foreign_cpu_cores", "foreign_cpu_fraction", "time_build_seconds",
    "time_compile_seconds", "time_train_seconds", "time_eval_seconds", "time_window_seconds",
]


def test_an_ok_record_holds_every_measured_figure_and_its_configuration(mnist_small):
    cell = Cell("torch", SEED_MODELS["mlp"], TrainSpec(batch_size=32, epochs=2), "mnist-sample", target_accuracy=0.5,
                window=WindowPlan(min_seconds=0.05, budget_seconds=30.0))  # room for 100 probe steps under load
    record = run_cell(loaded_backend("torch"), cell, mnist_small, MatmulPeaks(10.0, "planted CPU peak"))
    assert record.status == "ok", record.error
    for key in MEASURED:
        value = getattr(record, key)
        assert isinstance(value, (int, float)) and math.isfinite(value) and value >= 0, key
    assert record.param_count == 101770 and record.mode == "eager"
    assert len(record.epoch_val_accuracy) == len(record.epoch_seconds) == 2
    assert record.train_seconds == pytest.approx(sum(record.epoch_seconds))
    windows = record.throughput_window_samples_per_s
    assert len(windows) == record.throughput_windows >= 2 and record.throughput_window_seconds >= 0.05
    assert record.train_samples_per_s == pytest.approx(statistics.median(windows))
    assert record.time_to_target_seconds is not None and record.time_to_target_seconds <= record.train_seconds
    assert record.peak_fraction == pytest.approx(record.achieved_gflops / 10.0)
    assert (record.peak_gflops, record.peak_method) == (10.0, "planted CPU peak")
    # a CPU cell has no device clock or memory: null, and the method fields say why
    assert record.device_seconds is None and record.device_time_method == device.CPU_DEVICE_TIME
    assert record.peak_device_bytes is None and record.device_memory_method == device.CPU_DEVICE_MEMORY
    assert record.peak_rss_bytes > 0
    assert record.rules["bn_running_variance"] == "unbiased" and record.bn_epsilon == 1e-3 and record.epsilon == 1e-7
    assert record.step_time_ms_p50 <= record.step_time_ms_p99 and record.step_time_samples == 100
    inference = record.inference_window_samples_per_s
    assert len(inference) == INFERENCE_WINDOWS and record.inference_window_seconds >= 0.05
    assert record.inference_samples_per_s == pytest.approx(statistics.median(inference))
    assert record.inference_window_passes >= 1 and record.inference_batch_size == min(EVAL_BATCH, record.n_test)


def test_warm_up_never_changes_what_is_trained(mnist_small):
    """Two cells with identical settings train identical models: warm-up steps are undone."""
    cell = Cell("torch", SEED_MODELS["mlp"], TrainSpec(batch_size=64), "mnist-sample")
    first = run_cell(loaded_backend("torch"), cell, mnist_small)
    second = run_cell(loaded_backend("torch"), cell, mnist_small)
    assert first.epoch_train_loss == pytest.approx(second.epoch_train_loss, rel=1e-6)
    assert first.test_accuracy == second.test_accuracy


def test_a_nan_loss_is_recorded_as_diverged(mnist_small):
    train = TrainSpec(optimizer="sgd", learning_rate=1e6, activation="linear", batch_size=64)
    record = run_cell(loaded_backend("torch"), Cell("torch", SEED_MODELS["mlp"], train, "mnist-sample"), mnist_small)
    assert record.status == "diverged" and ("nan" in record.reason or "exploded" in record.reason)


def test_unsupported_settings_and_misfit_models_are_skipped_with_the_reason(mnist_small):
    backend = loaded_backend("torch")
    record = run_cell(backend, Cell("torch", SEED_MODELS["mlp"], TrainSpec(precision="tf32"), "mnist-sample"), mnist_small)
    assert record.status == "skipped" and "tf32 needs an NVIDIA GPU" in record.reason
    from bench.spec.data import load_dataset

    digits = load_dataset("digits")
    record = run_cell(backend, Cell("torch", SEED_MODELS["cnn"], TrainSpec(), "digits"), digits)
    assert record.status == "skipped" and "does not fit" in record.reason


def test_without_a_probe_there_are_no_step_percentiles_but_compile_time_still_is_measured(mnist_small):
    cell = Cell("torch", SEED_MODELS["mlp"], TrainSpec(batch_size=64), "mnist-sample", probe_steps=0)
    record = run_cell(loaded_backend("torch"), cell, mnist_small)
    assert record.status == "ok" and record.step_time_samples == 0 and record.step_time_ms_p50 is None
    assert record.compile_seconds >= 0 and record.warmup_seconds == record.first_step_seconds


@pytest.mark.parametrize(("backend", "source"), [("torch", "accuracy epochs"), ("jax", "probe")])
def test_step_times_come_from_the_accuracy_epochs_only_where_steps_are_synchronous(backend, source, mnist_small):
    """Torch on a CPU finishes a step before it returns, so the accuracy epochs' 112 steps are the
    sample and no probe runs; JAX dispatches asynchronously, so its steps are timed by the probe."""
    pytest.importorskip(backend)
    cell = Cell(backend, SEED_MODELS["mlp"], TrainSpec(batch_size=8), "mnist-sample", probe_steps=100,
                window=WindowPlan(min_seconds=0.05, budget_seconds=30.0))
    record = run_cell(loaded_backend(backend), cell, mnist_small)
    assert record.status == "ok", record.error
    assert record.step_time_source.startswith(source) and record.step_time_ms_p50 is not None
    assert record.step_time_samples == (record.n_train // 8 if source == "accuracy epochs" else 100)

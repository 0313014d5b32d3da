"""``bench doctor`` fails what it is there to catch: a timing method that does not wait, a memory reader
that does not move; and passes a framework whose device works."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from backends import device
from backends.device import MemoryReading
from bench.run import doctor

ROOT = Path(__file__).resolve().parents[1]
SIDE = 512


class ThreadedNumpy:
    """A device whose work runs on a thread of its own, as a GPU runs a stream: ``matmul`` returns at
    once, ``read_back`` waits for the result, and ``synchronize`` waits only when ``waits`` (the
    broken sync returns before the work is done)."""

    framework = "numpy on a worker thread"
    PEAK_RESETS = True

    def __init__(self, waits: bool, on_gpu: bool = False, memory_moves: bool = True) -> None:
        self.waits, self.on_gpu, self.memory_moves = waits, on_gpu, memory_moves
        self.pool = ThreadPoolExecutor(1)
        self.allocated = 0

    def matrix(self, n: int, precision: str) -> np.ndarray:
        self.allocated += n * n * 4 if self.memory_moves else 0
        return device.uniform(n)

    def matmul(self, a: np.ndarray, b: np.ndarray, precision: str) -> Future:
        return self.pool.submit(np.matmul, a, b)

    def synchronize(self, x) -> None:
        if self.waits and isinstance(x, Future):
            x.result()

    def read_back(self, x) -> float:
        return float((x.result() if isinstance(x, Future) else x)[0, 0])

    def reset_peak_memory(self) -> None:
        self.allocated = 0

    def peak_memory(self) -> MemoryReading:
        return MemoryReading(self.allocated, "planted allocator, reset per cell")


@pytest.mark.parametrize("on_gpu", [False, True])
def test_a_timing_method_that_does_not_wait_fails_the_timing_check(on_gpu):
    broken = doctor.check_timing(ThreadedNumpy(waits=False, on_gpu=on_gpu), SIDE, cpu_peak_gflops=None)
    assert broken.passed is False and broken.detail.startswith("the sync returns before the work is done"), broken
    working = doctor.check_timing(ThreadedNumpy(waits=True, on_gpu=on_gpu), SIDE, cpu_peak_gflops=None)
    assert working.passed is True and working.detail.startswith("the sync waits for the work"), working


def test_on_the_cpu_a_rate_far_above_numpys_peak_fails_the_timing_check():
    """The CPU's other guard: work done faster than the known peak allows was not all waited for."""
    implausible = doctor.check_timing(ThreadedNumpy(waits=True), SIDE, cpu_peak_gflops=1e-3)  # a planted tiny peak
    assert implausible.passed is False and implausible.detail.startswith("implausibly fast for this CPU"), implausible


def test_a_memory_reading_that_does_not_move_fails_the_memory_check():
    assert doctor.check_memory(ThreadedNumpy(waits=True, on_gpu=True)).passed is True
    still = doctor.check_memory(ThreadedNumpy(waits=True, on_gpu=True, memory_moves=False))
    assert still.passed is False and "moved by 0 MiB for a 64 MiB buffer" in still.detail


@pytest.mark.skipif(bool(device.machine_gpus()), reason="this machine has a GPU")
def test_doctor_on_the_gpu_without_one_fails_each_framework_in_a_line():
    result = subprocess.run([sys.executable, "-m", "bench", "doctor", "--device", "gpu"], capture_output=True,
                            text=True, cwd=ROOT, timeout=120, env={**os.environ, "COLUMNS": "200"})
    assert result.returncode == 1, result.stdout + result.stderr
    installed = [engine for engine in device.RUNTIMES if device.installed(engine)]
    assert result.stdout.count("no GPU present (nvidia-smi finds none)") == len(installed)


@pytest.mark.slow
@pytest.mark.skipif(bool(device.machine_gpus()), reason="this machine has a GPU")
def test_doctor_on_a_cpu_only_machine_passes_and_says_no_gpu_on_every_line():
    result = subprocess.run([sys.executable, "-m", "bench", "doctor"], capture_output=True, text=True, cwd=ROOT,
                            timeout=300, env={**os.environ, "COLUMNS": "250"})
    assert result.returncode == 0, result.stdout + result.stderr
    rows = [line for line in result.stdout.splitlines() if " pass " in line or " note " in line]
    installed = [engine for engine in device.RUNTIMES if importlib.util.find_spec(engine)]
    assert len(rows) == 6 * len(installed) and all("no GPU present; " in row for row in rows)
    names = [row.split("│")[2].strip() for row in rows]  # the table's check column
    assert names == ["device", "placement", "memory", "timing", "fp32", "precisions"] * len(installed)
    assert sum("CPU check passed: the sync waits for the work" in row for row in rows) == len(installed)
    assert "every check passed" in result.stdout

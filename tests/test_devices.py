"""The device policy (backends/device.py): one device per worker, a GPU run checked before anything is
written, every backend's device fields, and ``peak_fraction`` against the peak of the cell's own device."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from backends import device
from backends.device import Gpu, MemoryReading, Probe, SyncTimer
from bench.errors import BenchError
from bench.measure.harness import run_cell
from bench.measure.peaks import MatmulPeaks
from bench.run.executors.ray import gpus_per_cell
from bench.spec.cell import Cell, WindowPlan
from bench.spec.model import SEED_MODELS
from bench.spec.train import TrainSpec
from tests.conftest import INSTALLED, loaded_backend

ROOT = Path(__file__).resolve().parents[1]
NO_GPU = not device.machine_gpus()
A_GPU = [Gpu(0, "Planted GPU", "580.00", "81559 MiB", "9.0")]


def test_each_worker_sees_exactly_one_device_set_before_its_framework_loads():
    cpu, gpu = device.environment("cpu"), device.environment("gpu", 2)
    assert cpu["CUDA_VISIBLE_DEVICES"] == "" and cpu["JAX_PLATFORMS"] == "cpu"  # no GPU, for TF and JAX alike
    assert gpu["CUDA_VISIBLE_DEVICES"] == "2" and "JAX_PLATFORMS" not in gpu
    for variables in (cpu, gpu):  # memory readings mean what a cell used
        assert variables["XLA_PYTHON_CLIENT_PREALLOCATE"] == "false" and variables["TF_FORCE_GPU_ALLOW_GROWTH"] == "true"


@pytest.mark.skipif(not NO_GPU, reason="this machine has a GPU")
def test_a_gpu_run_without_a_gpu_is_one_line_exit_2_and_writes_nothing(tmp_path):
    out = tmp_path / "run"
    result = subprocess.run([sys.executable, "-m", "bench", "run", "--backend", "torch", "--device", "gpu", "--models",
                             "mlp", "--out", str(out)], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert result.returncode == 2 and result.stderr.count("\n") == 1, result.stderr
    assert "--device gpu: no NVIDIA GPU on this machine" in result.stderr and "--device cpu" in result.stderr
    assert not out.exists()


def test_auto_runs_everything_on_the_cpu_and_says_why_never_a_mix(monkeypatch):
    monkeypatch.setattr(device, "machine_gpus", lambda: A_GPU)
    monkeypatch.setattr(device, "probe", lambda engine, precisions, gpu: Probe(None if engine == "torch" else "no plugin"))
    placement = device.resolve("auto", 0, ["torch", "jax", "numpy"], ["fp32"])
    assert placement.device == "cpu" and placement.note == "--device auto runs on the CPU: jax: no plugin"
    with pytest.raises(BenchError, match="^--device gpu: jax: no plugin; valid: "):
        device.resolve("gpu", 0, ["torch", "jax"], ["fp32"])
    with pytest.raises(BenchError, match=r"^--device gpu: --gpu 3: this machine has GPU\(s\) 0; valid: "):
        device.resolve("gpu", 3, ["torch"], ["fp32"])
    placement = device.resolve("gpu", 0, ["torch", "numpy"], ["fp32"])  # the NumPy reference needs no GPU
    assert placement.device == "gpu" and set(placement.stacks) == {"torch"}


@pytest.mark.skipif(importlib.util.find_spec("torch") is None, reason="torch not installed")
def test_a_cpu_only_framework_build_is_named_in_a_child_process(monkeypatch):
    import torch

    if torch.version.cuda is not None:
        pytest.skip("torch here is a CUDA build")
    monkeypatch.setattr(device, "machine_gpus", lambda: A_GPU)  # as if the machine had a GPU
    with pytest.raises(BenchError, match=r"^--device gpu: torch: torch \S+ is a CPU-only build; install the CUDA build"):
        device.resolve("gpu", 0, ["torch"], ["fp32"])


@pytest.mark.parametrize("name", INSTALLED)
def test_every_backend_states_its_device_time_and_memory_method_on_the_cpu(name):
    backend = loaded_backend(name)
    reading = backend.peak_memory()
    assert reading.device_peak_bytes is None and backend._epoch_device_seconds() is None
    expected = (device.CPU_ONLY, device.CPU_ONLY) if name == "numpy" else (device.CPU_DEVICE_TIME, device.CPU_DEVICE_MEMORY)
    assert (backend.device_time_method(), reading.method) == expected
    assert backend.fresh_worker_per_cell is False


def test_peak_fraction_divides_by_the_peak_of_the_cells_own_device_and_precision():
    peaks = MatmulPeaks.of(50.0, "numpy fp32", {"torch": {"fp32": 20_000.0, "bf16": 400_000.0}, "jax": {"fp32": 19_000.0}})
    assert peaks.for_cell(True, "torch", "bf16")[0] == 400_000.0
    assert peaks.for_cell(True, "torch", "fp32")[0] == 20_000.0 and "torch at fp32" in peaks.for_cell(True, "torch", "fp32")[1]
    assert peaks.for_cell(False, "torch", "bf16") == (50.0, "numpy fp32")  # a CPU cell: the CPU's peak
    gflops, why = peaks.for_cell(True, "jax", "bf16")
    assert gflops is None and why == "none: no bf16 matmul peak of jax was measured on this GPU"
    assert hash(peaks)  # worker settings holding it stay hashable (the Ray executor keys warm workers by them)


class _PlantedGpuReadings:
    """What a GPU's runtime would read: a peak of 3 MiB, reset per cell."""

    PEAK_RESETS = True

    def __init__(self) -> None:
        self.resets = 0

    def reset_peak_memory(self) -> None:
        self.resets += 1

    def peak_memory(self) -> MemoryReading:
        return MemoryReading(3 * 2**20, "planted reading")


@pytest.mark.skipif("torch" not in INSTALLED, reason="torch not installed")
def test_a_gpu_cell_is_divided_by_the_planted_gpu_peak_and_records_device_time_and_memory(mnist_small):
    from backends.torch_backend import TorchBackend

    class OnAPlantedGpu(TorchBackend):
        def _synchronize(self, pending):  # the tensors are on the CPU: nothing to wait for
            pass

    backend = OnAPlantedGpu()
    backend.setup(threads=2, device="cpu")
    backend.on_gpu, backend.ops = True, _PlantedGpuReadings()  # the harness's view of a GPU cell
    backend._timer = SyncTimer(lambda: None, "planted clock")
    cell = Cell("torch", SEED_MODELS["mlp"], TrainSpec(batch_size=64, epochs=1), "mnist-sample",
                window=WindowPlan(min_seconds=0.02, budget_seconds=0.5))
    peaks = MatmulPeaks.of(1.0, "the CPU's", {"torch": {"fp32": 12_345.0, "bf16": 99_999.0}})
    record = run_cell(backend, cell, mnist_small, peaks)
    assert record.status == "ok", record.error
    assert record.peak_gflops == 12_345.0 and record.peak_fraction == pytest.approx(record.achieved_gflops / 12_345.0)
    assert record.device_seconds > 0 and record.device_time_method == "planted clock"
    assert (record.peak_device_bytes, record.device_memory_method) == (3 * 2**20, "planted reading")
    assert backend.ops.resets == 1


def test_ray_asks_for_one_gpu_per_cell_on_a_gpu_run_unless_told():
    assert gpus_per_cell(None, "gpu") == 1.0 and gpus_per_cell(None, "cpu") == 0.0
    assert gpus_per_cell(0.5, "gpu") == 0.5 and gpus_per_cell(0.0, "gpu") == 0.0


def test_the_gpu_extra_is_declared_and_all_installs_no_cuda_wheel():
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    gpu = " ".join(extras["gpu"])
    assert "tensorflow[and-cuda]" in gpu and "jax[cuda" in gpu and "torch" in gpu

    def requirements(extra: str) -> list[str]:  # an extra's requirements, the bench[...] ones expanded
        found = []
        for requirement in extras[extra]:
            if requirement.startswith("bench["):
                for name in requirement[len("bench["):-1].split(","):
                    found += requirements(name)
            else:
                found.append(requirement)
        return found

    everything = requirements("all")
    assert "tensorflow-cpu>=2.21,<2.22" in everything
    assert [r for r in everything if r.startswith(("nvidia-", "jax-cuda", "jax[cuda")) or "and-cuda" in r] == []

"""The device policy, in one place: where a worker runs, what it is told before its framework loads,
whether the machine and each selected framework can use the GPU, and how every framework's device is
read the same way (docs/architecture.md, "Devices").

- **One device per worker.** ``environment`` is what a worker's environment gets before its framework
  is imported (bench/run/executors/process.py applies it; records keep it as ``device_environment``):
  ``CUDA_VISIBLE_DEVICES`` names the one GPU (``--gpu INDEX``), or nothing on the CPU, where
  ``JAX_PLATFORMS=cpu`` also keeps JAX off any GPU; TensorFlow allocates GPU memory on demand and JAX
  does not preallocate 75 % of it, so their peak-memory readings mean what a cell used.
- **Checked before anything is written.** ``resolve`` reads the machine's GPUs with ``nvidia-smi``
  (no framework) and asks each selected framework, in a child process of its own with the worker's
  environment (as ``backends.import_problems`` does, so the driver never imports a framework),
  whether its build can use that GPU: a CPU-only build (``tensorflow-cpu``, jax without a CUDA plugin,
  a ``+cpu`` torch) is named with the fix. The same child measures the GPU's matmul peak of each
  precision the sweep runs, once per run and engine (``matmul_peak``).
- **One reading of every framework's device.** ``DeviceOps`` is a framework's device as the runtime
  modules give it (``torch_runtime.Ops``, ``jax_runtime.Ops``, ``tf_runtime.Ops``); the adapters time
  epochs and read peak memory through it, and the matmul peak and ``bench doctor``'s checks are
  written once against it.

Framework-free: a runtime module is imported only by ``ops`` (in a worker, a probe child or a test).
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

import numpy as np

from bench.errors import BenchError

DEVICES = ("cpu", "gpu", "auto")
"""``--device`` values: the CPU, the GPU (an error where it cannot be used), or the GPU where every
selected framework can use it, else the CPU for all (never a mix in one run)."""
RUNTIMES = {"torch": "backends.torch_runtime", "tensorflow": "backends.tf_runtime", "jax": "backends.jax_runtime"}
"""Per engine (``BackendEntry.engine``), the runtime module whose ``Ops`` and ``gpu_report`` read its device.
The NumPy engine has none: it runs on the CPU only."""
PROBE_SECONDS = 300.0
"""How long a framework's GPU probe (import, device start, matmul peaks) may take."""
PEAK_SIZE = {False: 1024, True: 8192}
"""Side of the square matmul that measures a peak, on the CPU and on a GPU (8192: ~1 TFLOP, long
enough for a GPU's clocks, 768 MiB in fp32)."""
PEAK_SECONDS = 0.5

CPU_DEVICE_TIME = "none: a CPU cell's device time is its wall time (train_seconds); device_seconds is null"
CPU_DEVICE_MEMORY = "none: a CPU cell has no device memory; its host memory is peak_rss_bytes"
CPU_ONLY = "none: the NumPy reference runs on the CPU only"
PEAK_METHOD = ("best of repeated synchronised {size}x{size} matmuls in {engine} at {precision} "
               "(fp32 with TF32 off), once per run on this GPU")


@dataclass
class MemoryReading:
    """Peak device memory since the last reset, and how it was read (None where there is no device memory)."""

    device_peak_bytes: int | None
    method: str


class DeviceTimer(Protocol):
    """Times a span of device work: ``start`` before the first step, ``stop`` after the last (None when not started)."""

    method: str

    def start(self) -> None: ...

    def stop(self) -> float | None: ...


class SyncTimer:
    """Wall clock between two explicit synchronisations: the device time of a framework without
    device events (JAX, TensorFlow). The start waits for earlier work, so only the span's work counts."""

    def __init__(self, synchronize: Callable[[], None], method: str) -> None:
        self.synchronize, self.method = synchronize, method
        self._start: float | None = None

    def start(self) -> None:
        self.synchronize()
        self._start = time.perf_counter()

    def stop(self) -> float | None:
        if self._start is None:
            return None
        self.synchronize()
        seconds, self._start = time.perf_counter() - self._start, None
        return seconds


class DeviceOps(Protocol):
    """One framework's device, as its runtime module gives it: what the adapters' device clock and
    memory readings use, and what the matmul peak and ``bench doctor`` measure."""

    framework: str
    on_gpu: bool
    PEAK_RESETS: bool
    """Whether the peak-memory reading can be reset (JAX's cannot: a fresh worker per cell measures it)."""

    def device_name(self) -> str: ...

    def matrix(self, n: int, precision: str) -> Any:
        """An n x n matrix of uniform values on the device, in the precision's storage type."""

    def placed_on(self, x: Any) -> str:
        """Where the framework says ``x`` lives ('cuda:0', '/job:localhost/.../device:GPU:0', 'cpu')."""

    def matmul(self, a: Any, b: Any, precision: str) -> Any:
        """Dispatch a @ b at ``precision`` (fp32 with TF32 off, tf32, bf16); may return before the device finishes."""

    def synchronize(self, x: Any) -> None:
        """Wait for ``x`` the way the adapters' timing waits."""

    def read_back(self, x: Any) -> float:
        """One element of ``x`` on the host: waits for ``x``, whatever ``synchronize`` does."""

    def numpy(self, x: Any) -> Any: ...

    def timer(self, synchronize: Callable[[], None]) -> DeviceTimer:
        """The device clock of a training epoch on the GPU (``synchronize`` waits for the adapter's steps)."""

    def reset_peak_memory(self) -> None: ...

    def peak_memory(self) -> MemoryReading: ...

    def precisions(self) -> dict[str, str | None]:
        """Per reduced precision (tf32, bf16): None where the device runs it, else why not."""


def uniform(n: int) -> np.ndarray:
    """The n x n float32 values every ``DeviceOps.matrix`` holds: uniform in [-1, 1) (zero mean, so a
    product's rounding is not hidden under a large sum), the same on every framework."""
    return np.random.default_rng(n).random((n, n), dtype=np.float32) * 2 - 1


def ops(engine: str, on_gpu: bool) -> DeviceOps:
    """The device of ``engine`` (imports its framework: call it in a worker or a probe child)."""
    return importlib.import_module(RUNTIMES[engine]).Ops(on_gpu)


def environment(device: str, gpu: int = 0) -> dict[str, str]:
    """What a worker's environment gets before its framework loads: exactly one device visible."""
    if device == "cpu":
        visible = {"CUDA_VISIBLE_DEVICES": "", "JAX_PLATFORMS": "cpu"}
    else:
        visible = {"CUDA_VISIBLE_DEVICES": str(gpu)}
    return visible | {"XLA_PYTHON_CLIENT_PREALLOCATE": "false", "TF_FORCE_GPU_ALLOW_GROWTH": "true"}


# -- the machine's GPUs, without a framework ----------------------------------------------------------
@dataclass(frozen=True)
class Gpu:
    index: int
    name: str
    driver: str
    memory: str
    compute_capability: str


GPU_QUERY = "index,name,driver_version,memory.total,compute_cap"


def machine_gpus() -> list[Gpu]:
    """The NVIDIA GPUs ``nvidia-smi`` lists (none where it is missing or fails)."""
    if not shutil.which("nvidia-smi"):
        return []
    try:
        out = subprocess.run(["nvidia-smi", f"--query-gpu={GPU_QUERY}", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=20, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    rows = [[part.strip() for part in line.split(",")] for line in out.splitlines() if line.strip()]
    return [Gpu(int(r[0]), r[1], r[2], r[3], r[4]) for r in rows if len(r) == 5 and r[0].isdigit()]


# -- each framework's view of the GPU, in a child process -----------------------------------------------
def matmul_peak(device: DeviceOps, precision: str, size: int, seconds: float = PEAK_SECONDS) -> float:
    """The device's practical matmul rate at ``precision``, GFLOP/s: best of repeated synchronised runs."""
    a, b = device.matrix(size, precision), device.matrix(size, precision)
    device.synchronize(device.matmul(a, b, precision))  # compile, allocate, wake the clocks
    best, deadline = float("inf"), time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        start = time.perf_counter()
        device.synchronize(device.matmul(a, b, precision))
        best = min(best, time.perf_counter() - start)
    return 2 * size**3 / best / 1e9


def probe_main(engine: str, precisions: list[str]) -> None:
    """A probe child's body: print one JSON line with the framework's GPU report and, where it can
    use the GPU, its matmul peak of each precision that the device runs."""
    runtime = importlib.import_module(RUNTIMES[engine])
    report = runtime.gpu_report()
    if report["problem"] is None:
        device = runtime.Ops(True)
        unavailable = device.precisions()
        report["peaks"] = {p: matmul_peak(device, p, PEAK_SIZE[True]) for p in precisions if unavailable.get(p) is None}
    print(json.dumps(report), flush=True)


@dataclass
class Probe:
    """One framework's answer: the problem that keeps it off the GPU (None: none), its CUDA stack, its peaks."""

    problem: str | None
    stack: dict[str, str] = field(default_factory=dict)
    peaks: dict[str, float] = field(default_factory=dict)


def probe(engine: str, precisions: list[str], gpu: int) -> Probe:
    """Ask ``engine`` in a child process with a GPU worker's environment (sequential callers: the
    peaks must not share the GPU)."""
    code = "import sys; from backends.device import probe_main; probe_main(sys.argv[1], sys.argv[2:])"
    try:
        child = subprocess.run([sys.executable, "-c", code, engine, *precisions], capture_output=True, text=True,
                               timeout=PROBE_SECONDS, env=os.environ | environment("gpu", gpu))
    except subprocess.TimeoutExpired:
        return Probe(f"its GPU check took over {PROBE_SECONDS:g} s")
    lines = child.stdout.strip().splitlines()
    if child.returncode != 0 or not lines:
        errors = [line for line in child.stderr.splitlines() if line.strip()]
        return Probe(errors[-1] if errors else f"its GPU check exited with status {child.returncode}")
    report = json.loads(lines[-1])
    return Probe(report["problem"], report.get("stack", {}), report.get("peaks", {}))


@dataclass
class Placement:
    """Where a run's workers run: the resolved device, the GPU index, and what was found."""

    device: str
    gpu: int = 0
    note: str | None = None
    """Why ``auto`` chose the CPU, when it did."""
    gpus: list[Gpu] = field(default_factory=list)
    stacks: dict[str, dict[str, str]] = field(default_factory=dict)
    """Per engine on the GPU: framework, CUDA and cuDNN versions, device name."""
    peaks: dict[str, dict[str, float]] = field(default_factory=dict)
    """Per engine on the GPU: matmul GFLOP/s per precision (``PEAK_METHOD``)."""

    def describe(self, requested: str) -> dict[str, Any]:
        """As environment.json keeps it."""
        return {"requested": requested, "device": self.device, "gpu_index": self.gpu if self.device == "gpu" else None,
                "note": self.note, "gpus": [asdict(g) for g in self.gpus], "stacks": self.stacks, "peaks": self.peaks,
                "worker_environment": environment(self.device, self.gpu)}


def resolve(requested: str, gpu: int, engines: list[str], precisions: list[str]) -> Placement:
    """The device a run's workers use. ``gpu`` where the machine lacks that GPU or a selected framework
    cannot use it is a BenchError naming what is missing (before anything is written); ``auto`` then
    runs everything on the CPU and says why (``note``). Engines without a runtime (NumPy) run on the
    CPU whatever is asked, and say so in their records."""
    if requested not in DEVICES:
        raise BenchError(f"--device {requested!r}; valid: {', '.join(DEVICES)}")
    if requested == "cpu":
        return Placement("cpu")
    gpus = machine_gpus()
    missing = None
    if not gpus:
        missing = "no NVIDIA GPU on this machine (nvidia-smi " + ("lists none)" if shutil.which("nvidia-smi") else "not found)")
    elif gpu not in [g.index for g in gpus]:
        missing = f"--gpu {gpu}: this machine has GPU(s) {', '.join(str(g.index) for g in gpus)}"
    if missing is None:
        probes = {engine: probe(engine, precisions, gpu) for engine in dict.fromkeys(engines) if engine in RUNTIMES}
        problems = [f"{engine}: {p.problem}" for engine, p in probes.items() if p.problem]
        if not problems:
            return Placement("gpu", gpu, None, gpus, {e: p.stack for e, p in probes.items()},
                             {e: p.peaks for e, p in probes.items()})
        missing = "; ".join(problems)
    if requested == "gpu":
        raise BenchError(f"--device gpu: {missing}; valid: a machine and framework builds with a CUDA GPU "
                         "(README, 'GPU install'), or --device cpu")
    return Placement("cpu", note=f"--device auto runs on the CPU: {missing}", gpus=gpus)


def installed(engine: str) -> bool:
    """Whether the engine's framework package is installed (asked without importing it)."""
    return importlib.util.find_spec(engine) is not None

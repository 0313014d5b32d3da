"""PyTorch's process settings, shared by the torch adapter and Keras on torch: threads, device, memory.

Both adapters run on the same torch runtime, so a cell of either gets the same thread pools and
reports them the same way (docs/architecture.md, "Keras engines"), and reads its device through the
same ``Ops`` (backends/device.py ``DeviceOps``): CUDA events time an epoch on the GPU, and
``max_memory_allocated`` is the peak since ``reset_peak_memory_stats`` (docs/architecture.md, "Devices").
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from backends import compile_cache
from backends.device import MemoryReading, uniform


class TorchSteps:
    """What both torch-hosted adapters do once their steps are dispatched: read the losses back, wait,
    say whether a step's return times it, and label the compiled code's cache. One torch runtime,
    one way (the adapter sets ``on_gpu``, ``cache_policy`` and ``_caches``, a torch_step.CacheCount
    while a compiled mode is built, else None)."""

    on_gpu: bool
    cache_policy: str
    _caches: Any

    @property
    def synchronous_steps(self) -> bool:
        """On a CPU a torch op returns once its kernel (and its OpenMP pool) is done; CUDA queues work."""
        return not self.on_gpu

    def compile_cache(self) -> str | None:
        """From inductor's FX-graph and AOTAutograd cache counters since the build (torch_step.CacheCount)."""
        if self._caches is None:
            return None
        return "off" if self.cache_policy == "off" else (self._caches.state() or "off")

    def _read_losses(self, pending: list[torch.Tensor]) -> np.ndarray:
        return torch.stack(pending).detach().float().cpu().numpy()

    def _synchronize(self, pending: list[torch.Tensor]) -> None:
        if self.on_gpu:
            torch.cuda.synchronize()


def configure(threads: int) -> dict[str, int | str]:
    """``threads`` intra-op threads and one inter-op thread (as TF's and XLA's pools are set); what is in force."""
    # torch.optim imports torch._dynamo on the first optimizer it builds (seconds): import it at
    # start-up so it is not charged to the first cell's time and --cell-timeout.
    import torch._dynamo  # noqa: F401

    torch.set_num_threads(threads)
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:  # already set in this process (inter-op pool started)
        pass
    return {"intra_op": torch.get_num_threads(), "inter_op": torch.get_num_interop_threads(),
            "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", "libgomp default (spin, then sleep)")}


def device_name(on_gpu: bool) -> str:
    return torch.cuda.get_device_name(0) if on_gpu else "cpu"


def full_fp32(precision: str) -> None:
    """On a GPU, fp32 means full fp32: no TF32 unless the cell asks for it."""
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = precision == "tf32"


def forget_compiled(disk: bool) -> None:
    """Dynamo's compiled frames and inductor's in-memory caches (what ``torch._inductor.utils.fresh_cache``
    clears); ``disk`` empties inductor's cache folder (compiled graphs, kernels' shared objects)."""
    import torch._inductor.utils
    from torch._inductor.runtime.cache_dir_utils import cache_dir

    torch._dynamo.reset()
    torch._inductor.utils.clear_caches()
    if disk:
        compile_cache.empty(Path(cache_dir()))


class EventTimer:
    """A pair of CUDA events around an epoch: the GPU's own clock of its stream's work."""

    method = "torch.cuda.Event pair around each timed epoch (elapsed_time on the GPU's clock)"

    def __init__(self) -> None:
        self._events: tuple[torch.cuda.Event, torch.cuda.Event] | None = None

    def start(self) -> None:
        self._events = (torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True))
        self._events[0].record()

    def stop(self) -> float | None:
        events, self._events = self._events, None
        if events is None:
            return None
        events[1].record()
        events[1].synchronize()
        return events[0].elapsed_time(events[1]) / 1000.0


def gpu_report() -> dict:
    """Whether this torch can use the worker's GPU, and its CUDA stack (a probe child's answer)."""
    stack = {"torch": torch.__version__, "cuda": torch.version.cuda or "none",
             "cudnn": str(torch.backends.cudnn.version() or "none")}
    if torch.version.cuda is None:
        problem = (f"torch {torch.__version__} is a CPU-only build; install the CUDA build "
                   "(README, 'GPU install': pip install torch --index-url https://download.pytorch.org/whl/cu130)")
    elif not torch.cuda.is_available():
        problem = f"torch {torch.__version__} (CUDA {torch.version.cuda}) sees no GPU"
    else:
        problem = None
        stack["device"] = torch.cuda.get_device_name(0)
    return {"problem": problem, "stack": stack}


class Ops:
    """torch's device for the measurements every framework shares (backends/device.py ``DeviceOps``)."""

    framework = "torch"
    PEAK_RESETS = True

    def __init__(self, on_gpu: bool) -> None:
        self.on_gpu = on_gpu
        self.device = torch.device("cuda" if on_gpu else "cpu")

    def device_name(self) -> str:
        return device_name(self.on_gpu)

    def matrix(self, n: int, precision: str) -> torch.Tensor:
        values = uniform(n)
        return torch.from_numpy(values).to(self.device, torch.bfloat16 if precision == "bf16" else torch.float32)

    def placed_on(self, x: torch.Tensor) -> str:
        return str(x.device)

    def matmul(self, a: torch.Tensor, b: torch.Tensor, precision: str) -> torch.Tensor:
        full_fp32(precision)
        return a @ b

    def synchronize(self, x: torch.Tensor | None = None) -> None:
        if self.on_gpu:
            torch.cuda.synchronize()

    def read_back(self, x: torch.Tensor) -> float:
        return float(x[0, 0])

    def numpy(self, x: torch.Tensor) -> np.ndarray:
        return x.float().cpu().numpy()

    def timer(self, synchronize: Callable[[], None]) -> EventTimer:
        return EventTimer()

    def reset_peak_memory(self) -> None:
        torch.cuda.reset_peak_memory_stats()

    def peak_memory(self) -> MemoryReading:
        return MemoryReading(int(torch.cuda.max_memory_allocated()),
                             "torch.cuda.max_memory_allocated, reset (reset_peak_memory_stats) before each cell's timed epochs")

    def precisions(self) -> dict[str, str | None]:
        if not self.on_gpu:
            return {"tf32": "TF32 is an NVIDIA GPU format", "bf16": None}
        major, minor = torch.cuda.get_device_capability()
        ampere = None if major >= 8 else f"needs compute capability 8.0 or more; this GPU has {major}.{minor}"
        return {"tf32": ampere, "bf16": None if torch.cuda.is_bf16_supported() else ampere or "not supported"}

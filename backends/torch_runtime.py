"""PyTorch's process settings, shared by the torch adapter and Keras on torch: threads, device, memory.

Both adapters run on the same torch runtime, so a cell of either gets the same thread pools and
reports them the same way (docs/architecture.md, "Keras engines").
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from backends import compile_cache
from backends.base import MemoryReading


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


def peak_memory() -> MemoryReading:
    return MemoryReading(int(torch.cuda.max_memory_allocated()), "torch.cuda.max_memory_allocated")

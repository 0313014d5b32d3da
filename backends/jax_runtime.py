"""JAX's process settings, shared by the JAX adapter and Keras on JAX: device, threads, precision, memory.

Both adapters run on the same XLA runtime, so a cell of either is configured and described the
same way (docs/architecture.md, "Keras engines"): 32-bit types, fp32 matmuls at "highest"
precision, one default device, and threads as XLA gets them from the worker's CPU affinity.
"""

from __future__ import annotations

import os

import jax

from backends.base import MemoryReading


def gpu_visible() -> bool:
    try:
        return bool(jax.devices("gpu"))
    except RuntimeError:
        return False


def configure(on_gpu: bool) -> jax.Device:
    """32-bit, fp32 matmuls in full precision, and the device every array and computation goes to."""
    jax.config.update("jax_enable_x64", False)
    jax.config.update("jax_default_matmul_precision", "highest")
    device = jax.devices("gpu")[0] if on_gpu else jax.devices("cpu")[0]
    jax.config.update("jax_default_device", device)
    return device


def affinity_cores() -> int:
    """Cores this process may run on: XLA's CPU thread pool is sized from them, not from a setting.

    Read here rather than taken from ``bench.measure.load.usable_cores`` (the suite's owner of the
    reading) because an adapter may import only the spec floor (docs/architecture.md, "Floors"); and
    not taken from ``setup``'s ``threads``, because the record keeps it to show what XLA got, which
    equals the request only where a worker pinned itself first (``bench/run/executors/process.py``).
    """
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 0


def threads(requested: int) -> dict[str, int | str]:
    """JAX has no thread-count knob after import: threads come from XLA_FLAGS and CPU affinity, which
    the worker sets before importing an adapter; this is what is in force."""
    return {"requested": requested, "affinity_cores": affinity_cores(), "xla_flags": os.environ.get("XLA_FLAGS", "")}


def peak_memory(device: jax.Device) -> MemoryReading:
    peak = (device.memory_stats() or {}).get("peak_bytes_in_use")
    return MemoryReading(
        int(peak) if peak is not None else None,
        "jax device.memory_stats()['peak_bytes_in_use']: per-process peak, JAX cannot reset it",
    )

"""JAX's process settings, shared by the JAX adapter and Keras on JAX: device, threads, precision, memory.

Both adapters run on the same XLA runtime, so a cell of either is configured and described the
same way (docs/architecture.md, "Keras engines"): 32-bit types, fp32 matmuls at "highest"
precision, one default device, and threads as XLA gets them from the worker's CPU affinity. Their
device is read through one ``Ops`` (backends/device.py ``DeviceOps``): JAX has no device events, so
an epoch's device time is the wall clock between two ``jax.block_until_ready`` of the training
state; and its peak device memory cannot be reset, so on a GPU each cell runs in a fresh worker
(docs/architecture.md, "Devices").
"""

from __future__ import annotations

import importlib.util
import os
from abc import abstractmethod
from collections.abc import Callable

import jax
import jax.numpy as jnp
import jaxlib
import numpy as np
from jax import lax

from backends import jax_compile_cache
from backends.base import BackendInfo
from backends.device import MemoryReading, SyncTimer, uniform

CUDA_PLUGINS = ("jax_cuda13_plugin", "jax_cuda12_plugin")
PRECISION = {"fp32": lax.Precision.HIGHEST, "tf32": lax.Precision.DEFAULT, "bf16": lax.Precision.DEFAULT}
"""XLA's matmul precision per suite precision: on NVIDIA, DEFAULT runs fp32 as TF32."""


class JaxHosted:
    """What both JAX-hosted adapters share (the JAX adapter and Keras on JAX): the process (one device,
    the persistent compile cache, XLA's threads, the device's ``Ops``) and what follows a step's
    dispatch: an augmentation run on the device, the losses read back, and a wait for the losses and
    the whole training state (``_training_state``: the arrays a step replaces). ``_library_versions``
    names what the adapter runs besides jax and jaxlib."""

    framework: str
    on_gpu: bool
    _augment_fn: Callable
    _cache_misses: int

    def __init__(self) -> None:
        self._device: jax.Device | None = None
        self._cache_dir = None
        self.compile_count = 0
        """Times the train step was traced (its Python body runs only then): 1 per cell in jit mode."""

    def _gpu_visible(self) -> bool:
        return gpu_visible()

    def _setup(self, threads: int) -> BackendInfo:
        self._device = configure(self.on_gpu)
        self._cache_dir = jax_compile_cache.enable()
        versions = {"jax": jax.__version__, "jaxlib": jaxlib.__version__, **self._library_versions()}
        return BackendInfo(framework=self.framework, versions=versions, device=str(self._device),
                           threads=xla_threads(threads))

    @abstractmethod
    def _library_versions(self) -> dict[str, str]:
        """The libraries the adapter runs on top of JAX, with their versions."""

    def _device_ops(self) -> Ops:
        return Ops(self.on_gpu)

    def compile_cache(self) -> str:
        """Whether JAX's persistent cache missed since the build (``_cache_misses``, set there)."""
        if self._cache_dir is None:
            return "off"
        return "cold" if jax_compile_cache.CacheEvents.misses > self._cache_misses else "warm"

    def forget_compiled(self, disk: bool) -> None:
        jax_compile_cache.forget(self._cache_dir, disk)

    @property
    def device(self) -> jax.Device:
        if self._device is None:
            raise RuntimeError(f"{type(self).__name__}.setup() must run before build()")
        return self._device

    @abstractmethod
    def _training_state(self) -> tuple:
        """The arrays a step replaces, for ``_synchronize`` to wait on."""

    def _augmented(self, x: np.ndarray, params: dict) -> np.ndarray:
        return np.asarray(self._augment_fn(jax.device_put(x, self.device), params))

    def _read_losses(self, pending: list[jax.Array]) -> np.ndarray:
        return np.asarray(jax.device_get(pending), dtype=np.float32)

    def _synchronize(self, pending: list[jax.Array]) -> None:
        jax.block_until_ready((pending[-1:], self._training_state()))


def gpu_report() -> dict:
    """Whether this JAX can use the worker's GPU, and its stack (a probe child's answer)."""
    stack = {"jax": jax.__version__}
    plugins = [name for name in CUDA_PLUGINS if importlib.util.find_spec(name) is not None]
    if not plugins:
        return {"problem": f"jax {jax.__version__} has no CUDA plugin (a CPU-only jax); install jax[cuda13] or "
                           "jax[cuda12] (README, 'GPU install')", "stack": stack}
    try:
        device = jax.devices("gpu")[0]
    except RuntimeError as exc:
        return {"problem": f"jax {jax.__version__} ({', '.join(plugins)}) sees no GPU: {str(exc).splitlines()[0]}", "stack": stack}
    cuda = getattr(getattr(device, "client", None), "platform_version", "unknown")
    return {"problem": None, "stack": stack | {"cuda": str(cuda), "plugin": ", ".join(plugins), "device": device.device_kind}}


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


def xla_threads(requested: int) -> dict[str, int | str]:
    """JAX has no thread-count knob after import: threads come from XLA_FLAGS and CPU affinity, which
    the worker sets before importing an adapter; this is what is in force."""
    return {"requested": requested, "affinity_cores": affinity_cores(), "xla_flags": os.environ.get("XLA_FLAGS", "")}


class Ops:
    """JAX's device for the measurements every framework shares (backends/device.py ``DeviceOps``)."""

    framework = "jax"
    PEAK_RESETS = False

    def __init__(self, on_gpu: bool) -> None:
        self.on_gpu = on_gpu
        self.device = jax.devices("gpu")[0] if on_gpu else jax.devices("cpu")[0]

    def device_name(self) -> str:
        return self.device.device_kind if self.on_gpu else str(self.device)

    def matrix(self, n: int, precision: str) -> jax.Array:
        values = uniform(n)
        return jax.device_put(values, self.device).astype(jnp.bfloat16 if precision == "bf16" else jnp.float32)

    def placed_on(self, x: jax.Array) -> str:
        return ", ".join(sorted(str(d) for d in x.devices()))

    def matmul(self, a: jax.Array, b: jax.Array, precision: str) -> jax.Array:
        return jnp.matmul(a, b, precision=PRECISION[precision])

    def synchronize(self, x: jax.Array) -> None:
        jax.block_until_ready(x)

    def read_back(self, x: jax.Array) -> float:
        return float(x[0, 0])

    def numpy(self, x: jax.Array) -> np.ndarray:
        return np.asarray(x, dtype=np.float32)

    def timer(self, synchronize: Callable[[], None]) -> SyncTimer:
        return SyncTimer(synchronize, "wall clock between jax.block_until_ready of the losses and training state at "
                                      "each timed epoch's start and end (JAX has no device events)")

    def reset_peak_memory(self) -> None:
        """JAX cannot reset its peak: the executor runs each GPU cell in a fresh worker instead."""

    def peak_memory(self) -> MemoryReading:
        peak = (self.device.memory_stats() or {}).get("peak_bytes_in_use")
        return MemoryReading(int(peak) if peak is not None else None,
                             "jax device.memory_stats()['peak_bytes_in_use'] in a worker started for this cell alone "
                             "(JAX cannot reset its peak): the cell's build, warm-up and training")

    def precisions(self) -> dict[str, str | None]:
        if not self.on_gpu:
            return {"tf32": "TF32 is an NVIDIA GPU format", "bf16": None}
        capability = getattr(self.device, "compute_capability", None)  # '9.0' on a CUDA device
        if capability is None:
            return {"tf32": None, "bf16": None}
        ampere = None if float(capability) >= 8.0 else f"needs compute capability 8.0 or more; this GPU has {capability}"
        return {"tf32": ampere, "bf16": ampere}

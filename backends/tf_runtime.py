"""TensorFlow's device, as Keras on TensorFlow (the ``tf`` backend), the GPU probe and ``bench doctor`` read it.

TensorFlow has no device events an adapter can record around an epoch, so its device time is the
wall clock between two ``tf.test.experimental.sync_devices()`` (which waits for every queued op on
every device); its peak device memory is ``get_memory_info('GPU:0')['peak']`` since
``reset_memory_stats`` (docs/architecture.md, "Devices"). Memory growth (allocate on demand) comes
from the worker's ``TF_FORCE_GPU_ALLOW_GROWTH``, set before TensorFlow loads (backends/device.py).
"""

from __future__ import annotations

import os
from collections.abc import Callable

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TF's INFO/WARNING banners; errors still show

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from backends.device import MemoryReading, SyncTimer, uniform  # noqa: E402

SYNC_METHOD = ("wall clock between tf.test.experimental.sync_devices() at each timed epoch's start and end "
               "(TensorFlow has no device events)")


def synchronize() -> None:
    """Wait for every op queued on every device."""
    tf.test.experimental.sync_devices()


def gpu_name() -> str:
    gpu = tf.config.list_physical_devices("GPU")[0]
    return tf.config.experimental.get_device_details(gpu).get("device_name", gpu.name)


def gpu_report() -> dict:
    """Whether this TensorFlow can use the worker's GPU, and its CUDA stack (a probe child's answer)."""
    build = tf.sysconfig.get_build_info()
    stack = {"tensorflow": tf.__version__, "cuda": str(build.get("cuda_version", "none")),
             "cudnn": str(build.get("cudnn_version", "none"))}
    if not tf.test.is_built_with_cuda():
        problem = (f"tensorflow {tf.__version__} is a CPU-only build (tensorflow-cpu); install tensorflow[and-cuda] "
                   "(README, 'GPU install')")
    elif not tf.config.list_physical_devices("GPU"):
        problem = f"tensorflow {tf.__version__} (CUDA {stack['cuda']}) sees no GPU"
    else:
        problem = None
        stack["device"] = gpu_name()
    return {"problem": problem, "stack": stack}


class Ops:
    """TensorFlow's device for the measurements every framework shares (backends/device.py ``DeviceOps``)."""

    framework = "tensorflow"
    PEAK_RESETS = True

    def __init__(self, on_gpu: bool) -> None:
        self.on_gpu = on_gpu
        self.name = "/GPU:0" if on_gpu else "/CPU:0"

    def device_name(self) -> str:
        return gpu_name() if self.on_gpu else "cpu"

    def matrix(self, n: int, precision: str) -> tf.Tensor:
        values = uniform(n)
        with tf.device(self.name):  # tf.identity copies onto the device
            return tf.identity(tf.cast(tf.constant(values), tf.bfloat16 if precision == "bf16" else tf.float32))

    def placed_on(self, x: tf.Tensor) -> str:
        return x.device

    def matmul(self, a: tf.Tensor, b: tf.Tensor, precision: str) -> tf.Tensor:
        tf.config.experimental.enable_tensor_float_32_execution(precision == "tf32")
        with tf.device(self.name):
            return tf.matmul(a, b)

    def synchronize(self, x: tf.Tensor | None = None) -> None:
        synchronize()

    def read_back(self, x: tf.Tensor) -> float:
        return float(tf.cast(x[0, 0], tf.float32).numpy())

    def numpy(self, x: tf.Tensor) -> np.ndarray:
        return tf.cast(x, tf.float32).numpy()

    def timer(self, synchronize_steps: Callable[[], None]) -> SyncTimer:
        return SyncTimer(synchronize, SYNC_METHOD)

    def reset_peak_memory(self) -> None:
        tf.config.experimental.reset_memory_stats("GPU:0")

    def peak_memory(self) -> MemoryReading:
        return MemoryReading(int(tf.config.experimental.get_memory_info("GPU:0")["peak"]),
                             "tf.config.experimental.get_memory_info('GPU:0')['peak'], reset (reset_memory_stats) "
                             "before each cell's timed epochs")

    def precisions(self) -> dict[str, str | None]:
        if not self.on_gpu:
            return {"tf32": "TF32 is an NVIDIA GPU format", "bf16": None}
        gpu = tf.config.list_physical_devices("GPU")[0]
        major, minor = tf.config.experimental.get_device_details(gpu).get("compute_capability", (0, 0))
        ampere = None if major >= 8 else f"needs compute capability 8.0 or more; this GPU has {major}.{minor}"
        return {"tf32": ampere, "bf16": ampere}

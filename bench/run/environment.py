"""What the run ran on: hardware, software versions, command and commit, stored with the results.

Versions come from package metadata, so capturing them never imports a framework.
"""

from __future__ import annotations

import os
import platform
import shlex
import shutil
import subprocess
import sys
import time
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path

import numpy as np

from bench.run import code_identity

RESULT_PACKAGES = ("numpy", "torch", "tensorflow", "tensorflow-cpu", "keras", "jax", "jaxlib", "flax", "optax")
"""Packages whose version can change a measured result (part of the run fingerprint)."""
PACKAGES = RESULT_PACKAGES + ("pandas", "matplotlib", "scipy", "pydantic")


def command_line(argv: list[str]) -> str:
    """``python -m bench ARGV`` as a user can paste it into a shell: every argument quoted as needed
    (a folder with spaces, parentheses or ';' stays one argument and runs nothing else)."""
    return shlex.join(["python", "-m", "bench", *argv])


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _gpu() -> str | None:
    if not shutil.which("nvidia-smi"):
        return None
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"],
            capture_output=True, text=True, timeout=20, check=True,
        ).stdout.strip()
        return out or None
    except (OSError, subprocess.SubprocessError):
        return None


def versions(packages: tuple[str, ...] = PACKAGES) -> dict[str, str]:
    found = {}
    for name in packages:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return found


def matmul_peak_gflops(threads: int, size: int = 1024, seconds: float = 0.5) -> float:
    """This machine's practical fp32 matmul rate with ``threads`` BLAS threads (best of repeated runs).

    The denominator of 'fraction of peak': measured, because nominal peaks overstate what a
    framework can reach on a shared, throttled or virtualised CPU.
    """
    from threadpoolctl import threadpool_limits

    a = np.random.default_rng(0).random((size, size), dtype=np.float32)
    best = float("inf")
    with threadpool_limits(limits=threads):
        a @ a
        deadline = time.perf_counter() + seconds
        while time.perf_counter() < deadline:
            start = time.perf_counter()
            a @ a
            best = min(best, time.perf_counter() - start)
    return 2 * size**3 / best / 1e9


def capture(argv: list[str], threads: int, cpu_set: list[int], settings: dict, fairness: dict) -> dict:
    return {
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": command_line(argv),
        "argv": argv,
        "git_commit": code_identity.commit(),
        "os": platform.platform(),
        "cpu": _cpu_name(),
        "cores": os.cpu_count(),
        "cpu_set": cpu_set,
        "threads": threads,
        "python": sys.version.split()[0],
        "versions": versions(),
        "gpu": _gpu(),
        "matmul_peak_gflops": matmul_peak_gflops(threads),
        "matmul_peak_method": "best of repeated 1024x1024 fp32 numpy matmuls, same thread count as the workers",
        "fairness": fairness,
        "settings": settings,
    }

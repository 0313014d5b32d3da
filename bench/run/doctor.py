"""``bench doctor``: the self-check to run before trusting a machine's numbers (about a minute).

Per installed framework (the three engines: torch, TensorFlow, JAX; Keras on torch and on JAX read
their device through their engine's runtime, so its rows hold for them too), in a worker process of
its own started exactly as a sweep's worker (bench/run/executors/process.py: the CPU set, the thread
caps and the device environment of backends/device.py), through the framework's ``DeviceOps``, the
very readings the adapters measure with (docs/architecture.md, "Devices"):

- **device**: the framework sees the device asked for (on a GPU run, its build can use the GPU);
- **placement**: a matrix made there says it lives there;
- **timing**: the synchronisation the adapters time with waits for the work. A large matmul timed
  with it must take at least ``SYNC_FRACTION`` of the time of one whose result is read back to the
  host (a read-back cannot return early); on a GPU the unsynchronised figure must be implausibly
  fast (dispatch alone, under ``DISPATCH_FRACTION`` of the synchronised one), which shows that the
  sync is what waits; on the CPU the synchronised rate must stay under ``CPU_CEILING`` times the
  machine's NumPy matmul peak (bench/run/environment.py), the known rate of that much work;
- **memory**: the peak reader moves by a buffer's size when one is allocated (on the CPU: the
  worker's resident set as bench/measure/memory.py samples it);
- **fp32**: an fp32 matmul agrees with float64 to fp32's accuracy, so TF32 is really off;
- **precisions**: whether TF32 and bf16 run here (a note: cells in an unavailable precision are skipped).

The judgements are plain functions of a ``DeviceOps`` (tests hand them a fake whose sync does not
wait). The table is rich's; the exit status is 0 when every check passed, 1 otherwise. On a machine
without a GPU each row says so and which CPU check passed.
"""

from __future__ import annotations

import argparse
import importlib
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
from rich.console import Console
from rich.markup import escape
from rich.table import Table

import backends
from backends import device
from backends.device import DeviceOps
from bench.errors import BenchError
from bench.measure.memory import PeakRssSampler
from bench.run.environment import matmul_peak_gflops
from bench.run.executors.process import Kind, Message, Worker, worker_cpu_set

console = Console(stderr=False)

SYNC_FRACTION = 0.25
"""A synchronised matmul takes at least this share of the time of a read-back one: ~1 when the sync
waits; a sync that does not wait gives dispatch alone, ~0.01. Other load can slow every read-back
trial past this share, so a sync also fails only where its time sits nearer the unsynchronised
dispatch than the read-back, on a log scale (below their geometric mean)."""
DISPATCH_FRACTION = 0.2
"""On a GPU, an unsynchronised matmul returns within this share of the synchronised time (dispatch only)."""
CPU_CEILING = 10.0
"""On the CPU, no framework's matmul is this many times faster than NumPy's with the same threads (a
margin for a peak measured beside other load; a sync that does not wait reads thousands of times faster)."""
MEMORY_SIDE = 4096
"""The allocated buffer: 4096 x 4096 float32, 64 MiB."""
MEMORY_FRACTION = {True: 0.9, False: 0.5}
"""Share of the buffer the reading must move by: a GPU allocator's peak, or the host's resident set."""
FP32_TOLERANCE = 1e-5
"""Largest error of a 512-deep fp32 matmul of values in [-1, 1) relative to its largest float64 entry
(fp32 gives ~1e-7; TF32's 10-bit mantissa ~1e-4)."""
TIMING_SIDE = {False: 1024, True: 8192}
TRIALS = 5
WORKER_SECONDS = 300.0
COVERS = {engine: ", ".join(n for n, e in backends.REGISTRY.items() if e.engine == engine) for engine in device.RUNTIMES}
"""The backends each engine's rows speak for."""


@dataclass(frozen=True)
class Check:
    """One line of the table: ``passed`` None for a note that cannot fail."""

    name: str
    passed: bool | None
    detail: str


@dataclass(frozen=True)
class DoctorSettings:
    """A doctor worker's isolation (process.Isolation) and what its checks compare with."""

    threads: int
    cpu_set: tuple[int, ...]
    device: str
    gpu: int
    cpu_peak_gflops: float


def _fastest(run: Callable[[], Any], waits: list[Callable[[Any], Any]], drain: Callable[[Any], Any]) -> list[float]:
    """Per way of waiting, the fastest of ``TRIALS`` timings of ``run`` then that wait. The ways take
    turns, so a burst of other load slows them alike; each trial's work is drained (read back) off the
    clock, so no trial is charged for the one before."""
    best = [float("inf")] * len(waits)
    for _ in range(TRIALS):
        for i, wait in enumerate(waits):
            start = time.perf_counter()
            result = run()
            wait(result)
            best[i] = min(best[i], time.perf_counter() - start)
            drain(result)
    return best


def check_timing(ops: DeviceOps, size: int, cpu_peak_gflops: float | None) -> Check:
    """Does the adapters' synchronisation wait for the work? (See the module's docstring.)"""
    a, b = ops.matrix(size, "fp32"), ops.matrix(size, "fp32")
    run = lambda: ops.matmul(a, b, "fp32")  # noqa: E731
    ops.read_back(run())  # compile, allocate, wake the clocks
    read, synced, unsynced = _fastest(run, [ops.read_back, ops.synchronize, lambda result: None], ops.read_back)
    gflops = 2 * size**3 / synced / 1e9
    figures = (f"{size}x{size} fp32 matmul: synchronised {synced * 1e3:.3g} ms ({gflops:,.0f} GFLOP/s), read back "
               f"{read * 1e3:.3g} ms, unsynchronised {unsynced * 1e3:.3g} ms")
    if synced < SYNC_FRACTION * read and synced < math.sqrt(read * unsynced):
        return Check("timing", False, f"the sync returns before the work is done: {figures}")
    if ops.on_gpu and unsynced > DISPATCH_FRACTION * synced:
        return Check("timing", False, f"an unsynchronised matmul was not faster than the work (no asynchronous "
                                      f"dispatch to tell the sync by): {figures}")
    if not ops.on_gpu and cpu_peak_gflops and gflops > CPU_CEILING * cpu_peak_gflops:
        return Check("timing", False, f"implausibly fast for this CPU (NumPy peak {cpu_peak_gflops:,.0f} GFLOP/s): {figures}")
    return Check("timing", True, f"the sync waits for the work: {figures}")


def check_memory(ops: DeviceOps) -> Check:
    """Does the memory reading move when a buffer is allocated? (Run first: JAX's peak cannot be reset.)"""
    nbytes = MEMORY_SIDE * MEMORY_SIDE * 4
    if ops.on_gpu:
        ops.reset_peak_memory()
        before = ops.peak_memory().device_peak_bytes or 0
        buffer = ops.matrix(MEMORY_SIDE, "fp32")
        ops.synchronize(buffer)
        reading = ops.peak_memory()
        moved, how = (reading.device_peak_bytes or 0) - before, reading.method.split(",")[0]
    else:
        with PeakRssSampler() as rss:
            before = rss.peak
            buffer = ops.matrix(MEMORY_SIDE, "fp32")
            ops.read_back(buffer)
        moved, how = rss.peak - before, "host RSS"
    del buffer
    passed = moved >= MEMORY_FRACTION[ops.on_gpu] * nbytes
    return Check("memory", passed, f"{how} moved by {moved / 2**20:,.0f} MiB for a {nbytes / 2**20:,.0f} MiB buffer")


def check_fp32(ops: DeviceOps) -> Check:
    """Is fp32 full fp32 (TF32 off), as every fp32 cell runs?"""
    a, b = ops.matrix(512, "fp32"), ops.matrix(512, "fp32")
    exact = ops.numpy(a).astype(np.float64) @ ops.numpy(b).astype(np.float64)
    error = float(np.max(np.abs(ops.numpy(ops.matmul(a, b, "fp32")) - exact)) / np.max(np.abs(exact)))
    return Check("fp32", error <= FP32_TOLERANCE, f"512-deep matmul, relative error {error:.1e} "
                                                  f"(fp32 at most {FP32_TOLERANCE:g}; TF32 would give ~1e-4)")


def check_precisions(ops: DeviceOps) -> Check:
    """TF32 and bf16: available or why not; a bf16 matmul that should run but fails is a failure."""
    available = ops.precisions()
    if available.get("bf16") is None:
        try:
            ops.read_back(ops.matmul(ops.matrix(256, "bf16"), ops.matrix(256, "bf16"), "bf16"))
        except Exception as exc:  # noqa: BLE001 - the device claims bf16 and cannot run it
            return Check("precisions", False, f"bf16 matmul failed: {type(exc).__name__}: {exc}")
    return Check("precisions", None, "; ".join(f"{p}: {'available' if why is None else why}" for p, why in available.items()))


def run_checks(ops: DeviceOps, cpu_peak_gflops: float | None) -> list[Check]:
    """Every check on one framework's device, in an order that keeps each reading clean (memory first)."""
    where = ops.device_name()
    checks = [Check("device", True, f"computes on {where}")]
    matrix = ops.matrix(64, "fp32")
    placed = ops.placed_on(matrix)
    on_gpu_text = any(token in placed.lower() for token in ("cuda", "gpu"))
    checks.append(Check("placement", on_gpu_text == ops.on_gpu, f"a matrix made for {where} lives on {placed}"))
    checks.append(check_memory(ops))
    checks.append(check_timing(ops, TIMING_SIDE[ops.on_gpu], cpu_peak_gflops))
    checks.append(check_fp32(ops))
    checks.append(check_precisions(ops))
    return checks


def _serve(conn, engine: str, settings: DoctorSettings) -> None:
    """A doctor worker, isolated already: one framework's checks, sent back as one message."""
    on_gpu = settings.device == "gpu"
    try:
        if on_gpu:
            problem = importlib.import_module(device.RUNTIMES[engine]).gpu_report()["problem"]
            if problem:
                conn.send(Message(Kind.ANSWER, [Check("device", False, problem)]))
                return
        checks = run_checks(device.ops(engine, on_gpu), settings.cpu_peak_gflops)
    except Exception as exc:  # noqa: BLE001 - a framework that cannot run its checks fails them
        conn.send(Message(Kind.ERROR, f"{type(exc).__name__}: {exc}"))
        return
    conn.send(Message(Kind.ANSWER, checks))


def engine_checks(engine: str, settings: DoctorSettings) -> list[Check]:
    """One framework's checks from its worker; a worker that fails, dies or hangs fails the device check."""
    worker = Worker(engine, settings, _serve)
    message = worker.receive(WORKER_SECONDS)
    worker.stop()
    if message.kind is Kind.ANSWER:
        return message.payload
    return [Check("device", False, f"the checks did not run: {message.payload}")]


def add_doctor_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default="auto", choices=device.DEVICES,
                   help="what to check: gpu, cpu, or auto (default: the GPU where the machine has one, else the CPU)")
    p.add_argument("--gpu", type=int, default=0, metavar="INDEX", help="the GPU to check (default 0)")


def main_doctor(args: argparse.Namespace) -> int:
    if args.gpu < 0:
        raise BenchError(f"--gpu {args.gpu}: valid: a GPU index, 0 or more (nvidia-smi -L lists them)")
    gpus = device.machine_gpus()
    on_gpu = args.device == "gpu" or (args.device == "auto" and bool(gpus))
    cpu_set = worker_cpu_set()
    settings = DoctorSettings(len(cpu_set), cpu_set, "gpu" if on_gpu else "cpu", args.gpu,
                              matmul_peak_gflops(len(cpu_set)))
    no_gpu = "no GPU present; " if not gpus and not on_gpu and args.device != "cpu" else ""
    table = Table(title=f"bench doctor: {'GPU ' + str(args.gpu) if on_gpu else 'CPU'} "
                        f"({', '.join(g.name for g in gpus) or 'no NVIDIA GPU on this machine'})")
    for column in ("framework", "check", "result", "detail"):
        table.add_column(column)
    failed = 0
    for engine in device.RUNTIMES:
        if not device.installed(engine):
            table.add_row(engine, "", "[dim]not installed[/]", escape(f"backends {COVERS[engine]} unavailable"))
            continue
        if on_gpu and not gpus:
            checks = [Check("device", False, "no GPU present (nvidia-smi finds none)")]
        else:
            checks = engine_checks(engine, settings)
        for i, check in enumerate(checks):
            failed += check.passed is False
            result = {True: "[green]pass[/]", False: "[red]FAIL[/]", None: "note"}[check.passed]
            prefix = no_gpu + ("CPU check passed: " if check.passed and no_gpu else "")
            table.add_row("" if i else escape(f"{engine}\n({COVERS[engine]})"), check.name, result,
                          escape(prefix + check.detail))
    console.print(table)
    console.print(f"{'every check passed' if not failed else f'{failed} check(s) failed'} "
                  f"(CPU NumPy matmul peak {settings.cpu_peak_gflops:,.0f} GFLOP/s, {settings.threads} threads)")
    return 1 if failed else 0

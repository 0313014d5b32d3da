"""The matmul peak a cell's ``peak_fraction`` divides by: its own device's, at its own precision.

A GPU cell's GFLOP/s over the CPU's NumPy peak would read far above 100 %, and a bf16 cell over an
fp32 peak would flatter it (docs/architecture.md, "Devices"). So the driver measures each peak once
per run: the CPU's fp32 NumPy peak (bench/run/environment.py) for CPU cells, and on a GPU each
engine's own peak per precision, fp32 with TF32 off, TF32 and bf16 (backends/device.py ``resolve``,
in a child process per engine). The harness takes the one that matches the cell, and its record
names it (``peak_gflops``, ``peak_method``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from backends.device import PEAK_METHOD, PEAK_SIZE


@dataclass(frozen=True)
class MatmulPeaks:
    """Every peak of a run; frozen and of tuples, so worker settings holding it stay hashable."""

    cpu_gflops: float | None = None
    cpu_method: str | None = None
    gpu_gflops: tuple[tuple[str, str, float], ...] = ()
    """(engine, precision, GFLOP/s) of each engine measured on the run's GPU."""

    @classmethod
    def of(cls, cpu_gflops: float | None, cpu_method: str | None,
           gpu: Mapping[str, Mapping[str, float]] | None = None) -> MatmulPeaks:
        """From the CPU peak and the GPU peaks per engine and precision, as environment.json keeps them."""
        rows = tuple((engine, precision, float(gflops)) for engine, by in (gpu or {}).items() for precision, gflops in by.items())
        return cls(cpu_gflops, cpu_method, rows)

    def for_cell(self, on_gpu: bool, engine: str, precision: str) -> tuple[float | None, str]:
        """The peak of a cell on the GPU (``on_gpu``) or the CPU, in ``engine`` at ``precision``, and how
        it was measured; None, with the reason, where no such peak was measured."""
        if not on_gpu:
            return (self.cpu_gflops, self.cpu_method or "") if self.cpu_gflops else (None, "none: no CPU peak was measured")
        for measured_engine, measured_precision, gflops in self.gpu_gflops:
            if (measured_engine, measured_precision) == (engine, precision):
                return gflops, PEAK_METHOD.format(size=PEAK_SIZE[True], engine=engine, precision=precision)
        return None, f"none: no {precision} matmul peak of {engine} was measured on this GPU"

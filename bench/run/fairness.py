"""The suite's fairness rules in words: stored with every run (environment.json) and shown in its report.

Every number and named choice in the text is read from the constant that decides it (the canonical
initialiser, the clock, the augmentation conventions, the throughput window and its load limits,
the divergence bounds), and the training values come from ``TrainSpec``'s defaults through
``training_rules``, so changing a rule changes what the report says the rule is (docs/architecture.md,
"Framework rules"). The modules are imported rather than their names, so the text is rendered from
the values as they are when a run starts.
"""

from __future__ import annotations

from backends import device
from bench.measure import harness, load, throughput, verdicts
from bench.run.executors import process
from bench.spec import augment, cell, semantics
from bench.spec.train import training_rules


def fairness_rules() -> dict[str, str]:
    """Rule name -> the rule in words: the training values, then how every backend is set up and timed."""
    return training_rules() | {
        "initial weights": f"drawn once in NumPy ({semantics.HARMONISED_INIT}, bias 0) and loaded into every backend",
        "data": "same arrays, split, per-epoch batch order (NumPy, from the seed); last partial batch dropped",
        "threads": "one worker process per backend, same CPU set and intra-op thread count, one backend at a time; "
                   f"idle OpenMP threads sleep (OMP_WAIT_POLICY={process.OMP_WAIT_POLICY})",
        "timing": f"warm-up (compile) timed apart; {harness.TIMING_METHOD}; eval off the clock",
        "device": "every worker sees one device, set before its framework loads (CUDA_VISIBLE_DEVICES names its one "
                  "GPU, --gpu, and none on the CPU; "
                  + ", ".join(f"{k}={v}" for k, v in device.environment("gpu").items() if k != "CUDA_VISIBLE_DEVICES")
                  + "); never a mix of CPU and GPU cells in one run; device "
                  "time from CUDA events (torch) or the wall clock between explicit syncs (JAX, TensorFlow); peak "
                  "device memory reset before each cell (JAX cannot reset: a fresh worker per cell); peak_fraction "
                  "against the matmul peak of the cell's own device and precision",
        "augmentation": "random parameters drawn in NumPy from the seed before each epoch; each backend transforms "
                        f"natively inside its step; {augment.INTERPOLATION} interpolation, {augment.FILL} fill; "
                        f"order {augment.ORDER}",
        "throughput": f"median of at least {throughput.MIN_WINDOWS} auto-ranged windows of whole epochs, each at least "
                      f"{cell.DEFAULT_MIN_SECONDS:g} s by default (--min-window); a window during which other "
                      f"processes used more than {load.FOREIGN_CPU_LIMIT:g} core of the CPU set, or the hypervisor "
                      f"stole more than {load.STEAL_LIMIT:.0%} of each core, is re-measured (at most "
                      f"{throughput.MAX_REMEASURES} times a cell), else the record is marked noisy",
        "divergence": f"a training loss that is not finite, above {verdicts.LOSS_BOUND:g}, or above "
                      f"{verdicts.EXPLOSION_FACTOR:g}x its first step's is diverged",
        "semantics policy": "the values above are the harmonised policy; cells run with --semantics native use each "
                            "framework's own defaults instead (each record lists the values it ran); parity runs harmonised only",
    }

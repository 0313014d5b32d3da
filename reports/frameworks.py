"""The seed document's framework comparison, with what this run measured beside each claim.

The qualitative table (ease of use, graph construction, ...) is the seed's; the "measured here"
column backs the claims about graphs and compilation with numbers from this run: the speed of
each compiled mode relative to eager on the same configurations, and the median compile cost.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from bench.results.stats import grouped_comparison
from reports import fmt
from reports.headline import by_config, pooled_estimate
from reports.metrics import COMPILE_TIME, TRAIN_THROUGHPUT
from reports.records import config_keys
from reports.summary import first_line


@dataclass(frozen=True)
class Framework:
    backend: str
    name: str
    ease_of_use: str
    graph: str
    flexibility: str
    debugging: str
    deployment: str


SEED_TABLE = (
    Framework("tf", "Keras / TensorFlow", "High-level API", "Static graph (tf.function) or eager",
              "Moderate", "Harder in graph mode", "TF Serving, TFLite"),
    Framework("torch", "PyTorch", "Pythonic", "Dynamic, eager graph", "High",
              "Standard Python debuggers", "TorchScript, ONNX, torch.export"),
    Framework("jax", "JAX", "Functional", "Traced and compiled (jit)", "High for research",
              "Harder inside jit", "XLA export; ONNX via jax2tf"),
)
EAGER = "eager"


@dataclass
class Evidence:
    """What this run measured for one framework: short sentences, each with its numbers."""

    framework: Framework
    lines: list[str]


def _mode_speedups(ok: pd.DataFrame) -> list[str]:
    """'compiled vs eager: 1.8× train throughput [1.6× – 2.0×] over 12 configurations' per non-eager mode."""
    lines = []
    keys = config_keys(ok)
    eager = set(keys[ok["mode"] == EAGER])
    for mode in sorted(set(ok["mode"].dropna()) - {EAGER}):
        shared = sorted(set(keys[ok["mode"] == mode]) & eager)
        if not shared:
            continue
        est = grouped_comparison(by_config(ok[ok["mode"] == mode], TRAIN_THROUGHPUT.field, shared),
                                 by_config(ok[ok["mode"] == EAGER], TRAIN_THROUGHPUT.field, shared),
                                 np.divide, paired=True)
        if est.ok:
            parts = [f"{mode} vs eager: {fmt.ratio(est.value)} train throughput", fmt.interval(est, fmt.ratio),
                     f"(median over {len(shared)} shared configuration{'s' if len(shared) > 1 else ''})"]
            lines.append(" ".join(p for p in parts if p))
    return lines


def evidence(frame: pd.DataFrame) -> list[Evidence]:
    """One row per seed framework, with this run's measurements (or why there are none)."""
    out = []
    for fw in SEED_TABLE:
        records = frame[frame["backend"] == fw.backend]
        ok = records[records["status"] == "ok"]
        if records.empty:
            lines = ["Not part of this run."]
        elif ok.empty:
            reason = next((first_line(t) for t in list(records["reason"]) + list(records["error"]) if t), None)
            lines = [f"No cell finished ({', '.join(sorted(set(records['status'])))})"
                     + (f": {reason}" if reason else ".")]
        else:
            lines = _mode_speedups(ok)
            for mode, group in ok.groupby("mode", dropna=False):
                compile_s = pooled_estimate(group, COMPILE_TIME.field)
                if compile_s.ok:
                    label = mode if isinstance(mode, str) else "unknown mode"
                    parts = [f"{label}: compile/warm-up cost {fmt.seconds(compile_s.value)}",
                             fmt.interval(compile_s, fmt.seconds)]
                    lines.append(" ".join(p for p in parts if p))
        out.append(Evidence(fw, lines))
    return out

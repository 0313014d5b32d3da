"""``bench list``: every name a sweep accepts, and which backends this machine can run.

Each line is rendered from the declaration it lists (the backend registry, the spec's name lists,
the augmentations and their defaults, the datasets, the grid's profiles), so the listing cannot
fall behind what ``bench run`` accepts.
"""

from __future__ import annotations

import argparse

from rich.console import Console
from rich.markup import escape
from rich.table import Table

import backends
from bench.run import grid
from bench.spec.data import DATASETS
from bench.spec.model import ACTIVATIONS, LAYER_TYPES, LOSSES, MODERN_MODELS, OPTIMIZERS, PRECISIONS, SEED_MODELS
from bench.spec.train import AUGMENT_DEFAULTS, AUGMENTATIONS, SCHEDULES

console = Console(stderr=False)


def main_list(args: argparse.Namespace) -> int:
    table = Table(title="backends")
    table.add_column("name")
    table.add_column("framework")
    table.add_column("engine")
    table.add_column("status")
    broken = backends.import_problems(list(backends.REGISTRY))
    for name, entry in backends.REGISTRY.items():
        reason = backends.unavailable_reason(name)
        engine = f"{entry.engine} (through {entry.wrapper})" if entry.wrapper else entry.engine
        status = (f"not available: {reason}" if reason is not None else
                  f"broken: {broken[name]}" if name in broken else "installed")
        table.add_row(name, entry.description, engine, status)
    console.print(table)
    console.print("groups:      " + "; ".join(f"{g} = {', '.join(m)}" for g, m in backends.GROUPS.items())
                  + "  (--backend all is the default; a comma list may mix groups and names: all,keras)")
    console.print("models:      " + ", ".join(f"{m} ({spec.description})" for m, spec in SEED_MODELS.items()))
    console.print("also built in (not in the default sweep; --models resnet,vit): "
                  + ", ".join(f"{m} ({spec.description})" for m, spec in MODERN_MODELS.items()))
    console.print("layers:      " + ", ".join(LAYER_TYPES) + "  (for a sweep TOML's " + escape("[models.NAME]") + "; Residual nests a layers list)")
    console.print("optimizers:  " + ", ".join(OPTIMIZERS))
    console.print("schedules:   " + ", ".join(SCHEDULES))
    console.print("activations: " + ", ".join(ACTIVATIONS))
    console.print("losses:      " + ", ".join(LOSSES))
    console.print("precisions:  " + ", ".join(PRECISIONS))
    console.print("augment:     none, flip[=h|v|hv], " + ", ".join(
        f"{n}[={AUGMENT_DEFAULTS[n]:g}]" if n in AUGMENT_DEFAULTS else n for n in AUGMENTATIONS))
    console.print("datasets:    " + ", ".join(DATASETS) + "  (synthetic:HxWxC for any image shape)")
    console.print("profiles:    " + ", ".join(f"{k} {v}" for k, v in grid.PROFILES.items()))
    return 0

"""``python -m bench parity``: its options, their validation, and the exit status.

Every option value is checked before anything runs: an unknown name is a ``BenchError`` (one line
naming the valid values, exit status 2, as for ``bench run``); a failing rung is exit status 1.
"""

from __future__ import annotations

import argparse
import sys

from rich.console import Console

import backends
from bench.errors import BenchError, unknown
from bench.parity import equivalence
from bench.parity.ladder import PARITY_EPSILON
from bench.parity.render import render
from bench.parity.runner import run_parity
from bench.spec.model import ACTIVATIONS, BUILTIN_MODELS, LOSSES, OPTIMIZERS, SEED_MODELS
from bench.spec.train import SCHEDULES


def _choices(flag: str, values: list[str] | None, valid: list[str], default: list[str]) -> list[str]:
    """Comma-separated or repeated option values, 'all' for every valid one; an unknown name is an error."""
    if not values:
        return list(default)
    items = [v.strip() for value in values for v in value.split(",") if v.strip()]
    if "all" in items:
        return list(valid)
    wrong = [v for v in items if v not in valid] or ([""] if not items else [])
    if wrong:
        raise BenchError(f"{flag}: {unknown('value', wrong[0], [*valid, 'all'])}")
    return list(dict.fromkeys(items))


def _backend_names(values: list[str] | None) -> list[str]:
    """Registry names from --backend values; a group (all: the compared frameworks, not the oracle;
    keras: Keras on each engine) means its members."""
    items = [v.strip() for value in values or ["all"] for v in value.split(",") if v.strip()]
    if not items:
        raise BenchError(f"--backend names no backend; valid: {', '.join([*backends.REGISTRY, *backends.GROUPS])}")
    return backends.expand(items)


def _schedule(value: str | None) -> str:
    if value is not None and value not in SCHEDULES:
        raise BenchError(f"--schedule: {unknown('schedule', value, SCHEDULES)}")
    return value or SCHEDULES[0]


def _positive(flag: str, value: float) -> float:
    if not value > 0:
        raise BenchError(f"{flag} must be positive, got {value:g}")
    return value


def add_parity_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--backend", action="append", help="backend(s) or groups to check, comma-separated or repeated "
                        f"(default: all = {', '.join(backends.FRAMEWORK_BACKENDS)}; keras = {', '.join(backends.GROUPS['keras'])}; "
                        "'numpy' checks the oracle against itself)")
    parser.add_argument("--models", action="append", help=f"default: the seed models ({', '.join(SEED_MODELS)}); "
                        f"also: {', '.join(m for m in BUILTIN_MODELS if m not in SEED_MODELS)}")
    parser.add_argument("--optimizers", action="append", help=f"default: all ({', '.join(OPTIMIZERS)})")
    parser.add_argument("--activations", action="append", help=f"default: all ({', '.join(ACTIVATIONS)})")
    parser.add_argument("--losses", action="append", help=f"losses for the loss and gradient rungs (default: cce; all = {', '.join(LOSSES)})")
    parser.add_argument("--schedule", help=f"learning-rate schedule of the step rungs over their 20 steps: "
                        f"{', '.join(SCHEDULES)} (default constant)")
    parser.add_argument("--epsilon", type=float, default=PARITY_EPSILON,
                        help=f"RMSprop/Adam epsilon (default {PARITY_EPSILON:g}, why: bench/parity/ladder.py)")
    parser.add_argument("--mode", default="default", help="execution mode of every backend (default: each backend's first)")
    parser.add_argument("--threads", type=int, default=1, help="threads per backend worker (default 1)")
    parser.add_argument("--no-statistical", action="store_true", help="skip the statistical rung (accuracy over seeds)")
    parser.add_argument("--seeds", type=int, default=equivalence.SEEDS, help=f"seeds of the statistical rung (default {equivalence.SEEDS})")
    parser.add_argument("--epochs", type=int, default=equivalence.EPOCHS, help=f"epochs of the statistical rung (default {equivalence.EPOCHS})")


def main_parity(args: argparse.Namespace) -> int:
    """Validate the options, run the ladder and print it; exit status 1 on any failure."""
    selection = dict(
        backend_names=_backend_names(args.backend),
        models=_choices("--models", args.models, list(BUILTIN_MODELS), list(SEED_MODELS)),
        optimizers=_choices("--optimizers", args.optimizers, list(OPTIMIZERS), list(OPTIMIZERS)),
        activations=_choices("--activations", args.activations, list(ACTIVATIONS), list(ACTIVATIONS)),
        losses=_choices("--losses", args.losses, list(LOSSES), ["cce"]),
        epsilon=_positive("--epsilon", args.epsilon),
        seeds=int(_positive("--seeds", args.seeds)),
        epochs=int(_positive("--epochs", args.epochs)),
        schedule=_schedule(args.schedule),
    )
    console = Console() if sys.stdout.isatty() else Console(width=140)  # files and pipes get whole tables
    with console.status("parity") as status:
        report = run_parity(
            **selection, mode=args.mode, threads=args.threads, statistical=not args.no_statistical,
            progress=lambda text: status.update(f"parity: {text}"),
        )
    render(report, console)
    return 0 if report.ok else 1

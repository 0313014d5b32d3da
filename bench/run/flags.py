"""The ``bench run`` flags and how they become a checked sweep: profile < TOML file < flags.

Every value is checked here, before the run touches its folder, and each error names the flag or
TOML key it came from (``where``). ``--resume`` reads the arguments a run folder recorded.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import backends
from backends import compile_cache, device
from bench.errors import BenchError
from bench.run import fingerprint, grid
from bench.run.executors import DEFAULT_EXECUTOR, EXECUTORS
from bench.run.executors.process import worker_cpu_set
from bench.spec.cell import DEFAULT_MIN_SECONDS
from bench.spec.data import DATASETS
from bench.spec.model import ACTIVATIONS, LOSSES, MODERN_MODELS, OPTIMIZERS, PRECISIONS, SEED_MODELS, SEED_OPTIMIZERS
from bench.spec.train import SCHEDULES


def _names(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


def _batch_sizes(text: str) -> list[int | str]:
    sizes: list[int | str] = []
    for part in _names(text):
        try:
            sizes.append(part if part == "full" else int(part))
        except ValueError:
            raise BenchError(f"--batch-size {part!r}: not an integer; valid: positive integers or 'full', comma-separated") from None
    return sizes


def resolve_backends(names: list[str], label: str = "--backend") -> list[str]:
    """A group (``all``, ``keras``: backends/__init__.py ``GROUPS``) means its members, missing ones
    recorded as skipped; a backend named explicitly must be installed, else the run stops before it
    starts with the reason."""
    chosen = backends.expand(names)
    grouped = {member for name in names for member in backends.group_of(name) or ()}
    for name in chosen:
        reason = None if name in grouped else backends.unavailable_reason(name)
        if reason:
            raise BenchError(f"{label}: backend {name!r} is not available: {reason}; "
                             f"use a group ({', '.join(backends.GROUPS)}) to skip missing ones")
    return chosen


FLAGS = {
    "backends": "--backend", "models": "--models", "optimizers": "--optimizers", "activations": "--activations",
    "losses": "--losses", "precisions": "--precision", "modes": "--modes", "batch_sizes": "--batch-size",
    "dataset": "--dataset", "data_dir": "--data-dir", "epochs": "--epochs", "learning_rate": "--learning-rate",
    "train_size": "--train-size", "val_split": "--val-split", "repeats": "--repeats", "seed": "--seed",
    "target_accuracy": "--target", "augment": "--augment", "semantics": "--semantics", "schedules": "--schedule",
    "min_window": "--min-window", "window_budget": "--window-budget", "compile_cache": "--compile-cache",
}
"""The sweep key each run flag sets; an error about the key names the flag."""
RESULT_FLAGS = (*FLAGS.values(), "--profile", "--config", "--threads", "--device")
"""The flags that set what a run measures (its fingerprint); the others say where and how it runs."""


def result_flags(argv: list[str]) -> list[str]:
    """The result-setting flags typed in ``argv`` (the advice when a folder's settings differ names them)."""
    return [flag for arg in argv if (flag := arg.split("=", 1)[0]) in RESULT_FLAGS]


def add_run_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--backend", help=f"{', '.join(backends.REGISTRY)}, a group ("
                   + "; ".join(f"{g} = {', '.join(m)}" for g, m in backends.GROUPS.items())
                   + "), or a comma list of them (default: all)")
    p.add_argument("--models", help=f"comma list (default: all seed models: {', '.join(SEED_MODELS)}; "
                                    f"also built in: {', '.join(MODERN_MODELS)})")
    p.add_argument("--optimizers", help=f"comma list of {', '.join(OPTIMIZERS)} "
                                        f"(default: {', '.join(SEED_OPTIMIZERS)})")
    p.add_argument("--activations", help=f"comma list of {', '.join(ACTIVATIONS)} (default: all)")
    p.add_argument("--losses", help=f"comma list of {', '.join(LOSSES)} (default: cce)")
    p.add_argument("--dataset", help=f"{', '.join(DATASETS)} (default: mnist-sample, bundled)")
    p.add_argument("--data-dir", help="folder with dataset files (mnist, fashion_mnist, cifar10)")
    p.add_argument("--profile", default=grid.DEFAULT_PROFILE, help=f"{', '.join(grid.PROFILES)} (default: quick)")
    p.add_argument("--config", type=Path, help="TOML file with a [sweep] table and [models.NAME] definitions")
    p.add_argument("--epochs", type=int)
    p.add_argument("--batch-size", help="comma list of sizes; 'full' = full batch")
    p.add_argument("--learning-rate", type=float, help="one rate for every optimizer (default: per optimizer)")
    p.add_argument("--train-size", type=int, help="use the first N training samples (default: profile's)")
    p.add_argument("--val-split", type=float, help="fraction of the training split held out for validation")
    p.add_argument("--modes", help="execution modes: default, best (every compiled mode of each backend), "
                                   "or backend modes (eager, compiled, compiled-cudagraphs, graph, xla, jit)")
    p.add_argument("--semantics", help="comma list of semantics policies: harmonised (one set of values and the same "
                                       "initial weights everywhere, default), native (each framework's own defaults)")
    p.add_argument("--schedule", help=f"comma list of learning-rate schedules: {', '.join(SCHEDULES)} (default: "
                                      "constant; warmup_cosine warms up linearly over 0.1 of the steps, then decays as a cosine)")
    p.add_argument("--precision", help=f"comma list of {', '.join(PRECISIONS)} (default: fp32)")
    p.add_argument("--augment", action="append", metavar="SPEC",
                   help="augmentation axis: e.g. flip,rotate=15,zoom=0.1,crop=4,brightness=0.2,noise=0.05; repeat the "
                        "flag or separate with ';' for several; plain cells ('none') always run beside them")
    p.add_argument("--repeats", type=int, help="runs of each cell (fresh model, seed + repeat); default 1")
    p.add_argument("--seed", type=int)
    p.add_argument("--target", type=float, help="validation accuracy for time-to-accuracy (default 0.9)")
    p.add_argument("--min-window", type=float, help=f"seconds a throughput window lasts at least (default {DEFAULT_MIN_SECONDS:g})")
    p.add_argument("--window-budget", type=float,
                   help="seconds a cell's throughput windows may take before no more are added (at least 2 are taken)")
    p.add_argument("--compile-cache", help=f"persistent compilation caches: {', '.join(compile_cache.POLICIES)} "
                                           "(default warm: kept across cells and runs; cold: emptied before each cell, "
                                           "then the first step timed again from them; off: disabled)")
    p.add_argument("--threads", type=int, help="intra-op threads and CPU-set size for every backend (default: all cores)")
    p.add_argument("--device", default="cpu", choices=device.DEVICES,
                   help="cpu (default), gpu (an error where the machine or a selected framework's build cannot use "
                        "one), or auto (the GPU where every selected framework can use it, else the CPU for all)")
    p.add_argument("--gpu", type=int, default=0, metavar="INDEX",
                   help="the GPU every worker sees (CUDA_VISIBLE_DEVICES; default 0), with --device gpu or auto")
    p.add_argument("--cell-timeout", type=float,
                   help="seconds a cell may run, from when it starts (worker start-up not counted) (default: none)")
    p.add_argument("--out", type=Path, help="run folder (default: runs/<date-time>); rerun into it to resume")
    p.add_argument("--resume", type=Path, metavar="RUN_DIR",
                   help="continue RUN_DIR with its recorded settings (flags given as well override them)")
    p.add_argument("--executor", choices=EXECUTORS, default=DEFAULT_EXECUTOR,
                   help="; ".join(f"{name}: {executor.description}{' (default)' if name == DEFAULT_EXECUTOR else ''}"
                                  for name, executor in EXECUTORS.items()))
    for executor in EXECUTORS.values():
        for flag, keywords in executor.flags.items():
            p.add_argument(flag, **keywords)
    p.add_argument("--baseline", help="backend the report's ratios are relative to (default: first)")
    p.add_argument("--no-report", action="store_true", help="write only the records, not the HTML/CSV report")
    p.add_argument("--save", action="store_true",
                   help="keep each ok cell's trained model in OUT/models/ (native file + safetensors/JSON any backend loads)")


def _check_run_flags(args: argparse.Namespace) -> None:
    """The run flags that are not sweep settings."""
    worker_cpu_set(args.threads)  # refuses more threads than this process has cores
    if args.gpu < 0:
        raise BenchError(f"--gpu {args.gpu}: valid: a GPU index, 0 or more (nvidia-smi -L lists them)")
    if args.cell_timeout is not None and not (math.isfinite(args.cell_timeout) and args.cell_timeout > 0):
        raise BenchError(f"--cell-timeout {args.cell_timeout}: valid: a finite number of seconds > 0")


def build_sweep(args: argparse.Namespace) -> tuple[grid.Sweep, dict[str, str]]:
    """The sweep from profile < TOML file < flags, every value checked before anything is written,
    and where each value came from (the flag or key), for errors found once the data is loaded."""
    _check_run_flags(args)
    sweep = grid.from_profile(args.profile)
    where = {key: f"profile {args.profile!r} {key}" for key in grid.PROFILES[args.profile]}
    if args.config:
        settings, custom = grid.read_toml(args.config)
        where |= {key: f"config file {args.config}: [sweep] {key}" for key in settings}
        sweep = grid.merge(sweep, settings | {"custom_models": sweep.custom_models | custom}, where)
    lists = {"backends": args.backend, "models": args.models, "optimizers": args.optimizers,
             "activations": args.activations, "losses": args.losses, "precisions": args.precision, "modes": args.modes,
             "semantics": args.semantics, "schedules": args.schedule}
    flags = {key: _names(text) for key, text in lists.items() if text is not None}
    flags |= {"batch_sizes": _batch_sizes(args.batch_size)} if args.batch_size is not None else {}
    flags |= {"augment": args.augment} if args.augment is not None else {}
    scalars = {"dataset": args.dataset, "data_dir": args.data_dir, "epochs": args.epochs,
               "learning_rate": args.learning_rate, "train_size": args.train_size, "val_split": args.val_split,
               "repeats": args.repeats, "seed": args.seed, "target_accuracy": args.target,
               "min_window": args.min_window, "window_budget": args.window_budget, "compile_cache": args.compile_cache}
    flags |= {key: value for key, value in scalars.items() if value is not None}
    where |= {key: FLAGS[key] for key in flags}
    sweep = grid.merge(sweep, flags, where)
    sweep.size_sources = {key: where[key] for key in grid.SIZE_KEYS if key in where}
    sweep.backends = resolve_backends(sweep.backends, where.get("backends", "--backend"))
    grid.validate(sweep, sweep.backends, where)
    return sweep, where


def resumed(args: argparse.Namespace, argv: list[str]) -> argparse.Namespace:
    """``run --resume RUN_DIR``: the recorded arguments of RUN_DIR, overridden by the flags given now."""
    if args.out is not None and Path(args.out).resolve() != Path(args.resume).resolve():
        raise BenchError("--resume RUN_DIR writes into RUN_DIR: leave out --out, or give the same folder")
    run = argparse.ArgumentParser(prog="bench run")
    add_run_arguments(run)
    run.set_defaults(**fingerprint.recorded_arguments(args.resume))
    merged = run.parse_args(argv[1:])
    merged.command, merged.out = args.command, args.resume
    return merged

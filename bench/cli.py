"""Command line: ``python -m bench run | list | parity | report | compare``.

Every user error (unknown name, broken TOML, missing or corrupt dataset file, unwritable folder,
framework not installed) is one line on stderr and exit status 2, never a traceback. Records
already written stay: the store only appends.
"""

from __future__ import annotations

import argparse
import os
import sys
from dataclasses import asdict, replace
from datetime import datetime
from pathlib import Path

from rich import box
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

import backends
from bench import environment, grid
from bench.data import DATASETS, load_dataset
from bench.errors import BenchError
from bench.executor import WorkerSettings, run_sweep
from bench.spec import ACTIVATIONS, LOSSES, OPTIMIZERS, PRECISIONS, SEED_MODELS
from bench.store import RunStore

console = Console(stderr=False)
errors = Console(stderr=True)


def _names(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


def _batch_sizes(text: str) -> list[int]:
    sizes = []
    for part in _names(text):
        if part == "full":
            sizes.append(0)
            continue
        try:
            sizes.append(int(part))
        except ValueError:
            raise BenchError(f"bad batch size {part!r}: use positive integers or 'full' (comma-separated)") from None
    return sizes


def resolve_backends(names: list[str]) -> list[str]:
    """'all' means every framework (missing ones are recorded as skipped); a backend named
    explicitly must be installed, else the run stops before it starts with the reason."""
    if any(n.strip().lower() == "all" for n in names):
        return list(backends.FRAMEWORK_BACKENDS)
    chosen = list(dict.fromkeys(backends.canonical_name(n) for n in names))
    for name in chosen:
        reason = backends.unavailable_reason(name)
        if reason:
            raise BenchError(f"backend {name!r} is not available: {reason}; use --backend all to skip missing ones")
    return chosen


def add_run_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--backend", default="all", help="torch, tf, jax, numpy, a comma list, or all (default: all frameworks)")
    p.add_argument("--models", help=f"comma list (default: all seed models: {', '.join(SEED_MODELS)})")
    p.add_argument("--optimizers", help=f"comma list of {', '.join(OPTIMIZERS)} (default: all)")
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
    p.add_argument("--modes", help="execution modes: default, or backend modes (eager, compiled, graph, xla, jit)")
    p.add_argument("--precision", help=f"comma list of {', '.join(PRECISIONS)} (default: fp32)")
    p.add_argument("--repeats", type=int, help="runs of each cell (fresh model, seed + repeat); default 1")
    p.add_argument("--seed", type=int)
    p.add_argument("--target", type=float, help="validation accuracy for time-to-accuracy (default 0.9)")
    p.add_argument("--min-window", type=float, help="seconds a throughput window lasts at least (default 0.25)")
    p.add_argument("--window-budget", type=float,
                   help="seconds a cell's throughput windows may take before no more are added (at least 2 are taken)")
    p.add_argument("--threads", type=int, help="intra-op threads and CPU-set size for every backend (default: all cores)")
    p.add_argument("--device", default="cpu", choices=("cpu", "gpu", "auto"))
    p.add_argument("--cell-timeout", type=float, help="seconds before a cell's worker is killed (default: none)")
    p.add_argument("--out", type=Path, help="run folder (default: runs/<date-time>); rerun into it to resume")
    p.add_argument("--baseline", help="backend the report's ratios are relative to (default: first)")
    p.add_argument("--no-report", action="store_true", help="write only the records, not the HTML/CSV report")


def build_sweep(args: argparse.Namespace) -> grid.Sweep:
    sweep = grid.from_profile(args.profile)
    if args.config:
        sweep = grid.apply_toml(sweep, args.config)
    flags = {
        "models": _names(args.models) if args.models else None,
        "optimizers": _names(args.optimizers) if args.optimizers else None,
        "activations": _names(args.activations) if args.activations else None,
        "losses": _names(args.losses) if args.losses else None,
        "precisions": _names(args.precision) if args.precision else None,
        "modes": _names(args.modes) if args.modes else None,
        "batch_sizes": _batch_sizes(args.batch_size) if args.batch_size else None,
        "dataset": args.dataset, "data_dir": args.data_dir, "epochs": args.epochs,
        "learning_rate": args.learning_rate, "train_size": args.train_size, "val_split": args.val_split,
        "repeats": args.repeats, "seed": args.seed, "target_accuracy": args.target,
        "min_window": args.min_window, "window_budget": args.window_budget,
    }
    sweep = replace(sweep, **{k: v for k, v in flags.items() if v is not None})
    if args.models:
        sweep.models_explicit = True
    grid.validate(sweep)
    return sweep


def _progress() -> Progress:
    return Progress(
        TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
        TimeElapsedColumn(), TimeRemainingColumn(), console=console, transient=False,
    )


def cmd_run(args: argparse.Namespace) -> int:
    sweep = build_sweep(args)
    backend_names = resolve_backends(_names(args.backend))
    data = load_dataset(sweep.dataset, sweep.data_dir, sweep.val_split, sweep.train_size, sweep.test_size)
    models, refused = grid.refuse_misfits(sweep, data.input_shape, data.num_classes)
    out = args.out or Path("runs") / datetime.now().strftime("%Y%m%d-%H%M%S")
    store = RunStore(out)
    available = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else set(range(os.cpu_count() or 1))
    threads = args.threads or len(available)
    if not 1 <= threads <= len(available):
        raise BenchError(f"--threads must be between 1 and {len(available)} (the cores this process may use)")
    cpu_set = tuple(sorted(available)[:threads])
    argv = sys.argv[1:]
    env = environment.capture(argv, threads, list(cpu_set), _settings(sweep, backend_names), fairness_rules())
    store.write_environment(env)
    cells = grid.cells(sweep, backend_names, models, len(data.x_train))
    done = store.finished()
    run_id = out.name
    counts: dict[str, int] = {}

    def sink(record: dict) -> None:
        record = {"run_id": run_id} | record
        store.append(record)
        counts[record["status"]] = counts.get(record["status"], 0) + 1

    for name, reason in refused.items():
        for backend in backend_names:
            if (f"{backend}|{name}|refused", 0) not in done:
                sink({"cell_id": f"{backend}|{name}|refused", "repeat": 0, "backend": backend, "model": name,
                      "dataset": sweep.dataset, "status": "skipped", "reason": reason})
    settings = WorkerSettings(threads, cpu_set, args.device, sweep.data_dir, sweep.val_split,
                              sweep.train_size, sweep.test_size, env["matmul_peak_gflops"])
    todo = [c for c in cells if (c.cell_id, c.repeat) not in done]
    console.print(
        f"[bold]bench run[/]: {len(todo)} cells to run ({len(cells) - len(todo)} already in {out}), "
        f"backends {', '.join(backend_names)}, profile {args.profile}, dataset {sweep.dataset} "
        f"({len(data.x_train)} train / {len(data.x_val)} val / {len(data.x_test)} test), {threads} threads"
    )
    with _progress() as progress:
        task = progress.add_task("sweep", total=len(todo))

        def advance(record: dict) -> None:
            sink(record)
            progress.update(task, advance=1, description=f"{record['backend']} {record.get('model', '')}")

        try:
            run_sweep(cells, settings, advance, done, args.cell_timeout)
        except KeyboardInterrupt:
            errors.print(f"interrupted: finished cells are kept in {out}; rerun the same command with --out {out} to resume")
            return 130
    summary = ", ".join(f"{n} {s}" for s, n in sorted(counts.items()))
    console.print(f"[bold]done[/]: {summary or 'nothing to run'}; records in {store.results}")
    _print_summary(store, args.baseline)
    if not args.no_report:
        _write_report(out, args.baseline)
    return 1 if counts.get("failed") or counts.get("timeout") else 0


def _settings(sweep: grid.Sweep, backend_names: list[str]) -> dict:
    settings = asdict(sweep) | {"backends": backend_names}
    settings["custom_models"] = {k: v.model_dump() for k, v in sweep.custom_models.items()}
    return settings


def fairness_rules() -> dict[str, str]:
    """The suite's decisions (design.md), stored with the run so a reader of the report sees them."""
    return {
        "initial weights": "drawn once in NumPy (glorot_uniform, bias 0) and loaded into every backend",
        "data": "same arrays, split, per-epoch batch order (NumPy, from the seed); last partial batch dropped",
        "loss": "from logits, mean over the batch, in every backend",
        "batchnorm": "momentum 0.99 (Keras sense; torch gets 0.01), epsilon 1e-3",
        "leaky relu slope": "0.01 everywhere",
        "optimizers": "every hyperparameter explicit; momentum in the PyTorch form; RMSprop rho 0.9; Adam 0.9/0.999; eps 1e-7",
        "threads": "one worker process per backend, same CPU set and intra-op thread count, one backend at a time",
        "precision": "fp32 with TF32 off by default; tf32 and bf16 are explicit axes",
        "timing": "warm-up (compile) timed apart; steady state over whole epochs with one sync; eval off the clock",
        "throughput": "median of auto-ranged windows of whole epochs (at least --min-window s each); a window during "
                      "which other processes used the cores is re-measured, else the record is marked noisy",
        "divergence": "a training loss that is not finite, above 1e6, or above 1000x its first step's is diverged",
    }


SEED_CONFIG = {"optimizer": "adam", "activation": "relu"}
"""The seed document's own example (Keras MNIST MLP: Adam, ReLU), shown on its own in the summary."""


def _print_summary(store: RunStore, baseline: str | None) -> None:
    """Per backend x model: accuracy over the cells that converged, the seed configuration's accuracy,
    train throughput (median of cell medians) with ratios, compile time, noisy cells; then where the
    time went per backend."""
    from bench.store import read_records
    from reports.costs import time_breakdown
    from reports.records import records_frame, unconverged

    records, _ = read_records(store.results)
    frame = records_frame(records)
    frame = frame[frame["status"] == "ok"]
    if frame.empty:
        console.print("no successful cells to summarise")
        return
    frame = frame.assign(converged_accuracy=frame["test_accuracy"].where(~unconverged(frame)),
                         is_converged=~unconverged(frame), is_noisy=frame["noisy"].map(lambda v: v is True))
    table = frame.groupby(["model", "backend"], sort=False).agg(
        cells=("cell_id", "count"), converged=("is_converged", "sum"), test_accuracy=("converged_accuracy", "median"),
        train_samples_per_s=("train_samples_per_s", "median"), compile_seconds=("compile_seconds", "median"),
        noisy=("is_noisy", "sum"),
    ).reset_index()
    seed = frame[(frame["optimizer"] == SEED_CONFIG["optimizer"]) & (frame["activation"] == SEED_CONFIG["activation"])]
    base = baseline or ("torch" if "torch" in set(table["backend"]) else table["backend"].iloc[0])
    out = Table(title=f"median over cells; conv: cells converged; acc: over converged cells only; adam/relu: "
                      f"the seed's configuration (†: not converged); train samples/s vs {base}",
                box=box.SIMPLE_HEAD, padding=(0, 0), pad_edge=False)
    columns = ("model", "backend", "conv", "acc", "adam/relu", "samples/s", "vs " + base, "compile s", "noisy")
    for column in columns:
        out.add_column(column, justify="left" if column in ("model", "backend") else "right")
    for model, rows in table.groupby("model", sort=False):
        ref = rows.loc[rows["backend"] == base, "train_samples_per_s"]
        for _, row in rows.iterrows():
            ratio = f"{row.train_samples_per_s / ref.iloc[0]:.2f}x" if len(ref) else "-"
            mine = seed[(seed["model"] == model) & (seed["backend"] == row.backend)]
            seed_acc = "-" if mine.empty else f"{mine['test_accuracy'].median():.3f}" + (
                "" if mine["is_converged"].all() else "†")
            accuracy = "-" if row.test_accuracy != row.test_accuracy else f"{row.test_accuracy:.3f}"
            out.add_row(model, row.backend, f"{row.converged}/{row.cells}", accuracy, seed_acc,
                        f"{row.train_samples_per_s:,.0f}", ratio, f"{row.compile_seconds:.3f}", str(row.noisy or ""))
    console.print(out)
    costs = time_breakdown(records_frame(records))
    if not costs.empty:
        timing = Table(title="where the time went (seconds): worker start-up, then the cells' build, compile/warm-up, "
                             "accuracy epochs, throughput windows, evaluation, rest", box=box.SIMPLE_HEAD,
                       padding=(0, 0), pad_edge=False)
        parts = [c for c in costs.columns if c not in ("backend", "cells", "compile cache")]
        for column in ["backend", "start", "build", "compile", "train", "windows", "eval", "other", "total", "cache"]:
            timing.add_column(column, justify="left" if column in ("backend", "cache") else "right")
        for row in costs.to_dict("records"):
            timing.add_row(str(row["backend"]), *(f"{row[c]:.1f}" for c in parts), row["compile cache"])
        console.print(timing)


def _write_report(out: Path, baseline: str | None) -> None:
    from reports import build_report

    result = build_report(out, baseline=baseline)
    console.print(f"report: {result.html}")


def cmd_list(args: argparse.Namespace) -> int:
    table = Table(title="backends")
    table.add_column("name")
    table.add_column("framework")
    table.add_column("status")
    for name, entry in backends.REGISTRY.items():
        reason = backends.unavailable_reason(name)
        table.add_row(name, entry.description, "installed" if reason is None else f"not available: {reason}")
    console.print(table)
    console.print("models:      " + ", ".join(f"{m} ({spec.description})" for m, spec in SEED_MODELS.items()))
    console.print("optimizers:  " + ", ".join(OPTIMIZERS))
    console.print("activations: " + ", ".join(ACTIVATIONS))
    console.print("losses:      " + ", ".join(LOSSES))
    console.print("precisions:  " + ", ".join(PRECISIONS))
    console.print("datasets:    " + ", ".join(DATASETS) + "  (synthetic:HxWxC for any image shape)")
    console.print("profiles:    " + ", ".join(f"{k} {v}" for k, v in grid.PROFILES.items()))
    return 0


def parser() -> argparse.ArgumentParser:
    root = argparse.ArgumentParser(prog="bench", description="Compare Keras/TensorFlow, PyTorch and JAX fairly.")
    sub = root.add_subparsers(dest="command", required=True)
    add_run_arguments(sub.add_parser("run", help="run a sweep and write a run folder with its report"))
    sub.add_parser("list", help="what models, optimizers, activations, datasets and backends exist")
    from bench import parity
    from reports import cli as report_cli

    parity.add_parity_arguments(sub.add_parser("parity", help="check every backend against the NumPy reference"))
    report_cli.add_report_arguments(sub.add_parser("report", help="rebuild a run folder's CSV and HTML report"))
    report_cli.add_compare_arguments(sub.add_parser("compare", help="which cells got faster or slower between two runs"))
    return root


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        if args.command == "run":
            return cmd_run(args)
        if args.command == "list":
            return cmd_list(args)
        if args.command == "parity":
            from bench import parity

            return parity.main_parity(args)
        from reports import cli as report_cli

        return report_cli.main_report(args) if args.command == "report" else report_cli.main_compare(args)
    except BenchError as exc:
        errors.print(f"error: {exc}", markup=False, highlight=False, soft_wrap=True)
        return 2

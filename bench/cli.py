"""Command line: ``python -m bench run | list | parity | report | compare | predict``.

Every user error (unknown name, a value out of range or of the wrong type in a flag or the TOML
file, broken TOML, missing or corrupt dataset file, unwritable folder, framework not installed) is
one line on stderr and exit status 2, never a traceback, and is found before anything is written:
records already in an ``--out`` folder stay as they were.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
from dataclasses import asdict
from datetime import datetime
from pathlib import Path
from typing import NoReturn

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

import backends
from bench import environment, grid, predict
from bench.data import DATASETS, load_dataset
from bench.errors import BenchError
from bench.executor import WorkerSettings, run_sweep
from bench.harness import Cell, refused_record
from bench.record import ResultRecord
from bench.spec import ACTIVATIONS, LOSSES, OPTIMIZERS, PRECISIONS, SEED_MODELS, training_rules
from bench.store import RunStore

console = Console(stderr=False)
errors = Console(stderr=True)


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
    """'all' means every framework (missing ones are recorded as skipped); a backend named
    explicitly must be installed, else the run stops before it starts with the reason."""
    if any(n.strip().lower() == "all" for n in names):
        return list(backends.FRAMEWORK_BACKENDS)
    chosen = list(dict.fromkeys(backends.canonical_name(n) for n in names))
    for name in chosen:
        reason = backends.unavailable_reason(name)
        if reason:
            raise BenchError(f"{label}: backend {name!r} is not available: {reason}; use --backend all to skip missing ones")
    return chosen


FLAGS = {
    "backends": "--backend", "models": "--models", "optimizers": "--optimizers", "activations": "--activations",
    "losses": "--losses", "precisions": "--precision", "modes": "--modes", "batch_sizes": "--batch-size",
    "dataset": "--dataset", "data_dir": "--data-dir", "epochs": "--epochs", "learning_rate": "--learning-rate",
    "train_size": "--train-size", "val_split": "--val-split", "repeats": "--repeats", "seed": "--seed",
    "target_accuracy": "--target",
}
"""The sweep key each run flag sets; an error about the key names the flag."""


def add_run_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--backend", help="torch, tf, jax, numpy, a comma list, or all (default: all frameworks)")
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
    p.add_argument("--threads", type=int, help="intra-op threads and CPU-set size for every backend (default: all cores)")
    p.add_argument("--device", default="cpu", choices=("cpu", "gpu", "auto"))
    p.add_argument("--cell-timeout", type=float, help="seconds before a cell's worker is killed (default: none)")
    p.add_argument("--out", type=Path, help="run folder (default: runs/<date-time>); rerun into it to resume")
    p.add_argument("--baseline", help="backend the report's ratios are relative to (default: first)")
    p.add_argument("--no-report", action="store_true", help="write only the records, not the HTML/CSV report")
    p.add_argument("--save", action="store_true",
                   help="keep each ok cell's trained model in OUT/models/ (native file + safetensors/JSON any backend loads)")


def _cores() -> set[int]:
    return os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else set(range(os.cpu_count() or 1))


def _check_run_flags(args: argparse.Namespace) -> None:
    """The run flags that are not sweep settings."""
    cores = len(_cores())
    if args.threads is not None and not 1 <= args.threads <= cores:
        raise BenchError(f"--threads {args.threads}: valid: 1 to {cores} (the cores this process may use)")
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
             "activations": args.activations, "losses": args.losses, "precisions": args.precision, "modes": args.modes}
    flags = {key: _names(text) for key, text in lists.items() if text is not None}
    flags |= {"batch_sizes": _batch_sizes(args.batch_size)} if args.batch_size is not None else {}
    scalars = {"dataset": args.dataset, "data_dir": args.data_dir, "epochs": args.epochs,
               "learning_rate": args.learning_rate, "train_size": args.train_size, "val_split": args.val_split,
               "repeats": args.repeats, "seed": args.seed, "target_accuracy": args.target}
    flags |= {key: value for key, value in scalars.items() if value is not None}
    where |= {key: FLAGS[key] for key in flags}
    sweep = grid.merge(sweep, flags, where)
    quick = grid.PROFILES["quick"]
    if sweep.dataset != "mnist-sample" and args.train_size is None and sweep.train_size == quick["train_size"]:
        sweep.train_size = sweep.test_size = None  # the quick slice is for the bundled sample only
        where.pop("train_size", None)
    sweep.backends = resolve_backends(sweep.backends, where.get("backends", "--backend"))
    grid.validate(sweep, sweep.backends, where)
    return sweep, where


def _progress() -> Progress:
    return Progress(
        TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
        TimeElapsedColumn(), TimeRemainingColumn(), console=console, transient=False,
    )


def cmd_run(args: argparse.Namespace) -> int:
    sweep, where = build_sweep(args)
    backend_names = sweep.backends
    data = load_dataset(sweep.dataset, sweep.data_dir, sweep.val_split, sweep.train_size, sweep.test_size)
    grid.check_batches(sweep, len(data.x_train), where)
    models, refused = grid.refuse_misfits(sweep, data.input_shape, data.num_classes)
    out = args.out or Path("runs") / datetime.now().strftime("%Y%m%d-%H%M%S")
    store = RunStore(out)
    available = _cores()
    threads = args.threads or len(available)
    cpu_set = tuple(sorted(available)[:threads])
    argv = sys.argv[1:]
    env = environment.capture(argv, threads, list(cpu_set), _settings(sweep, backend_names), fairness_rules())
    store.write_environment(env)
    cells = grid.cells(sweep, backend_names, models, len(data.x_train))
    done = store.finished()
    run_id = out.name
    counts: dict[str, int] = {}

    def sink(record: ResultRecord) -> None:
        store.append(record.with_fields(run_id=run_id).to_json_dict())
        counts[record.status] = counts.get(record.status, 0) + 1

    for name, reason in refused.items():
        for backend in backend_names:
            if (Cell.refused_id(backend, name), 0) not in done:
                sink(refused_record(backend, name, sweep.dataset, reason))
    settings = WorkerSettings(threads, cpu_set, args.device, sweep.data_dir, sweep.val_split,
                              sweep.train_size, sweep.test_size, env["matmul_peak_gflops"],
                              save_models_in=str(out) if args.save else None)
    todo = [c for c in cells if (c.cell_id, c.repeat) not in done]
    console.print(
        f"[bold]bench run[/]: {len(todo)} cells to run ({len(cells) - len(todo)} already in {out}), "
        f"backends {', '.join(backend_names)}, profile {args.profile}, dataset {sweep.dataset} "
        f"({len(data.x_train)} train / {len(data.x_val)} val / {len(data.x_test)} test), {threads} threads"
    )
    with _progress() as progress:
        task = progress.add_task("sweep", total=len(todo))

        def advance(record: ResultRecord) -> None:
            sink(record)
            progress.update(task, advance=1, description=escape(f"{record.backend} {record.model or ''}"))

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
    """The suite's decisions, stored with the run so a reader of the report sees them: the training
    values rendered from ``TrainSpec``'s defaults, and how every backend is set up and timed."""
    return training_rules() | {
        "initial weights": "drawn once in NumPy (glorot_uniform, bias 0) and loaded into every backend",
        "data": "same arrays, split, per-epoch batch order (NumPy, from the seed); last partial batch dropped",
        "threads": "one worker process per backend, same CPU set and intra-op thread count, one backend at a time",
        "timing": "warm-up (compile) timed apart; steady state over whole epochs with one sync; eval off the clock",
    }


def _print_summary(store: RunStore, baseline: str | None) -> None:
    """Each model's headline as the report's first table shows it: same pooling, baseline and metrics.

    Under each value, the comparison with the baseline (green better, red worse, dim within noise).
    """
    from reports.headline import choose_baseline, headlines
    from reports.metrics import HEADLINE
    from reports.records import load_run

    frame = load_run(store.folder).records
    if not (frame["status"] == "ok").any():
        console.print("no successful cells to summarise")
        return
    base = choose_baseline(frame, baseline)
    versus = f"; second line: vs {base}" if base else ""
    out = Table(title=escape(f"headline per model, as in the report{versus}"), box=None,
                pad_edge=False)
    out.add_column("model")
    out.add_column("backend")
    for metric in HEADLINE:  # one word a line, so the table fits an 80-column terminal
        out.add_column(metric.label.replace(" ", "\n"), justify="right",
                       min_width=max(map(len, metric.label.split())))
    styles = {"better": "green", "worse": "red", "same": "dim"}
    for head in headlines(frame, base):
        for row in head.rows:
            cells = []
            for metric in HEADLINE:
                entry = row.entries[metric.field]
                text = metric.format(entry.value.value)
                if entry.versus.ok:
                    text += f"\n[{styles[entry.verdict(metric)]}]{metric.change_format(entry.versus.value)}[/]"
                cells.append(text)
            problems = ", ".join(f"{n} {status}" for status, n in row.problems.items())
            name = escape(row.variant) + ("\n[dim]baseline[/]" if row.is_baseline else "")
            name += f"\n[red]{problems}[/]" if problems else ""
            out.add_row(escape(head.model), name, *cells)
    console.print(out)


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


class _Parser(argparse.ArgumentParser):
    """argparse with a usage error as one line, like every other bad input (the usage is under --help)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"error: {self.prog}: {message}\n")


def parser() -> argparse.ArgumentParser:
    root = _Parser(prog="bench", description="Compare Keras/TensorFlow, PyTorch and JAX fairly.")
    sub = root.add_subparsers(dest="command", required=True)
    add_run_arguments(sub.add_parser("run", help="run a sweep and write a run folder with its report"))
    sub.add_parser("list", help="what models, optimizers, activations, datasets and backends exist")
    from bench import parity
    from reports import cli as report_cli

    parity.add_parity_arguments(sub.add_parser("parity", help="check every backend against the NumPy reference"))
    report_cli.add_report_arguments(sub.add_parser("report", help="rebuild a run folder's CSV and HTML report"))
    report_cli.add_compare_arguments(sub.add_parser("compare", help="which cells got faster or slower between two runs"))
    predict.add_predict_arguments(sub.add_parser("predict", help="classify a .npy or IDX file with a saved model on any backend"))
    return root


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        if args.command == "run":
            return cmd_run(args)
        if args.command == "list":
            return cmd_list(args)
        if args.command == "predict":
            return predict.main_predict(args)
        if args.command == "parity":
            from bench import parity

            return parity.main_parity(args)
        from reports import cli as report_cli

        return report_cli.main_report(args) if args.command == "report" else report_cli.main_compare(args)
    except BenchError as exc:
        errors.print(f"error: {exc}", markup=False, highlight=False, soft_wrap=True)
        return 2

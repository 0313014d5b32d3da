"""Command line: ``python -m bench run | list | parity | report | compare | predict``.

Every user error (unknown name, a value out of range or of the wrong type in a flag or the TOML
file, broken TOML, missing or corrupt dataset file, unwritable folder, framework not installed, a
run folder in use or recorded with other settings) is one line on stderr and exit status 2, never a
traceback, and is found before anything is written: records already in an ``--out`` folder stay as
they were. Ctrl-C (or SIGTERM, as Slurm sends at a time limit) stops the sweep, still writes the
report of what finished and exits 130 (143).
"""

from __future__ import annotations

import argparse
import signal
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict
from datetime import datetime
from pathlib import Path
from typing import NoReturn

from rich import box
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

import backends
from bench.errors import BenchError
from bench.models import predict
from bench.results.record import ResultRecord
from bench.results.store import RunStore
from bench.run import code_identity, environment, fingerprint, grid
from bench.run.executors.local import WorkerSettings, run_sweep
from bench.run.flags import EXECUTOR_NAMES, add_run_arguments, build_sweep, resumed, usable_cores
from bench.run.lock import RunLock
from bench.spec.augment import check_image_input
from bench.spec.cell import Cell
from bench.spec.data import DATASETS, load_dataset
from bench.spec.model import ACTIVATIONS, LOSSES, OPTIMIZERS, PRECISIONS, SEED_MODELS
from bench.spec.train import AUGMENT_DEFAULTS, AUGMENTATIONS, training_rules

console = Console(stderr=False)
errors = Console(stderr=True)


def _progress() -> Progress:
    return Progress(
        TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
        TimeElapsedColumn(), TimeRemainingColumn(), console=console, transient=False,
    )


def _local(cells: list, settings: WorkerSettings, sink, done: set, args: argparse.Namespace, lock: RunLock) -> None:
    run_sweep(cells, settings, sink, done, args.cell_timeout, watch=lock.watch)


def _ray(cells: list, settings: WorkerSettings, sink, done: set, args: argparse.Namespace, lock: RunLock) -> None:
    from bench.run.executors import ray as ray_executor

    ray_executor.run_sweep(cells, settings, sink, done, args.cell_timeout, args.ray_address, args.gpus_per_cell)


EXECUTORS = dict(zip(EXECUTOR_NAMES, (_local, _ray), strict=True))


def _check_executor(args: argparse.Namespace) -> None:
    """Executor flags that cannot work stop the run before anything is written."""
    if args.executor == "ray":
        from bench.run.executors import ray as ray_executor

        ray_executor.require()
    elif args.ray_address or args.gpus_per_cell:
        raise BenchError("--ray-address and --gpus-per-cell apply to --executor ray only")
    if args.gpus_per_cell < 0:
        raise BenchError(f"--gpus-per-cell must be 0 or more, got {args.gpus_per_cell:g}")


def _cpu_set(requested: int | None) -> tuple[int, ...]:
    """The first ``requested`` cores this process may use (all by default; ``_check_run_flags`` bounds it)."""
    available = sorted(usable_cores())
    return tuple(available[: requested or len(available)])


class Interrupted(KeyboardInterrupt):
    """SIGTERM or SIGHUP, handled like Ctrl-C: stop the sweep, keep and report what finished."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


@contextmanager
def _stop_on_signals() -> Iterator[None]:
    def handler(signum, _frame):
        raise Interrupted(signum)

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def cmd_run(args: argparse.Namespace) -> int:
    sweep, where = build_sweep(args)
    backend_names = sweep.backends
    data = load_dataset(sweep.dataset, sweep.data_dir, sweep.val_split, sweep.train_size, sweep.test_size)
    grid.check_batches(sweep, len(data.x_train), where)
    models, refused = grid.refuse_misfits(sweep, data.input_shape, data.num_classes)
    for augment in sweep.augment:
        check_image_input(augment, data.input_shape)
    out = args.out or Path("runs") / datetime.now().strftime("%Y%m%d-%H%M%S")
    cpu_set = _cpu_set(args.threads)
    threads = len(cpu_set)
    _check_executor(args)
    identity = fingerprint.describe(sweep, backend_names, data, threads, args.device)
    code = code_identity.current()
    store = RunStore(out)
    command = " ".join(["python -m bench"] + args.argv)
    with RunLock(out, command) as lock:
        note = fingerprint.check(store, identity, code)  # before anything is written: a refused rerun changes nothing
        if note:
            console.print(note, markup=False)
        if lock.previous.get("pid"):
            console.print(f"took over {out} from a driver that is gone (pid {lock.previous['pid']}); "
                          f"stopped {lock.stopped_leftovers} leftover worker(s)")
        fingerprint.record(store, identity, code, args)
        env = environment.capture(args.argv, threads, list(cpu_set), _settings(sweep, backend_names), fairness_rules())
        store.write_environment(env | {"executor": args.executor, "fingerprint": fingerprint.digest(identity)})
        return _sweep(args, sweep, backend_names, data, models, refused, store, lock, code,
                      WorkerSettings(threads, cpu_set, args.device, sweep.data_dir, sweep.val_split,
                                     sweep.train_size, sweep.test_size, env["matmul_peak_gflops"],
                                     save_models_in=str(out) if args.save else None))


def _sweep(args, sweep, backend_names, data, models, refused, store: RunStore, lock: RunLock, code: code_identity.CodeIdentity,
           settings: WorkerSettings) -> int:
    """Run what is left of the sweep, then print the summary and write the report (also after Ctrl-C)."""
    out = store.folder
    cells = grid.cells(sweep, backend_names, models, len(data.x_train), on_gpu=args.device != "cpu")
    done = store.finished()
    run_id = out.name
    counts: dict[str, int] = {}

    def sink(record: ResultRecord) -> None:
        store.append(record.with_fields(run_id=run_id, **code.record_fields()).to_json_dict())
        counts[record.status] = counts.get(record.status, 0) + 1

    for name, reason in refused.items():
        for backend in backend_names:
            if (Cell.refused_id(backend, name), 0) not in done:
                sink(ResultRecord.refused(backend, name, sweep.dataset, reason))
    todo = [c for c in cells if (c.cell_id, c.repeat) not in done]
    console.print(
        f"[bold]bench run[/]: {len(todo)} cells to run ({len(cells) - len(todo)} already in {out}), "
        f"backends {', '.join(backend_names)}, profile {args.profile}, dataset {sweep.dataset} "
        f"({len(data.x_train)} train / {len(data.x_val)} val / {len(data.x_test)} test), {settings.threads} threads, "
        f"executor {args.executor}"
    )
    interrupted = None
    with _progress() as progress:
        task = progress.add_task("sweep", total=len(todo))

        def advance(record: ResultRecord) -> None:
            sink(record)
            progress.update(task, advance=1, description=escape(f"{record.backend} {record.model or ''}"))

        try:
            with _stop_on_signals():
                EXECUTORS[args.executor](cells, settings, advance, done, args, lock)
        except KeyboardInterrupt as exc:
            interrupted = exc
    summary = ", ".join(f"{n} {s}" for s, n in sorted(counts.items()))
    if interrupted is not None:
        errors.print(f"interrupted: finished cells are kept in {out}; "
                     f"resume with: python -m bench run --resume {out}", markup=False, highlight=False, soft_wrap=True)
    else:
        console.print(f"[bold]done[/]: {summary or 'nothing to run'}; records in {store.results}")
    if store.has_records():
        _print_summary(store, args.baseline)
        if not args.no_report:
            _write_report(out, args.baseline)
    if interrupted is not None:
        return 128 + getattr(interrupted, "signum", signal.SIGINT)
    return 1 if any(not status.final for status in counts) else 0  # a cell a resume would run again


def _settings(sweep: grid.Sweep, backend_names: list[str]) -> dict:
    settings = asdict(sweep) | {"backends": backend_names}
    settings["custom_models"] = {k: v.model_dump() for k, v in sweep.custom_models.items()}
    settings["augment"] = [a.label for a in sweep.augment]
    return settings


def fairness_rules() -> dict[str, str]:
    """The suite's decisions, stored with the run so a reader of the report sees them: the training
    values rendered from ``TrainSpec``'s defaults, and how every backend is set up and timed."""
    return training_rules() | {
        "initial weights": "drawn once in NumPy (glorot_uniform, bias 0) and loaded into every backend",
        "data": "same arrays, split, per-epoch batch order (NumPy, from the seed); last partial batch dropped",
        "threads": "one worker process per backend, same CPU set and intra-op thread count, one backend at a time",
        "timing": "warm-up (compile) timed apart; steady state over whole epochs with one sync; eval off the clock",
        "augmentation": "random parameters drawn in NumPy from the seed before each epoch; each backend transforms "
                        "natively inside its step; bilinear, constant-0 fill about the image centre; order "
                        + ", ".join(AUGMENTATIONS) + "; brightness and noise clip to [0, 1]",
        "throughput": "median of auto-ranged windows of whole epochs (at least --min-window s each); a window during "
                      "which other processes used the cores is re-measured, else the record is marked noisy",
        "divergence": "a training loss that is not finite, above 1e6, or above 1000x its first step's is diverged",
        "semantics policy": "the values above are the harmonised policy; cells run with --semantics native use each "
                            "framework's own defaults instead (each record lists the values it ran); parity runs harmonised only",
    }


def _print_summary(store: RunStore, baseline: str | None) -> None:
    """Each model's headline as the report's first table shows it: same pooling, baseline and metrics.

    Under each value, the comparison with the baseline (green better, red worse, dim within noise).
    """
    from reports.costs import time_breakdown
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
    costs = time_breakdown(frame)
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
    console.print("augment:     none, flip[=h|v|hv], " + ", ".join(
        f"{n}[={AUGMENT_DEFAULTS[n]:g}]" if n in AUGMENT_DEFAULTS else n for n in AUGMENTATIONS))
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
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser().parse_args(argv)
    args.argv = argv
    try:
        if args.command == "run":
            if args.resume is not None:
                args = resumed(args, argv)
                args.argv = argv
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

"""``bench run``: one sweep from flags to run folder, its summary and its report.

The flags become a sweep; everything that can be wrong with them (values, TOML, dataset, models that
cannot fit, executor settings, a folder in use or recorded with other settings) is found before
anything is written, so records already in an ``--out`` folder stay as they were. Then the cells
still missing run on the chosen executor, each record is appended as it arrives, and the summary
(reports/terminal.py) and the report (reports/) follow. Ctrl-C (or SIGTERM, as Slurm sends at a time
limit) stops the sweep, still writes the report of what finished and exits 130 (143); a second one
while the summary or report is written exits at once, quietly, the report files being written whole
and renamed (docs/architecture.md, "Run lifecycle"). Every command it prints is shell-quoted.
"""

from __future__ import annotations

import argparse
import signal
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict
from datetime import datetime
from pathlib import Path

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

import backends
from backends import compile_cache, device
from bench.measure.peaks import MatmulPeaks
from bench.results.record import ResultRecord
from bench.results.store import RunStore
from bench.run import code_identity, environment, executors, fingerprint, grid
from bench.run.environment import command_line
from bench.run.executors.local import WorkerSettings
from bench.run.executors.process import worker_cpu_set
from bench.run.fairness import fairness_rules
from bench.run.flags import build_sweep, result_flags, resumed
from bench.run.lock import LOCK, RunLock, printable
from bench.spec.augment import check_image_input
from bench.spec.cell import Cell
from bench.spec.data import load_dataset

console = Console(stderr=False)
errors = Console(stderr=True)


def _progress() -> Progress:
    return Progress(
        TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
        TimeElapsedColumn(), TimeRemainingColumn(), console=console, transient=False,
    )


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


def main_run(args: argparse.Namespace) -> int:
    """``bench run``: a fresh sweep, or with ``--resume`` the one a run folder recorded."""
    if args.resume is not None:
        argv = args.argv
        args = resumed(args, argv)
        args.argv = argv
    sweep, where = build_sweep(args)
    backend_names = sweep.backends
    data = load_dataset(sweep.dataset, sweep.data_dir, sweep.val_split, sweep.train_size, sweep.test_size)
    grid.check_batches(sweep, len(data.x_train), where)
    models, refused = grid.refuse_misfits(sweep, data.input_shape, data.num_classes)
    for augment in sweep.augment:
        check_image_input(augment, data.input_shape)
    out = args.out or Path("runs") / datetime.now().strftime("%Y%m%d-%H%M%S")
    cpu_set = worker_cpu_set(args.threads)
    threads = len(cpu_set)
    executors.check(args)
    engines = [backends.REGISTRY[name].engine for name in backend_names if backends.unavailable_reason(name) is None]
    placement = device.resolve(args.device, args.gpu, engines, sweep.precisions)  # --device gpu without one: exit 2 here
    if placement.note:
        console.print(placement.note, markup=False, highlight=False)
    identity = fingerprint.describe(sweep, backend_names, data, threads, args.device)
    code = code_identity.current()
    store = RunStore(out)
    rerun = fingerprint.Rerun(args.resume is not None, result_flags(args.argv), sweep.repeats,
                              where.get("repeats", "--repeats"))
    fingerprint.check(store, identity, code, rerun)  # a refused rerun touches nothing, not even the lock file...
    with RunLock(out, command_line(args.argv)) as lock:
        note = fingerprint.check(store, identity, code, rerun)  # ...and holds once no other driver can write the folder
        if note:
            console.print(note, markup=False)
        if lock.previous.get("pid"):
            console.print(f"took over {out} from a driver that is gone (pid {printable(lock.previous['pid'])}); "
                          f"stopped {lock.stopped_leftovers} leftover worker(s)", markup=False, highlight=False)
        if lock.left_alone:
            console.print(f"note: {LOCK} listed live process(es) {lock.left_alone} that are not provably workers of "
                          f"{out} (their environment lacks its run token): left alone", markup=False, highlight=False)
        fingerprint.record(store, identity, code, args)
        env = environment.capture(args.argv, threads, list(cpu_set), _settings(sweep, backend_names), fairness_rules())
        store.write_environment(env | {"executor": args.executor, "fingerprint": fingerprint.digest(identity),
                                       "device": placement.describe(args.device)})
        peaks = MatmulPeaks.of(env["matmul_peak_gflops"], env["matmul_peak_method"], placement.peaks)
        return _sweep(args, sweep, backend_names, data, models, refused, store, lock, code,
                      WorkerSettings(threads, cpu_set, placement.device, sweep.data_dir, sweep.val_split,
                                     sweep.train_size, sweep.test_size, peaks, placement.gpu,
                                     save_models_in=str(out) if args.save else None,
                                     compile_cache=sweep.compile_cache,
                                     compile_cache_dir=str(compile_cache.folder(sweep.compile_cache, out))))


def _sweep(args, sweep, backend_names, data, models, refused, store: RunStore, lock: RunLock, code: code_identity.CodeIdentity,
           settings: WorkerSettings) -> int:
    """Run what is left of the sweep, then print the summary and write the report (also after Ctrl-C)."""
    out = store.folder
    cells = grid.cells(sweep, backend_names, models, len(data.x_train), on_gpu=settings.device == "gpu")
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
        f"[bold]bench run[/]: {len(todo)} cells to run ({len(cells) - len(todo)} already in {escape(str(out))}), "
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
                executors.EXECUTORS[args.executor].run(cells, settings, advance, done, args, lock)
        except KeyboardInterrupt as exc:
            interrupted = exc
    summary = ", ".join(f"{n} {s}" for s, n in sorted(counts.items()))
    if interrupted is not None:
        errors.print(f"interrupted: finished cells are kept in {out}; resume with: "
                     f"{command_line(['run', '--resume', str(out)])} (interrupt again to skip the report)",
                     markup=False, highlight=False, soft_wrap=True)
    else:
        console.print(f"[bold]done[/]: {escape(summary or 'nothing to run')}; records in {escape(str(store.results))}")
    try:
        with _stop_on_signals():
            _summary_and_report(out, store, args)
    except KeyboardInterrupt as again:  # exit at once: the records are on disk, the previous report still in place
        return 128 + getattr(again, "signum", signal.SIGINT)
    if interrupted is not None:
        return 128 + getattr(interrupted, "signum", signal.SIGINT)
    return 1 if any(not status.final for status in counts) else 0  # a cell a resume would run again


def _summary_and_report(out: Path, store: RunStore, args: argparse.Namespace) -> None:
    """The terminal summary and the report files (each written whole, then renamed)."""
    if store.has_records():
        from reports.terminal import print_summary  # pandas: loaded once there is something to summarise

        print_summary(console, out, args.baseline)
        if not args.no_report:
            _write_report(out, args.baseline)


def _settings(sweep: grid.Sweep, backend_names: list[str]) -> dict:
    settings = asdict(sweep) | {"backends": backend_names}
    settings["custom_models"] = {k: v.model_dump() for k, v in sweep.custom_models.items()}
    settings["augment"] = [a.label for a in sweep.augment]
    return settings


def _write_report(out: Path, baseline: str | None) -> None:
    from reports import build_report

    result = build_report(out, baseline=baseline)
    console.print(f"report: {result.html}", markup=False, highlight=False)

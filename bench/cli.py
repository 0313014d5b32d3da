"""Command line: ``python -m bench COMMAND``, one row of ``COMMANDS`` per command.

This module wires arguments to the function that runs a command and turns user errors into one
line: every ``BenchError`` (unknown name, a value out of range or of the wrong type in a flag or
the TOML file, broken TOML, missing or corrupt dataset file, unwritable folder, framework not
installed, a run folder in use or recorded with other settings) and every usage error, an unknown
command included, is one line on stderr and exit status 2, never a traceback. Ctrl-C outside a sweep
exits 130 and a reader that closes stdout early (``| head``) exits 141, both quietly. What a command does
lives with its floor: ``bench run`` in bench/run/driver.py, ``bench list`` in bench/run/listing.py,
``bench doctor`` in bench/run/doctor.py,
``bench parity`` in bench/parity/, ``bench report``, ``bench compare`` and ``bench history`` in reports/,
``bench predict`` in bench/models/ (docs/architecture.md, "Floors").
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import NoReturn

from rich.console import Console

from bench.errors import BenchError
from bench.models import predict
from bench.run import doctor, driver, listing
from bench.run.flags import add_run_arguments
from reports import cli as report_cli
from reports.history import cli as history_cli

errors = Console(stderr=True)


@dataclass(frozen=True)
class Command:
    """One subcommand: its line in ``bench --help``, the options it adds, and the function that runs it."""

    help: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    main: Callable[[argparse.Namespace], int]


def _no_arguments(parser: argparse.ArgumentParser) -> None:
    """A command without options."""


def _add_parity_arguments(parser: argparse.ArgumentParser) -> None:
    from bench.parity.cli import add_parity_arguments  # scipy.stats: about a second, paid by `bench parity` only

    add_parity_arguments(parser)


def _main_parity(args: argparse.Namespace) -> int:
    from bench.parity.cli import main_parity

    return main_parity(args)


COMMANDS: dict[str, Command] = {
    "run": Command("run a sweep and write a run folder with its report", add_run_arguments, driver.main_run),
    "list": Command("what models, optimizers, activations, datasets and backends exist", _no_arguments,
                    listing.main_list),
    "doctor": Command("check that each framework sees the device, times it and reads its memory correctly",
                      doctor.add_doctor_arguments, doctor.main_doctor),
    "parity": Command("check every backend against the NumPy reference", _add_parity_arguments, _main_parity),
    "report": Command("rebuild a run folder's CSV and HTML report", report_cli.add_report_arguments,
                      report_cli.main_report),
    "compare": Command("which cells got faster or slower between two runs", report_cli.add_compare_arguments,
                       report_cli.main_compare),
    "history": Command("keep a history of runs: add, report trends and steps, check for CI, export",
                       history_cli.add_history_arguments, history_cli.main_history),
    "predict": Command("classify a .npy or IDX file with a saved model on any backend", predict.add_predict_arguments,
                       predict.main_predict),
}
"""Every command, in ``bench --help`` order; ``main`` dispatches through this table only."""


class _Parser(argparse.ArgumentParser):
    """argparse with a usage error as one line, like every other bad input (the usage is under --help)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"error: {self.prog}: {' '.join(message.split())}\n")


def parser(command: str | None = None) -> argparse.ArgumentParser:
    """The parser of every command, with the options of ``command`` only.

    Adding a command's options imports its modules, and some are heavy (parity loads scipy.stats,
    compare pandas), so only the command being run pays for its own; the others are listed by name
    and help, which is all ``bench --help`` and an unknown command's error need.
    """
    root = _Parser(prog="bench", description="Compare Keras/TensorFlow, PyTorch and JAX fairly.")
    sub = root.add_subparsers(dest="command", required=True)
    for name, entry in COMMANDS.items():
        chosen = sub.add_parser(name, help=entry.help)
        if name == command:
            entry.add_arguments(chosen)
    return root


INTERRUPTED = 128 + signal.SIGINT
"""Exit status after Ctrl-C outside a sweep (which handles its own): the shell's convention, quietly."""
BROKEN_PIPE = 128 + signal.SIGPIPE
"""Exit status when the reader of stdout went away (``| head``): what a tool killed by SIGPIPE reports."""


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        args = parser(argv[0] if argv else None).parse_args(argv)
        args.argv = argv
        code = COMMANDS[args.command].main(args)
        sys.stdout.flush()  # here, so a reader that closed early is caught below and not at interpreter exit
        return code
    except BenchError as exc:
        errors.print(f"error: {exc}", markup=False, highlight=False, soft_wrap=True)
        return 2
    except KeyboardInterrupt:
        return INTERRUPTED
    except BrokenPipeError:
        _discard_stdout()
        return BROKEN_PIPE
    except SystemExit as exc:  # rich's Console exits 1 on a broken pipe, stdout already discarded
        if isinstance(exc.__context__, BrokenPipeError):
            return BROKEN_PIPE
        raise


def _discard_stdout() -> None:
    """Point stdout at /dev/null, so the output still buffered for the closed pipe is dropped at exit
    instead of raising there (the Python documentation's recipe for SIGPIPE)."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)

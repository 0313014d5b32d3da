"""``bench history add|report|check|export``: one row of bench/cli.py's COMMANDS, one table of actions here.

Heavy imports (pandas, matplotlib, scipy) happen inside each action, so listing the commands costs
nothing. Exit statuses: 0 done (check: judged, no regression), 1 check found a regression, 2 bad
input (bench/cli.py), 3 check could not judge (reports/history/check.py ``EXIT``).
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from reports.cli import fraction


@dataclass(frozen=True)
class Action:
    help: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    main: Callable[[argparse.Namespace], int]


def _history_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--history", type=Path, default=None, metavar="DIR",
                        help="the history folder (default: $BENCH_HISTORY, else bench/history in the user's data "
                             "directory, e.g. ~/.local/share/bench/history)")


def _judging_options(parser: argparse.ArgumentParser) -> None:
    from reports.compare import DEFAULT_NOISE_FLOOR

    _history_option(parser)
    parser.add_argument("--min-effect", type=fraction, default=DEFAULT_NOISE_FLOOR, metavar="FRACTION",
                        help="smallest relative change called a step, however significant (default %(default)s; "
                             "accuracy: 1 percentage point)")


def _run_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--run", default=None, metavar="RUN",
                        help="the run to judge or export: an entry id (or its start) or a run id (default: the newest)")


def _add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_dirs", type=Path, nargs="+", metavar="RUN_DIR", help="run folders written by `bench run`")
    _history_option(parser)


def _report_arguments(parser: argparse.ArgumentParser) -> None:
    _judging_options(parser)
    parser.add_argument("--out", type=Path, default=None, metavar="DIR",
                        help="where history.html, history.csv and runs.csv go (default: the history folder)")


def _check_arguments(parser: argparse.ArgumentParser) -> None:
    _judging_options(parser)
    _run_option(parser)
    parser.add_argument("--fail-on", type=fraction, default=None, metavar="FRACTION",
                        help="exit 1 only for a significant train or inference throughput loss of at least this "
                             "fraction (0.10 = 10%%), or a cell that stopped finishing (default: the minimum effect)")


def _export_arguments(parser: argparse.ArgumentParser) -> None:
    _history_option(parser)
    _run_option(parser)
    parser.add_argument("--out", type=Path, default=Path("."), metavar="DIR",
                        help="folder for bench-bigger-is-better.json and bench-smaller-is-better.json (default: .)")


def _history(args: argparse.Namespace):
    from reports.history.archive import History, history_folder

    return History(history_folder(args.history))


def _main_add(args: argparse.Namespace) -> int:
    history = _history(args)
    for line in history.add(args.run_dirs):
        print(line)
    print(f"history: {history.folder}")
    return 0


def _main_report(args: argparse.Namespace) -> int:
    from reports.history.page import build_history_report

    report = build_history_report(_history(args), args.out, args.min_effect)
    print(f"history report: {report.html} ({report.runs} runs, {report.series} series, {report.steps} step(s) found)")
    print("tables: " + ", ".join(str(p) for p in report.tables))
    return 0


def _main_check(args: argparse.Namespace) -> int:
    from reports.history.check import check, print_check

    result = check(_history(args), args.run, args.fail_on, args.min_effect)
    print_check(result)
    return result.exit_code


def _main_export(args: argparse.Namespace) -> int:
    from reports.history.export import export

    for path in export(_history(args), args.run, args.out):
        print(f"written: {path}")
    return 0


ACTIONS: dict[str, Action] = {
    "add": Action("file finished run folders into the history (the same run twice: no change)", _add_arguments,
                  _main_add),
    "report": Action("write the history page: trends, steps found, framework versions", _report_arguments,
                     _main_report),
    "check": Action("judge the newest run against its series: exit 0 ok, 1 regression, 3 cannot judge",
                    _check_arguments, _main_check),
    "export": Action("write a run's figures as github-action-benchmark JSON", _export_arguments, _main_export),
}


def add_history_arguments(parser: argparse.ArgumentParser) -> None:
    """The actions as subcommands; each parser is of the caller's class, so a usage error stays one line."""
    actions = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    for name, action in ACTIONS.items():
        action.add_arguments(actions.add_parser(name, help=action.help, description=action.help))


def main_history(args: argparse.Namespace) -> int:
    return ACTIONS[args.action].main(args)

"""The ``bench report`` and ``bench compare`` subcommands: arguments and entry points for bench/cli.py.

Heavy imports (pandas, matplotlib) happen inside the entry points, so adding these subcommands
to the CLI's parser costs nothing for ``bench --help`` or ``bench run``.
"""

from __future__ import annotations

import argparse
from pathlib import Path


def fraction(text: str) -> float:
    """An argparse type: a fraction in [0, 1) such as 0.05 for 5% (--fail-on, --noise-floor, --min-effect)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not 0 <= value < 1:
        raise argparse.ArgumentTypeError(f"must be a fraction in [0, 1), e.g. 0.05 for 5%; got {text}")
    return value


def add_report_arguments(parser: argparse.ArgumentParser) -> None:
    """``bench report RUN_DIR [--baseline BACKEND]``."""
    parser.add_argument("run_dir", type=Path, metavar="RUN_DIR", help="a run folder written by `bench run`")
    parser.add_argument("--baseline", default=None, metavar="BACKEND",
                        help="backend (e.g. torch) or 'backend (mode)' the headline ratios divide by "
                             "(default: torch, else the first backend that finished a cell)")


def add_compare_arguments(parser: argparse.ArgumentParser) -> None:
    """``bench compare RUN_A RUN_B [--fail-on FRACTION] [--out DIR] [--noise-floor FRACTION]``."""
    from reports.compare import DEFAULT_NOISE_FLOOR

    parser.add_argument("run_a", type=Path, metavar="RUN_A", help="the reference run folder (before)")
    parser.add_argument("run_b", type=Path, metavar="RUN_B", help="the run folder to judge (after)")
    parser.add_argument("--fail-on", type=fraction, default=None, metavar="FRACTION",
                        help="exit 1 if a cell's train or inference throughput is significantly slower by at "
                             "least this fraction (0.05 = 5%%), or a cell stopped finishing")
    parser.add_argument("--out", type=Path, default=None, metavar="DIR",
                        help="where to write compare.csv and compare.md (default: RUN_B/compare)")
    parser.add_argument("--noise-floor", type=fraction, default=DEFAULT_NOISE_FLOOR, metavar="FRACTION",
                        help="changes smaller than this are never called changes (default %(default)s)")


def main_report(args: argparse.Namespace) -> int:
    """Build the report of ``args.run_dir``; prints where it went and any skipped lines."""
    from reports.build import build_report

    result = build_report(args.run_dir, baseline=args.baseline)
    if result.skipped_lines:
        print(f"skipped {result.skipped_lines} incomplete or unreadable line(s) of results.jsonl")
    print(f"report: {result.html} ({result.n_records} records, {len(result.figures)} figures)")
    print(f"tables: {result.results_csv.name}, {result.summary_csv.name}, {result.curves_csv.name}, "
          f"{result.augmentation_csv.name}, {result.compile_csv.name} in {result.run_dir}")
    return 0


def main_compare(args: argparse.Namespace) -> int:
    """Compare two runs; 1 when the --fail-on gate trips, else 0."""
    from reports.compare import compare_runs, print_comparison

    out = args.out if args.out is not None else args.run_b / "compare"
    result = compare_runs(args.run_a, args.run_b, fail_on=args.fail_on, out=out, noise_floor=args.noise_floor)
    print_comparison(result)
    print("written: " + ", ".join(str(p) for p in result.files))
    return result.exit_code

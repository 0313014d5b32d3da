#!/usr/bin/env python3
"""The headline of a GPU run folder, and whether every ok cell carries its device readings.

Usage:  python scripts/gpu_summary.py RUN_DIR      (scripts/gpu_check.sh runs it on its sweep)

Prints the cells per status, then per backend, mode, precision and model the median train
throughput, device time of the timed epochs, peak device memory, peak host memory and fraction of
the matmul peak of that device and precision, and lists every ok cell that lacks
``device_seconds`` or ``peak_device_bytes``. Exit 0 when there is at least one ok cell and each
has both, 1 otherwise (2: RUN_DIR is not a readable run folder).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.errors import BenchError  # noqa: E402
from bench.results.store import read_records  # noqa: E402

READINGS = ("device_seconds", "peak_device_bytes")
COLUMNS = {"train_samples_per_s": "train samples/s", "device_seconds": "device s", "peak_device_bytes": "device MiB",
           "peak_rss_bytes": "host MiB", "peak_fraction": "of peak"}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path)
    args = parser.parse_args()
    try:
        records = pd.DataFrame(read_records(args.run / "results.jsonl")[0])
    except (BenchError, OSError) as exc:
        print(f"error: {args.run}: {exc}", file=sys.stderr)
        return 2
    if records.empty:
        print(f"{args.run}: no records")
        return 1
    print("cells: " + ", ".join(f"{n} {status}" for status, n in records["status"].value_counts().items()))
    ok = records[records["status"] == "ok"].copy()
    for field in READINGS + tuple(COLUMNS):
        ok[field] = pd.to_numeric(ok.get(field), errors="coerce")
    for field in ("peak_device_bytes", "peak_rss_bytes"):
        ok[field] = ok[field] / 2**20
    table = ok.groupby(["backend", "mode", "precision", "model"])[list(COLUMNS)].median().rename(columns=COLUMNS)
    table.insert(0, "ok", ok.groupby(["backend", "mode", "precision", "model"]).size())
    with pd.option_context("display.width", 200, "display.max_rows", 500, "display.float_format", "{:,.4g}".format):
        print(table.to_string())
    lacking = ok[ok[list(READINGS)].isna().any(axis=1)]
    for _, row in lacking.iterrows():
        print(f"missing a device reading: {row['cell_id']} r{row['repeat']} "
              f"({row.get('device_time_method')}; {row.get('device_memory_method')})")
    print(f"{len(ok)} ok cells, {len(ok) - len(lacking)} with device_seconds and peak_device_bytes")
    return 0 if len(ok) and lacking.empty else 1


if __name__ == "__main__":
    sys.exit(main())

"""Turn a run folder into tables (CSV), a self-contained HTML page with figures, and run comparisons.

The CLI hooks are imported eagerly (they are light); ``build_report`` and ``compare_runs`` load
pandas and matplotlib, so they are imported on first use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from reports.cli import add_compare_arguments, add_report_arguments, main_compare, main_report

if TYPE_CHECKING:
    from reports.build import ReportResult, build_report
    from reports.compare import CompareResult, compare_runs

_LAZY = {"build_report": "reports.build", "ReportResult": "reports.build",
         "compare_runs": "reports.compare", "CompareResult": "reports.compare"}

__all__ = ["build_report", "ReportResult", "compare_runs", "CompareResult",
           "add_report_arguments", "add_compare_arguments", "main_report", "main_compare"]


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'reports' has no attribute {name!r}")

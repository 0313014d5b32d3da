"""User text on its way out of the report: matplotlib must draw it literally, a spreadsheet must not run it.

Model names come from users' TOML files and every other label from records, so any of them may
hold a ``$`` (matplotlib reads ``$...$`` as mathtext and raises on a malformed one such as
``$\\frac{1$``, which made a run folder's report impossible to build) or start with ``=`` (a
spreadsheet opening the CSV runs it as a formula: CSV injection). Every text that reaches
matplotlib goes through ``plain`` and every CSV the reports write through ``write_csv``.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from bench.results.store import write_atomic

FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")
"""First characters that make Excel, LibreOffice or Google Sheets treat a cell as a formula (OWASP)."""


LABEL_LIMIT = 40
"""Characters of a text a figure draws: a model name of hundreds would squeeze its axes to nothing."""


def plain(text: object) -> str:
    """``text`` as matplotlib draws it literally, cut to ``LABEL_LIMIT`` characters with an ellipsis:
    every ``$`` escaped, so mathtext mode never starts.

    Outside ``$...$`` no other character means anything to matplotlib (``text.usetex`` is off), and
    an escaped ``\\$`` already in the text stays literal too, since matplotlib un-escapes ``\\$`` once.
    """
    text = str(text)
    if len(text) > LABEL_LIMIT:
        text = text[:LABEL_LIMIT - 1] + "…"
    return text.replace("$", r"\$")


def csv_cell(value: object) -> object:
    """A text cell that a spreadsheet would run as a formula, with a leading apostrophe; anything else unchanged."""
    if isinstance(value, str) and value.startswith(FORMULA_STARTS):
        return "'" + value
    return value


def write_csv(frame: pd.DataFrame, path: Path) -> None:
    """``frame`` as CSV with its text columns neutralised; number columns stay numbers (-1.5 is no formula)."""
    safe = frame.copy()
    for name in safe.columns:
        if safe[name].dtype == object or pd.api.types.is_string_dtype(safe[name]):
            safe[name] = safe[name].map(csv_cell)
    write_atomic(path, safe.to_csv(index=False))  # a full disk or Ctrl-C leaves the previous file whole

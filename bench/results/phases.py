"""Where a cell's time goes: the phases of the measuring protocol, declared once with how they read.

The harness times each phase into the record field ``time_<phase>_seconds`` (bench/measure/harness.py,
``PhaseClock``); the reports' "where the time went" table and figure and the terminal table at the
end of ``bench run`` show the phases in this order with these words (docs/architecture.md,
"Measuring"). The declaration sits on the results floor, beside the record schema, because a record
holds the phases' fields and both the harness and ``reports/`` read them. A new phase is one member
below and its field in bench/results/record.py.
"""

from __future__ import annotations

from enum import StrEnum


class Phase(StrEnum):
    """One phase of a cell. The value is the harness clock's name for it (a plain string, so the clock
    keys its seconds by name); ``label`` heads the report's column, ``column`` the terminal's narrow
    one, and ``caption`` names it in a sentence (the figure's caption)."""

    label: str
    column: str
    caption: str

    def __new__(cls, name: str, label: str, column: str, caption: str) -> Phase:
        member = str.__new__(cls, name)
        member._value_ = name
        member.label, member.column, member.caption = label, column, caption
        return member

    BUILD = "build", "build", "build", "building"
    COMPILE = "compile", "compile / warm-up", "compile", "compilation and warm-up"
    TRAIN = "train", "train (accuracy epochs)", "train", "the accuracy epochs"
    WINDOW = "window", "throughput windows", "windows", "the extra epochs timed only for throughput"
    EVAL = "eval", "evaluate", "eval", "evaluation"

    @property
    def field(self) -> str:
        """The record field holding this phase's seconds."""
        return f"time_{self.value}_seconds"


PHASES: tuple[Phase, ...] = tuple(Phase)
"""Every phase, in the order the reports show them."""

"""Numbers for people: three significant digits and a unit that fits the size.

A report shows thousands of numbers; "12.3k/s" and "1.84 s" read faster than "12345.678" and
"1.8423", and three digits are already more than repeats on a shared machine can support.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from numbers import Real

from bench.results.stats import Estimate

DASH = "—"

Formatter = Callable[[float], str]


def _missing(x) -> bool:
    return not isinstance(x, Real) or isinstance(x, bool) or not math.isfinite(x)


def _plain(x: float, digits: int) -> str:
    if x == 0:
        return "0"
    decimals = max(0, digits - 1 - math.floor(math.log10(abs(x))))
    return f"{x:.{decimals}f}"


def sig(x: float | None, digits: int = 3) -> str:
    """12345 -> '12.3k', 0.01234 -> '0.0123', 97.14 -> '97.1', 2.5e9 -> '2.50G'."""
    if _missing(x):
        return DASH
    x = float(f"{x:.{digits}g}")  # round first so 999.96 becomes 1.00k, not 1000
    for scale, suffix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(x) >= scale:
            return _plain(x / scale, digits) + suffix
    return _plain(x, digits)


def count(x: float | None) -> str:
    """An integer count with thousands separators: 101770 -> '101,770'."""
    return DASH if _missing(x) else f"{int(round(x)):,}"


def rate(x: float | None) -> str:
    """Samples per second."""
    return DASH if _missing(x) else f"{sig(x)}/s"


def seconds(x: float | None) -> str:
    """A duration in the unit that keeps it between 1 and 1000: µs, ms, s, min or h."""
    if _missing(x):
        return DASH
    ax = abs(x)
    if ax == 0:
        return "0 s"
    if ax < 1e-3:
        return f"{sig(x * 1e6)} µs"
    if ax < 1:
        return f"{sig(x * 1e3)} ms"
    if ax < 120:
        return f"{sig(x)} s"
    if ax < 7200:
        return f"{sig(x / 60)} min"
    return f"{sig(x / 3600)} h"


def milliseconds(x: float | None) -> str:
    """A duration given in milliseconds."""
    return DASH if _missing(x) else seconds(x / 1e3)


def nbytes(x: float | None) -> str:
    """Bytes in binary units: 123456789 -> '118 MiB'."""
    if _missing(x):
        return DASH
    for scale, unit in ((2**40, "TiB"), (2**30, "GiB"), (2**20, "MiB"), (2**10, "KiB")):
        if abs(x) >= scale:
            return f"{sig(x / scale)} {unit}"
    return f"{int(x)} B"


def percent(x: float | None) -> str:
    """A fraction as a percentage with one decimal: 0.9714 -> '97.1%'."""
    return DASH if _missing(x) else f"{100 * x:.1f}%"


def points(x: float | None) -> str:
    """A difference of fractions in percentage points: 0.012 -> '+1.2 pp'."""
    if _missing(x):
        return DASH
    text = f"{100 * x:+.1f}"
    return ("±0.0" if text in ("+0.0", "-0.0") else text) + " pp"


def ratio(x: float | None) -> str:
    """A ratio as a multiplier: 1.842 -> '1.84×'."""
    return DASH if _missing(x) else f"{sig(x)}×"


def interval(est: Estimate, fmt: Formatter) -> str:
    """The compact bracket after a median: '[11.9k–12.8k/s]', or '' when there is no spread to show."""
    if not est.ok or est.n < 2:
        return ""
    low, high = fmt(est.low), fmt(est.high)
    unit = _shared_unit(low, high)
    return f"[{low[: len(low) - len(unit)].rstrip()} – {high}]"


def _shared_unit(low: str, high: str) -> str:
    """The unit both ends carry ('/s', ' ms', '%', '×'), written once: '[19.3k – 34.9k/s]'.

    A magnitude suffix (k, M) is part of the number, not the unit, so it stays on both ends.
    """
    for unit in ("/s", " µs", " ms", " s", " min", " h", " KiB", " MiB", " GiB", " TiB", " pp", "%", "×"):
        if low.endswith(unit) and high.endswith(unit):
            return unit
    return ""

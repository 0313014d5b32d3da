"""Judging one backend's answers against the oracle run with the rules that backend declares.

Comparison happens in the parent, on the arrays a worker sent back, so a verdict never depends on
which process measured. A failing check is also tried against every other documented rule: if one
of them explains it, the note says which rule to declare (it stays a failure: the rule is undeclared).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from bench.parity.ladder import DEVIATIONS, ONE_STEP, REL_FLOOR, RUNG, RUNGS, deviations_of
from bench.parity.measure import Measured, Oracle
from bench.parity.plan import Job, not_compared, relevant_rules, rule_variants
from bench.spec.model import BUILTIN_MODELS
from bench.spec.rules import CANONICAL, Rules


def difference(actual: dict[str, np.ndarray], expected: dict[str, np.ndarray], keys: list[str]) -> tuple[float, float, str]:
    """(max abs, max rel, the array where rel peaks) over ``keys``; rel as ``bench.parity.ladder`` defines it."""
    floor = REL_FLOOR * max((float(np.abs(expected[k]).max()) for k in keys if np.size(expected[k])), default=0.0)
    worst_abs, worst_rel, where = 0.0, 0.0, ""
    for k in keys:
        a, b = np.asarray(actual[k], np.float64), np.asarray(expected[k], np.float64)
        if a.shape != b.shape or not np.all(np.isfinite(a)):
            return float("inf"), float("inf"), k
        if b.size == 0:
            continue
        diff = np.abs(a - b)
        rel = float((diff / (np.abs(b) + floor)).max()) if floor > 0 else float(diff.max())
        worst_abs = max(worst_abs, float(diff.max()))
        if rel >= worst_rel:
            worst_rel, where = rel, k
    return worst_abs, worst_rel, where


@dataclass
class Check:
    """One rung of one job on one backend: its differences, verdict and the deviations it names."""

    backend: str
    job: Job
    rung: str  # a RUNGS name, or "error" when the backend raised or its worker died
    abs_diff: float
    rel_diff: float
    passed: bool
    worst: str = ""  # the array where rel peaks
    deviations: tuple[str, ...] = ()
    canonical_rel: float | None = None  # what the canonical rules would show, where a rule deviation applies
    note: str = ""

    @property
    def tolerance(self) -> float | None:
        return RUNG[self.rung].tolerance(self.job.model) if self.rung in RUNG else None


def error_check(backend: str, job: Job, error: str) -> Check:
    """A job that produced no answer: it fails, with the error as its note."""
    return Check(backend, job, "error", float("inf"), float("inf"), False, note=error)


def expected(job: Job, got: Measured, oracle: Oracle, rung: str, rules: Rules) -> dict[str, np.ndarray]:
    """What the oracle says a rung must hold under ``rules``. The first step is the oracle's update
    applied to the backend's own gradients (``ONE_STEP``): each rung tests one thing, so a gradient's
    fp32 rounding (which RMSprop's normalisation amplifies) stays in the gradient rung, and the
    verdict does not depend on the CPU's convolution algorithm."""
    if rung == ONE_STEP:
        return oracle.step(job, rules, got.step_gradients)
    return oracle.answer(job, rules).values[rung]


def compare(name: str, job: Job, got: Measured, oracle: Oracle) -> list[Check]:
    """Checks of one job's rungs against the oracle run with the rules the backend declares."""
    rules = relevant_rules(got.rules, job)
    skip = not_compared(job)
    checks = []
    for rung in (r.name for r in RUNGS if r.name in got.values):
        want = expected(job, got, oracle, rung, rules)
        skipped_here = skip if rung in DEVIATIONS["bias_before_batchnorm"].rungs else set()
        keys = [k for k in want if k not in skipped_here]
        abs_diff, rel_diff, worst = difference(got.values[rung], want, keys)
        tolerance = RUNG[rung].tolerance(job.model)
        check = Check(name, job, rung, abs_diff, rel_diff, rel_diff <= tolerance, worst)
        named = [d for d in deviations_of(rules) if rung in DEVIATIONS[d].rungs]
        if named:
            check.canonical_rel = difference(got.values[rung], expected(job, got, oracle, rung, CANONICAL), keys)[1]
        if BUILTIN_MODELS[job.model].has_dropout and rung in DEVIATIONS["dropout_masks"].rungs:
            named.append("dropout_masks")
        if skipped_here:
            named.append("bias_before_batchnorm")
        check.deviations = tuple(named)
        if not check.passed and rung != "forward":
            check.note = _undeclared_rule_hint(job, got, oracle, rung, keys, rules)
        checks.append(check)
    return checks


def _undeclared_rule_hint(job: Job, got: Measured, oracle: Oracle, rung: str, keys: list[str], declared: Rules) -> str:
    """On a failure: would another documented rule explain it? (still a failure: the rule is undeclared)"""
    for rules in rule_variants(job):
        if rules != declared:
            rel = difference(got.values[rung], expected(job, got, oracle, rung, rules), keys)[1]
            if rel <= RUNG[rung].tolerance(job.model):
                return f"matches the reference with {', '.join(deviations_of(rules)) or 'the canonical rules'}: declare it in the backend's RULES"
    return ""

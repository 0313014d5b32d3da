"""What each framework does where frameworks disagree: one typed value per backend, one key set.

Frameworks document different formulas for the same named thing (docs/architecture.md, "Framework
rules"). Each backend declares its choices as a ``Rules`` value; the NumPy oracle runs any ``Rules``
(so parity checks a backend exactly against the formula it declares and names the deviation), and
the report prints one row per rule. Nothing parses prose: adding a rule means adding a field here,
its options and their descriptions, and the oracle's formula.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Literal, get_args, get_type_hints


@dataclass(frozen=True)
class Rules:
    """Which documented formula a backend follows; the defaults are the suite's canonical choices."""

    rmsprop_eps: Literal["outside_sqrt", "inside_sqrt"] = "outside_sqrt"
    adam_eps: Literal["corrected", "uncorrected"] = "corrected"
    bn_running_variance: Literal["biased", "unbiased"] = "biased"
    leaky_relu_grad_at_zero: Literal["slope", "one"] = "slope"
    momentum_form: Literal["buffer", "velocity"] = "buffer"

    def as_dict(self) -> dict[str, str]:
        return asdict(self)

    def deviations(self) -> list[str]:
        """The rules on which this value differs from the canonical one, in declaration order."""
        return [f for f, value in self.as_dict().items() if value != getattr(CANONICAL, f)]


CANONICAL = Rules()
RULE_OPTIONS: dict[str, tuple[str, ...]] = {f.name: get_args(get_type_hints(Rules)[f.name]) for f in fields(Rules)}
"""Every documented choice per rule, the canonical one first."""

RULE_TITLES: dict[str, str] = {
    "rmsprop_eps": "RMSprop epsilon",
    "adam_eps": "Adam epsilon",
    "bn_running_variance": "BatchNorm running variance",
    "leaky_relu_grad_at_zero": "LeakyReLU derivative at exactly 0",
    "momentum_form": "Momentum form",
}
RULE_TEXT: dict[str, dict[str, str]] = {
    "rmsprop_eps": {
        "outside_sqrt": "outside the root: w -= lr*g / (sqrt(v) + eps)",
        "inside_sqrt": "inside the root: w -= lr*g / sqrt(v + eps)",
    },
    "adam_eps": {
        "corrected": "on the bias-corrected root: m_hat / (sqrt(v_hat) + eps)",
        "uncorrected": "on the uncorrected root: sqrt(1-b2^t)/(1-b1^t) * m / (sqrt(v) + eps)",
    },
    "bn_running_variance": {
        "biased": "biased batch variance (divide by n)",
        "unbiased": "unbiased batch variance, var * n/(n-1)",
    },
    "leaky_relu_grad_at_zero": {
        "slope": "the slope",
        "one": "1 (where(x >= 0, x, slope*x))",
    },
    "momentum_form": {
        "buffer": "buf = mu*buf + g; w -= lr*buf",
        "velocity": "v = mu*v - lr*g; w += v (equal to buffer for a constant lr)",
    },
}


def describe(rules: Rules) -> dict[str, str]:
    """Each rule's value as a sentence, keyed by the rule's title (the report's table rows)."""
    return {RULE_TITLES[f]: RULE_TEXT[f][value] for f, value in rules.as_dict().items()}

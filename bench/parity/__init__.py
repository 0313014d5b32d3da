"""The parity ladder: every backend checked against the NumPy oracle, rung by rung.

Same canonical weights and batch (the first 16 images of the bundled MNIST sample), then: forward
logits (eval mode) -> training-mode loss -> gradients -> one optimizer step -> the losses of 20
steps -> the weights after them -> BatchNorm running statistics, for each model, optimizer and
activation; then the statistical rung (``bench.parity.equivalence``). A failing rung points at one part of
an adapter: forward = layers and layouts, gradients = loss and backward, steps = the optimizer and
the batch rows, running statistics = BatchNorm's momentum and variance (docs/architecture.md, "Parity").

One job per module: ``ladder`` (rungs, tolerances and named deviations, with why), ``plan`` (which
jobs and which rules can change them), ``measure`` (one job on any backend; the oracle), ``compare``
(differences and verdicts), ``worker`` (each framework in its own process), ``runner`` (the whole
run), ``render`` (tables) and ``cli`` (options and exit status).
"""

from bench.parity.cli import add_parity_arguments, main_parity
from bench.parity.compare import Check, compare, difference
from bench.parity.ladder import DEVIATIONS, PARITY_EPSILON, RULE_DEVIATIONS, RUNG, RUNGS
from bench.parity.measure import Batch, Measured, Oracle, fixed_batch, measure
from bench.parity.plan import Job, plan, relevant_rules, rule_variants
from bench.parity.render import render
from bench.parity.runner import ParityReport, run_parity

__all__ = [
    "DEVIATIONS", "PARITY_EPSILON", "RULE_DEVIATIONS", "RUNG", "RUNGS",
    "Batch", "Check", "Job", "Measured", "Oracle", "ParityReport",
    "add_parity_arguments", "compare", "difference", "fixed_batch", "main_parity", "measure",
    "plan", "relevant_rules", "render", "rule_variants", "run_parity",
]

"""The NumPy oracle: the spec's forward pass, backward pass and optimizers, written from the formulas.

Every backend is checked against this package (bench/parity), so it favours plainness over speed:
float64 throughout, one function per layer and direction (``ops``), the chain rule spelled out
(``network``), one update rule per optimizer (``optimizer``). Layouts are the canonical ones of
``bench.spec.shapes`` (NHWC activations, Dense kernel (in, out), Conv kernel HWIO, Flatten in H, W, C
order), so weights and gradients compare array by array with any backend. It imports nothing from
``backends/``: the losses come from ``bench.spec.losses``, the framework rules from ``bench.spec.rules``.

Where frameworks document a different formula for the same named thing (docs/architecture.md,
"Framework rules"), a ``Rules`` value selects it, so parity can check a backend exactly against the
rule it declares and report the difference as a named deviation. ``CANONICAL`` is the suite's own
choice: RMSprop and Adam epsilon as torch and Optax (outside the root, on the bias-corrected root),
the biased BatchNorm running variance (Keras, Flax), LeakyReLU's derivative at 0 equal to the slope
(torch, TF), momentum in the buffer form (torch).
"""

from bench.reference.network import ForwardPass, Network, draw_dropout_masks
from bench.reference.optimizer import Optimizer, train_step
from bench.spec.rules import CANONICAL, RULE_OPTIONS, Rules

__all__ = ["CANONICAL", "RULE_OPTIONS", "ForwardPass", "Network", "Optimizer", "Rules", "draw_dropout_masks", "train_step"]

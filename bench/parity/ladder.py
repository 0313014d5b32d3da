"""The ladder's data: its rungs with their tolerances and why, and the frameworks' named deviations.

Kept apart from the code that runs the ladder so that changing a tolerance, or naming a new
framework difference, is an edit to one table whose entries carry their reasons.

Differences: abs = max |a - b|; rel = max |a - b| / (|b| + F), elementwise in float64 over every
array a rung compares, with the floor F = ``REL_FLOOR`` (1%) of the largest |b| among them. Values
at least 1% of that scale are judged relative to themselves; smaller ones (cancelling sums, the
near-zero gradient of a little-used weight) relative to 1% of the scale. Tolerances apply to rel;
``RUNGS`` states each with the largest value measured on torch 2.13, TF 2.21 / Keras 3.15 (on
TensorFlow, JAX and torch), JAX 0.10 (CPU). The oracle hands out float32 like every backend, which costs it at most 6e-8 relative.

RMSprop and Adam run with epsilon ``PARITY_EPSILON`` = 1e-3 here, not the suite's 1e-7: where a
gradient is near eps, the update lr*g/(|g|+eps) multiplies the gradient's fp32 rounding by up to
lr/eps (1e4 at 1e-7; measured 8e-4 relative after one RMSprop step of mlp_bn), which says nothing
about the framework. At 1e-3, eps and sqrt(v) are of one order for typical gradients, so both terms
of the update are exercised, and the frameworks' epsilon placements differ more, so they are
checked more sharply.

Where a framework documents a formula different from the suite's, it declares it in its typed
``RULES`` (``bench.spec.rules``); the ladder checks it against the oracle run with that rule and lists it
as a named deviation (``RULE_DEVIATIONS``) with the difference the canonical rule would show, so no
framework difference hides in a tolerance (docs/architecture.md, "Parity").
"""

from __future__ import annotations

from dataclasses import dataclass

from bench.spec.model import BUILTIN_MODELS, Conv2D, MaxPool2D, walk
from bench.spec.rules import Rules

REL_FLOOR = 1e-2
BATCH = 16
N_ROWS = 64  # rows loaded for the 20-step rungs: 4 shuffled batches of 16 per epoch, as training draws them
N_STEPS = 20
STEP_EPOCHS = -(-N_STEPS // (N_ROWS // BATCH))
"""Epochs of N_ROWS the 20 steps span: a learning-rate schedule of the step rungs runs over exactly these."""
INPUT_SHAPE = (28, 28, 1)  # the bundled MNIST sample: every seed model, the cnn included, fits it
NUM_CLASSES = 10
WEIGHT_SEED = 0
PARITY_EPSILON = 1e-3
ADAPTIVE = ("rmsprop", "adam", "adamw")


def is_convolutional(model: str) -> bool:
    """Convolutions and max-pools with ReLU-like kinks (a ViT's patch embedding is one strided product, kept dense)."""
    return any(isinstance(layer, (Conv2D, MaxPool2D)) for _, layer in walk(BUILTIN_MODELS[model].layers))


@dataclass(frozen=True)
class Rung:
    """A rung and its tolerance on rel: for dense models (the MLPs) and convolutional ones (None: not run)."""

    name: str
    dense: float
    conv: float | None
    why: str

    def tolerance(self, model: str) -> float | None:
        return self.conv if is_convolutional(model) else self.dense


RUNGS = (
    Rung("forward", 5e-5, 1e-4, "eval-mode logits: fp32 sums of 784 (mlp) or 3,200 (cnn) products; logits near zero "
         "keep the sum's rounding (measured up to 1.8e-5 dense, 4.7e-5 cnn)"),
    Rung("loss", 1e-6, 1e-6, "training-mode loss, a mean over the batch: rounding averages out (measured <= 1.5e-7)"),
    Rung("gradients", 1e-4, 1e-3, "a weight's gradient sums batch x position products of both signs (10,816 per conv1 "
         "entry); fp32 keeps less of a cancelling sum (measured up to 3.7e-5 dense, 7.9e-4 cnn: Keras on JAX's "
         "conv backprop-filter under sigmoid; 5.6e-4 on TF)"),
    Rung("step_1", 1e-5, 1e-5, "trainable weights after one step, against the oracle's update applied to the "
         "backend's own gradients of that batch: the update rule alone, so the gradients' rounding stays in the "
         "gradient rung and the CNN needs no looser tolerance (measured up to 3.0e-6, any model)"),
    Rung("bn_running_stats_1", 1e-5, 1e-5, "BatchNorm moving mean and variance after that one step, folded from the "
         "step's own batch statistics: the check of the BatchNorms the convolutional models (resnet's, inside its "
         "Residual blocks included) get, as they skip the 20 steps; fp32 batch means and variances over 16 x H x W "
         "values, weighted 0.01 (not yet measured on the frameworks for resnet; the dense models' 20-step rung "
         "measured <= 1.6e-6)"),
    Rung("losses_20", 3e-5, None, "training loss of each of 20 steps over 4 shuffled batches (measured <= 1.0e-5)"),
    Rung("steps_20", 1e-4, None, "trainable weights after the 20 steps: rounding compounds (measured <= 4.4e-5)"),
    Rung("bn_running_stats", 1e-5, None, "BatchNorm moving mean and variance after the 20 steps (measured <= 1.6e-6)"),
)
RUNG = {r.name: r for r in RUNGS}
ONE_STEP = "step_1"
"""The rung that checks the optimizer's update rule on the backend's own gradients (bench/parity/compare.py)."""
MULTI_STEP_WHY = (
    "The 20-step rungs run on the dense models only: the cnn makes ~1M ReLU/max-pool decisions per step, so one "
    "sits within fp32 rounding of its kink every few steps (cnn/sgd/relu: a conv unit at |z| = 1.4e-8 of its input "
    "scale flipped at step 17 on torch and TF alike, moving a bias by 7%), after which fp32 and float64 trajectories "
    "part; tanh and linear part too, through max-pool near-ties. The cnn's forward, loss, gradients and first step "
    "are checked; optimizer code is the same for every model."
)


@dataclass(frozen=True)
class Deviation:
    name: str
    rungs: tuple[str, ...]  # the rungs whose expected values it changes
    explanation: str


_TRAINED = ("step_1", "losses_20", "steps_20", "bn_running_stats")
DEVIATIONS = {
    d.name: d
    for d in (
        Deviation("rmsprop_eps_inside_sqrt", _TRAINED,
                  "Keras 3 RMSprop (and Optax's default eps_in_sqrt=True) divides by sqrt(v + eps); the canonical "
                  "rule (torch) by sqrt(v) + eps. Same eps, different damping where v is small."),
        Deviation("adam_eps_uncorrected", _TRAINED,
                  "Keras 3 Adam adds eps to the uncorrected sqrt(v): w -= lr*sqrt(1-b2^t)/(1-b1^t) * m/(sqrt(v)+eps), "
                  "the torch/Optax rule with eps scaled by 1/sqrt(1-b2^t) (31.6x at step 1)."),
        Deviation("bn_unbiased_running_variance", ("bn_running_stats_1", "bn_running_stats"),
                  "torch's BatchNorm folds the unbiased batch variance var*m/(m-1) into running_var and cannot be "
                  "told otherwise; Keras and Flax fold the biased one. Normalisation in training is biased everywhere."),
        Deviation("leaky_relu_grad_at_zero_one", ("gradients",) + _TRAINED,
                  "JAX's leaky_relu is where(x >= 0, x, slope*x), so its derivative at exactly 0 is 1; torch and TF "
                  "give the slope. Exact zeros are common: a zero-bias conv over an image's blank background."),
        Deviation("momentum_velocity_form", _TRAINED,
                  "Keras 3 SGD keeps a velocity v = mu*v - lr*g and adds it (w += v); torch keeps a buffer "
                  "buf = mu*buf + g and subtracts lr*buf. Equal in exact arithmetic for a constant lr; the rounding differs."),
        Deviation("dropout_masks", ("loss", "gradients", "bn_running_stats_1") + _TRAINED,
                  "frameworks never draw the same dropout masks, so the training-mode rungs of a dropout model run "
                  "it with Dropout rate 0; the forward rung keeps the dropout layers (eval mode ignores them)."),
        Deviation("bias_before_batchnorm", ("step_1", "steps_20", "bn_running_stats"),
                  "a bias right before a BatchNorm has zero gradient in exact arithmetic (the batch mean cancels it), "
                  "so its fp32 gradient is rounding noise that RMSprop/Adam turn into steps of up to ~lr, different "
                  "in every framework; under those optimizers that bias and the moving mean that follows it are not "
                  "compared (the moving variance, and every array under SGD/momentum, are)."),
    )
}
RULE_DEVIATIONS = {
    "rmsprop_eps": "rmsprop_eps_inside_sqrt",
    "adam_eps": "adam_eps_uncorrected",
    "bn_running_variance": "bn_unbiased_running_variance",
    "leaky_relu_grad_at_zero": "leaky_relu_grad_at_zero_one",
    "momentum_form": "momentum_velocity_form",
}
"""The deviation each non-canonical rule value is named as (every rule in ``bench.spec.rules.Rules``)."""


def deviations_of(rules: Rules) -> list[str]:
    """The named deviations a backend's declared rules amount to, in the rules' declaration order."""
    return [RULE_DEVIATIONS[f] for f in rules.deviations()]

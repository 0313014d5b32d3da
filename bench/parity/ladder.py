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


def is_normalised_convolutional(model: str) -> bool:
    """A convolutional stack normalised by BatchNorm (resnet): its backward divides by batch deviations."""
    return is_convolutional(model) and BUILTIN_MODELS[model].has_batchnorm


KINKED = ("relu", "leaky_relu")
"""Activations whose derivative jumps at 0."""


def gradients_checked(model: str, activation: str) -> bool:
    """Whether the gradient rung can judge this model under this activation (GRADIENT_KINK_WHY): not a
    convolutional stack normalised by BatchNorm under a kinked activation."""
    return not (activation in KINKED and is_normalised_convolutional(model))


@dataclass(frozen=True)
class Rung:
    """A rung and its tolerance on rel: for dense models (the MLPs), convolutional ones (None: not run), and
    BatchNorm-normalised convolutional stacks (resnet; the convolutional tolerance unless its error model,
    in ``why``, says otherwise)."""

    name: str
    dense: float
    conv: float | None
    why: str
    normalised: float | None = None

    @property
    def normalised_conv(self) -> float | None:
        return self.conv if self.normalised is None else self.normalised

    def tolerance(self, model: str) -> float | None:
        if is_normalised_convolutional(model):
            return self.normalised_conv
        return self.conv if is_convolutional(model) else self.dense


RUNGS = (
    Rung("forward", 5e-5, 1e-4, "eval-mode logits: fp32 sums of 784 (mlp) or 3,200 (cnn) products; logits near zero "
         "keep the sum's rounding (measured up to 1.8e-5 dense, 4.7e-5 cnn)"),
    Rung("loss", 1e-6, 1e-6, "training-mode loss, a mean over the batch: rounding averages out (measured <= 1.5e-7 "
         "dense and cnn); it inherits the logits' rounding, which resnet's eight BatchNorm-normalised convolutions "
         "carry to 1.1e-5 of |logits| ~ 0.3 on torch's oneDNN convolutions: 3e-6 on a loss of 2.5 (measured 1.2e-6)",
         normalised=5e-6),
    Rung("gradients", 1e-4, 1e-3, "a weight's gradient sums batch x position products of both signs (10,816 per conv1 "
         "entry); fp32 keeps less of a cancelling sum (measured up to 3.7e-5 dense, 7.9e-4 cnn: Keras on JAX's "
         "conv backprop-filter under sigmoid; 5.6e-4 on TF). resnet: each BatchNorm's backward, "
         "gamma/sigma * (dy - mean(dy) - xhat * mean(dy * xhat)), subtracts batch means of the gradient it is "
         "handed, and eight of them lie between the loss and the stem, so the stem keeps the least of its sums; a "
         "bias before a BatchNorm has a true gradient of 0, so its rounding is judged against the 1% floor alone "
         "(measured under tanh, sigmoid and linear: torch on oneDNN 2.1e-3 at 0.kernel and 7.3e-3 at 0.bias, TF "
         "2.1e-3 at 0.bias, JAX and Keras on JAX and torch <= 5.4e-4)",
         normalised=1e-2),
    Rung("step_1", 1e-5, 1e-5, "trainable weights after one step, against the oracle's update applied to the "
         "backend's own gradients of that batch: the update rule alone, so the gradients' rounding stays in the "
         "gradient rung and the CNN needs no looser tolerance (measured up to 3.0e-6, any model)"),
    Rung("bn_running_stats_1", 1e-5, 1e-5, "BatchNorm moving mean and variance after that one step, folded from the "
         "step's own batch statistics: the check of the BatchNorms the convolutional models (resnet's, inside its "
         "Residual blocks included) get, as they skip the 20 steps; fp32 batch means and variances over 16 x H x W "
         "values, weighted 0.01; a moving mean near 0 is judged against the floor of 1% of a moving variance near 1, "
         "so the batch mean's own rounding shows (resnet on torch's oneDNN: 3.6e-5 on a mean of conv outputs of "
         "order 1, the forward's rounding: measured 1.9e-5; TF 5.1e-6; the dense models' 20-step rung <= 1.6e-6)",
         normalised=5e-5),
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

GRADIENT_KINK_WHY = (
    "The gradient rung skips a BatchNorm-normalised convolutional stack (resnet) under relu or leaky_relu: "
    "normalisation puts its ~0.5M pre-activations per batch of 16 at density ~0.4 around the kink, so a few sit "
    "within the 1e-5 that fp32 rounding reaches through eight conv/BatchNorm layers, and one that flips moves a "
    "kernel's gradient by ~1% of the largest (the oracle itself, weights jittered by 1e-6 relative: 2e-4; by 1e-5: "
    "0.38 at 4.0.kernel, which is TF's difference there; torch on oneDNN 0.54-0.80, on its own kernels 2.5e-4). Its "
    "forward, loss, first step and BatchNorm statistics are checked; its gradients under tanh, sigmoid or linear, "
    "and every layer's gradients in tests/test_*_layers.py."
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

"""The training half of the spec: a ``TrainSpec`` whose every hyperparameter is explicit, its
augmentation parameters, and the vocabulary every adapter's translation tables must cover.

The defaults are the suite's fairness rules (docs/architecture.md, "Framework rules"): one value of
each hyperparameter passed to every framework, so no framework default leaks into a comparison.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from bench.errors import SpecError
from bench.spec.model import ACTIVATIONS, BN_EPSILON, BN_MOMENTUM, LAYER_TYPES, LEAKY_RELU_SLOPE, LOSSES, OPTIMIZERS, PRECISIONS
from bench.spec.semantics import HARMONISED, Policy

AUGMENTATIONS = ("hflip", "vflip", "crop", "rotate", "zoom", "brightness", "noise")
"""The image transforms a train spec can ask for, in the order every step applies them."""
AUGMENT_DEFAULTS: dict[str, float | int] = {"rotate": 15.0, "zoom": 0.1, "crop": 4, "brightness": 0.2, "noise": 0.05}
"""What a bare name (``--augment rotate``) means."""
FLIP_MODES = {"h": ("hflip",), "v": ("vflip",), "hv": ("hflip", "vflip"), "vh": ("hflip", "vflip")}


class Augment(BaseModel):
    """Random image transforms applied inside every training step; all off (``none``) by default.

    Each value is the range its per-image parameter is drawn from (bench/spec/augment.py): a flip happens
    with probability 1/2; ``rotate`` is the largest angle in degrees (uniform in [-r, r], positive is
    counter-clockwise as displayed); ``zoom`` z scales the content by s uniform in [1-z, 1+z] (s > 1
    magnifies); ``crop`` c zero-pads c pixels per side and takes the image-sized window at an offset
    uniform in [0, 2c]; ``brightness`` b adds a delta uniform in [-b, b]; ``noise`` is the standard
    deviation of added Gaussian noise. Brightness and noise clip the result to [0, 1], the data's range.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")
    hflip: bool = False
    vflip: bool = False
    crop: int = Field(default=0, ge=0)
    rotate: float = Field(default=0.0, ge=0, le=180)
    zoom: float = Field(default=0.0, ge=0, lt=1)
    brightness: float = Field(default=0.0, ge=0, le=1)
    noise: float = Field(default=0.0, ge=0)

    @property
    def names(self) -> tuple[str, ...]:
        """The transforms switched on, in the order a step applies them."""
        return tuple(name for name in AUGMENTATIONS if getattr(self, name))

    @property
    def active(self) -> bool:
        return bool(self.names)

    @property
    def label(self) -> str:
        """Canonical text (``hflip,rotate=15,noise=0.05`` or ``none``); ``Augment.parse`` reads it back."""
        values = {name: getattr(self, name) for name in self.names}
        return ",".join(name if v is True else f"{name}={v:g}" for name, v in values.items()) or "none"

    @classmethod
    def parse(cls, text: str) -> Augment:
        """``none``, or comma-separated ``name`` / ``name=value``: hflip, vflip, flip (= hflip; flip=h|v|hv),
        crop, rotate, zoom, brightness, noise; a bare name takes its default (AUGMENT_DEFAULTS)."""
        text = text.strip()
        if text.lower() in ("", "none"):
            return cls()
        items = [part.strip().partition("=") for part in text.split(",") if part.strip()]
        return cls._from_items([(name.strip().lower(), value.strip() if sep else None) for name, sep, value in items], text)

    @classmethod
    def from_table(cls, table: dict) -> Augment:
        """A TOML table: ``{flip = "hv", rotate = 15, noise = true}``; true means the default, false off."""
        items = [(str(k).lower(), None if v is True else str(v)) for k, v in table.items() if v is not False]
        return cls._from_items(items, str(table))

    @classmethod
    def _from_items(cls, items: list[tuple[str, str | None]], source: str) -> Augment:
        valid = "none, flip[=h|v|hv], " + ", ".join(
            f"{n}[={AUGMENT_DEFAULTS[n]:g}]" if n in AUGMENT_DEFAULTS else n for n in AUGMENTATIONS)
        values: dict[str, object] = {}
        for name, value in items:
            if name == "flip":
                if (value or "h").lower() not in FLIP_MODES:
                    raise SpecError(f"bad flip mode {value!r} in augmentation {source!r}; valid: flip=h, flip=v, flip=hv")
                targets = [(flip, None) for flip in FLIP_MODES[(value or "h").lower()]]
            elif name in AUGMENTATIONS:
                targets = [(name, value)]
            else:
                raise SpecError(f"unknown augmentation {name!r} in {source!r}; valid: {valid}")
            for target, given in targets:
                if target in values:
                    raise SpecError(f"augmentation {target!r} is given twice in {source!r}")
                if given is not None and target in ("hflip", "vflip"):
                    raise SpecError(f"{target} takes no value (got {target}={given}); use flip=h|v|hv")
                values[target] = True if target in ("hflip", "vflip") else AUGMENT_DEFAULTS[target] if given is None else given
        try:
            return cls(**values)
        except ValidationError as exc:
            first = exc.errors()[0]
            raise SpecError(f"augmentation {first['loc'][0]}={first.get('input')!r} in {source!r}: {first['msg']}") from None


SCHEDULES = ("constant", "warmup_cosine")
"""Learning-rate schedules (bench/spec/schedule.py computes each step's rate)."""
ADAMW_WEIGHT_DECAY = 0.01
"""AdamW's weight decay unless a spec sets one: torch's default (Keras 0.004, Optax 1e-4)."""

VOCABULARY: dict[str, tuple[str, ...]] = {
    "layer": LAYER_TYPES, "activation": ACTIVATIONS, "loss": LOSSES, "optimizer": OPTIMIZERS,
    "augment": AUGMENTATIONS,
}
"""Every name a model or training spec can use, by kind: what each adapter's translation tables cover."""


class TrainSpec(BaseModel):
    """Everything that decides a training run, each value explicit and recorded with the result.

    The defaults are the suite's fairness rules: one value of each hyperparameter passed to every
    framework (where each framework puts it differs and is recorded by the backend); momentum is
    in the PyTorch form and weight decay is decoupled. ``training_rules`` renders them in words.
    ``adamw`` is Adam with that decoupled decay on by default (``ADAMW_WEIGHT_DECAY``).
    """

    model_config = ConfigDict(frozen=True, extra="forbid")
    # the name lists of bench/spec/model.py are the one declaration of each vocabulary (Literal[tuple] is Literal[*tuple])
    optimizer: Literal[OPTIMIZERS] = "adam"
    learning_rate: float | None = Field(default=None, gt=0)
    momentum: float = Field(default=0.9, ge=0, lt=1)
    rho: float = Field(default=0.9, gt=0, lt=1)
    beta1: float = Field(default=0.9, ge=0, lt=1)
    beta2: float = Field(default=0.999, gt=0, lt=1)
    epsilon: float = Field(default=1e-7, ge=0)
    weight_decay: float = Field(default=0.0, ge=0)
    """Decoupled: w -= lr_t * weight_decay * w on every trainable array before the update (AdamW's form)."""
    loss: Literal[LOSSES] = "cce"
    activation: Literal[ACTIVATIONS] = "relu"
    batch_size: int = Field(default=128, gt=0)
    epochs: int = Field(default=1, gt=0)
    seed: int = 0
    precision: Literal[PRECISIONS] = "fp32"
    mode: str = "default"
    bn_momentum: float = BN_MOMENTUM
    bn_epsilon: float = BN_EPSILON
    leaky_relu_slope: float = LEAKY_RELU_SLOPE
    schedule: Literal[SCHEDULES] = "constant"
    warmup_fraction: float = Field(default=0.1, ge=0, lt=1)
    """The share of all steps the ``warmup_cosine`` schedule spends rising linearly to the learning rate."""
    augment: Augment = Augment()
    semantics: Policy = HARMONISED
    """Semantics policy (bench.spec.semantics): 'native' lets the backend replace the values above that its
    framework defaults differently (epsilon, rho, BatchNorm, leaky-ReLU slope) and the initial weights."""

    @model_validator(mode="before")
    @classmethod
    def _adamw_decays(cls, values: object) -> object:
        """AdamW without a weight decay of its own gets ``ADAMW_WEIGHT_DECAY`` (an explicit 0 stays 0)."""
        if isinstance(values, dict) and values.get("optimizer") == "adamw" and "weight_decay" not in values:
            return {**values, "weight_decay": ADAMW_WEIGHT_DECAY}
        return values

    @property
    def lr(self) -> float:
        """The learning rate actually used: explicit, or the suite's per-optimizer default."""
        if self.learning_rate is not None:
            return self.learning_rate
        return DEFAULT_LEARNING_RATES[self.optimizer]


DEFAULT_LEARNING_RATES = {"sgd": 0.01, "momentum": 0.01, "rmsprop": 0.001, "adam": 0.001, "adamw": 0.001}


def training_rules(train: TrainSpec | None = None) -> dict[str, str]:
    """The suite's training decisions in words, rendered from ``train`` (default: ``TrainSpec()``).

    Stored with every run and shown in its report; rendered from the values rather than restated, so
    changing a default in ``TrainSpec`` changes what the report says the rules are.
    """
    t = train or TrainSpec()
    rates = ", ".join(f"{name} {rate:g}" for name, rate in DEFAULT_LEARNING_RATES.items())
    others = " and ".join(p for p in PRECISIONS if p != t.precision)
    return {
        "loss": f"{t.loss} unless a sweep names others; from logits, mean over the batch, in every backend",
        "batchnorm": f"momentum {t.bn_momentum:g} (Keras sense; torch gets {1 - t.bn_momentum:.4g}), "
                     f"epsilon {t.bn_epsilon:g}",
        "leaky relu slope": f"{t.leaky_relu_slope:g} everywhere",
        "optimizers": f"every hyperparameter explicit; momentum {t.momentum:g} in the PyTorch form; "
                      f"RMSprop rho {t.rho:g}; Adam betas {t.beta1:g}/{t.beta2:g}; eps {t.epsilon:g}; "
                      + (f"decoupled weight decay {t.weight_decay:g}" if t.weight_decay else "no weight decay"),
        "learning rates": f"{rates}, unless a sweep sets one rate; schedule {t.schedule}"
                          + (f" ({t.warmup_fraction:g} of the steps warming up)" if t.schedule != "constant" else "")
                          + ", each step's rate computed in NumPy and fed to every framework",
        "precision": f"{t.precision} with TF32 off by default; {others} are explicit axes",
    }

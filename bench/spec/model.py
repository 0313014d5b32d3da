"""The framework-neutral model description every backend translates, and the sweep's name lists.

One spec, many frameworks: a model is a short list of declarative layers (the training half is
bench/spec/train.py), so no framework's idea of a layer leaks into a comparison (docs/architecture.md,
"Framework rules"). Pydantic validates specs coming from TOML files and gives readable errors; the
same objects pickle into worker processes unchanged.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, field_validator, model_validator

from bench.errors import unknown

HIDDEN = "hidden"
"""Placeholder activation name; the sweep's hidden activation replaces it."""

ACTIVATIONS = ("relu", "leaky_relu", "tanh", "sigmoid", "linear")
LEAKY_RELU_SLOPE = 0.01  # the suite's one slope, passed explicitly to every framework
SEED_OPTIMIZERS = ("sgd", "momentum", "rmsprop", "adam")
"""The four optimizers every sweep crosses unless it names its own: the default grid's axis."""
OPTIMIZERS = (*SEED_OPTIMIZERS, "adamw")
"""Every optimizer the spec names; AdamW is the modern profile's and any sweep's that asks for it."""
LOSSES = ("cce", "mse", "mae", "bce", "hinge")
PRECISIONS = ("fp32", "tf32", "bf16")
BN_MOMENTUM = 0.99  # Keras sense: weight of the old running statistic
BN_EPSILON = 1e-3
LN_EPSILON = 1e-5
"""LayerNorm's epsilon unless a layer names its own: torch's default (Keras 1e-3, Flax 1e-6), passed explicitly."""
POSITION_STD = 0.02
"""Standard deviation of the canonical position embedding (normal, as ViT and BERT draw it)."""


class _Layer(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    def resolve(self, hidden: str) -> _Layer:
        """This layer with the ``hidden`` placeholder replaced by the sweep's activation."""
        if getattr(self, "activation", None) == HIDDEN:
            return self.model_copy(update={"activation": hidden})
        return self


def _check_activation(name: str) -> str:
    if name != HIDDEN and name not in ACTIVATIONS:
        raise ValueError(unknown("activation", name, ACTIVATIONS + (HIDDEN,)))
    return name


class Flatten(_Layer):
    type: Literal["Flatten"] = "Flatten"


class Dense(_Layer):
    type: Literal["Dense"] = "Dense"
    units: int = Field(gt=0)
    activation: str = "linear"
    _check = field_validator("activation")(classmethod(lambda cls, v: _check_activation(v)))


class Conv2D(_Layer):
    type: Literal["Conv2D"] = "Conv2D"
    filters: int = Field(gt=0)
    kernel: int = Field(default=3, gt=0)
    stride: int = Field(default=1, gt=0)
    padding: Literal["valid", "same"] = "valid"
    activation: str = "linear"
    _check = field_validator("activation")(classmethod(lambda cls, v: _check_activation(v)))


class MaxPool2D(_Layer):
    type: Literal["MaxPool2D"] = "MaxPool2D"
    size: int = Field(default=2, gt=0)


class AvgPool2D(_Layer):
    type: Literal["AvgPool2D"] = "AvgPool2D"
    size: int = Field(default=2, gt=0)


class BatchNorm(_Layer):
    type: Literal["BatchNorm"] = "BatchNorm"


class Dropout(_Layer):
    type: Literal["Dropout"] = "Dropout"
    rate: float = Field(ge=0.0, lt=1.0)


class Activation(_Layer):
    type: Literal["Activation"] = "Activation"
    activation: str
    _check = field_validator("activation")(classmethod(lambda cls, v: _check_activation(v)))


class LayerNorm(_Layer):
    """Normalises each position over its last axis (features), then scales by gamma and shifts by beta."""

    type: Literal["LayerNorm"] = "LayerNorm"
    epsilon: float = Field(default=LN_EPSILON, gt=0)
    affine: bool = True


class GELU(_Layer):
    """x * Phi(x); ``exact`` uses erf, ``tanh`` the approximation 0.5x(1 + tanh(sqrt(2/pi)(x + 0.044715x^3))).

    Required, never defaulted: torch's ``nn.GELU`` and Keras' ``gelu`` default to exact, Flax's
    ``nn.gelu`` to tanh, so a spec that left it out would mean different functions on different frameworks.
    """

    type: Literal["GELU"] = "GELU"
    approximate: Literal["tanh", "exact"]


class GlobalAvgPool(_Layer):
    """Mean over the spatial axes of an image (H, W, C) -> (C,), or over the tokens of (T, D) -> (D,)."""

    type: Literal["GlobalAvgPool"] = "GlobalAvgPool"


class PatchEmbed(_Layer):
    """Non-overlapping ``patch`` x ``patch`` patches of an image, each projected to ``dim`` features:
    a valid convolution with kernel = stride = patch, reshaped to (tokens, dim) in row-major (H, W) order."""

    type: Literal["PatchEmbed"] = "PatchEmbed"
    patch: int = Field(gt=0)
    dim: int = Field(gt=0)


class PositionEmbedding(_Layer):
    """A learned (tokens, dim) array added to a token sequence."""

    type: Literal["PositionEmbedding"] = "PositionEmbedding"


class SelfAttention(_Layer):
    """Multi-head scaled dot-product self-attention over a (T, D) sequence: no mask, no dropout.

    Each head sees D / ``heads`` features; scores are scaled by 1/sqrt(D / heads)
    (bench.spec.shapes ``attention_scale``). Its parameter layout is declared once, in bench/spec/shapes.py.
    """

    type: Literal["SelfAttention"] = "SelfAttention"
    heads: int = Field(gt=0)


def _as_tuple(value: object) -> object:
    """A TOML array arrives as a list, which the sweep's strict validation would refuse as a tuple."""
    return tuple(value) if isinstance(value, list) else value


class Residual(_Layer):
    """``activation(x + f(x))``, with ``f`` the ``layers`` list: a container keeps the spec a list, not a graph.

    ``projection`` maps x to f(x)'s shape where it changes: ``conv`` is a 1x1 convolution with
    ``stride`` (no padding is ever needed at kernel 1), ``dense`` a Dense layer on the last axis;
    ``none`` adds x as it is. ``activation`` after the sum gives a post-activation ResNet block.
    """

    type: Literal["Residual"] = "Residual"
    layers: Annotated[tuple[Layer, ...], BeforeValidator(_as_tuple)] = Field(min_length=1)
    projection: Literal["none", "conv", "dense"] = "none"
    stride: int = Field(default=1, gt=0)
    activation: str = "linear"
    _check = field_validator("activation")(classmethod(lambda cls, v: _check_activation(v)))

    @model_validator(mode="after")
    def _stride_needs_conv(self) -> Residual:
        if self.stride != 1 and self.projection != "conv":
            raise ValueError(f"stride {self.stride} needs projection = 'conv' (the only projection with a stride), "
                             f"got projection = {self.projection!r}")
        return self

    def resolve(self, hidden: str) -> Residual:
        inner = super().resolve(hidden)
        return inner.model_copy(update={"layers": tuple(layer.resolve(hidden) for layer in self.layers)})


LAYER_CLASSES: tuple[type[_Layer], ...] = (
    Flatten, Dense, Conv2D, MaxPool2D, AvgPool2D, BatchNorm, Dropout, Activation,
    LayerNorm, GELU, GlobalAvgPool, PatchEmbed, PositionEmbedding, SelfAttention, Residual,
)
LAYER_TYPES: tuple[str, ...] = tuple(cls.__name__ for cls in LAYER_CLASSES)
"""The spec's layer vocabulary: every adapter, the oracle, shapes and the cost model cover exactly these."""
Layer = Annotated[
    Flatten | Dense | Conv2D | MaxPool2D | AvgPool2D | BatchNorm | Dropout | Activation
    | LayerNorm | GELU | GlobalAvgPool | PatchEmbed | PositionEmbedding | SelfAttention | Residual,
    Field(discriminator="type"),
]
Residual.model_rebuild()  # its ``layers`` field names the union it belongs to


def walk(layers: tuple[Layer, ...], prefix: str = "") -> Iterator[tuple[str, Layer]]:
    """Every layer with its path ("3", "3.0", ...), depth-first, a container before the layers inside it:
    the order and names of ``bench.spec.shapes.ParamSpec.layer``."""
    for i, layer in enumerate(layers):
        path = f"{prefix}{i}"
        yield path, layer
        if isinstance(layer, Residual):
            yield from walk(layer.layers, f"{path}.")


class ModelSpec(BaseModel):
    """A named stack of layers ending in a Dense layer that produces logits."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    name: str
    layers: tuple[Layer, ...]
    description: str = ""

    def resolve(self, hidden: str) -> ModelSpec:
        """The model with every ``hidden`` placeholder set to one activation of the sweep."""
        _check_activation(hidden)
        return self.model_copy(update={"layers": tuple(layer.resolve(hidden) for layer in self.layers)})

    @property
    def has_dropout(self) -> bool:
        return any(isinstance(layer, Dropout) and layer.rate > 0 for _, layer in walk(self.layers))

    @property
    def has_batchnorm(self) -> bool:
        return any(isinstance(layer, BatchNorm) for _, layer in walk(self.layers))


def _seed_models() -> dict[str, ModelSpec]:
    h = HIDDEN
    return {
        "mlp": ModelSpec(
            name="mlp",
            description="Flatten -> Dense 128 (hidden) -> Dense 10: the Keras MNIST example",
            layers=(Flatten(), Dense(units=128, activation=h), Dense(units=10)),
        ),
        "mlp_bn": ModelSpec(
            name="mlp_bn",
            description="MLP with BatchNorm before each hidden activation",
            layers=(
                Flatten(),
                Dense(units=128), BatchNorm(), Activation(activation=h),
                Dense(units=64), BatchNorm(), Activation(activation=h),
                Dense(units=10),
            ),
        ),
        "mlp_dropout": ModelSpec(
            name="mlp_dropout",
            description="MLP with Dropout 0.2 after each hidden layer",
            layers=(
                Flatten(),
                Dense(units=128, activation=h), Dropout(rate=0.2),
                Dense(units=64, activation=h), Dropout(rate=0.2),
                Dense(units=10),
            ),
        ),
        "cnn": ModelSpec(
            name="cnn",
            description="3 valid 3x3 convs (32, 64, 128) with 2 max-pools, Dense 64, Dense 10",
            layers=(
                Conv2D(filters=32, kernel=3, activation=h),
                Conv2D(filters=64, kernel=3, activation=h),
                MaxPool2D(size=2),
                Conv2D(filters=128, kernel=3, activation=h),
                MaxPool2D(size=2),
                Flatten(),
                Dense(units=64, activation=h),
                Dense(units=10),
            ),
        ),
    }


SEED_MODELS: dict[str, ModelSpec] = _seed_models()


def _modern_models() -> dict[str, ModelSpec]:
    h = HIDDEN

    def block(channels: int, stride: int) -> Residual:
        """A post-activation basic block: conv-BN-act-conv-BN, added to x (projected when it shrinks), then act."""
        return Residual(
            layers=(Conv2D(filters=channels, kernel=3, stride=stride, padding="same"), BatchNorm(), Activation(activation=h),
                    Conv2D(filters=channels, kernel=3, padding="same"), BatchNorm()),
            projection="conv" if stride != 1 else "none", stride=stride, activation=h,
        )

    def encoder_block() -> tuple[Residual, Residual]:
        """A pre-norm transformer block: x + attention(LN(x)), then x + MLP(LN(x)) with a GELU MLP of 2x width."""
        return (Residual(layers=(LayerNorm(), SelfAttention(heads=4))),
                Residual(layers=(LayerNorm(), Dense(units=128), GELU(approximate="exact"), Dense(units=64))))

    return {
        "resnet": ModelSpec(
            name="resnet",
            description="post-activation ResNet: conv 16 + BN stem, residual blocks at 16, 32 (/2), 64 (/2), "
                        "global average pool, Dense 10",
            layers=(Conv2D(filters=16, kernel=3, padding="same"), BatchNorm(), Activation(activation=h),
                    block(16, 1), block(32, 2), block(64, 2), GlobalAvgPool(), Dense(units=10)),
        ),
        "vit": ModelSpec(
            name="vit",
            description="Vision Transformer: 7x7 patches to 16 tokens of 64, learned positions, 2 pre-norm blocks "
                        "(4-head attention, GELU MLP 128), LayerNorm, mean pool, Dense 10",
            layers=(PatchEmbed(patch=7, dim=64), PositionEmbedding(), *encoder_block(), *encoder_block(),
                    LayerNorm(), GlobalAvgPool(), Dense(units=10)),
        ),
    }


MODERN_MODELS: dict[str, ModelSpec] = _modern_models()
"""Built in but outside the default sweep (``--models resnet,vit``): a residual CNN and a Vision Transformer
cost far more per sample than the seed models, and the default sweep keeps its time budget."""
BUILTIN_MODELS: dict[str, ModelSpec] = SEED_MODELS | MODERN_MODELS
"""Every model a sweep, parity or a saved model can name without defining it."""

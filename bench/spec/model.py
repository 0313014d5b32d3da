"""The framework-neutral model description every backend translates, and the sweep's name lists.

One spec, many frameworks: a model is a short list of declarative layers (the training half is
bench/spec/train.py), so no framework's idea of a layer leaks into a comparison (docs/architecture.md,
"Framework rules"). Pydantic validates specs coming from TOML files and gives readable errors; the
same objects pickle into worker processes unchanged.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from bench.errors import unknown

HIDDEN = "hidden"
"""Placeholder activation name; the sweep's hidden activation replaces it."""

ACTIVATIONS = ("relu", "leaky_relu", "tanh", "sigmoid", "linear")
LEAKY_RELU_SLOPE = 0.01  # the suite's one slope, passed explicitly to every framework
OPTIMIZERS = ("sgd", "momentum", "rmsprop", "adam")
LOSSES = ("cce", "mse", "mae", "bce", "hinge")
PRECISIONS = ("fp32", "tf32", "bf16")
BN_MOMENTUM = 0.99  # Keras sense: weight of the old running statistic
BN_EPSILON = 1e-3


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


LAYER_CLASSES: tuple[type[_Layer], ...] = (Flatten, Dense, Conv2D, MaxPool2D, AvgPool2D, BatchNorm, Dropout, Activation)
LAYER_TYPES: tuple[str, ...] = tuple(cls.__name__ for cls in LAYER_CLASSES)
"""The spec's layer vocabulary: every adapter, the oracle, shapes and the cost model cover exactly these."""
Layer = Annotated[
    Flatten | Dense | Conv2D | MaxPool2D | AvgPool2D | BatchNorm | Dropout | Activation,
    Field(discriminator="type"),
]


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
        return any(isinstance(layer, Dropout) and layer.rate > 0 for layer in self.layers)

    @property
    def has_batchnorm(self) -> bool:
        return any(isinstance(layer, BatchNorm) for layer in self.layers)


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

"""Shape inference for a model spec: which layers hold which parameters, and whether a model fits.

Every backend and the NumPy reference share one canonical parameter list (``param_specs``), so
weights and gradients can be exchanged and compared array by array. Canonical layouts: Dense kernel
(in, out); Conv2D kernel HWIO; activations NHWC; Flatten in H, W, C order (docs/architecture.md).

Each layer type's shape rule and parameters live in one table, ``LAYER_RULES``, keyed by the spec's
vocabulary; an unknown type is a ``SpecError``, never a pass-through.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

from bench.errors import SpecError
from bench.spec.model import Dense, ModelSpec

Shape = tuple[int, ...]


@dataclass(frozen=True)
class ParamSpec:
    """One canonical parameter array: which layer owns it, its role, shape and trainability."""

    layer: int
    name: str  # kernel, bias, gamma, beta, moving_mean, moving_variance
    shape: Shape
    trainable: bool

    @property
    def key(self) -> str:
        return f"{self.layer}.{self.name}"


def conv_output_size(size: int, kernel: int, stride: int, padding: str) -> int:
    """Spatial output size of a convolution (Keras/TF arithmetic, used by every backend)."""
    if padding == "same":
        return math.ceil(size / stride)
    return (size - kernel) // stride + 1


def same_padding(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """TF 'same' padding (before, after): the extra pixel goes after, which torch must pad by hand."""
    out = math.ceil(size / stride)
    total = max((out - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


class _DoesNotFit(SpecError):
    """A window larger than its input: ``layer_shapes`` adds which input the model was given."""


def _image(shape: Shape, where: str) -> Shape:
    if len(shape) != 3:
        raise SpecError(f"{where} needs an image input (H, W, C) but gets shape {shape}")
    return shape


def _dense_out(layer, shape: Shape, where: str) -> Shape:
    if len(shape) != 1:
        raise SpecError(f"{where} needs a flat input but gets shape {shape}; add a Flatten layer before it")
    return (layer.units,)


def _conv_out(layer, shape: Shape, where: str) -> Shape:
    h, w = (conv_output_size(s, layer.kernel, layer.stride, layer.padding) for s in _image(shape, where)[:2])
    if h < 1 or w < 1:
        raise _DoesNotFit(f"{where}: a {layer.kernel}x{layer.kernel} kernel does not fit the {shape[0]}x{shape[1]} input")
    return (h, w, layer.filters)


def _pool_out(layer, shape: Shape, where: str) -> Shape:
    h, w = _image(shape, where)[0] // layer.size, shape[1] // layer.size
    if h < 1 or w < 1:
        raise _DoesNotFit(f"{where}: a {layer.size}x{layer.size} pool does not fit the {shape[0]}x{shape[1]} input")
    return (h, w, shape[2])


def _kernel_bias(kernel: Callable[[object, Shape], Shape]) -> Callable:
    return lambda layer, i, before: [ParamSpec(i, "kernel", kernel(layer, before), True),
                                     ParamSpec(i, "bias", (kernel(layer, before)[-1],), True)]


def _batchnorm_params(layer, i: int, before: Shape) -> list[ParamSpec]:
    c = (before[-1],)
    return [ParamSpec(i, "gamma", c, True), ParamSpec(i, "beta", c, True),
            ParamSpec(i, "moving_mean", c, False), ParamSpec(i, "moving_variance", c, False)]


def _same(layer, shape: Shape, where: str) -> Shape:
    return shape


def _none(layer, i: int, before: Shape) -> list[ParamSpec]:
    return []


@dataclass(frozen=True)
class LayerRule:
    """How a layer type changes the per-sample shape, and the canonical parameters it holds."""

    output: Callable[[object, Shape, str], Shape]
    params: Callable[[object, int, Shape], list[ParamSpec]]


LAYER_RULES: dict[str, LayerRule] = {
    "Flatten": LayerRule(lambda layer, shape, where: (math.prod(shape),), _none),
    "Dense": LayerRule(_dense_out, _kernel_bias(lambda layer, before: (before[0], layer.units))),
    "Conv2D": LayerRule(_conv_out, _kernel_bias(lambda layer, before: (layer.kernel, layer.kernel, before[-1], layer.filters))),
    "MaxPool2D": LayerRule(_pool_out, _none),
    "AvgPool2D": LayerRule(_pool_out, _none),
    "BatchNorm": LayerRule(_same, _batchnorm_params),
    "Dropout": LayerRule(_same, _none),
    "Activation": LayerRule(_same, _none),
}


def rule(layer) -> LayerRule:
    try:
        return LAYER_RULES[layer.type]
    except KeyError:
        raise SpecError(f"unknown layer type {layer.type!r}; valid: {', '.join(LAYER_RULES)}") from None


def layer_shapes(model: ModelSpec, input_shape: Shape, num_classes: int) -> list[Shape]:
    """Per-sample output shape after each layer; raises SpecError where the model does not fit.

    The last layer must be a Dense layer with ``num_classes`` units, since it produces the logits.
    """
    shape = tuple(input_shape)
    shapes: list[Shape] = []
    for i, layer in enumerate(model.layers):
        where = f"model {model.name!r}, layer {i} ({layer.type})"
        try:
            shape = rule(layer).output(layer, shape, where)
        except _DoesNotFit as exc:
            raise SpecError(f"{exc} (model needs larger images than input {tuple(input_shape)})") from None
        shapes.append(shape)
    last = model.layers[-1] if model.layers else None
    if not isinstance(last, Dense) or last.units != num_classes or last.activation != "linear":
        raise SpecError(
            f"model {model.name!r} must end in Dense(units={num_classes}, activation='linear') producing logits"
        )
    return shapes


def param_specs(model: ModelSpec, input_shape: Shape, num_classes: int) -> list[ParamSpec]:
    """The canonical, ordered parameter list of a model on an input shape."""
    befores = [tuple(input_shape)] + layer_shapes(model, input_shape, num_classes)
    return [p for i, layer in enumerate(model.layers) for p in rule(layer).params(layer, i, befores[i])]


def parameter_count(model: ModelSpec, input_shape: Shape, num_classes: int, trainable_only: bool = True) -> int:
    return sum(math.prod(p.shape) for p in param_specs(model, input_shape, num_classes) if p.trainable or not trainable_only)


def check_fits(model: ModelSpec, input_shape: Shape, num_classes: int) -> None:
    """Raise SpecError with a clear line if the model cannot run on this input."""
    layer_shapes(model, input_shape, num_classes)

"""Shape inference for a model spec: which layers hold which parameters, and whether a model fits.

Every backend and the NumPy reference share one canonical parameter list (``param_specs``), so
weights and gradients can be exchanged and compared array by array. Canonical layouts: Dense kernel
(in, out); Conv2D kernel HWIO; activations NHWC; Flatten in H, W, C order (design.md).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from bench.errors import SpecError
from bench.spec import AvgPool2D, BatchNorm, Conv2D, Dense, Flatten, MaxPool2D, ModelSpec


@dataclass(frozen=True)
class ParamSpec:
    """One canonical parameter array: which layer owns it, its role, shape and trainability."""

    layer: int
    name: str  # kernel, bias, gamma, beta, moving_mean, moving_variance
    shape: tuple[int, ...]
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


def layer_shapes(model: ModelSpec, input_shape: tuple[int, ...], num_classes: int) -> list[tuple[int, ...]]:
    """Per-sample output shape after each layer; raises SpecError where the model does not fit.

    The last layer must be a Dense layer with ``num_classes`` units, since it produces the logits.
    """
    shape = tuple(input_shape)
    shapes: list[tuple[int, ...]] = []
    for i, layer in enumerate(model.layers):
        where = f"model {model.name!r}, layer {i} ({layer.type})"
        if isinstance(layer, Flatten):
            shape = (math.prod(shape),)
        elif isinstance(layer, Dense):
            if len(shape) != 1:
                raise SpecError(f"{where} needs a flat input but gets shape {shape}; add a Flatten layer before it")
            shape = (layer.units,)
        elif isinstance(layer, Conv2D):
            if len(shape) != 3:
                raise SpecError(f"{where} needs an image input (H, W, C) but gets shape {shape}")
            h, w = (conv_output_size(s, layer.kernel, layer.stride, layer.padding) for s in shape[:2])
            if h < 1 or w < 1:
                raise SpecError(
                    f"{where}: a {layer.kernel}x{layer.kernel} kernel does not fit the {shape[0]}x{shape[1]} input "
                    f"(model needs larger images than input {tuple(input_shape)})"
                )
            shape = (h, w, layer.filters)
        elif isinstance(layer, (MaxPool2D, AvgPool2D)):
            if len(shape) != 3:
                raise SpecError(f"{where} needs an image input (H, W, C) but gets shape {shape}")
            h, w = shape[0] // layer.size, shape[1] // layer.size
            if h < 1 or w < 1:
                raise SpecError(
                    f"{where}: a {layer.size}x{layer.size} pool does not fit the {shape[0]}x{shape[1]} input "
                    f"(model needs larger images than input {tuple(input_shape)})"
                )
            shape = (h, w, shape[2])
        shapes.append(shape)
    last = model.layers[-1] if model.layers else None
    if not isinstance(last, Dense) or last.units != num_classes or last.activation != "linear":
        raise SpecError(
            f"model {model.name!r} must end in Dense(units={num_classes}, activation='linear') producing logits"
        )
    return shapes


def param_specs(model: ModelSpec, input_shape: tuple[int, ...], num_classes: int) -> list[ParamSpec]:
    """The canonical, ordered parameter list of a model on an input shape."""
    shapes = layer_shapes(model, input_shape, num_classes)
    params: list[ParamSpec] = []
    previous = tuple(input_shape)
    for i, (layer, out) in enumerate(zip(model.layers, shapes)):
        if isinstance(layer, Dense):
            params += [ParamSpec(i, "kernel", (previous[0], layer.units), True), ParamSpec(i, "bias", (layer.units,), True)]
        elif isinstance(layer, Conv2D):
            kernel = (layer.kernel, layer.kernel, previous[-1], layer.filters)
            params += [ParamSpec(i, "kernel", kernel, True), ParamSpec(i, "bias", (layer.filters,), True)]
        elif isinstance(layer, BatchNorm):
            c = (previous[-1],)
            params += [
                ParamSpec(i, "gamma", c, True),
                ParamSpec(i, "beta", c, True),
                ParamSpec(i, "moving_mean", c, False),
                ParamSpec(i, "moving_variance", c, False),
            ]
        previous = out
    return params


def parameter_count(model: ModelSpec, input_shape: tuple[int, ...], num_classes: int, trainable_only: bool = True) -> int:
    return sum(math.prod(p.shape) for p in param_specs(model, input_shape, num_classes) if p.trainable or not trainable_only)


def check_fits(model: ModelSpec, input_shape: tuple[int, ...], num_classes: int) -> None:
    """Raise SpecError with a clear line if the model cannot run on this input."""
    layer_shapes(model, input_shape, num_classes)

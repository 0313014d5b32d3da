"""Analytic cost model: floating-point operations per sample for every spec layer.

Counts a multiply-add as 2 FLOPs for Dense and Conv2D, 1 FLOP per output element for activations
and per window element for pooling, 4 per element for BatchNorm (normalise, scale, shift). A
training step is counted as 3x the forward pass (forward, gradient w.r.t. inputs, gradient w.r.t.
weights), the usual convention; the figure is a model of the work, not a profiler reading.
"""

from __future__ import annotations

import math
from collections.abc import Callable

from bench.errors import SpecError
from bench.spec.model import ModelSpec
from bench.spec.shapes import Shape, layer_shapes

TRAIN_TO_FORWARD = 3


def _activation(layer, out: int) -> int:
    return out if layer.activation != "linear" else 0


FLOPS: dict[str, Callable[[object, Shape, Shape], int]] = {
    "Flatten": lambda layer, before, after: 0,
    "Dense": lambda layer, before, after: 2 * before[0] * layer.units + layer.units + _activation(layer, layer.units),
    "Conv2D": lambda layer, before, after: (2 * layer.kernel**2 * before[2] + 1) * math.prod(after)
    + _activation(layer, math.prod(after)),
    "MaxPool2D": lambda layer, before, after: math.prod(after) * layer.size**2,
    "AvgPool2D": lambda layer, before, after: math.prod(after) * layer.size**2,
    "BatchNorm": lambda layer, before, after: 4 * math.prod(after),
    "Dropout": lambda layer, before, after: math.prod(after),
    "Activation": lambda layer, before, after: math.prod(after),
}
"""FLOPs per sample of one layer, from its input and output shapes."""


def forward_flops(model: ModelSpec, input_shape: Shape, num_classes: int) -> int:
    shapes = [tuple(input_shape)] + layer_shapes(model, input_shape, num_classes)
    total = 0
    for i, layer in enumerate(model.layers):
        if layer.type not in FLOPS:
            raise SpecError(f"the cost model has no rule for layer type {layer.type!r}")
        total += FLOPS[layer.type](layer, shapes[i], shapes[i + 1])
    return total


def train_flops(model: ModelSpec, input_shape: Shape, num_classes: int) -> int:
    return TRAIN_TO_FORWARD * forward_flops(model, input_shape, num_classes)

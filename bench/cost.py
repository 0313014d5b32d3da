"""Analytic cost model: floating-point operations per sample for every spec layer.

Counts a multiply-add as 2 FLOPs for Dense and Conv2D, 1 FLOP per output element for activations
and per window element for pooling, 4 per element for BatchNorm (normalise, scale, shift). A
training step is counted as 3x the forward pass (forward, gradient w.r.t. inputs, gradient w.r.t.
weights), the usual convention; the figure is a model of the work, not a profiler reading.
"""

from __future__ import annotations

import math

from bench.shapes import layer_shapes
from bench.spec import Activation, AvgPool2D, BatchNorm, Conv2D, Dense, Dropout, MaxPool2D, ModelSpec

TRAIN_TO_FORWARD = 3


def forward_flops(model: ModelSpec, input_shape: tuple[int, ...], num_classes: int) -> int:
    shapes = [tuple(input_shape)] + layer_shapes(model, input_shape, num_classes)
    total = 0
    for i, layer in enumerate(model.layers):
        before, after = shapes[i], shapes[i + 1]
        out = math.prod(after)
        if isinstance(layer, Dense):
            total += 2 * before[0] * layer.units + layer.units + (out if layer.activation != "linear" else 0)
        elif isinstance(layer, Conv2D):
            total += 2 * layer.kernel * layer.kernel * before[2] * out + out
            total += out if layer.activation != "linear" else 0
        elif isinstance(layer, (MaxPool2D, AvgPool2D)):
            total += out * layer.size * layer.size
        elif isinstance(layer, BatchNorm):
            total += 4 * out
        elif isinstance(layer, (Activation, Dropout)):
            total += out
    return total


def train_flops(model: ModelSpec, input_shape: tuple[int, ...], num_classes: int) -> int:
    return TRAIN_TO_FORWARD * forward_flops(model, input_shape, num_classes)

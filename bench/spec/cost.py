"""Analytic cost model: floating-point operations per sample for every spec layer.

Counts a multiply-add as 2 FLOPs for Dense, Conv2D and PatchEmbed (and the projections and two
matrix products of attention), 1 FLOP per output element for activations (GELU included), additions
and per window element for pooling, 4 per element for BatchNorm (normalise, scale, shift), 6 for an
affine LayerNorm (its per-sample statistics too; 4 without gamma and beta), 4 per attention score
(scale, exponential, sum, divide). A Residual costs its layers, its projection, the addition and its
activation. A training step is counted as 3x the forward pass (forward, gradient w.r.t. inputs, gradient w.r.t.
weights), the usual convention; the figure is a model of the work, not a profiler reading.
"""

from __future__ import annotations

import math
from collections.abc import Callable

from bench.errors import SpecError
from bench.spec.model import ModelSpec
from bench.spec.shapes import Shape, inner_shapes, layer_shapes

TRAIN_TO_FORWARD = 3


def _activation(layer, out: int) -> int:
    return out if layer.activation != "linear" else 0


def _dense(layer, before: Shape, after: Shape) -> int:
    """Per position: a sample's features, or each token of a sequence."""
    positions = math.prod(before[:-1])
    return positions * (2 * before[-1] * layer.units + layer.units) + _activation(layer, math.prod(after))


def _attention(layer, before: Shape, after: Shape) -> int:
    tokens, dim = before
    projections = 4 * tokens * (2 * dim * dim + dim)  # query, key, value, output
    products = 2 * (2 * tokens * tokens * dim)  # scores q k^T and their weighted sum of values, all heads
    return projections + products + 4 * layer.heads * tokens * tokens


def _residual(layer, before: Shape, after: Shape) -> int:
    shapes = [before, *inner_shapes(layer, before)]
    inner = sum(_layer_flops(sub, shapes[j], shapes[j + 1]) for j, sub in enumerate(layer.layers))
    projection = (2 * before[-1] + 1) * math.prod(after) if layer.projection != "none" else 0  # 1x1 conv or Dense
    return inner + projection + math.prod(after) + _activation(layer, math.prod(after))


FLOPS: dict[str, Callable[[object, Shape, Shape], int]] = {
    "Flatten": lambda layer, before, after: 0,
    "Dense": _dense,
    "Conv2D": lambda layer, before, after: (2 * layer.kernel**2 * before[2] + 1) * math.prod(after)
    + _activation(layer, math.prod(after)),
    "MaxPool2D": lambda layer, before, after: math.prod(after) * layer.size**2,
    "AvgPool2D": lambda layer, before, after: math.prod(after) * layer.size**2,
    "BatchNorm": lambda layer, before, after: 4 * math.prod(after),
    "Dropout": lambda layer, before, after: math.prod(after),
    "Activation": lambda layer, before, after: math.prod(after),
    "LayerNorm": lambda layer, before, after: (6 if layer.affine else 4) * math.prod(after),
    "GELU": lambda layer, before, after: math.prod(after),
    "GlobalAvgPool": lambda layer, before, after: math.prod(before),
    "PatchEmbed": lambda layer, before, after: (2 * layer.patch**2 * before[2] + 1) * math.prod(after),
    "PositionEmbedding": lambda layer, before, after: math.prod(after),
    "SelfAttention": _attention,
    "Residual": _residual,
}
"""FLOPs per sample of one layer, from its input and output shapes."""


def _layer_flops(layer, before: Shape, after: Shape) -> int:
    if layer.type not in FLOPS:
        raise SpecError(f"the cost model has no rule for layer type {layer.type!r}; valid: {', '.join(FLOPS)}")
    return FLOPS[layer.type](layer, before, after)


def forward_flops(model: ModelSpec, input_shape: Shape, num_classes: int) -> int:
    shapes = [tuple(input_shape)] + layer_shapes(model, input_shape, num_classes)
    return sum(_layer_flops(layer, shapes[i], shapes[i + 1]) for i, layer in enumerate(model.layers))


def train_flops(model: ModelSpec, input_shape: Shape, num_classes: int) -> int:
    return TRAIN_TO_FORWARD * forward_flops(model, input_shape, num_classes)

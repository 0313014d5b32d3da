"""Canonical initial weights, drawn once in NumPy and loaded into every backend.

Frameworks initialise differently (Keras glorot_uniform, PyTorch kaiming_uniform, Flax
lecun_normal); drawing once here removes that difference from every comparison (docs/architecture.md).
"""

from __future__ import annotations

import math

import numpy as np

from bench.spec.model import POSITION_STD, ModelSpec
from bench.spec.shapes import ParamSpec, param_specs


def _fans(shape: tuple[int, ...]) -> tuple[int, int]:
    """Keras' fan computation: Dense (in, out); Conv HWIO counts the receptive field."""
    if len(shape) == 2:
        return shape[0], shape[1]
    receptive = math.prod(shape[:-2])
    return shape[-2] * receptive, shape[-1] * receptive


def initial_value(spec: ParamSpec, rng: np.random.Generator) -> np.ndarray:
    """Every kernel (Dense, Conv2D, PatchEmbed, a projection, attention's four (D, D) ones) glorot_uniform;
    the position embedding normal with std ``POSITION_STD``; gammas and variances 1; the rest 0."""
    if spec.name.endswith("kernel"):
        fan_in, fan_out = _fans(spec.shape)
        limit = math.sqrt(6.0 / (fan_in + fan_out))
        return rng.uniform(-limit, limit, size=spec.shape).astype(np.float32)
    if spec.name == "embedding":
        return rng.normal(0.0, POSITION_STD, size=spec.shape).astype(np.float32)
    if spec.name in ("gamma", "moving_variance"):
        return np.ones(spec.shape, np.float32)
    return np.zeros(spec.shape, np.float32)


def canonical_weights(model: ModelSpec, input_shape: tuple[int, ...], num_classes: int, seed: int) -> list[np.ndarray]:
    """glorot_uniform kernels, zero biases, BatchNorm and LayerNorm gamma 1 / beta 0, BatchNorm mean 0 /
    variance 1, position embeddings normal(0, 0.02); drawn in ``param_specs`` order from one generator."""
    rng = np.random.default_rng([seed, 0x5EED])
    return [initial_value(p, rng) for p in param_specs(model, input_shape, num_classes)]

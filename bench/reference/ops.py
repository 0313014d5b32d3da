"""The oracle's layer mathematics: one forward and one backward function per operation, in float64.

Plain NumPy written from the formulas, favouring plainness over speed, in the canonical layouts
(NHWC activations, Dense kernel (in, out), Conv kernel HWIO). Where frameworks document different
formulas, the ``Rules`` argument (bench.spec.rules) selects one. Token sequences are (n, T, D), and
attention's parameters follow ``bench.spec.shapes.ATTENTION_LAYOUT``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view
from scipy.special import erf

from bench.spec.rules import CANONICAL, Rules
from bench.spec.shapes import same_padding


# -- activations -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class ActivationMath:
    """An activation and its derivative, from the pre-activation z or the output y as the formula needs."""

    value: Callable[[np.ndarray, float], np.ndarray]
    derivative: Callable[[np.ndarray, np.ndarray, float, Rules], np.ndarray]


def _leaky_derivative(z: np.ndarray, y: np.ndarray, slope: float, rules: Rules) -> np.ndarray:
    positive = z >= 0 if rules.leaky_relu_grad_at_zero == "one" else z > 0
    return np.where(positive, 1.0, slope)


ACTIVATIONS: dict[str, ActivationMath] = {
    # At z == 0 relu's derivative is 0 (every framework agrees); leaky relu's follows the rules.
    "relu": ActivationMath(lambda z, s: np.maximum(z, 0.0), lambda z, y, s, r: (z > 0).astype(z.dtype)),
    "leaky_relu": ActivationMath(lambda z, s: np.where(z > 0, z, s * z), _leaky_derivative),
    "tanh": ActivationMath(lambda z, s: np.tanh(z), lambda z, y, s, r: 1.0 - y**2),
    # = 1 / (1 + e^-z), without overflow for large |z|
    "sigmoid": ActivationMath(lambda z, s: 0.5 * (1.0 + np.tanh(0.5 * z)), lambda z, y, s, r: y * (1.0 - y)),
    "linear": ActivationMath(lambda z, s: z, lambda z, y, s, r: np.ones_like(z)),
}


def activate(z: np.ndarray, name: str, slope: float) -> np.ndarray:
    return ACTIVATIONS[name].value(z, slope)


def activation_grad(z: np.ndarray, y: np.ndarray, name: str, slope: float, rules: Rules = CANONICAL) -> np.ndarray:
    """d act(z) / dz."""
    return ACTIVATIONS[name].derivative(z, y, slope, rules)


# -- dense -----------------------------------------------------------------------------------------
def dense_forward(x: np.ndarray, kernel: np.ndarray, bias: np.ndarray) -> np.ndarray:
    """The neuron's weighted sum on the last axis: z_j = sum_i x_i w_ij + b_j, for every sample (and token) at once."""
    return x @ kernel + bias


def dense_backward(x: np.ndarray, kernel: np.ndarray, dz: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Gradients (dx, dkernel, dbias) of a dense layer given dL/dz; every sample and token adds to the kernel's."""
    rows, drows = x.reshape(-1, x.shape[-1]), dz.reshape(-1, dz.shape[-1])
    return dz @ kernel.T, rows.T @ drows, drows.sum(axis=0)


# -- convolution (im2col) --------------------------------------------------------------------------
def conv_padding(height: int, width: int, kernel: int, stride: int, padding: str) -> tuple[tuple[int, int], tuple[int, int]]:
    """(top, bottom), (left, right) zero padding: none for 'valid', TF's rule for 'same'."""
    if padding == "valid":
        return (0, 0), (0, 0)
    return same_padding(height, kernel, stride), same_padding(width, kernel, stride)


def im2col(xp: np.ndarray, kernel: int, stride: int) -> tuple[np.ndarray, tuple[int, int]]:
    """Patches of a padded NHWC input as rows (n*oh*ow, kh*kw*c), in the HWIO kernel's (h, w, c) order."""
    windows = sliding_window_view(xp, (kernel, kernel), axis=(1, 2))[:, ::stride, ::stride]  # (n, oh, ow, c, kh, kw)
    n, oh, ow = windows.shape[:3]
    cols = windows.transpose(0, 1, 2, 4, 5, 3).reshape(n * oh * ow, -1)
    return cols, (oh, ow)


def conv2d_forward(x: np.ndarray, kernel: np.ndarray, bias: np.ndarray, stride: int, padding: str) -> tuple[np.ndarray, np.ndarray]:
    """Pre-activation output (n, oh, ow, filters) and the patch matrix the backward pass reuses."""
    k, _, _, filters = kernel.shape
    (top, bottom), (left, right) = conv_padding(x.shape[1], x.shape[2], k, stride, padding)
    xp = np.pad(x, ((0, 0), (top, bottom), (left, right), (0, 0)))
    cols, (oh, ow) = im2col(xp, k, stride)
    z = cols @ kernel.reshape(-1, filters) + bias
    return z.reshape(x.shape[0], oh, ow, filters), cols


def conv2d_backward(
    x_shape: tuple[int, ...], cols: np.ndarray, kernel: np.ndarray, dz: np.ndarray, stride: int, padding: str
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(dx, dkernel, dbias): each patch's gradient is added back onto the input pixels it was cut from."""
    n, height, width, channels = x_shape
    k, _, _, filters = kernel.shape
    oh, ow = dz.shape[1:3]
    dz2 = dz.reshape(-1, filters)
    dkernel = (cols.T @ dz2).reshape(kernel.shape)
    dcols = (dz2 @ kernel.reshape(-1, filters).T).reshape(n, oh, ow, k, k, channels)
    (top, bottom), (left, right) = conv_padding(height, width, k, stride, padding)
    dxp = np.zeros((n, height + top + bottom, width + left + right, channels))
    for i in range(k):
        for j in range(k):
            dxp[:, i : i + stride * (oh - 1) + 1 : stride, j : j + stride * (ow - 1) + 1 : stride] += dcols[:, :, :, i, j]
    return dxp[:, top : top + height, left : left + width], dkernel, dz2.sum(axis=0)


# -- pooling (window = stride = size, 'valid': the remainder rows and columns are dropped) ---------
def _pool_windows(x: np.ndarray, size: int) -> np.ndarray:
    """(n, oh, ow, c, size*size): each pooling window's values, row-major within the window."""
    n, height, width, c = x.shape
    oh, ow = height // size, width // size
    blocks = x[:, : oh * size, : ow * size].reshape(n, oh, size, ow, size, c)
    return blocks.transpose(0, 1, 3, 5, 2, 4).reshape(n, oh, ow, c, size * size)


def _unpool(per_window: np.ndarray, x_shape: tuple[int, ...], size: int) -> np.ndarray:
    """Inverse of _pool_windows for gradients; dropped remainder pixels get zero gradient."""
    n, height, width, c = x_shape
    oh, ow = height // size, width // size
    blocks = per_window.reshape(n, oh, ow, c, size, size).transpose(0, 1, 4, 2, 5, 3).reshape(n, oh * size, ow * size, c)
    dx = np.zeros(x_shape)
    dx[:, : oh * size, : ow * size] = blocks
    return dx


def maxpool_forward(x: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Window maxima and the argmax (first maximum in row-major order, as torch and TF pick)."""
    windows = _pool_windows(x, size)
    argmax = windows.argmax(axis=-1)
    return np.take_along_axis(windows, argmax[..., None], axis=-1)[..., 0], argmax


def maxpool_backward(x_shape: tuple[int, ...], argmax: np.ndarray, dy: np.ndarray, size: int) -> np.ndarray:
    """The whole gradient of a window goes to the pixel that was its maximum."""
    routed = np.zeros((*dy.shape, size * size))
    np.put_along_axis(routed, argmax[..., None], dy[..., None], axis=-1)
    return _unpool(routed, x_shape, size)


def avgpool_forward(x: np.ndarray, size: int) -> np.ndarray:
    return _pool_windows(x, size).mean(axis=-1)


def avgpool_backward(x_shape: tuple[int, ...], dy: np.ndarray, size: int) -> np.ndarray:
    """Each pixel of a window gets an equal share of the window's gradient."""
    return _unpool(np.repeat(dy[..., None] / (size * size), size * size, axis=-1), x_shape, size)


# -- batch normalisation (statistics per channel = last axis, over every other axis) ---------------
@dataclass
class BatchNormCache:
    xhat: np.ndarray
    inv_std: np.ndarray
    mean: np.ndarray
    var: np.ndarray  # biased batch variance
    count: int  # values per channel


def batchnorm_train_forward(
    x: np.ndarray, gamma: np.ndarray, beta: np.ndarray, eps: float
) -> tuple[np.ndarray, BatchNormCache]:
    """Normalise with the batch mean and the biased batch variance (every framework does)."""
    axes = tuple(range(x.ndim - 1))
    mean = x.mean(axis=axes)
    var = x.var(axis=axes)
    inv_std = 1.0 / np.sqrt(var + eps)
    xhat = (x - mean) * inv_std
    return gamma * xhat + beta, BatchNormCache(xhat, inv_std, mean, var, x.size // x.shape[-1])


def batchnorm_backward(dy: np.ndarray, gamma: np.ndarray, cache: BatchNormCache) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(dx, dgamma, dbeta). The batch statistics depend on x, hence the two correction terms:
    dx = inv_std/m * (m*dxhat - sum(dxhat) - xhat*sum(dxhat*xhat))."""
    axes = tuple(range(dy.ndim - 1))
    dxhat = dy * gamma
    m = cache.count
    dx = cache.inv_std / m * (m * dxhat - dxhat.sum(axis=axes) - cache.xhat * (dxhat * cache.xhat).sum(axis=axes))
    return dx, (dy * cache.xhat).sum(axis=axes), dy.sum(axis=axes)


def batchnorm_eval(x: np.ndarray, gamma: np.ndarray, beta: np.ndarray, moving_mean: np.ndarray, moving_var: np.ndarray, eps: float) -> np.ndarray:
    return gamma * (x - moving_mean) / np.sqrt(moving_var + eps) + beta


def running_stats_update(
    moving_mean: np.ndarray, moving_var: np.ndarray, cache: BatchNormCache, momentum: float, rules: Rules
) -> tuple[np.ndarray, np.ndarray]:
    """moving = momentum*moving + (1-momentum)*batch_stat, momentum in the Keras sense (weight of old)."""
    var = cache.var * cache.count / (cache.count - 1) if rules.bn_running_variance == "unbiased" else cache.var
    return momentum * moving_mean + (1 - momentum) * cache.mean, momentum * moving_var + (1 - momentum) * var


# -- dropout -----------------------------------------------------------------------------------------
def dropout_forward(x: np.ndarray, keep: np.ndarray, rate: float) -> np.ndarray:
    """Inverted dropout: kept units are scaled by 1/(1-rate) so eval mode needs no rescaling."""
    return x * keep / (1.0 - rate)


# -- layer normalisation (statistics per position, over the last axis) -----------------------------
@dataclass
class LayerNormCache:
    xhat: np.ndarray
    inv_std: np.ndarray  # (..., 1)


def layernorm_forward(
    x: np.ndarray, gamma: np.ndarray | None, beta: np.ndarray | None, eps: float
) -> tuple[np.ndarray, LayerNormCache]:
    """(x - mean) / sqrt(var + eps) over the last axis (biased variance, as every framework), then gamma, beta."""
    mean = x.mean(axis=-1, keepdims=True)
    inv_std = 1.0 / np.sqrt(x.var(axis=-1, keepdims=True) + eps)
    xhat = (x - mean) * inv_std
    return (xhat if gamma is None else gamma * xhat + beta), LayerNormCache(xhat, inv_std)


def layernorm_backward(
    dy: np.ndarray, gamma: np.ndarray | None, cache: LayerNormCache
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(dx, dgamma, dbeta): BatchNorm's formula with the statistics taken over the last axis of each position,
    dx = inv_std/D * (D*dxhat - sum(dxhat) - xhat*sum(dxhat*xhat))."""
    dxhat = dy if gamma is None else dy * gamma
    d = dy.shape[-1]
    sums = dxhat.sum(axis=-1, keepdims=True), (dxhat * cache.xhat).sum(axis=-1, keepdims=True)
    dx = cache.inv_std / d * (d * dxhat - sums[0] - cache.xhat * sums[1])
    axes = tuple(range(dy.ndim - 1))
    return dx, (dy * cache.xhat).sum(axis=axes), dy.sum(axis=axes)


# -- GELU --------------------------------------------------------------------------------------------
_TANH_C = math.sqrt(2.0 / math.pi)


def gelu(x: np.ndarray, approximate: str) -> np.ndarray:
    """x * Phi(x) with the normal CDF from erf (``exact``), or 0.5x(1 + tanh(sqrt(2/pi)(x + 0.044715x^3)))."""
    if approximate == "tanh":
        return 0.5 * x * (1.0 + np.tanh(_TANH_C * (x + 0.044715 * x**3)))
    return 0.5 * x * (1.0 + erf(x / math.sqrt(2.0)))


def gelu_grad(x: np.ndarray, approximate: str) -> np.ndarray:
    """d gelu / dx: Phi(x) + x phi(x) exactly, or the tanh form's own derivative."""
    if approximate == "tanh":
        t = np.tanh(_TANH_C * (x + 0.044715 * x**3))
        return 0.5 * (1.0 + t) + 0.5 * x * (1.0 - t**2) * _TANH_C * (1.0 + 3 * 0.044715 * x**2)
    return 0.5 * (1.0 + erf(x / math.sqrt(2.0))) + x * np.exp(-0.5 * x**2) / math.sqrt(2.0 * math.pi)


# -- global average pooling (over every axis between the batch and the last) ------------------------
def global_avgpool_forward(x: np.ndarray) -> np.ndarray:
    return x.mean(axis=tuple(range(1, x.ndim - 1)))


def global_avgpool_backward(x_shape: tuple[int, ...], dy: np.ndarray) -> np.ndarray:
    """Each position gets an equal share of its channel's gradient."""
    count = math.prod(x_shape[1:-1])
    return np.broadcast_to((dy / count).reshape(x_shape[0], *([1] * (len(x_shape) - 2)), x_shape[-1]), x_shape).copy()


# -- multi-head self-attention ------------------------------------------------------------------------
@dataclass
class AttentionCache:
    x: np.ndarray  # (n, T, D)
    q: np.ndarray  # (n, heads, T, d), and k, v alike
    k: np.ndarray
    v: np.ndarray
    probs: np.ndarray  # (n, heads, T, T): softmax over the keys
    merged: np.ndarray  # (n, T, D): the heads' outputs, heads-major
    scale: float


def _split_heads(z: np.ndarray, heads: int) -> np.ndarray:
    """(n, T, D) -> (n, heads, T, d): feature h*d + j is feature j of head h."""
    n, t, dim = z.shape
    return z.reshape(n, t, heads, dim // heads).transpose(0, 2, 1, 3)


def _merge_heads(z: np.ndarray) -> np.ndarray:
    n, heads, t, d = z.shape
    return z.transpose(0, 2, 1, 3).reshape(n, t, heads * d)


def attention_forward(x: np.ndarray, w: dict[str, np.ndarray], heads: int, scale: float) -> tuple[np.ndarray, AttentionCache]:
    """softmax(q k^T * scale) v per head, heads concatenated, then the output projection."""
    q, k, v = (_split_heads(dense_forward(x, w[f"{p}_kernel"], w[f"{p}_bias"]), heads) for p in ("query", "key", "value"))
    scores = q @ k.transpose(0, 1, 3, 2) * scale
    scores = scores - scores.max(axis=-1, keepdims=True)
    probs = np.exp(scores)
    probs /= probs.sum(axis=-1, keepdims=True)
    merged = _merge_heads(probs @ v)
    return dense_forward(merged, w["output_kernel"], w["output_bias"]), AttentionCache(x, q, k, v, probs, merged, scale)


def attention_backward(dy: np.ndarray, w: dict[str, np.ndarray], cache: AttentionCache) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """(dx, gradients by parameter name). Through the softmax: ds = p * (dp - sum(dp * p)) over the keys."""
    grads: dict[str, np.ndarray] = {}
    dmerged, grads["output_kernel"], grads["output_bias"] = dense_backward(cache.merged, w["output_kernel"], dy)
    heads = cache.q.shape[1]
    dout = _split_heads(dmerged, heads)
    dprobs = dout @ cache.v.transpose(0, 1, 3, 2)
    dv = cache.probs.transpose(0, 1, 3, 2) @ dout
    dscores = cache.probs * (dprobs - (dprobs * cache.probs).sum(axis=-1, keepdims=True)) * cache.scale
    dq, dk = dscores @ cache.k, dscores.transpose(0, 1, 3, 2) @ cache.q
    dx = np.zeros_like(cache.x)
    for name, dz in (("query", dq), ("key", dk), ("value", dv)):
        dxi, grads[f"{name}_kernel"], grads[f"{name}_bias"] = dense_backward(cache.x, w[f"{name}_kernel"], _merge_heads(dz))
        dx += dxi
    return dx, grads

"""The oracle's layer mathematics: one forward and one backward function per operation, in float64.

Plain NumPy written from the formulas, favouring plainness over speed, in the canonical layouts
(NHWC activations, Dense kernel (in, out), Conv kernel HWIO). Where frameworks document different
formulas, the ``Rules`` argument (bench.spec.rules) selects one.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

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
    """The neuron's weighted sum: z_j = sum_i x_i w_ij + b_j, for every sample at once."""
    return x @ kernel + bias


def dense_backward(x: np.ndarray, kernel: np.ndarray, dz: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Gradients (dx, dkernel, dbias) of a dense layer given dL/dz."""
    return dz @ kernel.T, x.T @ dz, dz.sum(axis=0)


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

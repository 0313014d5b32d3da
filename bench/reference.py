"""The NumPy oracle: the spec's forward pass, backward pass and optimizers, written from the formulas.

Every backend is checked against this module (bench/parity.py), so it favours plainness over speed:
float64 throughout, one function per layer and direction, the chain rule spelled out. Layouts are
the canonical ones of ``bench.shapes`` (NHWC activations, Dense kernel (in, out), Conv kernel HWIO,
Flatten in H, W, C order), so weights and gradients compare array by array with any backend.

Where frameworks document a different formula for the same named thing (design.md, "Fairness"),
``Rules`` selects it, so parity can report the difference as a named deviation and still check the
backend exactly against the rule it declares. ``CANONICAL`` is the suite's own choice:

- RMSprop: v = rho*v + (1-rho)*g^2, w -= lr*g / (sqrt(v) + eps)   (eps outside the root, as torch);
  Keras and Optax's default put eps inside the root: w -= lr*g / sqrt(v + eps).
- Adam: bias-corrected m_hat, v_hat, w -= lr*m_hat / (sqrt(v_hat) + eps)   (torch and Optax);
  Keras adds eps to the uncorrected sqrt(v): w -= lr*sqrt(1-b2^t)/(1-b1^t) * m / (sqrt(v) + eps).
- BatchNorm running variance: updated with the biased batch variance (Keras, Flax); torch uses the
  unbiased one, var * m/(m-1) with m the number of values per channel.
- LeakyReLU's derivative at exactly 0: the slope (torch, TF); JAX's ``where(x >= 0, x, slope*x)``
  gives 1. Exact zeros are common: a zero-bias conv over an image's blank background.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields
from typing import Literal, get_args, get_type_hints

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from backends.base import numpy_loss, probabilities
from bench.shapes import ParamSpec, layer_shapes, param_specs, same_padding
from bench.spec import (
    HIDDEN,
    Activation,
    AvgPool2D,
    BatchNorm,
    Conv2D,
    Dense,
    Dropout,
    Flatten,
    MaxPool2D,
    ModelSpec,
    TrainSpec,
)


@dataclass(frozen=True)
class Rules:
    """Which documented formula to follow where frameworks differ; the defaults are the suite's."""

    rmsprop_eps: Literal["outside_sqrt", "inside_sqrt"] = "outside_sqrt"
    adam_eps: Literal["corrected", "uncorrected"] = "corrected"
    bn_running_variance: Literal["biased", "unbiased"] = "biased"
    leaky_relu_grad_at_zero: Literal["slope", "one"] = "slope"


CANONICAL = Rules()
RULE_OPTIONS: dict[str, tuple[str, ...]] = {f.name: get_args(get_type_hints(Rules)[f.name]) for f in fields(Rules)}
"""Every documented choice per rule, the canonical one first."""


# -- activations -----------------------------------------------------------------------------------
def activate(z: np.ndarray, name: str, slope: float) -> np.ndarray:
    if name == "relu":
        return np.maximum(z, 0.0)
    if name == "leaky_relu":
        return np.where(z > 0, z, slope * z)
    if name == "tanh":
        return np.tanh(z)
    if name == "sigmoid":
        return 0.5 * (1.0 + np.tanh(0.5 * z))  # = 1 / (1 + e^-z), without overflow for large |z|
    if name == "linear":
        return z
    raise ValueError(f"unknown activation {name!r}")


def activation_grad(z: np.ndarray, y: np.ndarray, name: str, slope: float, rules: Rules = CANONICAL) -> np.ndarray:
    """d act(z) / dz, from the pre-activation z or the output y, whichever the formula needs.

    At z == 0 relu's derivative is 0 (every framework agrees) and leaky relu's follows ``rules``.
    """
    if name == "relu":
        return (z > 0).astype(z.dtype)
    if name == "leaky_relu":
        positive = z >= 0 if rules.leaky_relu_grad_at_zero == "one" else z > 0
        return np.where(positive, 1.0, slope)
    if name == "tanh":
        return 1.0 - y**2
    if name == "sigmoid":
        return y * (1.0 - y)
    if name == "linear":
        return np.ones_like(z)
    raise ValueError(f"unknown activation {name!r}")


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


def draw_dropout_masks(model: ModelSpec, input_shape: tuple[int, ...], num_classes: int, n: int, rng: np.random.Generator) -> dict[int, np.ndarray]:
    """Keep-masks (True = kept) for every Dropout layer of a batch of n, drawn from ``rng``."""
    shapes = layer_shapes(model, input_shape, num_classes)
    return {
        i: rng.random((n, *shapes[i])) >= layer.rate
        for i, layer in enumerate(model.layers)
        if isinstance(layer, Dropout) and layer.rate > 0
    }


# -- losses ----------------------------------------------------------------------------------------
def loss_gradient(logits: np.ndarray, labels: np.ndarray, loss: str) -> np.ndarray:
    """dL/dlogits for the losses exactly as ``backends.base.numpy_loss`` defines them (means included)."""
    z = logits.astype(np.float64)
    n, k = z.shape
    onehot = np.eye(k)[labels]
    if loss == "cce":
        return (probabilities(z, "cce") - onehot) / n
    if loss in ("mse", "mae"):
        p = probabilities(z, "cce")
        dp = (2 * (p - onehot) if loss == "mse" else np.sign(p - onehot)) / (n * k)
        return p * (dp - (dp * p).sum(axis=1, keepdims=True))  # softmax Jacobian: dp_i/dz_j = p_i (delta_ij - p_j)
    if loss == "bce":
        return (probabilities(z, "bce") - onehot) / (n * k)
    if loss == "hinge":
        t = 2 * onehot - 1
        return -t * (1 - t * z > 0) / (n * k)
    raise ValueError(f"unknown loss {loss!r}")


# -- the network -----------------------------------------------------------------------------------
@dataclass
class ForwardPass:
    """Logits and what each layer kept for the backward pass."""

    logits: np.ndarray
    caches: list[tuple] = field(default_factory=list)


class Network:
    """A model's parameters (canonical order, float64) and its forward and backward passes.

    A model with the ``hidden`` placeholder is resolved with the TrainSpec's activation.
    """

    def __init__(self, model: ModelSpec, train: TrainSpec, input_shape: tuple[int, ...], num_classes: int, rules: Rules = CANONICAL):
        if any(getattr(layer, "activation", None) == HIDDEN for layer in model.layers):
            model = model.resolve(train.activation)
        self.model, self.train, self.rules = model, train, rules
        self.input_shape, self.num_classes = tuple(input_shape), num_classes
        self.specs: list[ParamSpec] = param_specs(model, self.input_shape, num_classes)
        self.index = {(p.layer, p.name): i for i, p in enumerate(self.specs)}
        self.trainable = [i for i, p in enumerate(self.specs) if p.trainable]
        self.params: list[np.ndarray] = [np.zeros(p.shape) for p in self.specs]

    def set_weights(self, weights: list[np.ndarray]) -> None:
        if len(weights) != len(self.specs):
            raise ValueError(f"expected {len(self.specs)} arrays, got {len(weights)}")
        for spec, w in zip(self.specs, weights, strict=True):
            if tuple(w.shape) != spec.shape:
                raise ValueError(f"parameter {spec.key} has shape {spec.shape}, got {tuple(w.shape)}")
        self.params = [np.array(w, dtype=np.float64) for w in weights]

    def _p(self, layer: int, name: str) -> np.ndarray:
        return self.params[self.index[(layer, name)]]

    def forward(self, x: np.ndarray, training: bool, masks: dict[int, np.ndarray] | None = None) -> ForwardPass:
        """Logits of a batch. Training mode normalises with batch statistics and applies dropout masks."""
        slope, eps = self.train.leaky_relu_slope, self.train.bn_epsilon
        a = np.asarray(x, dtype=np.float64)
        out = ForwardPass(a)
        for i, layer in enumerate(self.model.layers):
            x_in = a
            if isinstance(layer, Flatten):
                a, cache = a.reshape(len(a), -1), (x_in.shape,)
            elif isinstance(layer, Dense):
                z = dense_forward(a, self._p(i, "kernel"), self._p(i, "bias"))
                a = activate(z, layer.activation, slope)
                cache = (x_in, z, a)
            elif isinstance(layer, Conv2D):
                z, cols = conv2d_forward(a, self._p(i, "kernel"), self._p(i, "bias"), layer.stride, layer.padding)
                a = activate(z, layer.activation, slope)
                cache = (x_in.shape, cols, z, a)
            elif isinstance(layer, MaxPool2D):
                a, argmax = maxpool_forward(a, layer.size)
                cache = (x_in.shape, argmax)
            elif isinstance(layer, AvgPool2D):
                a, cache = avgpool_forward(a, layer.size), (x_in.shape,)
            elif isinstance(layer, BatchNorm):
                gamma, beta = self._p(i, "gamma"), self._p(i, "beta")
                if training:
                    a, bn = batchnorm_train_forward(a, gamma, beta, eps)
                    cache = (bn,)
                else:
                    a = batchnorm_eval(a, gamma, beta, self._p(i, "moving_mean"), self._p(i, "moving_variance"), eps)
                    cache = ()
            elif isinstance(layer, Dropout):
                if training and layer.rate > 0:
                    if masks is None or i not in masks:
                        raise ValueError(f"training-mode Dropout at layer {i} needs a keep-mask (draw_dropout_masks)")
                    a = dropout_forward(a, masks[i], layer.rate)
                    cache = (masks[i],)
                else:
                    cache = ()
            elif isinstance(layer, Activation):
                a = activate(x_in, layer.activation, slope)
                cache = (x_in, a)
            else:
                raise TypeError(f"unsupported layer {layer.type}")
            out.caches.append(cache)
        out.logits = a
        return out

    def backward(self, fwd: ForwardPass, dlogits: np.ndarray) -> list[np.ndarray]:
        """Chain rule from dL/dlogits back through every layer; gradients of the trainable parameters."""
        slope = self.train.leaky_relu_slope
        grads: dict[int, np.ndarray] = {}
        d = dlogits
        for i in reversed(range(len(self.model.layers))):
            layer, cache = self.model.layers[i], fwd.caches[i]
            if isinstance(layer, (Flatten, AvgPool2D)):
                d = d.reshape(cache[0]) if isinstance(layer, Flatten) else avgpool_backward(cache[0], d, layer.size)
            elif isinstance(layer, Dense):
                x_in, z, a = cache
                dz = d * activation_grad(z, a, layer.activation, slope, self.rules)
                d, grads[self.index[(i, "kernel")]], grads[self.index[(i, "bias")]] = dense_backward(x_in, self._p(i, "kernel"), dz)
            elif isinstance(layer, Conv2D):
                x_shape, cols, z, a = cache
                dz = d * activation_grad(z, a, layer.activation, slope, self.rules)
                d, grads[self.index[(i, "kernel")]], grads[self.index[(i, "bias")]] = conv2d_backward(
                    x_shape, cols, self._p(i, "kernel"), dz, layer.stride, layer.padding
                )
            elif isinstance(layer, MaxPool2D):
                d = maxpool_backward(cache[0], cache[1], d, layer.size)
            elif isinstance(layer, BatchNorm):
                if not cache:
                    raise ValueError("backward through an eval-mode BatchNorm is not part of the spec")
                d, grads[self.index[(i, "gamma")]], grads[self.index[(i, "beta")]] = batchnorm_backward(d, self._p(i, "gamma"), cache[0])
            elif isinstance(layer, Dropout):
                if cache:
                    d = dropout_forward(d, cache[0], layer.rate)  # same mask, same scale
            elif isinstance(layer, Activation):
                x_in, a = cache
                d = d * activation_grad(x_in, a, layer.activation, slope, self.rules)
        return [grads[i] for i in self.trainable]

    def loss_and_gradients(self, x: np.ndarray, y: np.ndarray, masks: dict[int, np.ndarray] | None = None) -> tuple[float, list[np.ndarray], ForwardPass]:
        """Training-mode loss and trainable gradients; changes no state (the forward pass is returned)."""
        fwd = self.forward(x, training=True, masks=masks)
        loss = numpy_loss(fwd.logits, y, self.train.loss)
        return loss, self.backward(fwd, loss_gradient(fwd.logits, y, self.train.loss)), fwd

    def update_running_stats(self, fwd: ForwardPass) -> None:
        """Fold a training-mode forward pass's batch statistics into every BatchNorm's running ones."""
        for i, layer in enumerate(self.model.layers):
            if isinstance(layer, BatchNorm):
                mi, vi = self.index[(i, "moving_mean")], self.index[(i, "moving_variance")]
                self.params[mi], self.params[vi] = running_stats_update(
                    self.params[mi], self.params[vi], fwd.caches[i][0], self.train.bn_momentum, self.rules
                )


# -- optimizers ------------------------------------------------------------------------------------
class Optimizer:
    """SGD, momentum (torch form), RMSprop and Adam as ``TrainSpec`` and ``Rules`` define them."""

    def __init__(self, train: TrainSpec, rules: Rules = CANONICAL):
        self.train, self.rules = train, rules
        self.reset()

    def reset(self) -> None:
        self.t = 0
        self.first: dict[int, np.ndarray] = {}  # momentum buffer / Adam m
        self.second: dict[int, np.ndarray] = {}  # RMSprop / Adam v

    def step(self, params: list[np.ndarray], grads: list[np.ndarray], indices: list[int]) -> None:
        """Update ``params[indices[k]]`` in place with ``grads[k]``."""
        s, lr, eps = self.train, self.train.lr, self.train.epsilon
        self.t += 1
        for k, g in zip(indices, grads, strict=True):
            w = params[k]
            if s.weight_decay > 0:
                w -= lr * s.weight_decay * w  # decoupled: shrink the weight, not the gradient
            if s.optimizer == "sgd":
                w -= lr * g
            elif s.optimizer == "momentum":
                v = self.first[k] = s.momentum * self.first.get(k, 0.0) + g
                w -= lr * v
            elif s.optimizer == "rmsprop":
                v = self.second[k] = s.rho * self.second.get(k, 0.0) + (1 - s.rho) * g**2
                w -= lr * g / (np.sqrt(v + eps) if self.rules.rmsprop_eps == "inside_sqrt" else np.sqrt(v) + eps)
            elif s.optimizer == "adam":
                m = self.first[k] = s.beta1 * self.first.get(k, 0.0) + (1 - s.beta1) * g
                v = self.second[k] = s.beta2 * self.second.get(k, 0.0) + (1 - s.beta2) * g**2
                c1, c2 = 1 - s.beta1**self.t, 1 - s.beta2**self.t
                if self.rules.adam_eps == "uncorrected":
                    w -= lr * math.sqrt(c2) / c1 * m / (np.sqrt(v) + eps)
                else:
                    w -= lr * (m / c1) / (np.sqrt(v / c2) + eps)
            else:
                raise ValueError(f"unknown optimizer {s.optimizer!r}")


def train_step(net: Network, opt: Optimizer, x: np.ndarray, y: np.ndarray, masks: dict[int, np.ndarray] | None = None) -> float:
    """One training step: forward in training mode, running statistics, backward, optimizer update."""
    loss, grads, fwd = net.loss_and_gradients(x, y, masks)
    net.update_running_stats(fwd)
    opt.step(net.params, grads, net.trainable)
    return loss

"""The oracle's network: a model spec's forward and backward passes, one table entry per layer type.

A model with the ``hidden`` placeholder is resolved with the TrainSpec's activation. Parameters are
held in the canonical order of ``bench.spec.shapes.param_specs`` as float64.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from bench.errors import SpecError
from bench.reference import ops
from bench.spec.losses import loss_gradient, loss_value
from bench.spec.model import Dropout, ModelSpec
from bench.spec.rules import CANONICAL, Rules
from bench.spec.shapes import ParamSpec, layer_shapes, param_specs
from bench.spec.train import TrainSpec

Masks = dict[int, np.ndarray]


def draw_dropout_masks(model: ModelSpec, input_shape: tuple[int, ...], num_classes: int, n: int, rng: np.random.Generator) -> Masks:
    """Keep-masks (True = kept) for every Dropout layer of a batch of n, drawn from ``rng``."""
    shapes = layer_shapes(model, input_shape, num_classes)
    return {
        i: rng.random((n, *shapes[i])) >= layer.rate
        for i, layer in enumerate(model.layers)
        if isinstance(layer, Dropout) and layer.rate > 0
    }


@dataclass
class ForwardPass:
    """Logits and what each layer kept for the backward pass."""

    logits: np.ndarray
    caches: list[tuple] = field(default_factory=list)


# -- per layer type: forward(net, i, layer, a, training, masks) -> (a, cache) ----------------------
#                    backward(net, i, layer, cache, d, grads) -> d
def _dense_forward(net, i, layer, a, training, masks):
    z = ops.dense_forward(a, net.p(i, "kernel"), net.p(i, "bias"))
    out = ops.activate(z, layer.activation, net.slope)
    return out, (a, z, out)


def _dense_backward(net, i, layer, cache, d, grads):
    x_in, z, a = cache
    dz = d * ops.activation_grad(z, a, layer.activation, net.slope, net.rules)
    d, grads[(i, "kernel")], grads[(i, "bias")] = ops.dense_backward(x_in, net.p(i, "kernel"), dz)
    return d


def _conv_forward(net, i, layer, a, training, masks):
    z, cols = ops.conv2d_forward(a, net.p(i, "kernel"), net.p(i, "bias"), layer.stride, layer.padding)
    out = ops.activate(z, layer.activation, net.slope)
    return out, (a.shape, cols, z, out)


def _conv_backward(net, i, layer, cache, d, grads):
    x_shape, cols, z, a = cache
    dz = d * ops.activation_grad(z, a, layer.activation, net.slope, net.rules)
    d, grads[(i, "kernel")], grads[(i, "bias")] = ops.conv2d_backward(x_shape, cols, net.p(i, "kernel"), dz, layer.stride, layer.padding)
    return d


def _batchnorm_forward(net, i, layer, a, training, masks):
    gamma, beta, eps = net.p(i, "gamma"), net.p(i, "beta"), net.train.bn_epsilon
    if not training:
        return ops.batchnorm_eval(a, gamma, beta, net.p(i, "moving_mean"), net.p(i, "moving_variance"), eps), ()
    out, cache = ops.batchnorm_train_forward(a, gamma, beta, eps)
    return out, (cache,)


def _batchnorm_backward(net, i, layer, cache, d, grads):
    if not cache:
        raise ValueError("backward through an eval-mode BatchNorm is not part of the spec")
    d, grads[(i, "gamma")], grads[(i, "beta")] = ops.batchnorm_backward(d, net.p(i, "gamma"), cache[0])
    return d


def _dropout_forward(net, i, layer, a, training, masks):
    if not (training and layer.rate > 0):
        return a, ()
    if masks is None or i not in masks:
        raise ValueError(f"training-mode Dropout at layer {i} needs a keep-mask (draw_dropout_masks)")
    return ops.dropout_forward(a, masks[i], layer.rate), (masks[i],)


def _maxpool_forward(net, i, layer, a, training, masks):
    out, argmax = ops.maxpool_forward(a, layer.size)
    return out, (a.shape, argmax)


def _activation_forward(net, i, layer, a, training, masks):
    out = ops.activate(a, layer.activation, net.slope)
    return out, (a, out)


@dataclass(frozen=True)
class LayerMath:
    forward: Callable
    backward: Callable


LAYERS: dict[str, LayerMath] = {
    "Flatten": LayerMath(lambda net, i, layer, a, t, m: (a.reshape(len(a), -1), (a.shape,)),
                         lambda net, i, layer, cache, d, g: d.reshape(cache[0])),
    "Dense": LayerMath(_dense_forward, _dense_backward),
    "Conv2D": LayerMath(_conv_forward, _conv_backward),
    "MaxPool2D": LayerMath(_maxpool_forward, lambda net, i, layer, cache, d, g: ops.maxpool_backward(cache[0], cache[1], d, layer.size)),
    "AvgPool2D": LayerMath(lambda net, i, layer, a, t, m: (ops.avgpool_forward(a, layer.size), (a.shape,)),
                           lambda net, i, layer, cache, d, g: ops.avgpool_backward(cache[0], d, layer.size)),
    "BatchNorm": LayerMath(_batchnorm_forward, _batchnorm_backward),
    "Dropout": LayerMath(_dropout_forward,
                         lambda net, i, layer, cache, d, g: ops.dropout_forward(d, cache[0], layer.rate) if cache else d),
    "Activation": LayerMath(_activation_forward,
                            lambda net, i, layer, cache, d, g: d * ops.activation_grad(cache[0], cache[1], layer.activation, net.slope, net.rules)),
}


class Network:
    """A model's parameters (canonical order, float64) and its forward and backward passes."""

    def __init__(self, model: ModelSpec, train: TrainSpec, input_shape: tuple[int, ...], num_classes: int, rules: Rules = CANONICAL):
        self.model, self.train, self.rules = model.resolve(train.activation), train, rules
        self.slope = train.leaky_relu_slope
        self.input_shape, self.num_classes = tuple(input_shape), num_classes
        self.specs: list[ParamSpec] = param_specs(self.model, self.input_shape, num_classes)
        unknown = [layer.type for layer in self.model.layers if layer.type not in LAYERS]
        if unknown:
            raise SpecError(f"the NumPy reference has no layer type {unknown[0]!r}; valid: {', '.join(LAYERS)}")
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

    def p(self, layer: int, name: str) -> np.ndarray:
        return self.params[self.index[(layer, name)]]

    def forward(self, x: np.ndarray, training: bool, masks: Masks | None = None) -> ForwardPass:
        """Logits of a batch. Training mode normalises with batch statistics and applies dropout masks."""
        a = np.asarray(x, dtype=np.float64)
        out = ForwardPass(a)
        for i, layer in enumerate(self.model.layers):
            a, cache = LAYERS[layer.type].forward(self, i, layer, a, training, masks)
            out.caches.append(cache)
        out.logits = a
        return out

    def backward(self, fwd: ForwardPass, dlogits: np.ndarray) -> list[np.ndarray]:
        """Chain rule from dL/dlogits back through every layer; gradients of the trainable parameters."""
        grads: dict[tuple[int, str], np.ndarray] = {}
        d = dlogits
        for i in reversed(range(len(self.model.layers))):
            layer = self.model.layers[i]
            d = LAYERS[layer.type].backward(self, i, layer, fwd.caches[i], d, grads)
        return [grads[(self.specs[i].layer, self.specs[i].name)] for i in self.trainable]

    def loss_and_gradients(self, x: np.ndarray, y: np.ndarray, masks: Masks | None = None) -> tuple[float, list[np.ndarray], ForwardPass]:
        """Training-mode loss and trainable gradients; changes no state (the forward pass is returned)."""
        fwd = self.forward(x, training=True, masks=masks)
        loss = loss_value(fwd.logits, y, self.train.loss)
        return loss, self.backward(fwd, loss_gradient(fwd.logits, y, self.train.loss)), fwd

    def update_running_stats(self, fwd: ForwardPass) -> None:
        """Fold a training-mode forward pass's batch statistics into every BatchNorm's running ones."""
        for i, layer in enumerate(self.model.layers):
            if layer.type == "BatchNorm":
                mi, vi = self.index[(i, "moving_mean")], self.index[(i, "moving_variance")]
                self.params[mi], self.params[vi] = ops.running_stats_update(
                    self.params[mi], self.params[vi], fwd.caches[i][0], self.train.bn_momentum, self.rules
                )

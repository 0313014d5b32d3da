"""The oracle's network: a model spec's forward and backward passes, one table entry per layer type.

A model with the ``hidden`` placeholder is resolved with the TrainSpec's activation. Parameters are
held in the canonical order of ``bench.spec.shapes.param_specs`` as float64, and every layer is
addressed by its ``ParamSpec.layer`` path ("3", "3.0", "3.projection"), so a container's layers
look up their parameters, caches and dropout masks like top-level ones.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from bench.errors import SpecError
from bench.reference import ops
from bench.spec.losses import loss_gradient, loss_value
from bench.spec.model import BatchNorm, Dropout, ModelSpec, walk
from bench.spec.rules import CANONICAL, Rules
from bench.spec.shapes import PROJECTION, ParamSpec, attention_scale, param_specs, path_shapes
from bench.spec.train import TrainSpec

Masks = dict[str, np.ndarray]


def draw_dropout_masks(model: ModelSpec, input_shape: tuple[int, ...], num_classes: int, n: int, rng: np.random.Generator) -> Masks:
    """Keep-masks (True = kept) for every Dropout layer of a batch of n, keyed by its path, drawn from ``rng``
    in the depth-first order of ``walk``."""
    shapes = path_shapes(model, input_shape, num_classes)
    return {
        path: rng.random((n, *shapes[path])) >= layer.rate
        for path, layer in walk(model.layers)
        if isinstance(layer, Dropout) and layer.rate > 0
    }


@dataclass
class ForwardPass:
    """Logits, the dropout masks applied, and what each layer (by path) kept for the backward pass."""

    logits: np.ndarray
    masks: Masks | None = None
    caches: dict[str, tuple] = field(default_factory=dict)


# -- per layer type: forward(net, path, layer, a, training, fwd) -> (a, cache) ---------------------
#                    backward(net, path, layer, cache, d, grads) -> d
def _dense_forward(net, path, layer, a, training, fwd):
    z = ops.dense_forward(a, net.p(path, "kernel"), net.p(path, "bias"))
    out = ops.activate(z, layer.activation, net.slope)
    return out, (a, z, out)


def _dense_backward(net, path, layer, cache, d, grads):
    x_in, z, a = cache
    dz = d * ops.activation_grad(z, a, layer.activation, net.slope, net.rules)
    d, grads[(path, "kernel")], grads[(path, "bias")] = ops.dense_backward(x_in, net.p(path, "kernel"), dz)
    return d


def _conv_forward(net, path, layer, a, training, fwd):
    z, cols = ops.conv2d_forward(a, net.p(path, "kernel"), net.p(path, "bias"), layer.stride, layer.padding)
    out = ops.activate(z, layer.activation, net.slope)
    return out, (a.shape, cols, z, out)


def _conv_backward(net, path, layer, cache, d, grads):
    x_shape, cols, z, a = cache
    dz = d * ops.activation_grad(z, a, layer.activation, net.slope, net.rules)
    d, grads[(path, "kernel")], grads[(path, "bias")] = ops.conv2d_backward(
        x_shape, cols, net.p(path, "kernel"), dz, layer.stride, layer.padding)
    return d


def _batchnorm_forward(net, path, layer, a, training, fwd):
    gamma, beta, eps = net.p(path, "gamma"), net.p(path, "beta"), net.train.bn_epsilon
    if not training:
        return ops.batchnorm_eval(a, gamma, beta, net.p(path, "moving_mean"), net.p(path, "moving_variance"), eps), ()
    out, cache = ops.batchnorm_train_forward(a, gamma, beta, eps)
    return out, (cache,)


def _batchnorm_backward(net, path, layer, cache, d, grads):
    if not cache:
        raise ValueError("backward through an eval-mode BatchNorm is not part of the spec")
    d, grads[(path, "gamma")], grads[(path, "beta")] = ops.batchnorm_backward(d, net.p(path, "gamma"), cache[0])
    return d


def _dropout_forward(net, path, layer, a, training, fwd):
    if not (training and layer.rate > 0):
        return a, ()
    if fwd.masks is None or path not in fwd.masks:
        raise ValueError(f"training-mode Dropout at layer {path} needs a keep-mask (draw_dropout_masks)")
    return ops.dropout_forward(a, fwd.masks[path], layer.rate), (fwd.masks[path],)


def _maxpool_forward(net, path, layer, a, training, fwd):
    out, argmax = ops.maxpool_forward(a, layer.size)
    return out, (a.shape, argmax)


def _activation_forward(net, path, layer, a, training, fwd):
    out = ops.activate(a, layer.activation, net.slope)
    return out, (a, out)


def _layernorm_forward(net, path, layer, a, training, fwd):
    gamma, beta = (net.p(path, "gamma"), net.p(path, "beta")) if layer.affine else (None, None)
    return ops.layernorm_forward(a, gamma, beta, layer.epsilon)


def _layernorm_backward(net, path, layer, cache, d, grads):
    dx, dgamma, dbeta = ops.layernorm_backward(d, net.p(path, "gamma") if layer.affine else None, cache)
    if layer.affine:
        grads[(path, "gamma")], grads[(path, "beta")] = dgamma, dbeta
    return dx


def _patch_forward(net, path, layer, a, training, fwd):
    z, cols = ops.conv2d_forward(a, net.p(path, "kernel"), net.p(path, "bias"), layer.patch, "valid")
    return z.reshape(len(z), -1, z.shape[-1]), (a.shape, cols, z.shape)


def _patch_backward(net, path, layer, cache, d, grads):
    x_shape, cols, z_shape = cache
    d, grads[(path, "kernel")], grads[(path, "bias")] = ops.conv2d_backward(
        x_shape, cols, net.p(path, "kernel"), d.reshape(z_shape), layer.patch, "valid")
    return d


def _position_backward(net, path, layer, cache, d, grads):
    grads[(path, "embedding")] = d.sum(axis=0)
    return d


def _attention_weights(net, path) -> dict[str, np.ndarray]:
    return {name: net.p(path, name) for name in ("query_kernel", "query_bias", "key_kernel", "key_bias",
                                                  "value_kernel", "value_bias", "output_kernel", "output_bias")}


def _attention_forward(net, path, layer, a, training, fwd):
    return ops.attention_forward(a, _attention_weights(net, path), layer.heads, attention_scale(a.shape[-1], layer.heads))


def _attention_backward(net, path, layer, cache, d, grads):
    dx, dweights = ops.attention_backward(d, _attention_weights(net, path), cache)
    for name, g in dweights.items():
        grads[(path, name)] = g
    return dx


def _residual_forward(net, path, layer, a, training, fwd):
    """act(f(x) + skip(x)); f runs through the table like any stack, its caches under its own paths."""
    fx = net.forward_stack(layer.layers, f"{path}.", a, training, fwd)
    at = f"{path}.{PROJECTION}"
    if layer.projection == "conv":
        skip, cols = ops.conv2d_forward(a, net.p(at, "kernel"), net.p(at, "bias"), layer.stride, "valid")
    elif layer.projection == "dense":
        skip, cols = ops.dense_forward(a, net.p(at, "kernel"), net.p(at, "bias")), None
    else:
        skip, cols = a, None
    z = fx + skip
    out = ops.activate(z, layer.activation, net.slope)
    return out, (fwd, a, cols, z, out)


def _residual_backward(net, path, layer, cache, d, grads):
    """The sum sends dL/dz down both paths; x's gradient is f's plus the skip path's."""
    fwd, x, cols, z, out = cache
    dz = d * ops.activation_grad(z, out, layer.activation, net.slope, net.rules)
    dx = net.backward_stack(layer.layers, f"{path}.", dz, grads, fwd)
    at = f"{path}.{PROJECTION}"
    if layer.projection == "conv":
        dskip, grads[(at, "kernel")], grads[(at, "bias")] = ops.conv2d_backward(
            x.shape, cols, net.p(at, "kernel"), dz, layer.stride, "valid")
    elif layer.projection == "dense":
        dskip, grads[(at, "kernel")], grads[(at, "bias")] = ops.dense_backward(x, net.p(at, "kernel"), dz)
    else:
        dskip = dz
    return dx + dskip


@dataclass(frozen=True)
class LayerMath:
    forward: Callable
    backward: Callable


LAYERS: dict[str, LayerMath] = {
    "Flatten": LayerMath(lambda net, path, layer, a, t, f: (a.reshape(len(a), -1), (a.shape,)),
                         lambda net, path, layer, cache, d, g: d.reshape(cache[0])),
    "Dense": LayerMath(_dense_forward, _dense_backward),
    "Conv2D": LayerMath(_conv_forward, _conv_backward),
    "MaxPool2D": LayerMath(_maxpool_forward, lambda net, path, layer, cache, d, g: ops.maxpool_backward(cache[0], cache[1], d, layer.size)),
    "AvgPool2D": LayerMath(lambda net, path, layer, a, t, f: (ops.avgpool_forward(a, layer.size), (a.shape,)),
                           lambda net, path, layer, cache, d, g: ops.avgpool_backward(cache[0], d, layer.size)),
    "BatchNorm": LayerMath(_batchnorm_forward, _batchnorm_backward),
    "Dropout": LayerMath(_dropout_forward,
                         lambda net, path, layer, cache, d, g: ops.dropout_forward(d, cache[0], layer.rate) if cache else d),
    "Activation": LayerMath(_activation_forward,
                            lambda net, path, layer, cache, d, g: d * ops.activation_grad(cache[0], cache[1], layer.activation, net.slope, net.rules)),
    "LayerNorm": LayerMath(_layernorm_forward, _layernorm_backward),
    "GELU": LayerMath(lambda net, path, layer, a, t, f: (ops.gelu(a, layer.approximate), (a,)),
                      lambda net, path, layer, cache, d, g: d * ops.gelu_grad(cache[0], layer.approximate)),
    "GlobalAvgPool": LayerMath(lambda net, path, layer, a, t, f: (ops.global_avgpool_forward(a), (a.shape,)),
                               lambda net, path, layer, cache, d, g: ops.global_avgpool_backward(cache[0], d)),
    "PatchEmbed": LayerMath(_patch_forward, _patch_backward),
    "PositionEmbedding": LayerMath(lambda net, path, layer, a, t, f: (a + net.p(path, "embedding"), ()), _position_backward),
    "SelfAttention": LayerMath(_attention_forward, _attention_backward),
    "Residual": LayerMath(_residual_forward, _residual_backward),
}


class Network:
    """A model's parameters (canonical order, float64) and its forward and backward passes."""

    def __init__(self, model: ModelSpec, train: TrainSpec, input_shape: tuple[int, ...], num_classes: int, rules: Rules = CANONICAL):
        self.model, self.train, self.rules = model.resolve(train.activation), train, rules
        self.slope = train.leaky_relu_slope
        self.input_shape, self.num_classes = tuple(input_shape), num_classes
        self.specs: list[ParamSpec] = param_specs(self.model, self.input_shape, num_classes)
        unknown = [layer.type for _, layer in walk(self.model.layers) if layer.type not in LAYERS]
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

    def p(self, path: str, name: str) -> np.ndarray:
        return self.params[self.index[(path, name)]]

    def forward(self, x: np.ndarray, training: bool, masks: Masks | None = None) -> ForwardPass:
        """Logits of a batch. Training mode normalises with batch statistics and applies dropout masks."""
        out = ForwardPass(np.asarray(x, dtype=np.float64), masks)
        out.logits = self.forward_stack(self.model.layers, "", out.logits, training, out)
        return out

    def forward_stack(self, layers, prefix: str, a: np.ndarray, training: bool, fwd: ForwardPass) -> np.ndarray:
        """A list of layers (the model's, or a container's at ``prefix``) in order; caches kept in ``fwd``."""
        for j, layer in enumerate(layers):
            a, fwd.caches[f"{prefix}{j}"] = LAYERS[layer.type].forward(self, f"{prefix}{j}", layer, a, training, fwd)
        return a

    def backward(self, fwd: ForwardPass, dlogits: np.ndarray) -> list[np.ndarray]:
        """Chain rule from dL/dlogits back through every layer; gradients of the trainable parameters."""
        grads: dict[tuple[str, str], np.ndarray] = {}
        self.backward_stack(self.model.layers, "", dlogits, grads, fwd)
        return [grads[(self.specs[i].layer, self.specs[i].name)] for i in self.trainable]

    def backward_stack(self, layers, prefix: str, d: np.ndarray, grads: dict, fwd: ForwardPass) -> np.ndarray:
        for j in reversed(range(len(layers))):
            path = f"{prefix}{j}"
            d = LAYERS[layers[j].type].backward(self, path, layers[j], fwd.caches[path], d, grads)
        return d

    def loss_and_gradients(self, x: np.ndarray, y: np.ndarray, masks: Masks | None = None) -> tuple[float, list[np.ndarray], ForwardPass]:
        """Training-mode loss and trainable gradients; changes no state (the forward pass is returned)."""
        fwd = self.forward(x, training=True, masks=masks)
        loss = loss_value(fwd.logits, y, self.train.loss)
        return loss, self.backward(fwd, loss_gradient(fwd.logits, y, self.train.loss)), fwd

    def update_running_stats(self, fwd: ForwardPass) -> None:
        """Fold a training-mode forward pass's batch statistics into every BatchNorm's running ones,
        those inside containers included."""
        for path, layer in walk(self.model.layers):
            if isinstance(layer, BatchNorm):
                mi, vi = self.index[(path, "moving_mean")], self.index[(path, "moving_variance")]
                self.params[mi], self.params[vi] = ops.running_stats_update(
                    self.params[mi], self.params[vi], fwd.caches[path][0], self.train.bn_momentum, self.rules
                )

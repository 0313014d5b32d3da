"""The spec's layers as Flax Linen modules, and where each canonical array lives in Flax's pytrees.

The JAX adapter's translation tables for layers and activations (``LAYERS``, ``ACTIVATIONS``) and
its parameter map (``LEAVES``) live here, apart from the adapter's training and measuring code in
backends/jax_backend.py. Each spec layer becomes the Linen layer a Flax user would write (``nn.Dense``,
``nn.Conv``, ``nn.BatchNorm``, ``nn.LayerNorm``, ``nn.gelu``, ``nn.MultiHeadDotProductAttention``),
with every default that frameworks disagree on passed explicitly (docs/architecture.md, "Framework
rules"): LayerNorm epsilon and two-pass variance, the GELU approximation, the attention scaling.

Every layer's module is named by its spec path (``layer_scope``: "layer_3", "layer_3.1",
"layer_3.projection"), all in SpecNet's own scope, so a Residual's layers and projection are
addressed exactly as ``bench.spec.shapes.ParamSpec.layer`` names them (docs/architecture.md,
"Parameter layout"). Flax keeps Dense (in, out) and HWIO kernels as the canonical layout does; only
attention's ``DenseGeneral`` kernels differ, by a reshape that splits the heads-major feature axis
into (heads, head_dim): ``Leaf.native_shape``.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

from bench.spec.shapes import PROJECTION, Shape, attention_scale, same_padding


def layer_scope(path: str) -> str:
    """Linen scope name of the spec layer at ``path`` (``ParamSpec.layer``): the bridge between the spec and the pytrees."""
    return f"layer_{path}"


# -- where each canonical array lives ----------------------------------------------------------------
def _same(shape: Shape, layer: Any) -> Shape:
    return shape


def _heads_out(shape: Shape, layer: Any) -> Shape:
    """q/k/v kernel (D, D) -> DenseGeneral's (D, heads, d): output columns are heads-major."""
    return (shape[0], layer.heads, shape[1] // layer.heads)


def _heads_bias(shape: Shape, layer: Any) -> Shape:
    return (layer.heads, shape[0] // layer.heads)


def _heads_in(shape: Shape, layer: Any) -> Shape:
    """Output kernel (D, D) -> (heads, d, D): its input rows are the heads' outputs, heads-major."""
    return (layer.heads, shape[0] // layer.heads, shape[1])


@dataclass(frozen=True)
class Leaf:
    """Where a canonical array sits in Flax's variables: its collection, the keys below the layer's
    scope, and its Flax shape from the canonical one (a reshape, never a transpose)."""

    collection: str
    keys: tuple[str, ...]
    native_shape: Callable[[Shape, Any], Shape] = _same


LEAVES: dict[str, Leaf] = {
    "kernel": Leaf("params", ("kernel",)),
    "bias": Leaf("params", ("bias",)),
    "gamma": Leaf("params", ("scale",)),  # BatchNorm and LayerNorm alike
    "beta": Leaf("params", ("bias",)),
    "moving_mean": Leaf("batch_stats", ("mean",)),
    "moving_variance": Leaf("batch_stats", ("var",)),
    "embedding": Leaf("params", ("embedding",)),
    **{f"{p}_kernel": Leaf("params", (p, "kernel"), _heads_out) for p in ("query", "key", "value")},
    **{f"{p}_bias": Leaf("params", (p, "bias"), _heads_bias) for p in ("query", "key", "value")},
    "output_kernel": Leaf("params", ("out", "kernel"), _heads_in),
    "output_bias": Leaf("params", ("out", "bias")),
}
"""Canonical parameter name -> its Flax leaf (``bench.spec.shapes.ATTENTION_LAYOUT`` for attention's)."""


# -- activations --------------------------------------------------------------------------------------
ACTIVATIONS: dict[str, Callable[[jax.Array, float], jax.Array]] = {
    "relu": lambda x, slope: nn.relu(x),
    "leaky_relu": lambda x, slope: nn.leaky_relu(x, negative_slope=slope),
    "tanh": lambda x, slope: jnp.tanh(x),
    "sigmoid": lambda x, slope: nn.sigmoid(x),
    "linear": lambda x, slope: x,
}
GELU_APPROXIMATE = {"tanh": True, "exact": False}
"""The spec's GELU names as ``nn.gelu``'s flag, always passed: Flax defaults to tanh, torch and Keras to exact."""


def _activate(net: SpecNet, name: str, x: jax.Array) -> jax.Array:
    return ACTIVATIONS[name](x, net.leaky_slope)


# -- layers: (SpecNet, spec layer, path, x, training) -> x --------------------------------------------
def _dense(net: SpecNet, layer, path: str, x: jax.Array, training: bool) -> jax.Array:
    """On the last axis, so on (tokens, dim) too."""
    x = nn.Dense(layer.units, dtype=net.dtype, precision=net.precision, name=layer_scope(path))(x)
    return _activate(net, layer.activation, x)


def _conv(net: SpecNet, layer, path: str, x: jax.Array, training: bool) -> jax.Array:
    # TF 'same': the extra pixel goes after, spelled out
    padding: Any = [same_padding(s, layer.kernel, layer.stride) for s in x.shape[1:3]] if layer.padding == "same" else "VALID"
    x = nn.Conv(layer.filters, (layer.kernel, layer.kernel), strides=(layer.stride, layer.stride), padding=padding,
                dtype=net.dtype, precision=net.precision, name=layer_scope(path))(x)
    return _activate(net, layer.activation, x)


def _pool(pool: Callable) -> Callable:
    return lambda net, layer, path, x, training: pool(x, (layer.size,) * 2, strides=(layer.size,) * 2, padding="VALID")


def _batchnorm(net: SpecNet, layer, path: str, x: jax.Array, training: bool) -> jax.Array:
    return nn.BatchNorm(use_running_average=not training, momentum=net.bn_momentum, epsilon=net.bn_epsilon, dtype=net.dtype,
                        use_fast_variance=False,  # two-pass biased variance, as Keras and the reference
                        name=layer_scope(path))(x)


def _layernorm(net: SpecNet, layer, path: str, x: jax.Array, training: bool) -> jax.Array:
    return nn.LayerNorm(epsilon=layer.epsilon, use_scale=layer.affine, use_bias=layer.affine, reduction_axes=-1, feature_axes=-1,
                        use_fast_variance=False,  # two-pass variance, as the reference (Flax defaults to E[x^2] - E[x]^2)
                        dtype=net.dtype, name=layer_scope(path))(x)


def _patch_embed(net: SpecNet, layer, path: str, x: jax.Array, training: bool) -> jax.Array:
    """A valid conv with kernel = stride = patch, its (H/p, W/p) grid read row-major into tokens."""
    p = layer.patch
    x = nn.Conv(layer.dim, (p, p), strides=(p, p), padding="VALID", dtype=net.dtype, precision=net.precision,
                name=layer_scope(path))(x)
    return x.reshape(x.shape[0], -1, layer.dim)


class AddPositionEmbs(nn.Module):
    """A learned (tokens, dim) array added to every sequence, as Flax's ViT writes it (``AddPositionEmbs``
    in google-research/vision_transformer, drawn normal(0, 0.02) when Flax initialises it)."""

    dtype: Any

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        embedding = self.param("embedding", nn.initializers.normal(stddev=0.02), x.shape[-2:])
        return x + embedding.astype(self.dtype)


def scaled_dot_product(query: jax.Array, key: jax.Array, value: jax.Array, precision: lax.Precision | None = None, *,
                       scale: float) -> jax.Array:
    """The attention core Flax's ``MultiHeadDotProductAttention`` calls (its ``attention_fn``): JAX's own
    ``jax.nn.dot_product_attention`` with the scaling passed, softmax(q kᵀ · scale) v, the softmax in fp32.

    Flax's default core fixes the scale at 1/sqrt(head_dim) internally; passing it makes the spec's
    scaling (``bench.spec.shapes.attention_scale``) the one that runs. The module's matmul precision
    (``precision``, which Flax hands every attention_fn that takes it) holds for the two einsums too.
    """
    context = jax.default_matmul_precision(precision.name.lower()) if precision is not None else contextlib.nullcontext()
    with context:
        return jax.nn.dot_product_attention(query, key, value, scale=scale)


def _attention(net: SpecNet, layer, path: str, x: jax.Array, training: bool) -> jax.Array:
    dim = x.shape[-1]
    return nn.MultiHeadDotProductAttention(
        num_heads=layer.heads, qkv_features=dim, out_features=dim, use_bias=True, dropout_rate=0.0, deterministic=True,
        normalize_qk=False, dtype=net.dtype, precision=net.precision,
        attention_fn=functools.partial(scaled_dot_product, scale=attention_scale(dim, layer.heads)), name=layer_scope(path),
    )(x)


PROJECTIONS: dict[str, Callable[..., jax.Array]] = {
    "none": lambda net, layer, path, x, channels: x,
    "conv": lambda net, layer, path, x, channels: nn.Conv(
        channels, (1, 1), strides=(layer.stride, layer.stride), padding="VALID", dtype=net.dtype, precision=net.precision,
        name=layer_scope(path))(x),
    "dense": lambda net, layer, path, x, channels: nn.Dense(channels, dtype=net.dtype, precision=net.precision,
                                                            name=layer_scope(path))(x),
}
"""A Residual's skip path, by ``projection``: x itself, a strided 1x1 conv, or a Dense on the last axis."""


def _residual(net: SpecNet, layer, path: str, x: jax.Array, training: bool) -> jax.Array:
    """activation(f(x) + skip(x)); f's layers are named under the Residual's path, BatchNorm statistics included."""
    fx = net.stack(layer.layers, f"{path}.", x, training)
    skip = PROJECTIONS[layer.projection](net, layer, f"{path}.{PROJECTION}", x, fx.shape[-1])
    return _activate(net, layer.activation, fx + skip)


LAYERS: dict[str, Callable[..., jax.Array]] = {
    "Flatten": lambda net, layer, path, x, training: x.reshape(x.shape[0], -1),  # NHWC flattens in H, W, C order
    "Dense": _dense,
    "Conv2D": _conv,
    "MaxPool2D": _pool(nn.max_pool),
    "AvgPool2D": _pool(nn.avg_pool),
    "BatchNorm": _batchnorm,
    "Dropout": lambda net, layer, path, x, training: nn.Dropout(layer.rate, deterministic=not training, name=layer_scope(path))(x),
    "Activation": lambda net, layer, path, x, training: _activate(net, layer.activation, x),
    "LayerNorm": _layernorm,
    "GELU": lambda net, layer, path, x, training: nn.gelu(x, approximate=GELU_APPROXIMATE[layer.approximate]),
    "GlobalAvgPool": lambda net, layer, path, x, training: jnp.mean(x, axis=tuple(range(1, x.ndim - 1))),
    "PatchEmbed": _patch_embed,
    "PositionEmbedding": lambda net, layer, path, x, training: AddPositionEmbs(dtype=net.dtype, name=layer_scope(path))(x),
    "SelfAttention": _attention,
    "Residual": _residual,
}
"""The JAX adapter's layer translations (``JaxBackend.TRANSLATIONS["layer"]``)."""


class SpecNet(nn.Module):
    """A resolved ModelSpec as one Linen module; every framework default is overridden explicitly."""

    layers: tuple[Any, ...]
    leaky_slope: float
    bn_momentum: float  # Keras sense (weight of the old statistic), which is Flax's sense too
    bn_epsilon: float
    dtype: Any  # compute dtype: float32, or bfloat16 with float32 parameters
    precision: lax.Precision

    @nn.compact
    def __call__(self, x: jax.Array, training: bool) -> jax.Array:
        x = self.stack(self.layers, "", x.astype(self.dtype), training)
        return x.astype(jnp.float32)  # logits and loss always in fp32

    def stack(self, layers: tuple[Any, ...], prefix: str, x: jax.Array, training: bool) -> jax.Array:
        """The layers in order, layer j named by path ``prefix + j``: the model's (prefix "") or a Residual's."""
        for j, layer in enumerate(layers):
            x = LAYERS[layer.type](self, layer, f"{prefix}{j}", x, training)
        return x

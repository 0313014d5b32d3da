"""The spec's layers as a Keras functional graph, and where each canonical array lives in it.

Shared by the three Keras engines through ``keras_base`` (docs/architecture.md, "Keras engines"):
import it only after ``keras_engine.start``. A model is built the way a Keras user writes a ResNet or
a ViT, with the functional API, because a residual block adds two branches and attention takes its
input twice (``mha(x, x)``), which ``keras.Sequential`` cannot express. Each spec layer type is one
row of ``LAYERS``: ``(spec layer, path, input tensor, graph) -> output tensor``, registering in
``graph.holders[path]`` the Keras layer that holds its parameters. Containers recurse through the
same table (``Graph.stack``), so a BatchNorm inside a ``Residual`` is the Keras BatchNormalization it
is at the top level, its statistics updated and read back alike.

Keras' own layers wherever Keras has one (``LayerNormalization``, ``MultiHeadAttention``,
``GlobalAveragePooling1D/2D``, ``Conv2D`` + ``Reshape`` for patches, ``Add``), every default passed
explicitly; Keras has no GELU layer with a named approximation and no position embedding outside
keras_hub, so those two are small registered layers here (saved in ``.keras`` files by name).

Canonical layouts (docs/architecture.md, "Parameter layout"): every Keras array is the canonical
array reshaped, nothing transposed. ``MultiHeadAttention`` holds its q/k/v kernels as ``EinsumDense``
(D, heads, d) and biases (heads, d), its output kernel (heads, d, D): ``ATTENTION_LAYOUT``'s
heads-major (D, D) arrays reshaped. ``variable`` finds the array, the weight loading reshapes.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from functools import reduce
from typing import Any

import keras
import numpy as np
from keras import ops

from bench.spec.shapes import ATTENTION_LAYOUT, PROJECTION, attention_scale
from bench.spec.train import TrainSpec

SAVED_PACKAGE = "bench"
"""The package name the custom layers are registered under in ``.keras`` files."""


@keras.saving.register_keras_serializable(package=SAVED_PACKAGE)
class GELU(keras.layers.Layer):
    """``keras.activations.gelu`` with its approximation always given (Keras' ``"gelu"`` string means exact)."""

    def __init__(self, approximate: bool, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.approximate = approximate

    def call(self, x: Any) -> Any:
        return keras.activations.gelu(x, approximate=self.approximate)

    def get_config(self) -> dict:
        return super().get_config() | {"approximate": self.approximate}


@keras.saving.register_keras_serializable(package=SAVED_PACKAGE)
class PositionEmbedding(keras.layers.Layer):
    """A learned (tokens, dim) ``embedding`` added to its input, as keras_hub's ``PositionEmbedding``
    (whose default initialiser, glorot_uniform, the native policy draws)."""

    def __init__(self, embedding_initializer: Any = "glorot_uniform", **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.embedding_initializer = keras.initializers.get(embedding_initializer)

    def build(self, input_shape: tuple) -> None:
        self.embedding = self.add_weight(name="embedding", shape=tuple(input_shape[1:]), initializer=self.embedding_initializer)

    def call(self, x: Any) -> Any:
        return x + ops.cast(self.embedding, x.dtype)

    def get_config(self) -> dict:
        return super().get_config() | {"embedding_initializer": keras.initializers.serialize(self.embedding_initializer)}


@dataclass
class Graph:
    """What the table rows build into: the functional graph's tensors flow through the rows, and each
    spec layer's parameter holder is recorded by its ``ParamSpec.layer`` path."""

    train: TrainSpec
    policy: str
    """The dtype policy every layer gets (``float32`` or ``mixed_bfloat16``)."""
    activate: Callable[[str], list[keras.layers.Layer]]
    """An activation name as Keras layers (the adapter's ``activation`` table)."""
    translate: Callable[[str], Callable]
    """A layer type's row (the adapter's ``layer`` table, so an unknown type is ``Untranslatable``)."""
    holders: dict[str, keras.layers.Layer] = field(default_factory=dict)

    def chain(self, x: Any, path: str | None, *layers: keras.layers.Layer) -> Any:
        """Apply ``layers`` in order; the first holds the parameters of the spec layer at ``path``."""
        if path is not None:
            self.holders[path] = layers[0]
        return reduce(lambda t, layer: layer(t), layers, x)

    def stack(self, layers: tuple, prefix: str, x: Any) -> Any:
        """The spec layers one after another, the j-th at path ``prefix + j``."""
        for j, layer in enumerate(layers):
            x = self.translate(layer.type)(layer, f"{prefix}{j}", x, self)
        return x


def _dropout(layer, path: str, x: Any, g: Graph) -> Any:
    # One seed per layer from (train seed, layer path): equal seeds would correlate the masks; a
    # top-level layer i keeps the seed (seed, i) it had before containers existed.
    seed = int(np.random.SeedSequence([g.train.seed, *map(int, path.split("."))]).generate_state(1)[0] >> 1)
    return g.chain(x, None, keras.layers.Dropout(layer.rate, seed=seed, dtype=g.policy))


def _layer_norm(layer, path: str, x: Any, g: Graph) -> Any:
    norm = keras.layers.LayerNormalization(axis=-1, epsilon=layer.epsilon, center=layer.affine, scale=layer.affine, rms_scaling=False, dtype=g.policy)
    return g.chain(x, path, norm)


POOLS = {3: keras.layers.GlobalAveragePooling2D, 2: keras.layers.GlobalAveragePooling1D}
"""GlobalAvgPool by the rank of one sample: an image (H, W, C) or a token sequence (T, D)."""


def _global_pool(layer, path: str, x: Any, g: Graph) -> Any:
    return g.chain(x, None, POOLS[len(x.shape) - 1](data_format="channels_last", keepdims=False, dtype=g.policy))


def _patch_embed(layer, path: str, x: Any, g: Graph) -> Any:
    """A valid conv with kernel = stride = patch, its (H/p, W/p, dim) output read row-major as tokens."""
    conv = keras.layers.Conv2D(layer.dim, layer.patch, strides=layer.patch, padding="valid", data_format="channels_last",
                               dtype=g.policy)
    return g.chain(x, path, conv, keras.layers.Reshape((-1, layer.dim), dtype=g.policy))


def _attention(layer, path: str, x: Any, g: Graph) -> Any:
    """Keras' MultiHeadAttention over x as query, key and value: key_dim = value_dim = D / heads, no dropout.

    Keras keeps its score scaling in ``_inverse_sqrt_key_dim`` (1/sqrt(key_dim), handed to
    ``ops.dot_product_attention`` as ``scale``); it is set from the spec's ``attention_scale`` so the
    scaling is the spec's, passed explicitly like every other default."""
    dim = x.shape[-1]
    mha = keras.layers.MultiHeadAttention(num_heads=layer.heads, key_dim=dim // layer.heads, value_dim=dim // layer.heads,
                                          dropout=0.0, use_bias=True, output_shape=None, attention_axes=None, dtype=g.policy)
    mha._inverse_sqrt_key_dim = attention_scale(dim, layer.heads)
    g.holders[path] = mha
    return mha(x, x)


def _no_projection(layer, path: str, x: Any, channels: int, g: Graph) -> Any:
    return x


PROJECTIONS: dict[str, Callable[[Any, str, Any, int, Graph], Any]] = {
    "none": _no_projection,
    "conv": lambda layer, path, x, channels, g: g.chain(
        x, path, keras.layers.Conv2D(channels, 1, strides=layer.stride, padding="valid", data_format="channels_last", dtype=g.policy)),
    "dense": lambda layer, path, x, channels, g: g.chain(x, path, keras.layers.Dense(channels, dtype=g.policy)),
}
"""A Residual's skip path to f(x)'s channels, by ``projection``; its holder at ``<path>.projection``."""


def _residual(layer, path: str, x: Any, g: Graph) -> Any:
    """activation(skip(x) + f(x)), f its layers at paths ``<path>.j``."""
    fx = g.stack(layer.layers, f"{path}.", x)
    skip = PROJECTIONS[layer.projection](layer, f"{path}.{PROJECTION}", x, fx.shape[-1], g)
    return g.chain([skip, fx], None, keras.layers.Add(dtype=g.policy), *g.activate(layer.activation))


Row = Callable[[Any, str, Any, Graph], Any]

LAYERS: dict[str, Row] = {
    "Flatten": lambda layer, path, x, g: g.chain(x, None, keras.layers.Flatten(dtype=g.policy)),
    "Dense": lambda layer, path, x, g: g.chain(x, path, keras.layers.Dense(layer.units, dtype=g.policy), *g.activate(layer.activation)),
    "Conv2D": lambda layer, path, x, g: g.chain(x, path, keras.layers.Conv2D(
        layer.filters, layer.kernel, strides=layer.stride, padding=layer.padding, data_format="channels_last", dtype=g.policy),
        *g.activate(layer.activation)),
    "MaxPool2D": lambda layer, path, x, g: g.chain(x, None, keras.layers.MaxPooling2D(
        layer.size, strides=layer.size, padding="valid", dtype=g.policy)),
    "AvgPool2D": lambda layer, path, x, g: g.chain(x, None, keras.layers.AveragePooling2D(
        layer.size, strides=layer.size, padding="valid", dtype=g.policy)),
    "BatchNorm": lambda layer, path, x, g: g.chain(x, path, keras.layers.BatchNormalization(
        momentum=g.train.bn_momentum, epsilon=g.train.bn_epsilon, dtype=g.policy)),
    "Dropout": _dropout,
    "Activation": lambda layer, path, x, g: g.chain(x, None, *g.activate(layer.activation)),
    "LayerNorm": _layer_norm,
    "GELU": lambda layer, path, x, g: g.chain(x, None, GELU(approximate=layer.approximate == "tanh", dtype=g.policy)),
    "GlobalAvgPool": _global_pool,
    "PatchEmbed": _patch_embed,
    "PositionEmbedding": lambda layer, path, x, g: g.chain(x, path, PositionEmbedding(dtype=g.policy)),
    "SelfAttention": _attention,
    "Residual": _residual,
}
"""Per spec layer type: (spec layer, path, input tensor, graph) -> output tensor."""

ROUTES: dict[str, tuple[str, ...]] = {name: (f"{name.rsplit('_', 1)[0]}_dense", name.rsplit("_", 1)[1]) for name in ATTENTION_LAYOUT}
"""Attribute paths from a holder to a canonical array where it is not an attribute of the holder
itself: ``query_kernel`` is ``MultiHeadAttention.query_dense.kernel``; every other name (``kernel``,
``gamma``, ``moving_mean``, ``embedding``) is the holder's attribute of that name."""


def variable(holder: keras.layers.Layer, name: str) -> keras.Variable:
    """The Keras variable holding the canonical array ``name`` of the spec layer held by ``holder``."""
    return reduce(getattr, ROUTES.get(name, (name,)), holder)


def initializer(holder: keras.layers.Layer, name: str) -> keras.initializers.Initializer:
    """The Keras layer's own initialiser of that array (``kernel_initializer`` of the layer owning it)."""
    *owner, role = ROUTES.get(name, (name,))
    return getattr(reduce(getattr, owner, holder), f"{role}_initializer")

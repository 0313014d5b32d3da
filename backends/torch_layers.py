"""The spec's layers as PyTorch modules, and where each canonical array lives in them.

The torch adapter's layer translation table (``LAYERS``, its ``TRANSLATIONS["layer"]``) and its
parameter layout (``TORCH_PARAM``). Each layer becomes the module a PyTorch user writes:
``nn.Linear``, ``nn.Conv2d``, ``nn.BatchNorm2d``, ``nn.LayerNorm``, ``nn.GELU``,
``nn.AdaptiveAvgPool2d``, a ``Conv2d`` patch embedding (torchvision's ``conv_proj``, timm's
``PatchEmbed``), ``nn.MultiheadAttention``'s parameters and ``F.scaled_dot_product_attention``.
Every default is passed explicitly: LayerNorm epsilon and affinity, GELU's approximation, the
attention scale (``bench.spec.shapes.attention_scale``), no attention dropout.

Activations are NCHW inside torch and tokens (n, T, D), so a last-axis layer on an image (LayerNorm,
a Dense projection) and BatchNorm on tokens (torch normalises dim 1) move the spec's channel axis
where torch wants it and back (``_Moved``). A ``Residual`` is a module of its own, nesting its layers
(docs/architecture.md, "Parameter layout": owners by path, "i.j", "i.projection").
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from bench.spec.shapes import PROJECTION, Shape, attention_scale, inner_shapes, same_padding
from bench.spec.train import TrainSpec


class _FlattenHWC(nn.Module):
    """Flatten an NCHW tensor in the canonical H, W, C order (a Keras/JAX-compatible flatten)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 4:
            x = x.permute(0, 2, 3, 1)
        return x.reshape(x.shape[0], -1)


class _Moved(nn.Module):
    """``module`` applied with the axis ``source`` moved to ``destination``, then moved back: the spec's
    channels are the last axis, torch's images keep them at dim 1 and its BatchNorm normalises dim 1."""

    def __init__(self, module: nn.Module, source: int, destination: int) -> None:
        super().__init__()
        self.module, self.source, self.destination = module, source, destination

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.module(x.movedim(self.source, self.destination)).movedim(self.destination, self.source)


class _Residual(nn.Module):
    """``activation(body(x) + projection(x))``, torchvision's ``BasicBlock`` and a pre-norm transformer
    block's skip connection alike."""

    def __init__(self, body: nn.Sequential, projection: nn.Module, activation: nn.Module) -> None:
        super().__init__()
        self.body, self.projection, self.activation = body, projection, activation

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.activation(self.body(x) + self.projection(x))


class _PatchEmbed(nn.Module):
    """A Conv2d with kernel = stride = patch, its (n, dim, h, w) output as (n, h*w, dim) tokens in
    row-major patch order (timm's ``PatchEmbed``, torchvision ViT's ``conv_proj``)."""

    def __init__(self, conv: nn.Conv2d) -> None:
        super().__init__()
        self.proj = conv

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)


class _PositionEmbedding(nn.Module):
    """A learned (tokens, dim) array added to every sequence; drawn as torchvision's ViT draws its own."""

    def __init__(self, tokens: int, dim: int) -> None:
        super().__init__()
        self.embedding = nn.Parameter(torch.empty(tokens, dim))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.normal_(self.embedding, std=0.02)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.embedding


class _TokenMean(nn.Module):
    """The mean over the tokens of (n, T, D) (timm's ``global_pool='avg'``)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean(dim=1)


class ScaledSelfAttention(nn.MultiheadAttention):
    """``nn.MultiheadAttention``'s parameters (fused ``in_proj_weight`` (3D, D), ``in_proj_bias``,
    ``out_proj``), initialisation and state-dict keys, so a saved model loads into torch's own layer;
    its forward is the computation that layer runs (the fused in-projection, heads split heads-major,
    ``F.scaled_dot_product_attention``, the out-projection) with the scale passed explicitly, which
    ``nn.MultiheadAttention.forward`` cannot take. No mask, no dropout (bench.spec.model.SelfAttention)."""

    def __init__(self, dim: int, heads: int, scale: float) -> None:
        super().__init__(dim, heads, dropout=0.0, bias=True, batch_first=True)
        self.scale = scale

    def reset_parameters(self) -> None:
        self._reset_parameters()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = F.linear(x, self.in_proj_weight, self.in_proj_bias).unflatten(-1, (3, self.num_heads, self.head_dim)) \
            .permute(2, 0, 3, 1, 4)  # (3, n, heads, T, d)
        out = F.scaled_dot_product_attention(q, k, v, dropout_p=0.0, is_causal=False, scale=self.scale)
        return self.out_proj(out.transpose(1, 2).flatten(2))


@dataclass
class Builder:
    """What a layer's translation needs besides the layer: the activation factory, the train spec, the
    adapter's layer table (its ``translate``), and the parameter owners it records by path."""

    translate: Callable[[str], Callable]
    activation: Callable[[str], nn.Module]
    train: TrainSpec
    owners: dict[str, nn.Module] = field(default_factory=dict)

    def own(self, path: str, module: nn.Module) -> nn.Module:
        """Record ``module`` as the holder of the arrays of the spec layer at ``path``."""
        self.owners[path] = module
        return module

    def stack(self, layers, befores: list[Shape], prefix: str) -> list[nn.Module]:
        """The modules of a list of layers (the model's, or a container's at ``prefix``); ``befores[j]``
        is layer j's input shape."""
        return [m for j, layer in enumerate(layers) for m in self.translate(layer.type)(layer, befores[j], self, f"{prefix}{j}")]


Translation = Callable[[object, Shape, Builder, str], list[nn.Module]]
"""(spec layer, its per-sample input shape, the builder, its path) -> the modules that compute it."""


def _last_axis(module: nn.Module, before: Shape) -> nn.Module:
    """A module of the spec's last axis (features, channels) on an NCHW image moves the channels last first."""
    return _Moved(module, 1, -1) if len(before) == 3 else module


def _conv(layer, before: Shape, b: Builder, path: str) -> list[nn.Module]:
    conv = b.own(path, nn.Conv2d(before[2], layer.filters, layer.kernel, stride=layer.stride, padding=0))
    if layer.padding != "same":
        return [conv, b.activation(layer.activation)]
    top, bottom = same_padding(before[0], layer.kernel, layer.stride)
    left, right = same_padding(before[1], layer.kernel, layer.stride)
    return [nn.ZeroPad2d((left, right, top, bottom)), conv, b.activation(layer.activation)]


def torch_momentum(bn_momentum: float) -> float:
    """The spec's BatchNorm momentum (weight of the old statistic) as torch's (weight of the new one),
    rounded so torch's own 0.1 stays 0.1 rather than 1 - 0.9 = 0.09999999999999998."""
    return round(1.0 - bn_momentum, 12)


def _batchnorm(layer, before: Shape, b: Builder, path: str) -> list[nn.Module]:
    """BatchNorm2d on images, BatchNorm1d on features, and on tokens (n, T, D) BatchNorm1d with D moved to dim 1."""
    norm = nn.BatchNorm2d if len(before) == 3 else nn.BatchNorm1d
    module = b.own(path, norm(before[-1], eps=b.train.bn_epsilon, momentum=torch_momentum(b.train.bn_momentum)))
    return [_Moved(module, -1, 1) if len(before) == 2 else module]


def _layernorm(layer, before: Shape, b: Builder, path: str) -> list[nn.Module]:
    norm = nn.LayerNorm(before[-1], eps=layer.epsilon, elementwise_affine=layer.affine, bias=layer.affine)
    return [_last_axis(b.own(path, norm) if layer.affine else norm, before)]


def _global_avgpool(layer, before: Shape, b: Builder, path: str) -> list[nn.Module]:
    """Images as torchvision's ResNet pools (AdaptiveAvgPool2d(1), flatten), tokens by their mean."""
    return [nn.AdaptiveAvgPool2d(1), nn.Flatten()] if len(before) == 3 else [_TokenMean()]


def _patch_embed(layer, before: Shape, b: Builder, path: str) -> list[nn.Module]:
    return [_PatchEmbed(b.own(path, nn.Conv2d(before[2], layer.dim, layer.patch, stride=layer.patch, padding=0)))]


def _attention(layer, before: Shape, b: Builder, path: str) -> list[nn.Module]:
    dim = before[-1]
    return [b.own(path, ScaledSelfAttention(dim, layer.heads, attention_scale(dim, layer.heads)))]


PROJECTIONS: dict[str, Callable[[Shape, int, int], nn.Module]] = {
    "conv": lambda before, out, stride: nn.Conv2d(before[-1], out, 1, stride=stride, padding=0),
    "dense": lambda before, out, stride: nn.Linear(before[-1], out),
}
"""A Residual's skip-path projection by kind (from x's shape to f(x)'s channels); ``none`` adds x itself."""


def _residual(layer, before: Shape, b: Builder, path: str) -> list[nn.Module]:
    befores = [before, *inner_shapes(layer, before)]
    body = nn.Sequential(*b.stack(layer.layers, befores, f"{path}."))
    projection: nn.Module = nn.Identity()
    if layer.projection in PROJECTIONS:
        made = b.own(f"{path}.{PROJECTION}", PROJECTIONS[layer.projection](before, befores[-1][-1], layer.stride))
        projection = made if layer.projection == "conv" else _last_axis(made, before)
    return [_Residual(body, projection, b.activation(layer.activation))]


LAYERS: dict[str, Translation] = {
    "Flatten": lambda layer, before, b, path: [_FlattenHWC()],
    "Dense": lambda layer, before, b, path: [b.own(path, nn.Linear(before[-1], layer.units)), b.activation(layer.activation)],
    "Conv2D": _conv,
    "MaxPool2D": lambda layer, before, b, path: [nn.MaxPool2d(layer.size, stride=layer.size)],
    "AvgPool2D": lambda layer, before, b, path: [nn.AvgPool2d(layer.size, stride=layer.size)],
    "BatchNorm": _batchnorm,
    "Dropout": lambda layer, before, b, path: [nn.Dropout(layer.rate)],
    "Activation": lambda layer, before, b, path: [b.activation(layer.activation)],
    "LayerNorm": _layernorm,
    "GELU": lambda layer, before, b, path: [nn.GELU(approximate={"exact": "none", "tanh": "tanh"}[layer.approximate])],
    "GlobalAvgPool": _global_avgpool,
    "PatchEmbed": _patch_embed,
    "PositionEmbedding": lambda layer, before, b, path: [b.own(path, _PositionEmbedding(*before))],
    "SelfAttention": _attention,
    "Residual": _residual,
}
"""The adapter's layer translations, keyed by the spec's layer vocabulary."""

TORCH_PARAM: dict[str, tuple[str, int | None]] = {
    "kernel": ("weight", None), "bias": ("bias", None), "gamma": ("weight", None), "beta": ("bias", None),
    "moving_mean": ("running_mean", None), "moving_variance": ("running_var", None), "embedding": ("embedding", None),
    "query_kernel": ("in_proj_weight", 0), "key_kernel": ("in_proj_weight", 1), "value_kernel": ("in_proj_weight", 2),
    "query_bias": ("in_proj_bias", 0), "key_bias": ("in_proj_bias", 1), "value_bias": ("in_proj_bias", 2),
    "output_kernel": ("out_proj.weight", None), "output_bias": ("out_proj.bias", None),
}
"""Canonical array name -> (the tensor's attribute path on its owner, which third of a fused q/k/v tensor
it is, or None). bench/spec/shapes.py ``ATTENTION_LAYOUT`` declares the fused layout."""
TO_TORCH = {2: (1, 0), 4: (3, 2, 0, 1)}
"""Axes of a canonical kernel in torch's layout: (in, out) -> (out, in); HWIO -> OIHW."""
TO_CANONICAL = {2: (1, 0), 4: (2, 3, 1, 0)}
"""Axes of a torch kernel in the canonical layout: (out, in) -> (in, out); OIHW -> HWIO."""

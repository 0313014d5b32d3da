"""Shape inference for a model spec: which layers hold which parameters, and whether a model fits.

Every backend and the NumPy reference share one canonical parameter list (``param_specs``), so
weights and gradients can be exchanged and compared array by array. Canonical layouts: Dense kernel
(in, out), applied to the last axis; Conv2D and PatchEmbed kernels HWIO; activations NHWC; Flatten in
H, W, C order; tokens (T, D) in row-major patch order; attention as ``ATTENTION_LAYOUT`` says
(docs/architecture.md, "Parameter layout").

Each layer type's shape rule and parameters live in one table, ``LAYER_RULES``, keyed by the spec's
vocabulary; an unknown type is a ``SpecError``, never a pass-through.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

from bench.errors import SpecError
from bench.spec.model import Dense, ModelSpec, Residual

Shape = tuple[int, ...]


@dataclass(frozen=True)
class ParamSpec:
    """One canonical parameter array: which layer owns it, its role, shape and trainability.

    ``layer`` is the owner's path: top-level layer i is "i", layer j inside the Residual at i is
    "i.j", and that Residual's projection "i.projection"; so ``key`` ("0.kernel", "3.gamma") is what it
    was before containers existed, and saved models and old runs keep their keys.
    """

    layer: str
    name: str  # kernel, bias, gamma, beta, moving_mean, moving_variance, embedding, query_kernel, ...
    shape: Shape
    trainable: bool

    @property
    def key(self) -> str:
        return f"{self.layer}.{self.name}"


PROJECTION = "projection"
"""The path segment of a Residual's projection (its ``kernel`` and ``bias``)."""

ATTENTION_LAYOUT = ("query_kernel", "query_bias", "key_kernel", "key_bias", "value_kernel", "value_bias",
                    "output_kernel", "output_bias")
"""SelfAttention's canonical parameters, in order, for a (T, D) input with ``heads`` heads of d = D / heads.

Separate, unfused projections: each ``*_kernel`` is (D, D) and ``*_bias`` (D,), applied as ``x @ kernel +
bias`` like a Dense layer. The q/k/v kernels' columns are heads-major (column h*d + j is feature j of
head h), and so are the output kernel's rows: head h's output features h*d .. h*d + d - 1 are
concatenated in head order before ``@ output_kernel + output_bias``. How each framework maps to it:

- torch ``nn.MultiheadAttention``: one fused ``in_proj_weight`` (3D, D) in (out, in) order and
  ``in_proj_bias`` (3D,): rows 0..D-1 are q, D..2D-1 k, 2D..3D-1 v, each the transpose of the
  canonical kernel (``in_proj_weight[:D] = query_kernel.T``); ``out_proj.weight`` is
  ``output_kernel.T``. Its heads split the D rows heads-major, as here.
- Keras ``MultiHeadAttention`` (key_dim = d): ``EinsumDense`` kernels (D, heads, d) for q/k/v, the
  canonical kernel reshaped (``query_kernel.reshape(D, heads, d)``), biases (heads, d); the output
  kernel (heads, d, D) is ``output_kernel.reshape(heads, d, D)``, its bias (D,).
- Flax ``nn.MultiHeadDotProductAttention`` (``DenseGeneral``): q/k/v kernels (D, heads, d) and biases
  (heads, d), the output kernel (heads, d, D): the same reshapes as Keras.

Scores are q k^T * ``attention_scale`` (1/sqrt(d)), softmax over the keys; no mask, no dropout.
torch and Flax scale the scores (Flax scales the query first), Keras scales the query before the
dot product: the same function, rounded at different places.
"""


def attention_scale(dim: int, heads: int) -> float:
    """The scaling of attention scores: 1/sqrt(head_dim), with head_dim = dim / heads (every framework's default)."""
    return 1.0 / math.sqrt(dim // heads)


def conv_output_size(size: int, kernel: int, stride: int, padding: str) -> int:
    """Spatial output size of a convolution (Keras/TF arithmetic, used by every backend)."""
    if padding == "same":
        return math.ceil(size / stride)
    return (size - kernel) // stride + 1


def same_padding(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """TF 'same' padding (before, after): the extra pixel goes after, which torch must pad by hand."""
    out = math.ceil(size / stride)
    total = max((out - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


class _DoesNotFit(SpecError):
    """A window larger than its input: ``layer_shapes`` adds which input the model was given."""


@dataclass(frozen=True)
class Site:
    """Where a layer sits, for messages: "model 'vit', layer 2.1 (SelfAttention)"."""

    model: str
    path: str
    type: str

    def __str__(self) -> str:
        return f"model {self.model!r}, layer {self.path} ({self.type})"

    def inside(self, j: int, layer) -> Site:
        return Site(self.model, f"{self.path}.{j}", layer.type)


def _image(shape: Shape, where: Site) -> Shape:
    if len(shape) != 3:
        raise SpecError(f"{where} needs an image input (H, W, C) but gets shape {shape}")
    return shape


def _tokens(shape: Shape, where: Site) -> Shape:
    if len(shape) != 2:
        raise SpecError(f"{where} needs a token sequence (tokens, features) but gets shape {shape}; "
                        "a PatchEmbed layer makes one from an image")
    return shape


def _dense_out(layer, shape: Shape, where: Site) -> Shape:
    if len(shape) not in (1, 2):
        raise SpecError(f"{where} needs a flat input (features,) or a token sequence (tokens, features) but gets "
                        f"shape {shape}; add a Flatten layer before it")
    return (*shape[:-1], layer.units)


def _conv_out(layer, shape: Shape, where: Site) -> Shape:
    h, w = (conv_output_size(s, layer.kernel, layer.stride, layer.padding) for s in _image(shape, where)[:2])
    if h < 1 or w < 1:
        raise _DoesNotFit(f"{where}: a {layer.kernel}x{layer.kernel} kernel does not fit the {shape[0]}x{shape[1]} input")
    return (h, w, layer.filters)


def _pool_out(layer, shape: Shape, where: Site) -> Shape:
    h, w = _image(shape, where)[0] // layer.size, shape[1] // layer.size
    if h < 1 or w < 1:
        raise _DoesNotFit(f"{where}: a {layer.size}x{layer.size} pool does not fit the {shape[0]}x{shape[1]} input")
    return (h, w, shape[2])


def _global_pool_out(layer, shape: Shape, where: Site) -> Shape:
    if len(shape) not in (2, 3):
        raise SpecError(f"{where} needs an image (H, W, C) or a token sequence (tokens, features) but gets shape {shape}")
    return (shape[-1],)


def _patch_out(layer, shape: Shape, where: Site) -> Shape:
    h, w = _image(shape, where)[0] // layer.patch, shape[1] // layer.patch
    if h < 1 or w < 1:
        raise _DoesNotFit(f"{where}: a {layer.patch}x{layer.patch} patch does not fit the {shape[0]}x{shape[1]} input")
    return (h * w, layer.dim)


def _attention_out(layer, shape: Shape, where: Site) -> Shape:
    dim = _tokens(shape, where)[1]
    if dim % layer.heads:
        raise SpecError(f"{where}: {layer.heads} heads do not divide the {dim} features; valid: heads dividing {dim}")
    return shape


def _skip_shape(layer, shape: Shape, target: Shape, where: Site) -> Shape:
    """The shape of x on the Residual's skip path, after its projection (to ``target``'s channels)."""
    if layer.projection == "conv":
        h, w = (conv_output_size(s, 1, layer.stride, "valid") for s in _image(shape, where)[:2])
        return (h, w, target[-1])
    if layer.projection == "dense":
        return (*shape[:-1], target[-1])
    return shape


def _residual_out(layer, shape: Shape, where: Site) -> Shape:
    out = _stack_shapes(layer.layers, shape, where)[-1]
    skip = _skip_shape(layer, shape, out, where)
    if skip != out:
        raise SpecError(f"{where}: its layers turn {shape} into {out}, but the skip path (projection = "
                        f"{layer.projection!r}, stride {layer.stride}) gives {skip}; valid: layers that keep the shape, "
                        "or projection = 'conv' (with the layers' stride) or 'dense' to match it")
    return out


def _stack_shapes(layers, shape: Shape, where: Site) -> list[Shape]:
    """Per-sample output shape after each of the layers inside the container at ``where``."""
    shapes = []
    for j, inner in enumerate(layers):
        shape = rule(inner).output(inner, shape, where.inside(j, inner))
        shapes.append(shape)
    return shapes


def _kernel_bias(kernel: Callable[[object, Shape], Shape]) -> Callable:
    return lambda layer, path, before: [ParamSpec(path, "kernel", kernel(layer, before), True),
                                        ParamSpec(path, "bias", (kernel(layer, before)[-1],), True)]


def _batchnorm_params(layer, path: str, before: Shape) -> list[ParamSpec]:
    c = (before[-1],)
    return [ParamSpec(path, "gamma", c, True), ParamSpec(path, "beta", c, True),
            ParamSpec(path, "moving_mean", c, False), ParamSpec(path, "moving_variance", c, False)]


def _layernorm_params(layer, path: str, before: Shape) -> list[ParamSpec]:
    c = (before[-1],)
    return [ParamSpec(path, "gamma", c, True), ParamSpec(path, "beta", c, True)] if layer.affine else []


def _attention_params(layer, path: str, before: Shape) -> list[ParamSpec]:
    d = before[-1]
    return [ParamSpec(path, name, (d, d) if name.endswith("kernel") else (d,), True) for name in ATTENTION_LAYOUT]


def _residual_params(layer, path: str, before: Shape) -> list[ParamSpec]:
    """f's parameters depth-first, then the projection's kernel and bias (1x1 conv HWIO, or Dense)."""
    where = Site("", path, layer.type)
    befores = [before, *_stack_shapes(layer.layers, before, where)]
    inner = [p for j, sub in enumerate(layer.layers) for p in rule(sub).params(sub, f"{path}.{j}", befores[j])]
    out = befores[-1][-1]
    kernel = {"conv": (1, 1, before[-1], out), "dense": (before[-1], out)}.get(layer.projection)
    if kernel is None:
        return inner
    at = f"{path}.{PROJECTION}"
    return [*inner, ParamSpec(at, "kernel", kernel, True), ParamSpec(at, "bias", (out,), True)]


def _same(layer, shape: Shape, where: Site) -> Shape:
    return shape


def _none(layer, path: str, before: Shape) -> list[ParamSpec]:
    return []


@dataclass(frozen=True)
class LayerRule:
    """How a layer type changes the per-sample shape, and the canonical parameters it holds (given its path)."""

    output: Callable[[object, Shape, Site], Shape]
    params: Callable[[object, str, Shape], list[ParamSpec]]


LAYER_RULES: dict[str, LayerRule] = {
    "Flatten": LayerRule(lambda layer, shape, where: (math.prod(shape),), _none),
    "Dense": LayerRule(_dense_out, _kernel_bias(lambda layer, before: (before[-1], layer.units))),
    "Conv2D": LayerRule(_conv_out, _kernel_bias(lambda layer, before: (layer.kernel, layer.kernel, before[-1], layer.filters))),
    "MaxPool2D": LayerRule(_pool_out, _none),
    "AvgPool2D": LayerRule(_pool_out, _none),
    "BatchNorm": LayerRule(_same, _batchnorm_params),
    "Dropout": LayerRule(_same, _none),
    "Activation": LayerRule(_same, _none),
    "LayerNorm": LayerRule(_same, _layernorm_params),
    "GELU": LayerRule(_same, _none),
    "GlobalAvgPool": LayerRule(_global_pool_out, _none),
    "PatchEmbed": LayerRule(_patch_out, _kernel_bias(lambda layer, before: (layer.patch, layer.patch, before[-1], layer.dim))),
    "PositionEmbedding": LayerRule(lambda layer, shape, where: _tokens(shape, where),
                                   lambda layer, path, before: [ParamSpec(path, "embedding", before, True)]),
    "SelfAttention": LayerRule(_attention_out, _attention_params),
    "Residual": LayerRule(_residual_out, _residual_params),
}


def rule(layer) -> LayerRule:
    try:
        return LAYER_RULES[layer.type]
    except KeyError:
        raise SpecError(f"unknown layer type {layer.type!r}; valid: {', '.join(LAYER_RULES)}") from None


def layer_shapes(model: ModelSpec, input_shape: Shape, num_classes: int) -> list[Shape]:
    """Per-sample output shape after each top-level layer; raises SpecError where the model does not fit.

    The last layer must be a Dense layer with ``num_classes`` units, since it produces the logits.
    """
    shape = tuple(input_shape)
    shapes: list[Shape] = []
    for i, layer in enumerate(model.layers):
        try:
            shape = rule(layer).output(layer, shape, Site(model.name, str(i), layer.type))
        except _DoesNotFit as exc:
            raise SpecError(f"{exc} (model needs larger images than input {tuple(input_shape)})") from None
        shapes.append(shape)
    last = model.layers[-1] if model.layers else None
    if not isinstance(last, Dense) or last.units != num_classes or last.activation != "linear" or len(shape) != 1:
        raise SpecError(
            f"model {model.name!r} must end in Dense(units={num_classes}, activation='linear') producing logits"
            + (f", on a flat input (its output has shape {shape}; pool or flatten before it)" if len(shape) != 1 else "")
        )
    return shapes


def inner_shapes(layer: Residual, before: Shape) -> list[Shape]:
    """Per-sample output shape after each layer inside a Residual that receives ``before``."""
    return _stack_shapes(layer.layers, before, Site("", "", layer.type))


def path_shapes(model: ModelSpec, input_shape: Shape, num_classes: int) -> dict[str, Shape]:
    """Per-sample output shape of every layer, containers' layers included, by ``ParamSpec.layer`` path."""
    out: dict[str, Shape] = {}

    def visit(layers, befores: list[Shape], prefix: str) -> None:
        for j, layer in enumerate(layers):
            out[f"{prefix}{j}"] = befores[j + 1]
            if isinstance(layer, Residual):
                visit(layer.layers, [befores[j], *inner_shapes(layer, befores[j])], f"{prefix}{j}.")

    visit(model.layers, [tuple(input_shape), *layer_shapes(model, input_shape, num_classes)], "")
    return out


def param_specs(model: ModelSpec, input_shape: Shape, num_classes: int) -> list[ParamSpec]:
    """The canonical, ordered parameter list of a model on an input shape (depth-first through containers)."""
    befores = [tuple(input_shape)] + layer_shapes(model, input_shape, num_classes)
    return [p for i, layer in enumerate(model.layers) for p in rule(layer).params(layer, str(i), befores[i])]


def parameter_count(model: ModelSpec, input_shape: Shape, num_classes: int, trainable_only: bool = True) -> int:
    return sum(math.prod(p.shape) for p in param_specs(model, input_shape, num_classes) if p.trainable or not trainable_only)


def check_fits(model: ModelSpec, input_shape: Shape, num_classes: int) -> None:
    """Raise SpecError with a clear line if the model cannot run on this input."""
    layer_shapes(model, input_shape, num_classes)

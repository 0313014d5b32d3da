"""PyTorch adapter: the spec as an ``nn.Sequential``, with every framework default overridden.

Where PyTorch differs from the suite's rules (docs/architecture.md), this module converts
explicitly: NCHW activations inside, canonical NHWC/HWIO at the boundary; Flatten permutes to H, W,
C order; BatchNorm momentum 0.01 (torch's "weight of new" for the suite's 0.99) and epsilon 1e-3;
LeakyReLU slope 0.01; TF-style 'same' padding with the extra pixel after; decoupled weight decay.
Torch's unbiased running variance cannot be switched off and is declared in ``RULES``.

The compiled modes compile the training step (forward, loss, gradients, weight decay and optimizer
update; the row gather and augmentation run eagerly before it, as a user's data pipeline does) with
``torch.compile`` as one graph: gradients by ``torch.autograd.grad`` and the update by the
optimizer's own functional form, because ``loss.backward()`` and ``optimizer.step()`` inside a
compiled function break it into several graphs in this torch (backends/torch_step.py says why).
Each record counts the graphs and graph breaks. One optimizer per cell, its state reset in place,
so warm-up compiles and the timed epochs never recompile.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from backends import REGISTRY, torch_runtime, torch_step
from backends.base import Backend, BackendInfo
from bench.spec.augment import Params
from bench.spec.rules import Rules
from bench.spec.semantics import Native
from bench.spec.shapes import ParamSpec, layer_shapes, same_padding
from bench.spec.train import Augment, TrainSpec


class _FlattenHWC(nn.Module):
    """Flatten an NCHW tensor in the canonical H, W, C order (a Keras/JAX-compatible flatten)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 4:
            x = x.permute(0, 2, 3, 1)
        return x.reshape(x.shape[0], -1)


def _conv(layer, before, act) -> tuple[nn.Module, list[nn.Module]]:
    conv = nn.Conv2d(before[2], layer.filters, layer.kernel, stride=layer.stride, padding=0)
    if layer.padding != "same":
        return conv, [conv, act(layer.activation)]
    top, bottom = same_padding(before[0], layer.kernel, layer.stride)
    left, right = same_padding(before[1], layer.kernel, layer.stride)
    return conv, [nn.ZeroPad2d((left, right, top, bottom)), conv, act(layer.activation)]


def _torch_momentum(bn_momentum: float) -> float:
    """The spec's BatchNorm momentum (weight of the old statistic) as torch's (weight of the new one),
    rounded so torch's own 0.1 stays 0.1 rather than 1 - 0.9 = 0.09999999999999998."""
    return round(1.0 - bn_momentum, 12)


def _batchnorm(layer, before, train: TrainSpec) -> nn.Module:
    norm = nn.BatchNorm2d if len(before) == 3 else nn.BatchNorm1d
    return norm(before[-1], eps=train.bn_epsilon, momentum=_torch_momentum(train.bn_momentum))


def _one_hot(labels: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    return F.one_hot(labels, logits.shape[1]).float()


def _sgd(params, t: TrainSpec, momentum: float) -> torch.optim.Optimizer:
    return torch.optim.SGD(params, lr=t.lr, momentum=momentum, dampening=0.0, nesterov=False)


def _replayed(step):
    """A compiled step run as CUDA graphs: each call starts a new replay, and the loss is copied out
    of the graph's static output buffer, which the next replay overwrites."""

    def run(x: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        torch.compiler.cudagraph_mark_step_begin()
        return step(x, labels).clone()

    return run


def _tensor(value: torch.Tensor) -> np.ndarray:
    return value.detach().cpu().numpy()


# -- augmentation on NCHW tensors (bench/spec/augment.py is the reference; rows/columns are dims 2/3) -------
def _flip(dim: int):
    return lambda x, flip, a: torch.where(flip[:, None, None, None], x.flip(dim), x)


def _crop(x: torch.Tensor, offsets: torch.Tensor, a: Augment) -> torch.Tensor:
    """Zero-pad, then per image the H x W window at its (row, column) offset: two take_along_dim gathers."""
    h, w = x.shape[2:]
    padded = F.pad(x, (a.crop,) * 4)
    offsets = offsets.long()
    rows = offsets[:, 0, None] + torch.arange(h, device=x.device)
    cols = offsets[:, 1, None] + torch.arange(w, device=x.device)
    padded = torch.take_along_dim(padded, rows[:, None, :, None], dim=2)
    return torch.take_along_dim(padded, cols[:, None, None, :], dim=3)


def _resample(x: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
    """affine_grid + grid_sample, bilinear, zeros outside. With align_corners=False the normalised
    coordinate 0 is the image centre ((H-1)/2, (W-1)/2) and one unit is half the image, so ``theta``
    is the reference's inverse map rescaled per axis."""
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def _rotate(x: torch.Tensor, angle: torch.Tensor, a: Augment) -> torch.Tensor:
    h, w = x.shape[2:]
    c, s, zero = torch.cos(angle), torch.sin(angle), torch.zeros_like(angle)
    # grid (u, v) = (column, row) normalised: u' = cos u - (H/W) sin v, v' = (W/H) sin u + cos v
    return _resample(x, torch.stack([torch.stack([c, -(h / w) * s, zero], -1), torch.stack([(w / h) * s, c, zero], -1)], -2))


def _zoom(x: torch.Tensor, scale: torch.Tensor, a: Augment) -> torch.Tensor:
    inverse, zero = 1.0 / scale, torch.zeros_like(scale)
    return _resample(x, torch.stack([torch.stack([inverse, zero, zero], -1), torch.stack([zero, inverse, zero], -1)], -2))


_TORCH_PARAM = {"kernel": "weight", "bias": "bias", "gamma": "weight", "beta": "bias",
                "moving_mean": "running_mean", "moving_variance": "running_var"}
_TO_TORCH = {2: (1, 0), 4: (3, 2, 0, 1)}  # kernel axes: (in,out)->(out,in); HWIO->OIHW
_TO_CANONICAL = {2: (1, 0), 4: (2, 3, 1, 0)}  # OIHW->HWIO


class TorchBackend(Backend):
    name = "torch"
    framework = "pytorch"
    modes = REGISTRY[name].modes
    COMPILE_OPTIONS = {"compiled": {}, "compiled-cudagraphs": {"mode": "reduce-overhead"}}
    """torch.compile arguments per compiled mode."""
    RULES = Rules(bn_running_variance="unbiased")
    NATIVE = Native(
        # Adam and RMSprop eps 1e-8, RMSprop alpha 0.99, BatchNorm momentum 0.1 (torch sense) and eps 1e-5, LeakyReLU 0.01
        overrides={"epsilon": 1e-8, "rho": 0.99, "bn_momentum": 0.9, "bn_epsilon": 1e-5, "leaky_relu_slope": 0.01},
        init="kaiming_uniform",
        rules=RULES,
    )
    TRANSLATIONS = {
        # layer: (spec layer, input shape, activation factory, train spec) -> (parameter owner or None, modules)
        "layer": {
            "Flatten": lambda layer, before, act, t: (None, [_FlattenHWC()]),
            "Dense": lambda layer, before, act, t: (m := nn.Linear(before[0], layer.units), [m, act(layer.activation)]),
            "Conv2D": lambda layer, before, act, t: _conv(layer, before, act),
            "MaxPool2D": lambda layer, before, act, t: (None, [nn.MaxPool2d(layer.size, stride=layer.size)]),
            "AvgPool2D": lambda layer, before, act, t: (None, [nn.AvgPool2d(layer.size, stride=layer.size)]),
            "BatchNorm": lambda layer, before, act, t: (m := _batchnorm(layer, before, t), [m]),
            "Dropout": lambda layer, before, act, t: (None, [nn.Dropout(layer.rate)]),
            "Activation": lambda layer, before, act, t: (None, [act(layer.activation)]),
        },
        "activation": {
            "relu": lambda slope: nn.ReLU(),
            "leaky_relu": lambda slope: nn.LeakyReLU(negative_slope=slope),
            "tanh": lambda slope: nn.Tanh(),
            "sigmoid": lambda slope: nn.Sigmoid(),
            "linear": lambda slope: nn.Identity(),
        },
        "loss": {
            "cce": F.cross_entropy,
            "mse": lambda z, y: (torch.softmax(z, dim=1) - _one_hot(y, z)).pow(2).mean(),
            "mae": lambda z, y: (torch.softmax(z, dim=1) - _one_hot(y, z)).abs().mean(),
            "bce": lambda z, y: F.binary_cross_entropy_with_logits(z, _one_hot(y, z)),
            "hinge": lambda z, y: torch.clamp(1.0 - (2.0 * _one_hot(y, z) - 1.0) * z, min=0.0).mean(),
        },
        # optimizer: (parameters, train spec, capturable: state on the GPU for a compiled step) -> optimizer
        "optimizer": {
            "sgd": lambda params, t, capturable: _sgd(params, t, 0.0),
            "momentum": lambda params, t, capturable: _sgd(params, t, t.momentum),
            "rmsprop": lambda params, t, capturable: torch.optim.RMSprop(
                params, lr=t.lr, alpha=t.rho, eps=t.epsilon, momentum=0.0, centered=False, capturable=capturable),
            "adam": lambda params, t, capturable: torch.optim.Adam(
                params, lr=t.lr, betas=(t.beta1, t.beta2), eps=t.epsilon, capturable=capturable),
        },
        "augment": {
            "hflip": _flip(3),
            "vflip": _flip(2),
            "crop": _crop,
            "rotate": _rotate,
            "zoom": _zoom,
            "brightness": lambda x, delta, a: (x + delta[:, None, None, None]).clamp(0.0, 1.0),
            "noise": lambda x, noise, a: (x + noise.permute(0, 3, 1, 2)).clamp(0.0, 1.0),
        },
    }

    def __init__(self) -> None:
        self.device = torch.device("cpu")
        self.net: nn.Module | None = None
        self._cudagraphs: torch_step.CudagraphSkips | None = None

    # -- process ---------------------------------------------------------------------------------
    def _gpu_visible(self) -> bool:
        return torch.cuda.is_available()

    def _setup(self, threads: int) -> BackendInfo:
        torch_step.enable_tracing_autograd()
        pools = torch_runtime.configure(threads)
        self.device = torch.device("cuda" if self.on_gpu else "cpu")
        return BackendInfo(framework=self.framework, versions={"torch": torch.__version__},
                           device=torch_runtime.device_name(self.on_gpu), threads=pools)

    def _device_ops(self) -> torch_runtime.Ops:
        return torch_runtime.Ops(self.on_gpu)

    # -- model -----------------------------------------------------------------------------------
    def _build(self) -> None:
        t = self.train
        if self.on_gpu:
            torch_runtime.full_fp32(t.precision)
        self.autocast_dtype = torch.bfloat16 if t.precision == "bf16" else None
        compile_options = self.COMPILE_OPTIONS.get(self.mode)
        if compile_options is not None:
            torch._dynamo.reset()  # the previous cell's compiled code: its cache would fill and fall back to eager
        torch.manual_seed(t.seed)  # dropout masks: reproducible within torch (never equal across frameworks)
        befores = [self.input_shape] + layer_shapes(self.model, self.input_shape, self.num_classes)
        act = self._activation
        modules: list[nn.Module] = []
        self.owners: dict[str, nn.Module] = {}  # by ParamSpec.layer path
        for i, layer in enumerate(self.model.layers):
            owner, translated = self.translate("layer", layer.type)(layer, befores[i], act, t)
            if owner is not None:
                self.owners[str(i)] = owner
            modules += translated
        self.net = nn.Sequential(*modules).to(self.device)
        self.images = len(self.input_shape) == 3
        self._loss = self.translate("loss", t.loss)
        self.decayed = [self._lookup(s) for s in self.specs if s.trainable]
        # One optimizer per cell, reset in place: a new one would make the compiled step recompile.
        self.optimizer = self.translate("optimizer", t.optimizer)(self.decayed, t, self.on_gpu and compile_options is not None)
        self._graphs = self._caches = None
        if self._cudagraphs is not None:  # the previous cell's listener
            self._cudagraphs.close()
            self._cudagraphs = None
        if compile_options is None:
            self.forward, self._train_fn = self.net, self._train_step
        else:
            self._update = torch_step.functional_update(self.optimizer)
            self._graphs, self._caches = torch_step.GraphCount(), torch_step.CacheCount()
            self.forward = torch.compile(self.net, **compile_options)  # inference and parity's gradients
            self._train_fn = torch.compile(self._one_graph_step, **compile_options)
            if compile_options.get("mode") == "reduce-overhead":
                self._cudagraphs = torch_step.CudagraphSkips()
                self._train_fn = _replayed(self._train_fn)

    def _activation(self, name: str) -> nn.Module:
        return self.translate("activation", name)(self.train.leaky_relu_slope)

    def _lookup(self, spec: ParamSpec) -> torch.Tensor:
        return getattr(self.owners[spec.layer], _TORCH_PARAM[spec.name])

    def _set_weights(self, weights: list[np.ndarray]) -> None:
        with torch.no_grad():
            for spec, value in zip(self.specs, weights, strict=True):
                if spec.name == "kernel":
                    value = value.transpose(_TO_TORCH[value.ndim])
                self._lookup(spec).copy_(torch.from_numpy(np.ascontiguousarray(value)))

    def _canonical(self, spec: ParamSpec, value: torch.Tensor) -> np.ndarray:
        array = _tensor(value)
        return (array.transpose(_TO_CANONICAL[array.ndim]) if spec.name == "kernel" else array).copy()

    def get_weights(self) -> list[np.ndarray]:
        return [self._canonical(s, self._lookup(s)) for s in self.specs]

    def _initialise_natively(self) -> None:
        """What ``nn.Linear``, ``nn.Conv2d`` and ``nn.BatchNorm`` draw at construction (kaiming_uniform
        with a=sqrt(5), biases U(+-1/sqrt(fan_in)); BatchNorm 1, 0 and fresh statistics), after
        ``torch.manual_seed(seed)`` as a user seeds torch."""
        torch.manual_seed(self.train.seed)
        for owner in self.owners.values():
            owner.reset_parameters()

    def bn_momentum_parameter(self, bn_momentum: float) -> float:
        return _torch_momentum(bn_momentum)

    def _reset_optimizer(self) -> None:
        """Zero the optimizer's state in place: step 0 and zero moments are a fresh optimizer's values,
        and SGD's zeroed momentum buffer takes the first gradient as a fresh one does. The tensors
        stay the same objects, so a compiled step's guards still hold and nothing recompiles."""
        with torch.no_grad():
            for state in self.optimizer.state.values():
                for value in state.values():
                    if torch.is_tensor(value):
                        value.zero_()

    # -- training --------------------------------------------------------------------------------
    def _input(self, x: np.ndarray) -> torch.Tensor:
        tensor = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)).to(self.device)
        return tensor.permute(0, 3, 1, 2).contiguous() if self.images else tensor

    def _place_data(self, x: np.ndarray, y: np.ndarray) -> None:
        self.x = self._input(x)
        self.y = torch.from_numpy(y.astype(np.int64)).to(self.device)

    def _forward_loss(self, forward: nn.Module, x: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        if self.autocast_dtype is None:
            return self._loss(forward(x).float(), labels)
        with torch.autocast(self.device.type, dtype=self.autocast_dtype):
            return self._loss(forward(x).float(), labels)

    def _augment_tensors(self, params: Params) -> dict[str, torch.Tensor]:
        return {name: torch.from_numpy(p).to(self.device, non_blocking=True) for name, p in params.items()}

    def _augmented(self, x: np.ndarray, params: Params) -> np.ndarray:
        with torch.no_grad():
            return _tensor(self._augment(self._input(x), self._augment_tensors(params)).permute(0, 2, 3, 1))

    def _decay(self) -> None:
        """Decoupled weight decay, as Keras and AdamW do: w -= lr * wd * w (before the update)."""
        if self.train.weight_decay:
            with torch.no_grad():
                torch._foreach_mul_(self.decayed, 1.0 - self.train.lr * self.train.weight_decay)

    def _train_step(self, x: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """The eager step: forward, loss, backward, weight decay and ``optimizer.step()``."""
        loss = self._forward_loss(self.net, x, labels)
        loss.backward()
        self._decay()
        self.optimizer.step()
        return loss.detach()

    def _one_graph_step(self, x: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """The compiled modes' step, traced as one graph: the same arithmetic as ``_train_step``, with
        ``torch.autograd.grad`` for ``backward`` and the optimizer's functional update for ``step``."""
        loss = self._forward_loss(self.net, x, labels)
        grads = torch.autograd.grad(loss, self.decayed)
        self._decay()
        with torch.no_grad():
            self._update(list(grads))
        return loss.detach()

    def _step(self, batch: np.ndarray, augment: Params | None) -> torch.Tensor:
        index = torch.from_numpy(batch)
        if self.device.type != "cpu":
            index = index.to(self.device, non_blocking=True)
        if not self.net.training:  # a per-step .train() walks every module: only switch when needed
            self.net.train()
        self.optimizer.zero_grad(set_to_none=True)  # outside the compiled step: dynamo never traces zero_grad
        x = self.x[index]  # the gather and the augmentation run eagerly, as a user's data pipeline does
        if augment is not None:
            x = self._augment(x, self._augment_tensors(augment))
        return self._train_fn(x, self.y[index])

    def _read_losses(self, pending: list[torch.Tensor]) -> np.ndarray:
        return _tensor(torch.stack(pending).float())

    def _synchronize(self, pending: list[torch.Tensor]) -> None:
        if self.on_gpu:
            torch.cuda.synchronize()

    # -- inference -------------------------------------------------------------------------------
    def logits(self, x: np.ndarray) -> np.ndarray:
        self.net.eval()
        with torch.no_grad(), torch.autocast(self.device.type, dtype=self.autocast_dtype, enabled=self.autocast_dtype is not None):
            out = self.forward(self._input(x))
        return _tensor(out.float())

    def loss_and_gradients(self, x: np.ndarray, y: np.ndarray) -> tuple[float, list[np.ndarray]]:
        buffers = {name: b.clone() for name, b in self.net.named_buffers()}
        self.net.train()
        self.net.zero_grad(set_to_none=True)
        labels = torch.from_numpy(y.astype(np.int64)).to(self.device)
        loss = self._forward_loss(self.forward, self._input(x), labels)
        loss.backward()
        grads = [self._canonical(s, self._lookup(s).grad) for s in self.specs if s.trainable]
        self.net.zero_grad(set_to_none=True)
        with torch.no_grad():
            for name, b in self.net.named_buffers():
                b.copy_(buffers[name])
        return float(loss.item()), grads

    # -- measurement and artifacts ---------------------------------------------------------------
    def compiled_graphs(self) -> dict:
        """Dynamo's graphs and breaks; under CUDA graphs also whether inductor used them (``cudagraphs``)."""
        facts = self._graphs.facts() if self._graphs is not None else {}
        return facts | ({"cudagraphs": self._cudagraphs.verdict()} if self._cudagraphs is not None else {})

    def pads_eval_batches(self) -> bool:
        """CUDA graphs record one graph per input shape: evaluation pads its last partial batch, so the
        compiled forward replays one shape (a ragged batch would record another graph)."""
        return self.mode == "compiled-cudagraphs"

    @property
    def synchronous_steps(self) -> bool:
        """On a CPU a torch op returns once its kernel (and its OpenMP pool) is done; CUDA queues work."""
        return not self.on_gpu

    def compile_cache(self) -> str | None:
        """From inductor's FX-graph and AOTAutograd cache counters since the build (torch_step.CacheCount)."""
        if self._caches is None:
            return None
        return "off" if self.cache_policy == "off" else (self._caches.state() or "off")

    def forget_compiled(self, disk: bool) -> None:
        torch_runtime.forget_compiled(disk)

    def save_native(self, directory: Path) -> Path:
        """The module's ``state_dict`` (torch layouts, BatchNorm buffers included) via ``torch.save``."""
        path = Path(directory) / "model.pt"
        torch.save(self.net.state_dict(), path)
        return path

    def _load_native(self, path: Path) -> None:
        """``weights_only=True``: torch's restricted unpickler accepts tensors and containers only."""
        state = torch.load(path, map_location=self.device, weights_only=True)
        self.net.load_state_dict(state, strict=True)

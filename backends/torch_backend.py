"""PyTorch adapter: the spec as an ``nn.Sequential``, with every framework default overridden.

Where PyTorch differs from the suite's rules (docs/architecture.md), this module converts
explicitly: NCHW activations inside, canonical NHWC/HWIO at the boundary; Flatten permutes to H, W,
C order; BatchNorm momentum 0.01 (torch's "weight of new" for the suite's 0.99) and epsilon 1e-3;
LeakyReLU slope 0.01; TF-style 'same' padding with the extra pixel after; decoupled weight decay.
Torch's unbiased running variance cannot be switched off and is declared in ``RULES``. The layers
themselves, residual blocks and attention included, and where each canonical array lives in them
(a third of a fused q/k/v weight, say) are backends/torch_layers.py's. Each step runs at the
schedule's rate (``step_lr``), set in the parameter group as torch's own schedulers set it.

The compiled modes compile the training step (forward, loss, gradients, weight decay and optimizer
update; the row gather and augmentation run eagerly before it, as a user's data pipeline does) with
``torch.compile`` as one graph: gradients by ``torch.autograd.grad`` and the update by the
optimizer's own functional form, because ``loss.backward()`` and ``optimizer.step()`` inside a
compiled function break it into several graphs in this torch (backends/torch_step.py says why).
Each record counts the graphs and graph breaks. One optimizer per cell, its state reset in place,
so warm-up compiles and the timed epochs never recompile.
"""

from __future__ import annotations

from operator import attrgetter
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from backends import REGISTRY, torch_layers, torch_runtime, torch_step
from backends.base import Backend, BackendInfo
from bench.spec.augment import Params
from bench.spec.rules import Rules
from bench.spec.semantics import Native
from bench.spec.shapes import ParamSpec, layer_shapes
from bench.spec.train import Augment, TrainSpec


def _one_hot(labels: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    return F.one_hot(labels, logits.shape[1]).float()


def _sgd(params, t: TrainSpec, momentum: float) -> torch.optim.Optimizer:
    return torch.optim.SGD(params, lr=t.lr, momentum=momentum, dampening=0.0, nesterov=False)


def _replayed(step):
    """A compiled step run as CUDA graphs: each call starts a new replay, and the loss is copied out
    of the graph's static output buffer, which the next replay overwrites."""

    def run(x: torch.Tensor, labels: torch.Tensor, lr: torch.Tensor) -> torch.Tensor:
        torch.compiler.cudagraph_mark_step_begin()
        return step(x, labels, lr).clone()

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


class TorchBackend(torch_runtime.TorchSteps, Backend):
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
        "layer": torch_layers.LAYERS,
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
            "adamw": lambda params, t, capturable: torch.optim.AdamW(
                params, lr=t.lr, betas=(t.beta1, t.beta2), eps=t.epsilon, weight_decay=t.weight_decay, capturable=capturable),
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
        builder = torch_layers.Builder(lambda name: self.translate("layer", name), self._activation, t)
        self.net = nn.Sequential(*builder.stack(self.model.layers, befores, "")).to(self.device)
        self.owners = builder.owners  # by ParamSpec.layer path
        self.images = len(self.input_shape) == 3
        self._loss = self.translate("loss", t.loss)
        self.params = list(self.net.parameters())  # torch's tensors: a fused q/k/v weight holds three canonical arrays
        # One optimizer per cell, reset in place: a new one would make the compiled step recompile.
        self.optimizer = self.translate("optimizer", t.optimizer)(self.params, t, self.on_gpu and compile_options is not None)
        self.decay = 0.0 if self.optimizer.param_groups[0]["weight_decay"] else t.weight_decay
        self._graphs = self._caches = None
        if self._cudagraphs is not None:  # the previous cell's listener
            self._cudagraphs.close()
            self._cudagraphs = None
        if compile_options is None:
            self.forward, self._train_fn, self._rate = self.net, self._train_step, float
        else:
            self._update = torch_step.functional_update(self.optimizer)
            self._lr = torch.zeros((), device=self.device)
            self._rate = self._lr.fill_  # the step's rate as a tensor's value: a new rate is no new graph
            self._graphs, self._caches = torch_step.GraphCount(), torch_step.CacheCount()
            self.forward = torch.compile(self.net, **compile_options)  # inference and parity's gradients
            self._train_fn = torch.compile(self._one_graph_step, **compile_options)
            if compile_options.get("mode") == "reduce-overhead":
                self._cudagraphs = torch_step.CudagraphSkips()
                self._train_fn = _replayed(self._train_fn)

    def _activation(self, name: str) -> nn.Module:
        return self.translate("activation", name)(self.train.leaky_relu_slope)

    def _lookup(self, spec: ParamSpec, grad: bool = False) -> torch.Tensor:
        """The torch tensor (or its gradient) holding a canonical array, in torch's layout: a third of a
        fused q/k/v tensor is a view of it (torch_layers.TORCH_PARAM)."""
        attribute, third = torch_layers.TORCH_PARAM[spec.name]
        tensor = attrgetter(attribute)(self.owners[spec.layer])
        tensor = tensor.grad if grad else tensor
        return tensor if third is None else tensor.chunk(3)[third]

    def _set_weights(self, weights: list[np.ndarray]) -> None:
        with torch.no_grad():
            for spec, value in zip(self.specs, weights, strict=True):
                if spec.name.endswith("kernel"):
                    value = value.transpose(torch_layers.TO_TORCH[value.ndim])
                self._lookup(spec).copy_(torch.from_numpy(np.ascontiguousarray(value)))

    def _canonical(self, spec: ParamSpec, value: torch.Tensor) -> np.ndarray:
        array = _tensor(value)
        return (array.transpose(torch_layers.TO_CANONICAL[array.ndim]) if spec.name.endswith("kernel") else array).copy()

    def get_weights(self) -> list[np.ndarray]:
        return [self._canonical(s, self._lookup(s)) for s in self.specs]

    def _initialise_natively(self) -> None:
        """What torch's layers draw at construction, after ``torch.manual_seed(seed)`` as a user seeds torch:
        ``nn.Linear`` and ``nn.Conv2d`` kaiming_uniform with a=sqrt(5), biases U(+-1/sqrt(fan_in)); BatchNorm
        and LayerNorm 1, 0 (and fresh statistics); ``nn.MultiheadAttention`` xavier_uniform q/k/v, zero
        biases; the position embedding normal(0, 0.02) as torchvision's ViT."""
        torch.manual_seed(self.train.seed)
        for owner in self.owners.values():
            owner.reset_parameters()

    def bn_momentum_parameter(self, bn_momentum: float) -> float:
        return torch_layers.torch_momentum(bn_momentum)

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

    def _decay(self, lr: float | torch.Tensor) -> None:
        """Decoupled weight decay where the optimizer does not apply it itself (all but ``AdamW``), as Keras
        and AdamW do: w -= lr_t * wd * w on every parameter, before the update."""
        if self.decay:
            with torch.no_grad():
                torch._foreach_mul_(self.params, 1.0 - lr * self.decay)

    def _train_step(self, x: torch.Tensor, labels: torch.Tensor, lr: float) -> torch.Tensor:
        """The eager step: forward, loss, backward, weight decay and ``optimizer.step()`` at rate ``lr``, set
        in the parameter group as torch's own schedulers set it."""
        loss = self._forward_loss(self.net, x, labels)
        loss.backward()
        self.optimizer.param_groups[0]["lr"] = lr
        self._decay(lr)
        self.optimizer.step()
        return loss.detach()

    def _one_graph_step(self, x: torch.Tensor, labels: torch.Tensor, lr: torch.Tensor) -> torch.Tensor:
        """The compiled modes' step, traced as one graph: the same arithmetic as ``_train_step``, with
        ``torch.autograd.grad`` for ``backward``, the optimizer's functional update for ``step``, and the
        rate a 0-d tensor (a float would be a constant of the graph, so each new rate a new graph)."""
        loss = self._forward_loss(self.net, x, labels)
        grads = torch.autograd.grad(loss, self.params)
        self._decay(lr)
        with torch.no_grad():
            self._update(list(grads), lr)
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
        return self._train_fn(x, self.y[index], self._rate(self.step_lr))

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
        grads = [self._canonical(s, self._lookup(s, grad=True)) for s in self.specs if s.trainable]
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

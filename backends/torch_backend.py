"""PyTorch adapter: the spec as an ``nn.Sequential``, with every framework default overridden.

Where PyTorch differs from the suite's rules (design.md), this module converts explicitly:
NCHW activations inside, canonical NHWC/HWIO at the boundary; Flatten permutes to H, W, C order;
BatchNorm momentum 0.01 (torch's "weight of new" for the suite's 0.99) and epsilon 1e-3;
LeakyReLU slope 0.01; TF-style 'same' padding with the extra pixel after; decoupled weight decay.
Torch's unbiased running variance cannot be switched off and is recorded in ``semantics``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from backends.base import Backend, BackendInfo, EpochResult, MemoryReading, Unsupported
from bench.shapes import layer_shapes, param_specs, same_padding
from bench.spec import (
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


class _FlattenHWC(nn.Module):
    """Flatten an NCHW tensor in the canonical H, W, C order (a Keras/JAX-compatible flatten)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 4:
            x = x.permute(0, 2, 3, 1)
        return x.reshape(x.shape[0], -1)


def _activation(name: str, slope: float) -> nn.Module:
    return {
        "relu": nn.ReLU,
        "leaky_relu": lambda: nn.LeakyReLU(negative_slope=slope),
        "tanh": nn.Tanh,
        "sigmoid": nn.Sigmoid,
        "linear": nn.Identity,
    }[name]()


def _build_modules(model: ModelSpec, train: TrainSpec, input_shape: tuple[int, ...], num_classes: int):
    """The nn.Sequential and, per spec layer index, the torch module holding its parameters."""
    shapes = [tuple(input_shape)] + layer_shapes(model, input_shape, num_classes)
    modules: list[nn.Module] = []
    owners: dict[int, nn.Module] = {}
    torch_bn_momentum = 1.0 - train.bn_momentum  # torch weighs the new batch statistic
    for i, layer in enumerate(model.layers):
        before = shapes[i]
        if isinstance(layer, Flatten):
            modules.append(_FlattenHWC())
        elif isinstance(layer, Dense):
            owners[i] = nn.Linear(before[0], layer.units)
            modules += [owners[i], _activation(layer.activation, train.leaky_relu_slope)]
        elif isinstance(layer, Conv2D):
            if layer.padding == "same":
                top, bottom = same_padding(before[0], layer.kernel, layer.stride)
                left, right = same_padding(before[1], layer.kernel, layer.stride)
                modules.append(nn.ZeroPad2d((left, right, top, bottom)))
            owners[i] = nn.Conv2d(before[2], layer.filters, layer.kernel, stride=layer.stride, padding=0)
            modules += [owners[i], _activation(layer.activation, train.leaky_relu_slope)]
        elif isinstance(layer, MaxPool2D):
            modules.append(nn.MaxPool2d(layer.size, stride=layer.size))
        elif isinstance(layer, AvgPool2D):
            modules.append(nn.AvgPool2d(layer.size, stride=layer.size))
        elif isinstance(layer, BatchNorm):
            norm = nn.BatchNorm2d if len(before) == 3 else nn.BatchNorm1d
            owners[i] = norm(before[-1], eps=train.bn_epsilon, momentum=torch_bn_momentum)
            modules.append(owners[i])
        elif isinstance(layer, Dropout):
            modules.append(nn.Dropout(layer.rate))
        elif isinstance(layer, Activation):
            modules.append(_activation(layer.activation, train.leaky_relu_slope))
    return nn.Sequential(*modules), owners


def _to_torch_layout(name: str, array: np.ndarray) -> np.ndarray:
    if name == "kernel":
        return array.T if array.ndim == 2 else array.transpose(3, 2, 0, 1)  # (in,out)->(out,in); HWIO->OIHW
    return array


def _to_canonical_layout(name: str, array: np.ndarray) -> np.ndarray:
    if name == "kernel":
        return array.T if array.ndim == 2 else array.transpose(2, 3, 1, 0)  # OIHW->HWIO
    return array


_TORCH_PARAM = {"kernel": "weight", "bias": "bias", "gamma": "weight", "beta": "bias",
                "moving_mean": "running_mean", "moving_variance": "running_var"}


class TorchBackend(Backend):
    name = "torch"
    framework = "pytorch"
    modes = ("eager", "compiled")

    def __init__(self) -> None:
        self.device = torch.device("cpu")
        self.net: nn.Module | None = None

    # -- process ---------------------------------------------------------------------------------
    def setup(self, threads: int, device: str = "cpu") -> BackendInfo:
        # torch.optim imports torch._dynamo on the first optimizer it builds (seconds): import it at
        # start-up so it is not charged to the first cell's time and --cell-timeout.
        import torch._dynamo  # noqa: F401

        torch.set_num_threads(threads)
        try:
            torch.set_num_interop_threads(1)
        except RuntimeError:  # already set in this process (inter-op pool started)
            pass
        if device in ("gpu", "auto") and torch.cuda.is_available():
            self.device = torch.device("cuda")
        elif device == "gpu":
            raise Unsupported("no CUDA device visible to PyTorch")
        name = torch.cuda.get_device_name(0) if self.device.type == "cuda" else "cpu"
        return BackendInfo(
            framework="pytorch",
            versions={"torch": torch.__version__},
            device=name,
            threads={"intra_op": torch.get_num_threads(), "inter_op": torch.get_num_interop_threads()},
        )

    # -- model -----------------------------------------------------------------------------------
    def build(self, model: ModelSpec, train: TrainSpec, input_shape: tuple[int, ...], num_classes: int) -> None:
        self.train_spec = train
        self.mode = self.resolve_mode(train.mode)
        self._configure_precision(train.precision)
        torch.manual_seed(train.seed)  # dropout masks: reproducible within torch (never equal across frameworks)
        self.net, self.owners = _build_modules(model, train, input_shape, num_classes)
        self.net.to(self.device)
        self.params = param_specs(model, input_shape, num_classes)
        self.num_classes = num_classes
        self.images = len(input_shape) == 3
        self.forward = torch.compile(self.net) if self.mode == "compiled" else self.net
        self.reset_optimizer()

    def _configure_precision(self, precision: str) -> None:
        cuda = self.device.type == "cuda"
        if precision == "tf32" and not cuda:
            raise Unsupported("tf32 needs an NVIDIA GPU")
        if cuda:
            torch.backends.cuda.matmul.allow_tf32 = precision == "tf32"
            torch.backends.cudnn.allow_tf32 = precision == "tf32"
        self.autocast_dtype = torch.bfloat16 if precision == "bf16" else None

    def _lookup(self, spec) -> torch.Tensor:
        return getattr(self.owners[spec.layer], _TORCH_PARAM[spec.name])

    def set_weights(self, weights: list[np.ndarray]) -> None:
        with torch.no_grad():
            for spec, value in zip(self.params, weights, strict=True):
                target = self._lookup(spec)
                target.copy_(torch.from_numpy(np.ascontiguousarray(_to_torch_layout(spec.name, value))))

    def get_weights(self) -> list[np.ndarray]:
        return [_to_canonical_layout(s.name, self._lookup(s).detach().cpu().numpy()).copy() for s in self.params]

    def reset_optimizer(self) -> None:
        t = self.train_spec
        trainable = [self._lookup(s) for s in self.params if s.trainable]
        if t.optimizer in ("sgd", "momentum"):
            momentum = t.momentum if t.optimizer == "momentum" else 0.0
            self.optimizer = torch.optim.SGD(trainable, lr=t.lr, momentum=momentum, dampening=0.0, nesterov=False)
        elif t.optimizer == "rmsprop":
            self.optimizer = torch.optim.RMSprop(trainable, lr=t.lr, alpha=t.rho, eps=t.epsilon, momentum=0.0, centered=False)
        else:
            self.optimizer = torch.optim.Adam(trainable, lr=t.lr, betas=(t.beta1, t.beta2), eps=t.epsilon)
        self.decayed = trainable
        self._losses: list[torch.Tensor] = []

    # -- training --------------------------------------------------------------------------------
    def _input(self, x: np.ndarray) -> torch.Tensor:
        tensor = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)).to(self.device)
        return tensor.permute(0, 3, 1, 2).contiguous() if self.images else tensor

    def load_data(self, x: np.ndarray, y: np.ndarray) -> None:
        self.x = self._input(x)
        self.y = torch.from_numpy(y.astype(np.int64)).to(self.device)

    def _loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        logits = logits.float()
        loss = self.train_spec.loss
        if loss == "cce":
            return F.cross_entropy(logits, labels)
        onehot = F.one_hot(labels, self.num_classes).float()
        if loss == "mse":
            return (torch.softmax(logits, dim=1) - onehot).pow(2).mean()
        if loss == "mae":
            return (torch.softmax(logits, dim=1) - onehot).abs().mean()
        if loss == "bce":
            return F.binary_cross_entropy_with_logits(logits, onehot)
        return torch.clamp(1.0 - (2.0 * onehot - 1.0) * logits, min=0.0).mean()

    def _forward_loss(self, x: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        if self.autocast_dtype is None:
            return self._loss(self.forward(x), labels)
        with torch.autocast(self.device.type, dtype=self.autocast_dtype):
            return self._loss(self.forward(x), labels)

    def train_step(self, batch: np.ndarray) -> None:
        index = torch.from_numpy(batch)
        if self.device.type != "cpu":
            index = index.to(self.device, non_blocking=True)
        if not self.net.training:  # a per-step .train() walks every module: only switch when needed
            self.net.train()
        self.optimizer.zero_grad(set_to_none=True)
        loss = self._forward_loss(self.x[index], self.y[index])
        loss.backward()
        decay = self.train_spec.weight_decay
        if decay:
            with torch.no_grad():  # decoupled, as Keras and AdamW do: w -= lr * wd * w
                torch._foreach_mul_(self.decayed, 1.0 - self.train_spec.lr * decay)
        self.optimizer.step()
        self._losses.append(loss.detach())

    def begin_epoch(self) -> None:
        if self.device.type == "cuda":
            self._start_event = torch.cuda.Event(enable_timing=True)
            self._end_event = torch.cuda.Event(enable_timing=True)
            self._start_event.record()

    def finish_epoch(self) -> EpochResult:
        device_seconds = None
        if self.device.type == "cuda" and getattr(self, "_start_event", None) is not None:
            self._end_event.record()
            self._end_event.synchronize()
            device_seconds = self._start_event.elapsed_time(self._end_event) / 1000.0
            self._start_event = None
        losses = torch.stack(self._losses).float().cpu().numpy() if self._losses else np.zeros(0)
        self._losses = []
        return EpochResult(losses.astype(np.float64), device_seconds)

    def synchronize(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize()

    # -- inference -------------------------------------------------------------------------------
    def logits(self, x: np.ndarray) -> np.ndarray:
        self.net.eval()
        with torch.no_grad():
            if self.autocast_dtype is None:
                out = self.forward(self._input(x))
            else:
                with torch.autocast(self.device.type, dtype=self.autocast_dtype):
                    out = self.forward(self._input(x))
        return out.float().cpu().numpy()

    def loss_and_gradients(self, x: np.ndarray, y: np.ndarray) -> tuple[float, list[np.ndarray]]:
        buffers = {name: b.clone() for name, b in self.net.named_buffers()}
        self.net.train()
        self.net.zero_grad(set_to_none=True)
        labels = torch.from_numpy(y.astype(np.int64)).to(self.device)
        loss = self._forward_loss(self._input(x), labels)
        loss.backward()
        grads = [_to_canonical_layout(s.name, self._lookup(s).grad.cpu().numpy()).copy() for s in self.params if s.trainable]
        self.net.zero_grad(set_to_none=True)
        with torch.no_grad():
            for name, b in self.net.named_buffers():
                b.copy_(buffers[name])
        return float(loss.item()), grads

    # -- measurement and artifacts ---------------------------------------------------------------
    def reset_peak_memory(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()

    def peak_memory(self) -> MemoryReading:
        if self.device.type == "cuda":
            return MemoryReading(int(torch.cuda.max_memory_allocated()), "torch.cuda.max_memory_allocated")
        return MemoryReading(None, "none (cpu)")

    def save(self, directory: Path) -> Path:
        path = Path(directory) / "model.pt"
        torch.save(self.net.state_dict(), path)
        return path

    @property
    def loss_name(self) -> str:
        return self.train_spec.loss

    def semantics(self) -> dict[str, str]:
        t = self.train_spec
        return {
            "mode": self.mode + (" (torch.compile of the model; optimizer eager)" if self.mode == "compiled" else ""),
            "init": "canonical numpy glorot_uniform, bias 0 (loaded; torch's kaiming init unused)",
            "layout": "NCHW inside, canonical NHWC/HWIO at the boundary; Flatten in H,W,C order",
            "bn_momentum": f"torch momentum {1 - t.bn_momentum:.4g} (= suite {t.bn_momentum} in the Keras sense)",
            "bn_epsilon": f"{t.bn_epsilon:g}",
            "bn_running_variance": "unbiased n/(n-1) (torch, not switchable)",
            "leaky_relu_slope": f"{t.leaky_relu_slope:g}",
            "loss": "from logits, mean over the batch",
            "rmsprop_epsilon": "outside sqrt: g / (sqrt(v) + eps)",
            "adam_epsilon": "on bias-corrected sqrt(v_hat): m_hat / (sqrt(v_hat) + eps)",
            "weight_decay": "decoupled (w -= lr * wd * w), every trainable array" if t.weight_decay else "off",
            "precision": t.precision + (" (autocast bf16)" if self.autocast_dtype is not None else ""),
            "threads": f"intra {torch.get_num_threads()}, inter {torch.get_num_interop_threads()}",
        }

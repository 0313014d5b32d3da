"""The NumPy reference run as a (slow) backend, so the harness can train the oracle like any framework.

A thin adapter over ``bench.reference``: float32 at the boundary like every backend, float64
inside. By default it follows the suite's canonical rules (``reference.CANONICAL``); the parity
ladder also runs it with a framework's documented rules (``reference.Rules``) to check that
framework exactly. Dropout masks come from a NumPy generator seeded by the train seed.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from threadpoolctl import threadpool_info, threadpool_limits

from backends.base import Backend, BackendInfo, EpochResult, Unsupported
from bench import reference
from bench.spec import ModelSpec, TrainSpec

RMSPROP_EPS = {"outside_sqrt": "outside sqrt: g / (sqrt(v) + eps)", "inside_sqrt": "inside sqrt: g / sqrt(v + eps)"}
ADAM_EPS = {
    "corrected": "on the bias-corrected sqrt(v_hat): m_hat / (sqrt(v_hat) + eps)",
    "uncorrected": "uncorrected, added to sqrt(v): sqrt(1-b2^t)/(1-b1^t) * m / (sqrt(v) + eps)",
}
BN_VARIANCE = {"biased": "biased batch variance", "unbiased": "unbiased batch variance, var * m/(m-1)"}
LEAKY_AT_ZERO = {"slope": "slope (as torch and TF)", "one": "one (as jax.nn.leaky_relu)"}


class NumpyBackend(Backend):
    name = "numpy"
    framework = "numpy"
    modes = ("eager",)

    def __init__(self, rules: reference.Rules = reference.CANONICAL) -> None:
        self.rules = rules

    def setup(self, threads: int, device: str = "cpu") -> BackendInfo:
        if device == "gpu":
            raise Unsupported("the NumPy reference runs on the CPU only")
        self._thread_limit = threadpool_limits(limits=threads)  # BLAS pools; kept alive for the process
        blas = {info["internal_api"]: info["num_threads"] for info in threadpool_info()}
        return BackendInfo(framework="numpy", versions={"numpy": np.__version__}, device="cpu", threads=blas)

    def build(self, model: ModelSpec, train: TrainSpec, input_shape: tuple[int, ...], num_classes: int) -> None:
        self.resolve_mode(train.mode)
        if train.precision != "fp32":
            raise Unsupported(f"the NumPy reference computes in float64; precision {train.precision!r} is not modelled")
        self.train = train
        self.net = reference.Network(model, train, input_shape, num_classes, self.rules)
        self.optimizer = reference.Optimizer(train, self.rules)
        self.rng = np.random.default_rng([train.seed, 0xD0])
        self._losses: list[float] = []

    def set_weights(self, weights: list[np.ndarray]) -> None:
        self.net.set_weights(weights)

    def get_weights(self) -> list[np.ndarray]:
        return [p.astype(np.float32) for p in self.net.params]

    def reset_optimizer(self) -> None:
        self.optimizer.reset()
        self._losses = []

    def load_data(self, x: np.ndarray, y: np.ndarray) -> None:
        self.x, self.y = np.asarray(x, np.float32), np.asarray(y, np.int64)

    def _masks(self, n: int, rng: np.random.Generator) -> dict[int, np.ndarray]:
        net = self.net
        return reference.draw_dropout_masks(net.model, net.input_shape, net.num_classes, n, rng)

    def train_step(self, batch: np.ndarray) -> None:
        x, y = self.x[batch], self.y[batch]
        self._losses.append(reference.train_step(self.net, self.optimizer, x, y, self._masks(len(batch), self.rng)))

    def finish_epoch(self) -> EpochResult:
        losses, self._losses = np.asarray(self._losses, dtype=np.float64), []
        return EpochResult(losses)

    def synchronize(self) -> None:
        """Nothing is asynchronous here."""

    def logits(self, x: np.ndarray) -> np.ndarray:
        return self.net.forward(x, training=False).logits.astype(np.float32)

    def loss_and_gradients(self, x: np.ndarray, y: np.ndarray) -> tuple[float, list[np.ndarray]]:
        masks = self._masks(len(x), np.random.default_rng([self.train.seed, 0xD1]))  # leaves the training stream alone
        loss, grads, _ = self.net.loss_and_gradients(x, y, masks)
        return loss, [g.astype(np.float32) for g in grads]

    def save_native(self, directory: Path) -> Path:
        """NumPy's own format: an ``.npz`` of the canonical arrays keyed 'layer.name'."""
        path = Path(directory) / "model.npz"
        np.savez(path, **{spec.key: p for spec, p in zip(self.net.specs, self.get_weights(), strict=True)})
        return path

    def load_native(self, path: Path) -> None:
        with np.load(path, allow_pickle=False) as saved:
            self.set_weights([saved[spec.key] for spec in self.net.specs])
        self.reset_optimizer()

    def semantics(self) -> dict[str, str]:
        return {
            "mode": "eager (NumPy, float64 inside, float32 at the boundary)",
            "rmsprop_epsilon": f"{self.train.epsilon}, {RMSPROP_EPS[self.rules.rmsprop_eps]}",
            "adam_epsilon": f"{self.train.epsilon}, {ADAM_EPS[self.rules.adam_eps]}",
            "bn_running_variance": BN_VARIANCE[self.rules.bn_running_variance],
            "bn_momentum": f"{self.train.bn_momentum} (Keras sense: weight of the old statistic)",
            "bn_epsilon": f"{self.train.bn_epsilon}",
            "leaky_relu_slope": f"{self.train.leaky_relu_slope}",
            "leaky_relu_grad_at_zero": LEAKY_AT_ZERO[self.rules.leaky_relu_grad_at_zero],
            "weight_decay": f"decoupled {self.train.weight_decay}: w -= lr*wd*w" if self.train.weight_decay else "off",
            "dropout": "inverted, masks from numpy default_rng([seed, 0xD0])",
            "init": "canonical numpy glorot_uniform",
        }

    @property
    def loss_name(self) -> str:
        return self.train.loss

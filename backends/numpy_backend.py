"""The NumPy reference run as a (slow) backend, so the harness can train the oracle like any framework.

A thin adapter over ``bench.reference``: float32 at the boundary like every backend, float64
inside. By default it follows the suite's canonical rules (``bench.spec.rules.CANONICAL``); the parity
ladder also runs it with a framework's declared rules to check that framework exactly. Dropout
masks come from a NumPy generator seeded by the train seed.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from threadpoolctl import threadpool_info, threadpool_limits

from backends import REGISTRY
from backends.base import Backend, BackendInfo, Unsupported
from bench import reference
from bench.reference.network import LAYERS
from bench.reference.ops import ACTIVATIONS
from bench.reference.optimizer import UPDATES
from bench.spec import augment
from bench.spec.losses import LOSS_TABLE
from bench.spec.model import walk
from bench.spec.rules import CANONICAL, Rules


class NumpyBackend(Backend):
    name = "numpy"
    framework = "numpy"
    modes = REGISTRY[name].modes
    TRANSLATIONS = {"layer": LAYERS, "activation": ACTIVATIONS, "loss": LOSS_TABLE, "optimizer": UPDATES,
                    "augment": augment.REFERENCE}

    def __init__(self, rules: Rules = CANONICAL) -> None:
        self.RULES = rules  # the oracle follows whichever rules it is given

    synchronous_steps = True  # NumPy computes as it is called

    def _setup(self, threads: int) -> BackendInfo:
        self._thread_limit = threadpool_limits(limits=threads)  # BLAS pools; kept alive for the process
        blas = {info["internal_api"]: info["num_threads"] for info in threadpool_info()}
        return BackendInfo(framework="numpy", versions={"numpy": np.__version__}, device="cpu", threads=blas)

    def _build(self) -> None:
        if self.on_gpu:
            raise Unsupported("the NumPy reference runs on the CPU only")
        if self.train.precision != "fp32":
            raise Unsupported(f"the NumPy reference computes in float64; precision {self.train.precision!r} is not modelled")
        layers = [layer for _, layer in walk(self.model.layers)]
        names = [("layer", layer.type) for layer in layers] + [("loss", self.train.loss), ("optimizer", self.train.optimizer)]
        names += [("activation", layer.activation) for layer in layers if hasattr(layer, "activation")]
        for kind, name in names:
            self.translate(kind, name)
        self.net = reference.Network(self.model, self.train, self.input_shape, self.num_classes, self.RULES)
        self.optimizer = reference.Optimizer(self.train, self.RULES)
        self.rng = np.random.default_rng([self.train.seed, 0xD0])

    def _set_weights(self, weights: list[np.ndarray]) -> None:
        self.net.set_weights(weights)

    def get_weights(self) -> list[np.ndarray]:
        return [p.astype(np.float32) for p in self.net.params]

    def _reset_optimizer(self) -> None:
        self.optimizer.reset()

    def _place_data(self, x: np.ndarray, y: np.ndarray) -> None:
        self.x, self.y = np.asarray(x, np.float32), np.asarray(y, np.int64)

    def _masks(self, n: int, rng: np.random.Generator) -> dict[int, np.ndarray]:
        return reference.draw_dropout_masks(self.model, self.input_shape, self.num_classes, n, rng)

    def _step(self, batch: np.ndarray, params: augment.Params | None) -> float:
        x = self.x[batch] if params is None else self._augment(self.x[batch], params)
        return reference.train_step(self.net, self.optimizer, x, self.y[batch], self._masks(len(batch), self.rng), self.step_lr)

    def _augmented(self, x: np.ndarray, params: augment.Params) -> np.ndarray:
        return self._augment(x, params)

    def _read_losses(self, pending: list[float]) -> np.ndarray:
        return np.asarray(pending, dtype=np.float64)

    def _synchronize(self, pending: list[float]) -> None:
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
        np.savez(path, **{spec.key: p for spec, p in zip(self.specs, self.get_weights(), strict=True)})
        return path

    def _load_native(self, path: Path) -> None:
        with np.load(path, allow_pickle=False) as saved:
            self.set_weights([saved[spec.key] for spec in self.specs])

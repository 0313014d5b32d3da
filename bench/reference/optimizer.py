"""The oracle's optimizers: SGD, momentum, RMSprop, Adam and AdamW as ``TrainSpec`` and ``Rules`` define them.

One update rule per optimizer in a table; each updates one array in place from its gradient, the
step's learning rate and the per-array state (momentum buffer or first moment, second moment) kept by
``Optimizer``. AdamW is Adam's rule after the decoupled decay every optimizer applies,
w -= lr_t * weight_decay * w: what torch.optim.AdamW, keras.optimizers.AdamW and optax.adamw do
(docs/architecture.md, "Framework rules"); only its default weight decay differs (bench/spec/train.py).
The rate of each step comes from bench/spec/schedule.py, never from a framework's scheduler.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np

from bench.errors import SpecError
from bench.reference.network import Masks, Network
from bench.spec.rules import CANONICAL, Rules
from bench.spec.train import TrainSpec

State = dict[str, np.ndarray | float]


def _sgd(w, g, state, s: TrainSpec, rules: Rules, t: int, lr: float) -> None:
    w -= lr * g


def _momentum(w, g, state, s: TrainSpec, rules: Rules, t: int, lr: float) -> None:
    if rules.momentum_form == "velocity":  # Keras: v = mu*v - lr*g; w += v
        v = state["first"] = s.momentum * state.get("first", 0.0) - lr * g
        w += v
    else:  # torch: buf = mu*buf + g; w -= lr*buf
        v = state["first"] = s.momentum * state.get("first", 0.0) + g
        w -= lr * v


def _rmsprop(w, g, state, s: TrainSpec, rules: Rules, t: int, lr: float) -> None:
    v = state["second"] = s.rho * state.get("second", 0.0) + (1 - s.rho) * g**2
    w -= lr * g / (np.sqrt(v + s.epsilon) if rules.rmsprop_eps == "inside_sqrt" else np.sqrt(v) + s.epsilon)


def _adam(w, g, state, s: TrainSpec, rules: Rules, t: int, lr: float) -> None:
    m = state["first"] = s.beta1 * state.get("first", 0.0) + (1 - s.beta1) * g
    v = state["second"] = s.beta2 * state.get("second", 0.0) + (1 - s.beta2) * g**2
    c1, c2 = 1 - s.beta1**t, 1 - s.beta2**t
    if rules.adam_eps == "uncorrected":
        w -= lr * math.sqrt(c2) / c1 * m / (np.sqrt(v) + s.epsilon)
    else:
        w -= lr * (m / c1) / (np.sqrt(v / c2) + s.epsilon)


UPDATES: dict[str, Callable[..., None]] = {"sgd": _sgd, "momentum": _momentum, "rmsprop": _rmsprop, "adam": _adam, "adamw": _adam}


class Optimizer:
    def __init__(self, train: TrainSpec, rules: Rules = CANONICAL):
        if train.optimizer not in UPDATES:
            raise SpecError(f"the NumPy reference has no optimizer {train.optimizer!r}; valid: {', '.join(UPDATES)}")
        self.train, self.rules, self.update = train, rules, UPDATES[train.optimizer]
        self.reset()

    def reset(self) -> None:
        self.t = 0
        self.state: dict[int, State] = {}

    def step(self, params: list[np.ndarray], grads: list[np.ndarray], indices: list[int], lr: float | None = None) -> None:
        """Update ``params[indices[k]]`` in place with ``grads[k]`` at rate ``lr`` (the schedule's rate of
        this step; ``train.lr`` when the schedule is constant); weight decay is decoupled, at the same rate."""
        if lr is None:
            if self.train.schedule != "constant":
                raise ValueError(f"a {self.train.schedule} schedule needs each step's rate (bench.spec.schedule.learning_rates)")
            lr = self.train.lr
        self.t += 1
        for k, g in zip(indices, grads, strict=True):
            w = params[k]
            if self.train.weight_decay > 0:
                w -= lr * self.train.weight_decay * w  # shrink the weight, not the gradient
            self.update(w, g, self.state.setdefault(k, {}), self.train, self.rules, self.t, lr)


def train_step(net: Network, opt: Optimizer, x: np.ndarray, y: np.ndarray, masks: Masks | None = None,
               lr: float | None = None) -> float:
    """One training step at rate ``lr``: forward in training mode, running statistics, backward, optimizer update."""
    loss, grads, fwd = net.loss_and_gradients(x, y, masks)
    net.update_running_stats(fwd)
    opt.step(net.params, grads, net.trainable, lr)
    return loss

"""PyTorch's compiled training step as one graph, and what the compiler says it captured.

``torch.compile`` of a step that calls ``loss.backward()`` and ``optimizer.step()`` is not one graph
in this torch: ``Tensor.backward()`` breaks the graph unless dynamo may trace autograd
(``torch._dynamo.config.trace_autograd_ops``), the optimizer's ``step`` inserts two graph breaks of
its own around the update (``torch.optim.optimizer._use_grad``, pytorch/pytorch#104053), and once
the gradients are written to ``.grad`` inside the trace, dynamo breaks again before the optimizer
reads them ("optimizer: pending mutation on parameter"). So the compiled step here takes the
gradients with ``torch.autograd.grad`` (traced) and updates the weights with the optimizer's own
functional form (``torch.optim.adam.adam``, ``sgd.sgd``, ``rmsprop.rmsprop``: the function
``Optimizer.step`` itself calls; ``AdamW`` is ``adam`` with its decoupled decay) on the optimizer's own
state tensors, at the step's learning rate handed in as a 0-d tensor: a Python float read inside the
trace would be a constant of the graph, so a schedule would compile a new graph every step (the
tensor rate is what torch's compile tutorial prescribes for schedulers). Forward, loss, gradients,
weight decay and the update are then one graph, with the same arithmetic as the eager step
(tests/test_torch_compiled.py holds the losses together and asserts no graph break).

The optimizer's state is created the way torch creates it, by one eager ``step`` on zero gradients
at rate 0 at build (no weight moves: a zero gradient alone would still shrink AdamW's weights by its
decay), and is zeroed in place by the adapter's reset, so the graph's guards on those tensors keep holding.

Dynamo's counters (``torch._dynamo.utils.counters``) say how many graphs and graph breaks a call
produced; the record keeps them (``graphs``, ``graph_breaks`` and each break's reason), and the
inductor and AOTAutograd cache counters say whether compiled code came from the persistent cache.
Under ``mode="reduce-overhead"`` inductor may still decide not to use CUDA graphs (CPU tensors in
the graph, mutated inputs, dynamic shapes); it then bumps ``counters["inductor"]["cudagraph_skips"]``
and logs "skipping cudagraphs due to ..." (on its ``cudagraphs`` artifact logger in this torch, on
``perf_hints`` in earlier ones), which ``CudagraphSkips`` reads, so the record says ``used`` or
``skipped: <inductor's reason>``.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable

import torch
from torch._dynamo.utils import counters
from torch.optim.adam import adam
from torch.optim.rmsprop import rmsprop
from torch.optim.sgd import sgd

Update = Callable[[list[torch.Tensor], torch.Tensor], None]
"""Applies one optimizer update, in place, from the gradients of the optimizer's parameters and the
step's learning rate (a 0-d tensor, so a new rate is a new value, not a new graph)."""


def _state(optimizer: torch.optim.Optimizer, key: str) -> list[torch.Tensor]:
    return [optimizer.state[p][key] for p in optimizer.param_groups[0]["params"]]


def _sgd(optimizer: torch.optim.SGD) -> Update:
    group = optimizer.param_groups[0]
    params = group["params"]
    buffers = _state(optimizer, "momentum_buffer") if group["momentum"] else [None] * len(params)
    return lambda grads, lr: sgd(
        params, grads, buffers, foreach=group["foreach"], fused=group["fused"], weight_decay=group["weight_decay"],
        momentum=group["momentum"], lr=lr, dampening=group["dampening"], nesterov=group["nesterov"],
        maximize=group["maximize"])


def _rmsprop(optimizer: torch.optim.RMSprop) -> Update:
    group = optimizer.param_groups[0]
    averages, steps = _state(optimizer, "square_avg"), _state(optimizer, "step")
    gradient_averages = _state(optimizer, "grad_avg") if group["centered"] else []
    buffers = _state(optimizer, "momentum_buffer") if group["momentum"] > 0 else []
    return lambda grads, lr: rmsprop(
        group["params"], grads, averages, gradient_averages, buffers, steps, foreach=group["foreach"],
        maximize=group["maximize"], differentiable=group["differentiable"], capturable=group["capturable"],
        lr=lr, alpha=group["alpha"], eps=group["eps"], weight_decay=group["weight_decay"],
        momentum=group["momentum"], centered=group["centered"])


def _adam(optimizer: torch.optim.Adam) -> Update:
    group = optimizer.param_groups[0]
    first, second, steps = _state(optimizer, "exp_avg"), _state(optimizer, "exp_avg_sq"), _state(optimizer, "step")
    largest = _state(optimizer, "max_exp_avg_sq") if group["amsgrad"] else []
    beta1, beta2 = group["betas"]
    return lambda grads, lr: adam(
        group["params"], grads, first, second, largest, steps, foreach=group["foreach"], capturable=group["capturable"],
        differentiable=group["differentiable"], fused=group["fused"], decoupled_weight_decay=group["decoupled_weight_decay"],
        amsgrad=group["amsgrad"], beta1=beta1, beta2=beta2, lr=lr, weight_decay=group["weight_decay"],
        eps=group["eps"], maximize=group["maximize"])


FUNCTIONAL: dict[type, Callable[[torch.optim.Optimizer], Update]] = {
    torch.optim.SGD: _sgd, torch.optim.RMSprop: _rmsprop, torch.optim.Adam: _adam, torch.optim.AdamW: _adam,
}
"""Per torch optimizer class, its update as the functional call its own ``step`` makes."""


def functional_update(optimizer: torch.optim.Optimizer) -> Update:
    """The optimizer's update as one traceable call on its own state, which this creates first (one
    eager step on zero gradients at rate 0: torch's own initialisation, and no weight moves)."""
    group = optimizer.param_groups[0]
    for p in group["params"]:
        p.grad = torch.zeros_like(p)
    rate, group["lr"] = group["lr"], 0.0
    optimizer.step()
    group["lr"] = rate
    optimizer.zero_grad(set_to_none=True)
    return FUNCTIONAL[type(optimizer)](optimizer)


def enable_tracing_autograd() -> None:
    """Let dynamo trace ``torch.autograd.grad`` instead of breaking the graph there (process-wide)."""
    torch._dynamo.config.trace_autograd_ops = True


class GraphCount:
    """Graphs and graph breaks dynamo reports between ``__init__`` and ``facts`` (its counters only grow)."""

    def __init__(self) -> None:
        self.graphs = counters["stats"]["unique_graphs"]
        self.breaks = Counter(counters["graph_break"])

    def facts(self) -> dict:
        breaks = Counter(counters["graph_break"]) - self.breaks
        return {
            "graphs": counters["stats"]["unique_graphs"] - self.graphs,
            "graph_breaks": sum(breaks.values()),
            "graph_break_reasons": [reason.splitlines()[0] for reason in breaks],
        }


SKIP_LOGGERS = ("torch._inductor.cudagraph_utils.__cudagraphs", "torch._inductor.cudagraph_utils.__perf_hints")
"""Inductor's artifact loggers that say "skipping cudagraphs due to ..." (a handler on a logger gets its
warnings whether or not the artifact is enabled)."""
SKIP_PREFIX = "skipping cudagraphs due to "


class CudagraphSkips(logging.Handler):
    """Whether inductor used CUDA graphs for what it compiled since ``__init__``, and if not, why."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.skips, self.reasons = counters["inductor"]["cudagraph_skips"], []
        for name in SKIP_LOGGERS:
            logging.getLogger(name).addHandler(self)

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        if message.startswith(SKIP_PREFIX):
            self.reasons.append(message.removeprefix(SKIP_PREFIX))

    def close(self) -> None:
        for name in SKIP_LOGGERS:
            logging.getLogger(name).removeHandler(self)
        super().close()

    def verdict(self) -> str:
        """'used', or 'skipped: ' and inductor's reasons."""
        if counters["inductor"]["cudagraph_skips"] == self.skips and not self.reasons:
            return "used"
        return "skipped: " + ("; ".join(dict.fromkeys(self.reasons)) or "inductor gave no reason")


CACHE_COUNTERS = (("inductor", "fxgraph_cache_hit", "fxgraph_cache_miss"),
                  ("aot_autograd", "autograd_cache_hit", "autograd_cache_miss"))
"""Inductor's FX-graph cache and AOTAutograd's cache: (counter group, hits, misses)."""


class CacheCount:
    """Hits and misses of torch's persistent compile caches since ``__init__``."""

    def __init__(self) -> None:
        self.start = self._read()

    @staticmethod
    def _read() -> tuple[int, int]:
        hits = sum(counters[group][hit] for group, hit, _ in CACHE_COUNTERS)
        return hits, sum(counters[group][miss] for group, _, miss in CACHE_COUNTERS)

    def state(self) -> str | None:
        """'cold' when anything was compiled and stored, 'warm' when everything was loaded, None when
        the caches were not asked (nothing compiled)."""
        hits, misses = (now - then for now, then in zip(self._read(), self.start))
        return "cold" if misses else ("warm" if hits else None)

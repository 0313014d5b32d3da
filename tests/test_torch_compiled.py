"""PyTorch's compiled mode compiles the training step as one graph and computes what eager computes.

``compiled`` runs forward, loss, gradients and the optimizer update through ``torch.compile``
(backends/torch_step.py). Dynamo must report one graph and no graph break for every seed model
with a plain MLP, BatchNorm and convolutions, and every optimizer's functional update; its losses
over 20 steps must equal eager's to fp32 tolerance (inductor fuses the arithmetic, so not bit for
bit), and once the first steps have compiled, neither more steps nor the harness's warm-up undo
(weights back, optimizer state zeroed in place) may compile again: a recompile would land inside
the timed epochs. (The CNN trains with momentum here: RMSprop's and Adam's normalisation amplify
the last-bit differences of fused convolution gradients to a few percent of the loss within 20
steps, which is fp32 chaos, not a different step; the MLPs cover those two updates.)

Residual nets and transformers get one small model holding both (a residual block with BatchNorm and
a strided projection, then patches, positions, a pre-norm attention block and a GELU MLP block),
trained by AdamW under a warm-up schedule: the rate changes every step, and since the compiled step
takes it as a tensor's value, it still compiles once.
"""

from __future__ import annotations

import numpy as np
import pytest

from backends import torch_step
from bench.measure import training
from bench.spec.data import epoch_batches
from bench.spec.model import (
    GELU,
    SEED_MODELS,
    Activation,
    BatchNorm,
    Conv2D,
    Dense,
    GlobalAvgPool,
    LayerNorm,
    ModelSpec,
    PatchEmbed,
    PositionEmbedding,
    Residual,
    SelfAttention,
)
from bench.spec.train import TrainSpec
from tests.conftest import loaded_backend

torch = pytest.importorskip("torch")
from torch._dynamo.utils import counters  # noqa: E402

STEPS = 20
HYBRID = ModelSpec(name="residual_transformer", layers=(
    Conv2D(filters=4, kernel=3, padding="same"), BatchNorm(), Activation(activation="hidden"),
    Residual(layers=(Conv2D(filters=8, kernel=3, stride=2, padding="same"), BatchNorm(), Activation(activation="hidden"),
                     Conv2D(filters=8, kernel=3, padding="same"), BatchNorm()), projection="conv", stride=2, activation="hidden"),
    PatchEmbed(patch=7, dim=8), PositionEmbedding(),
    Residual(layers=(LayerNorm(), SelfAttention(heads=2))),
    Residual(layers=(LayerNorm(), Dense(units=16), GELU(approximate="tanh"), Dense(units=8))),
    LayerNorm(), GlobalAvgPool(), Dense(units=10)))
"""resnet's and vit's layers in one model (28x28 -> 14x14x8 -> 4 tokens of 8), to compile once."""
MODELS = SEED_MODELS | {HYBRID.name: HYBRID}


def _compilations() -> tuple[int, int]:
    """Frames dynamo has converted and graphs it has produced since its last reset."""
    return counters["frames"]["total"], counters["stats"]["unique_graphs"]


def _losses(mode: str, model: str, optimizer: str, schedule: str, data) -> tuple[np.ndarray, list[tuple[int, int]], dict]:
    backend = loaded_backend("torch")
    train = TrainSpec(optimizer=optimizer, batch_size=32, mode=mode, schedule=schedule)
    weights = training.prepare(backend, MODELS[model], train, data.x_train, data.y_train, 10)
    batches = epoch_batches(len(data.x_train), train.batch_size, train.seed, 0)[:STEPS]
    for rows in batches[:3]:  # warm-up: the first steps compile
        backend.train_step(rows)
    backend.finish_epoch()
    graphs = backend.compiled_graphs()
    seen = [_compilations()]
    training.restart(backend, weights)  # what the harness does before the timed epochs
    result, _ = training.run_steps(backend, batches)
    seen.append(_compilations())
    return result.losses, seen, graphs


@pytest.mark.parametrize(("model", "optimizer", "schedule"), [
    ("mlp", "adam", "constant"), ("mlp_bn", "rmsprop", "constant"), ("cnn", "momentum", "constant"),
    (HYBRID.name, "adamw", "warmup_cosine"),
])
def test_the_compiled_step_is_one_graph_matches_eager_and_never_recompiles(model, optimizer, schedule, mnist_small):
    eager, _, none = _losses("eager", model, optimizer, schedule, mnist_small)
    compiled, seen, graphs = _losses("compiled", model, optimizer, schedule, mnist_small)
    backend = loaded_backend("torch")
    assert none == {} and backend.mode == "compiled" and "one graph" in backend.facts()["mode_description"]
    assert graphs["graph_breaks"] == 0 and graphs["graphs"] == 1, graphs["graph_break_reasons"]
    assert "cudagraphs" not in graphs  # said under compiled-cudagraphs only: the record's field is null here
    assert seen[0][0] > 0, "the compiled mode compiled nothing"
    assert seen[1] == seen[0], f"recompiled after the first steps: (frames, graphs) {seen[0]} -> {seen[1]}"
    assert compiled.shape == (STEPS,) and np.all(np.isfinite(compiled))
    np.testing.assert_allclose(compiled, eager, rtol=1e-4)
    assert compiled[-1] < compiled[0]  # it trains


def test_the_record_says_when_inductor_skipped_cuda_graphs_and_why():
    """What a compiled-cudagraphs record says, from inductor's own counter and message (CPU-testable:
    inductor's logging function is called as its compiler calls it)."""
    from torch._inductor.cudagraph_utils import log_cudagraph_skip_and_bump_counter

    listener = torch_step.CudagraphSkips()
    assert listener.verdict() == "used"
    log_cudagraph_skip_and_bump_counter("skipping cudagraphs due to mutated inputs (1 instances)")
    assert listener.verdict() == "skipped: mutated inputs (1 instances)"
    listener.close()
    assert torch_step.CudagraphSkips().verdict() == "used"  # a new cell starts counting afresh


def test_cuda_graph_mode_evaluates_in_full_batches_only(mnist_small):
    """A CUDA graph is recorded per input shape: under compiled-cudagraphs the last partial batch is
    padded, so evaluation replays one shape (the padding rows change no real row's logits)."""
    backend = loaded_backend("torch")
    training.prepare(backend, SEED_MODELS["mlp"], TrainSpec(), mnist_small.x_train, mnist_small.y_train, 10)
    x = mnist_small.x_train[:700]
    shapes = []
    logits = backend.logits
    backend.logits = lambda rows: shapes.append(len(rows)) or logits(rows)
    try:
        plain = backend._all_logits(x, 500)
        backend.mode = "compiled-cudagraphs"  # the mode's evaluation rule, with the eager forward of this CPU
        padded = backend._all_logits(x, 500)
    finally:
        del backend.logits
        backend.mode = "eager"
    assert shapes == [500, 200, 500, 500]
    np.testing.assert_allclose(padded, plain, rtol=1e-5, atol=1e-6)

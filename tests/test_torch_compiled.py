"""PyTorch's compiled mode compiles the whole training step and computes what eager computes.

``compiled`` runs forward, loss, backward and the optimizer step through ``torch.compile``. Its
losses over 20 steps must equal eager's to fp32 tolerance (inductor fuses the arithmetic, so not
bit for bit), and once the first steps have compiled, neither more steps nor the harness's
warm-up undo (weights back, optimizer state zeroed in place) may compile again: a recompile would
land inside the timed epochs.
"""

from __future__ import annotations

import numpy as np
import pytest

from bench.measure import training
from bench.spec.data import epoch_batches
from bench.spec.model import SEED_MODELS
from bench.spec.train import TrainSpec
from tests.conftest import loaded_backend

torch = pytest.importorskip("torch")
from torch._dynamo.utils import counters  # noqa: E402

STEPS = 20


def _compilations() -> tuple[int, int]:
    """Frames dynamo has converted and graphs it has produced since its last reset."""
    return counters["frames"]["total"], counters["stats"]["unique_graphs"]


def _losses(mode: str, optimizer: str, data) -> tuple[np.ndarray, list[tuple[int, int]]]:
    backend = loaded_backend("torch")
    train = TrainSpec(optimizer=optimizer, batch_size=32, mode=mode)
    weights = training.prepare(backend, SEED_MODELS["mlp"], train, data.x_train, data.y_train, 10)
    batches = epoch_batches(len(data.x_train), train.batch_size, train.seed, 0)[:STEPS]
    for rows in batches[:3]:  # warm-up: the first steps compile
        backend.train_step(rows)
    backend.finish_epoch()
    seen = [_compilations()]
    training.restart(backend, weights)  # what the harness does before the timed epochs
    result, _ = training.run_steps(backend, batches)
    seen.append(_compilations())
    return result.losses, seen


@pytest.mark.parametrize("optimizer", ["adam", "momentum"])
def test_the_compiled_step_matches_eager_and_never_recompiles(optimizer, mnist_small):
    eager, _ = _losses("eager", optimizer, mnist_small)
    compiled, seen = _losses("compiled", optimizer, mnist_small)
    backend = loaded_backend("torch")
    assert backend.mode == "compiled" and "whole train step" in backend.facts()["mode_description"]
    assert seen[0][0] > 0, "the compiled mode compiled nothing"
    assert seen[1] == seen[0], f"recompiled after the first steps: (frames, graphs) {seen[0]} -> {seen[1]}"
    assert compiled.shape == (STEPS,) and np.all(np.isfinite(compiled))
    np.testing.assert_allclose(compiled, eager, rtol=1e-4)
    assert compiled[-1] < compiled[0]  # it trains

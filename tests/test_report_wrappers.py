"""The report's wrapper-cost view on a synthetic run whose answers are known.

Records come from tests/test_reports.py's generator (torch eager 52k, tf graph 41k, jax jit 66k train
samples/s on mlp); Keras on JAX is made 0.5x the JAX adapter in training and 0.7x in inference, Keras
on torch 0.25x the torch adapter, so the view must find those ratios, say that tf has no native
counterpart, rank the Keras engines (tf 41k > keras-jax 33k > keras-torch 13k), and flag an accuracy
gap beyond the tolerance.
"""

from __future__ import annotations

import numpy as np
import pytest

from reports import build_report
from reports.records import records_frame
from reports.wrappers import ACCURACY_TOLERANCE, wrapper_views
from tests.test_reports import make_record, write_run

ENGINES = {"torch": ("torch", None), "jax": ("jax", None), "tf": ("tensorflow", "keras")}
WRAPPED = {"keras-jax": ("jax", "jit", 0.5, 0.7), "keras-torch": ("torch", "eager", 0.25, 0.25)}
"""Keras backend -> (engine's own backend, the mode both run, train and inference factor against it)."""


def _records(accuracy_gap: float = 0.0, seed: int = 0) -> list[dict]:
    rng = np.random.default_rng(seed)
    records = []
    for optimizer in ("adam", "rmsprop"):
        for repeat in range(3):
            natives = {b: make_record(b, m, "mlp", optimizer, "relu", repeat, rng, noise=0.01)
                       for b, m in (("torch", "eager"), ("tf", "graph"), ("jax", "jit"))}
            for backend, record in natives.items():
                engine, wrapper = ENGINES[backend]
                records.append(record | {"engine": engine, "wrapper": wrapper})
            for backend, (native, mode, train, inference) in WRAPPED.items():
                twin = natives[native]
                jitter = float(np.exp(rng.normal(0.0, 0.01)))
                records.append(twin | {
                    "backend": backend, "cell_id": twin["cell_id"].replace(native, backend, 1), "engine": native,
                    "wrapper": "keras", "train_samples_per_s": twin["train_samples_per_s"] * train * jitter,
                    "inference_samples_per_s": twin["inference_samples_per_s"] * inference * jitter,
                    "compile_seconds": twin["compile_seconds"] * 3, "peak_rss_bytes": twin["peak_rss_bytes"] + 100e6,
                    "test_accuracy": twin["test_accuracy"] + (accuracy_gap if backend == "keras-torch" else 0.0),
                    "rules": {**twin["rules"], "rmsprop_eps": "inside_sqrt"},
                })
    return records


def test_each_wrapper_is_set_beside_its_engines_own_adapter_with_ratios_and_costs():
    [view] = wrapper_views(records_frame(_records()))
    costs = {c.wrapped.backend: c for c in view.costs}
    assert view.model == "mlp" and view.wrapper == "keras" and set(costs) == {"tf", "keras-jax", "keras-torch"}
    jax, torch = costs["keras-jax"], costs["keras-torch"]
    assert (jax.native.backend, torch.native.backend, jax.n_configs) == ("jax", "torch", 2)
    assert jax.train.value == pytest.approx(0.5, rel=0.03) and jax.train.excludes(1.0)
    assert jax.inference.value == pytest.approx(0.7, rel=0.03)
    assert torch.train.value == pytest.approx(0.25, rel=0.03)
    assert jax.compile[0].value == pytest.approx(3 * jax.compile[1].value, rel=0.1)
    assert jax.host_memory[0].value > jax.host_memory[1].value
    assert jax.accuracy.value == pytest.approx(0.0, abs=1e-12) and jax.accuracy_agrees
    assert "rmsprop_eps" in jax.rules  # Keras' epsilon inside the root, Optax's outside: named beside the accuracy
    assert costs["tf"].native is None and costs["tf"].engine == "tensorflow"  # Keras on TF: no native TF adapter


def test_the_keras_engines_are_ranked_by_train_throughput():
    [view] = wrapper_views(records_frame(_records()))
    ranked = [(r.side.backend, r.engine, r.fastest) for r in view.engines]
    assert ranked == [("tf", "tensorflow", True), ("keras-jax", "jax", False), ("keras-torch", "torch", False)]
    assert view.engines[1].versus_fastest.value == pytest.approx(33 / 41, rel=0.03)
    assert view.engines[2].versus_fastest.value == pytest.approx(13 / 41, rel=0.03)


def test_an_accuracy_gap_beyond_the_tolerance_is_flagged():
    [view] = wrapper_views(records_frame(_records(accuracy_gap=4 * ACCURACY_TOLERANCE)))
    torch = next(c for c in view.costs if c.wrapped.backend == "keras-torch")
    assert torch.accuracy.value == pytest.approx(4 * ACCURACY_TOLERANCE, rel=1e-6) and torch.accuracy_agrees is False


def test_the_page_shows_the_view_and_runs_without_wrappers_or_with_older_records_have_none(tmp_path):
    html = build_report(write_run(tmp_path / "run", _records())).html.read_text()
    assert 'id="wrappers"' in html and "no adapter of tensorflow without keras in this run" in html
    assert "Which engine runs keras fastest on mlp" in html and '<span class="cmp worse">0.5' in html
    natives = [r for r in _records() if r["wrapper"] is None]
    assert not wrapper_views(records_frame(natives))  # the page's section shows only when there are views
    defaults = [r for r in _records() if r["backend"] in ("torch", "tf", "jax")]
    assert not wrapper_views(records_frame(defaults))  # Keras on TF alone has no counterpart and no engine to rank
    html = build_report(write_run(tmp_path / "defaults", defaults)).html.read_text()
    assert 'id="wrappers"' not in html and 'href="#wrappers"' not in html
    older = [{k: v for k, v in r.items() if k not in ("engine", "wrapper")} for r in _records()]
    assert not wrapper_views(records_frame(older))

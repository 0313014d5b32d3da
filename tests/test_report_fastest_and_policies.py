"""The report's issue-12 views on synthetic runs: each framework at its fastest, and harmonised vs native.

The records come from tests/test_reports.py's generator (torch eager 52k and compiled 78k samples/s,
tf graph 41k, jax jit 66k on mlp), so the right answers are known: torch wins with compiled, and
a native policy that moves tf's accuracy by -2 points shows as -2 pp with jax and torch unmoved.
"""

from __future__ import annotations

import numpy as np
import pytest

from reports import build_report
from reports.fastest import fastest_modes
from reports.figures import file_slug
from reports.headline import choose_baseline, model_headline
from reports.policies import CAVEAT, policy_comparisons
from reports.records import records_frame
from tests.test_reports import make_record, make_records, write_run


def test_the_fastest_mode_of_each_backend_is_picked_with_its_compile_cost():
    frame = records_frame(make_records())
    head = model_headline(frame, "mlp", choose_baseline(frame, None))
    fastest = fastest_modes(head)
    rows = {r.backend: r for r in fastest.rows}
    assert fastest.several_modes and fastest.baseline == "torch" and rows["torch"].is_baseline
    assert (rows["torch"].best.mode, [m.mode for m in rows["torch"].beaten]) == ("compiled", ["eager"])
    assert rows["torch"].beaten[0].versus_best.value == pytest.approx(52 / 78, rel=0.05)  # a clear loss, not noise
    assert rows["torch"].beaten[0].versus_best.excludes(1.0)
    assert (rows["tf"].best.mode, rows["jax"].best.mode) == ("graph", "jit")
    assert rows["torch"].is_fastest and not rows["jax"].is_fastest
    # compile cost is the winning mode's own (compiled ~4 s, eager ~0.02 s in the generator)
    assert rows["torch"].best.compile.value == pytest.approx(4.0, rel=0.15)
    # ratios are to torch at its best (compiled, 78k): jax 66k -> ~0.85, with an interval around it
    assert rows["jax"].versus.value == pytest.approx(66 / 78, rel=0.05)
    assert rows["jax"].versus.low <= rows["jax"].versus.value <= rows["jax"].versus.high


def test_an_eager_mode_that_beats_the_compiled_one_wins():
    rng = np.random.default_rng(1)
    records = [make_record("tf", "graph", "mlp", "adam", "relu", r, rng, speed_factor=1.0) for r in range(3)]
    records += [make_record("torch", "eager", "mlp", "adam", "relu", r, rng, speed_factor=1.0) for r in range(3)]
    records += [make_record("torch", "compiled", "mlp", "adam", "relu", r, rng, speed_factor=0.5) for r in range(3)]
    frame = records_frame(records)
    rows = {r.backend: r for r in fastest_modes(model_headline(frame, "mlp", "torch (eager)")).rows}
    assert rows["torch"].best.mode == "eager" and rows["torch"].beaten[0].mode == "compiled"
    assert rows["tf"].versus.value == pytest.approx(41 / 52, rel=0.05)


def _with_native(records: list[dict], accuracy_shift: dict[str, float]) -> list[dict]:
    """Each ok record again under the native policy, its accuracy moved per backend."""
    native = []
    for record in records:
        rules = {"rmsprop_eps": "inside_sqrt" if record["backend"] in ("tf", "jax") else "outside_sqrt"}
        copy = record | {"semantics_policy": "native", "cell_id": record["cell_id"] + "|native", "rules": rules,
                         "epsilon": 1e-8 if record["backend"] != "tf" else 1e-7, "init_source": "framework"}
        if copy["status"] == "ok":
            copy["test_accuracy"] = record["test_accuracy"] + accuracy_shift[record["backend"]]
            copy["final_train_loss"] = record["final_train_loss"] - accuracy_shift[record["backend"]]
        native.append(copy)
    harmonised = [r | {"semantics_policy": "harmonised", "init_source": "canonical",
                       "rules": {"rmsprop_eps": "inside_sqrt" if r["backend"] == "tf" else "outside_sqrt"}} for r in records]
    return harmonised + native


def test_native_minus_harmonised_is_paired_per_configuration():
    frame = records_frame(_with_native(make_records(), {"torch": 0.0, "tf": -0.02, "jax": 0.01}))
    shifts = {c.model: {r.backend: r for r in c.rows} for c in policy_comparisons(frame)}
    assert set(shifts) == {"mlp", "cnn"} and set(shifts["mlp"]) == {"torch", "tf", "jax"}
    tf = shifts["mlp"]["tf"]
    assert tf.accuracy.value == pytest.approx(-0.02, abs=1e-9) and tf.final_loss.value == pytest.approx(0.02, abs=1e-9)
    assert shifts["mlp"]["jax"].accuracy.value == pytest.approx(0.01, abs=1e-9)
    assert shifts["mlp"]["torch"].accuracy.value == pytest.approx(0.0, abs=1e-9)
    assert tf.values["native"]["epsilon"] == 1e-7 and shifts["mlp"]["torch"].values["native"]["epsilon"] == 1e-8
    assert shifts["mlp"]["jax"].rules_changed == {"rmsprop_eps": ("outside_sqrt", "inside_sqrt")}
    assert tf.rules_changed == {}
    assert "jax" not in shifts["cnn"]  # skipped under both policies: nothing to pair
    assert policy_comparisons(records_frame(make_records())) == []  # one policy: no comparison


def test_the_page_shows_both_views_and_keeps_the_headline_to_one_policy(tmp_path):
    records = _with_native(make_records(), {"torch": 0.0, "tf": -0.02, "jax": 0.01})
    result = build_report(write_run(tmp_path / "run", records))
    page = result.html.read_text(encoding="utf-8")
    assert 'id="fastest"' in page and "compiled won over eager" in page
    assert 'id="policies"' in page and "−2.0 pp" not in page and "-2.0 pp" in page
    assert CAVEAT.split(":")[0] in page and "parity ladder" in page
    assert {p.name for p in result.figures} >= {f"policies_{file_slug(m)}.png" for m in ("mlp", "cnn")}
    # the headline pools harmonised records only: mixed with native ones no configuration would be shared
    assert "Harmonised vs native" in page and "the headline and the figures show harmonised" in page
    assert "median over the 3 configuration(s) every backend finished" in page and "torch (eager, native)" in page


def test_unconverged_accuracies_are_no_result_in_the_policy_augmentation_and_compare_views(tmp_path):
    """The convergence rule holds everywhere, not only in the headline: an unconverged accuracy is
    left out of native minus harmonised, augmented minus plain, and bench compare."""
    from reports.augmentation import augmentation_rows
    from reports.compare import compare_runs

    def unconverged(records: list[dict], when) -> list[dict]:
        return [r | {"converged": False, "test_accuracy": 0.11} if when(r) and r["status"] == "ok" else r
                for r in records]

    # native tf cells that did not converge: their 0.11 would read as a huge native loss
    records = unconverged(_with_native(make_records(), {"torch": 0.0, "tf": -0.02, "jax": 0.01}),
                          lambda r: r["backend"] == "tf" and r["semantics_policy"] == "native")
    shifts = {c.model: {r.backend: r for r in c.rows} for c in policy_comparisons(records_frame(records))}
    assert not shifts["mlp"]["tf"].accuracy.ok and not shifts["mlp"]["tf"].native_accuracy.ok
    assert shifts["mlp"]["tf"].final_loss.ok  # the loss is still a fact about the cells
    assert shifts["mlp"]["jax"].accuracy.value == pytest.approx(0.01, abs=1e-9)

    plain = [r | {"augment": "none"} for r in make_records()]
    augmented = [r | {"augment": "hflip", "cell_id": r["cell_id"] + "|aug=hflip", "test_accuracy": 0.11,
                      "converged": False} for r in make_records()]
    rows = augmentation_rows(records_frame(plain + augmented))
    assert rows and all(not row.accuracy_change.ok and row.cost.ok for row in rows)

    a = write_run(tmp_path / "a", make_records(seed=1))
    b = write_run(tmp_path / "b", unconverged(make_records(seed=2), lambda r: r["model"] == "mlp"))
    compared = compare_runs(a, b).rows
    mlp_accuracy = compared[(compared["model"] == "mlp") & (compared["metric"] == "test_accuracy")]
    assert mlp_accuracy.empty  # no "worse" for an accuracy that is no result
    assert (compared[compared["model"] == "mlp"]["metric"] == "train_samples_per_s").any()

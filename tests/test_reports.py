"""Reports from a synthetic but realistic run folder: CSVs, the HTML page, figures, comparisons.

The records follow the record schema (bench/results/record.py) with made-up but plausible numbers, so
these tests need no framework and run in seconds; what they check is the reports' behaviour:
shapes and medians of the tables, escaping and self-containment of the page, tolerance of a
truncated results file, and that a comparison separates a real slowdown from noise.
"""

from __future__ import annotations

import argparse
import io
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from rich.console import Console

from bench.errors import BenchError
from bench.results.phases import PHASES, Phase
from bench.results.record import FIELDS, ResultRecord
from bench.results.stats import MIN_STEP_SAMPLES
from bench.spec.cell import Cell
from bench.spec.model import SEED_MODELS
from bench.spec.rules import CANONICAL, RULE_TITLES, Rules
from bench.spec.train import TrainSpec
from reports import add_compare_arguments, add_report_arguments, build_report, compare_runs, main_compare, main_report
from reports.costs import compile_table, time_breakdown
from reports.metrics import METRICS
from reports.records import SCHEMA, records_frame
from reports.terminal import print_summary

ROOT = Path(__file__).resolve().parents[1]
RUN_NAME = "<script>alert('x')</script>"

BASE_SPEED = {("torch", "eager"): 52_000, ("torch", "compiled"): 78_000, ("tf", "graph"): 41_000,
              ("jax", "jit"): 66_000}
MODEL_COST = {"mlp": 1.0, "cnn": 0.04}
ACCURACY = {"relu": 0.965, "tanh": 0.955, "sigmoid": 0.925}


def make_record(backend: str, mode: str, model: str, optimizer: str, activation: str, repeat: int,
                rng: np.random.Generator, *, speed_factor: float = 1.0, noise: float = 0.03,
                status: str = "ok", message: str | None = None, run_id: str = RUN_NAME) -> dict:
    """One result record as bench/measure/harness.py writes it (checked against the record schema); timings
    jitter by ``noise`` (relative)."""
    epochs, n_train, batch = 3, 8000, 128
    train = TrainSpec(optimizer=optimizer, activation=activation, batch_size=batch, epochs=epochs, learning_rate=0.001,
                      seed=repeat, mode=mode)
    cell = Cell(backend, SEED_MODELS.get(model, SEED_MODELS["mlp"]), train, "mnist-sample", repeat=repeat)
    record = cell.config() | {
        "run_id": run_id, "status": status, "reason": None, "error": None,
        "framework": {"torch": "torch 2.13.0", "tf": "tensorflow 2.21.0 / keras 3.15.0",
                      "jax": "jax 0.10.0 / flax 0.12.0", "numpy": "numpy 2.1"}[backend],
        "model": model, "dataset": "mnist-sample", "n_train": n_train, "n_val": 0, "n_test": 2000,
        "input_shape": [28, 28, 1],
        "rules": (Rules(rmsprop_eps="inside_sqrt", adam_eps="uncorrected") if backend == "tf" else CANONICAL).as_dict(),
        "threads": 2, "started_at": "2025-01-02T03:04:05+00:00", "timing_method": "perf_counter per epoch",
    }
    if status == "skipped":
        return ResultRecord.build(**record | {"reason": message}).to_json_dict()
    if status == "failed":
        trace = "Traceback (most recent call last):\n  ...\n" + str(message)
        return ResultRecord.build(**record | {"error": message, "traceback": trace}).to_json_dict()
    jitter = lambda: float(np.exp(rng.normal(0.0, noise)))  # noqa: E731
    speed = BASE_SPEED[(backend, mode)] * MODEL_COST[model] * speed_factor * jitter()
    accuracy = ACCURACY[activation] - (0.01 if optimizer == "sgd" else 0.0) + rng.normal(0, 0.002)
    curve = [accuracy - 0.06 / (e + 1) for e in range(epochs)]
    epoch_s = [n_train / speed * jitter() for _ in range(epochs)]
    compile_s = {"eager": 0.02, "compiled": 4.0, "graph": 0.8, "jit": 0.6}[mode] * jitter()
    record |= {
        "test_accuracy": accuracy, "test_loss": 1.2 - accuracy, "final_train_loss": 1.1 - accuracy,
        "val_accuracy": curve[-1], "epoch_train_loss": [0.9 / (e + 1) for e in range(epochs)],
        "epoch_val_loss": [1.0 / (e + 1) for e in range(epochs)], "epoch_val_accuracy": curve,
        "epoch_seconds": epoch_s, "train_samples_per_s": speed, "train_seconds": sum(epoch_s),
        "step_time_ms_p50": 1e3 * batch / speed, "step_time_ms_p90": 1.1e3 * batch / speed,
        "step_time_ms_p99": 1.3e3 * batch / speed, "step_time_samples": 100, "compile_seconds": compile_s,
        "first_step_seconds": compile_s + batch / speed, "warmup_seconds": compile_s + 3 * batch / speed,
        "inference_samples_per_s": 4 * speed, "time_to_target_seconds": epoch_s[0] if curve[0] >= 0.9 else None,
        "device_seconds": None, "cpu_seconds_per_sample": 2 / speed, "peak_rss_bytes": int(600e6 * jitter()),
        "peak_device_bytes": None, "memory_method": "psutil RSS", "param_count": 101_770,
        "flops_per_sample_forward": 203_530, "flops_per_sample_train": 610_590,
        "achieved_gflops": 610_590 * speed / 1e9, "peak_fraction": 0.05, "duration_seconds": 3 * sum(epoch_s),
    }
    if status == "diverged":
        record |= {"reason": message, "test_accuracy": None, "epoch_train_loss": [0.9, float("nan")]}
    return ResultRecord.build(**record).to_json_dict()


def make_records(seed: int = 0, speed_factor: float = 1.0, noise: float = 0.03, repeats: int = 3) -> list[dict]:
    """A run of 3 backends (torch in two modes), 2 models, 2 optimizers, 3 activations, with problems."""
    rng = np.random.default_rng(seed)
    records = []
    for backend, mode in BASE_SPEED:
        for model in MODEL_COST:
            for optimizer in ("sgd", "adam"):
                for activation in ACCURACY:
                    if mode == "compiled" and (model, optimizer) != ("mlp", "adam"):
                        continue
                    for repeat in range(repeats):
                        kind, message = "ok", None
                        if backend == "jax" and model == "cnn":
                            kind, message = "skipped", "jax: <Conv> not supported on this <device>"
                        elif (backend, model, optimizer, activation) == ("torch", "cnn", "adam", "tanh"):
                            kind, message = "failed", "RuntimeError: <boom> & shape mismatch"
                        elif (backend, optimizer, activation, repeat) == ("tf", "sgd", "sigmoid", 1):
                            kind, message = "diverged", "training loss became nan at epoch 2, step 7"
                        records.append(make_record(backend, mode, model, optimizer, activation, repeat, rng,
                                                   speed_factor=speed_factor, noise=noise, status=kind,
                                                   message=message))
    return records


ENVIRONMENT = {
    "created": "2025-01-02T03:04:05+00:00", "command": "python -m bench run --name '<script>'",
    "argv": ["run"], "git_commit": "0123456789abcdef", "os": "Linux-6.1", "cpu": "Test CPU <fast>", "cores": 2,
    "cpu_set": [0, 1], "threads": 2, "python": "3.11.7",
    "versions": {"numpy": "2.1.0", "torch": "2.13.0", "tensorflow-cpu": "2.21.0", "jax": "0.10.0"},
    "gpu": None, "matmul_peak_gflops": 95.2,
    "device": {"requested": "auto", "device": "cpu", "gpu_index": None, "note": "--device auto runs on the CPU: <none>",
               "gpus": [], "stacks": {}, "peaks": {}, "worker_environment": {"CUDA_VISIBLE_DEVICES": ""}},
    "fairness": {"initial weights": "glorot_uniform drawn in numpy", "bn_momentum": "0.99 (Keras sense)"},
    "settings": {"repeats": 3, "models": ["mlp", "cnn"]},
}


def write_run(folder: Path, records: list[dict], environment: dict | None = ENVIRONMENT) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / "results.jsonl", "w", encoding="utf-8") as handle:
        for record in records:
            handle.write(json.dumps(record).replace("NaN", "null") + "\n")
    if environment is not None:
        (folder / "environment.json").write_text(json.dumps(environment))
    return folder


@pytest.fixture(scope="module")
def records() -> list[dict]:
    return make_records()


@pytest.fixture(scope="module")
def built(tmp_path_factory, records):
    folder = write_run(tmp_path_factory.mktemp("run") / "run", records)
    return build_report(folder), records


def test_results_csv_has_one_row_per_record_and_the_full_schema(built):
    result, records = built
    table = pd.read_csv(result.results_csv)
    assert len(table) == len(records)
    assert list(table.columns[: len(SCHEMA)]) == list(SCHEMA)
    assert "traceback" in table.columns  # fields beyond the schema are kept
    assert json.loads(table["epoch_val_accuracy"].dropna().iloc[0])[0] == pytest.approx(
        records[0]["epoch_val_accuracy"][0])
    assert set(table["status"]) == {"ok", "skipped", "failed", "diverged"}


def test_summary_has_one_row_per_cell_with_the_right_medians(built):
    result, records = built
    summary = pd.read_csv(result.summary_csv)
    assert len(summary) == len({r["cell_id"] for r in records})
    for metric in METRICS:
        name = metric.field
        assert {f"{name}_median", f"{name}_ci_low", f"{name}_ci_high"} <= set(summary.columns)
    cell = [r for r in records if r["cell_id"].startswith("tf|mlp|adam|relu|")]
    row = summary[(summary["variant"] == "tf") & (summary["model"] == "mlp") & (summary["optimizer"] == "adam")
                  & (summary["activation"] == "relu")].iloc[0]
    speeds = [r["train_samples_per_s"] for r in cell]
    assert row["train_samples_per_s_median"] == pytest.approx(np.median(speeds))
    assert min(speeds) <= row["train_samples_per_s_ci_low"] <= row["train_samples_per_s_median"]
    assert row["train_samples_per_s_median"] <= row["train_samples_per_s_ci_high"] <= max(speeds)
    # the diverged repeat is counted, and only the two ok repeats feed the median
    odd = summary[(summary["variant"] == "tf") & (summary["optimizer"] == "sgd") & (summary["activation"] == "sigmoid")
                  & (summary["model"] == "mlp")].iloc[0]
    ok_acc = [r["test_accuracy"] for r in records
              if r["cell_id"].startswith("tf|mlp|sgd|sigmoid|") and r["status"] == "ok"]
    assert (odd["n_ok"], odd["n_diverged"], odd["status"]) == (2, 1, "ok 2, diverged 1")
    assert odd["test_accuracy_median"] == pytest.approx(np.median(ok_acc))
    # torch ran two modes, so its rows are told apart; a backend with one mode keeps its plain name
    assert {"torch (eager)", "torch (compiled)", "tf", "jax"} == set(summary["variant"])
    skipped = summary[(summary["variant"] == "jax") & (summary["model"] == "cnn")]
    assert (skipped["status"] == "skipped 3").all() and skipped["train_samples_per_s_median"].isna().all()
    assert skipped["reason"].iloc[0] == "jax: <Conv> not supported on this <device>"


def test_page_escapes_every_recorded_string(built):
    result, _ = built
    page = result.html.read_text(encoding="utf-8")
    assert "<script" not in page.lower()
    assert "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt;" in page  # the run name, as text
    assert "RuntimeError: &lt;boom&gt; &amp; shape mismatch" in page
    assert "Test CPU &lt;fast&gt;" in page
    assert "cpu, asked auto: --device auto runs on the CPU: &lt;none&gt;" in page  # the device section, one line


def test_page_is_self_contained_with_embedded_figures(built):
    result, _ = built
    page = result.html.read_text(encoding="utf-8")
    images = re.findall(r'<img src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)
    # throughput, 2 accuracy heatmaps, 2 training curves, compile vs steady, time to target, time breakdown
    assert len(images) == len(result.figures) == 8
    assert all(img.startswith("iVBORw0KGgo") for img in images)  # the PNG signature, base64-encoded
    assert not re.search(r"""(src|href)\s*=\s*["']?\s*(https?:)?//""", page)
    assert not re.search(r"url\(|@import|<link|<iframe", page)
    assert all(p.stat().st_size > 5000 for p in result.figures)


def _all_cells(page: str) -> tuple[list[str], list[list[str]]]:
    """The "All cells" table of a page: its column headings and its rows' cell texts."""
    table = page[page.index('id="cells"'):page.index("</table>", page.index('id="cells"'))]
    heads = re.findall(r"<th(?:\s[^>]*)?>(.*?)</th>", table)
    rows = [re.findall(r"<td[^>]*>(.*?)</td>", row, re.S) for row in re.findall(r"<tr>(.*?)</tr>", table, re.S)[1:]]
    return heads, rows


def test_all_cells_shows_every_axis_that_varies_and_no_other(tmp_path):
    """A sweep over losses, precisions, batch sizes and learning rates: each is a column, so no two
    rows read alike; the axes with one value (optimizer, epochs, dataset...) are not columns."""
    rng = np.random.default_rng(3)
    records = []
    for loss, precision, batch, rate in [("cce", "fp32", 64, 0.001), ("mse", "fp32", 64, 0.001), ("cce", "bf16", 64, 0.001),
                                         ("cce", "fp32", 32, 0.001), ("cce", "fp32", 64, 0.01)]:
        for repeat in range(2):
            record = make_record("torch", "eager", "mlp", "adam", "relu", repeat, rng)
            cell = f"{record['cell_id']}|{loss}|{precision}|{batch}|{rate}"
            records.append(record | {"loss": loss, "precision": precision, "batch_size": batch, "learning_rate": rate,
                                     "cell_id": cell})
    heads, rows = _all_cells(build_report(write_run(tmp_path / "run", records)).html.read_text(encoding="utf-8"))
    assert heads[:6] == ["Backend", "Model", "Loss", "Batch size", "Learning rate", "Precision"] and heads[6] == "Status"
    assert len(rows) == 5 and len({tuple(row[:6]) for row in rows}) == 5
    assert {tuple(row[2:6]) for row in rows} == {("cce", "64", "0.001", "fp32"), ("mse", "64", "0.001", "fp32"),
                                                 ("cce", "64", "0.001", "bf16"), ("cce", "32", "0.001", "fp32"),
                                                 ("cce", "64", "0.01", "fp32")}


def test_page_shows_headline_ratios_problems_and_frameworks(built):
    result, _ = built
    page = result.html.read_text(encoding="utf-8")
    assert result.baseline == "torch (eager)"
    assert "baseline</span>" in page
    # jax is ~1.27x torch eager on mlp: far outside 3% noise, so the ratio is coloured as better
    assert re.search(r'class="cmp better">1\.2\d*x', page.replace("×", "x"))
    assert re.search(r'class="cmp worse">0\.7\d*x', page.replace("×", "x"))  # tf: ~0.79x
    for text in ("diverged", "training loss became nan at epoch 2, step 7", "Keras / TensorFlow",
                 "compiled vs eager: 1.", "Harder inside jit", "inside the root: w -= lr*g / sqrt(v + eps) *", "0.99 (Keras sense)"):
        assert text in page, text


def test_rebuild_is_identical(built):
    result, _ = built
    first = result.html.read_bytes()
    assert build_report(result.run_dir).html.read_bytes() == first


def test_truncated_last_line_is_skipped_and_counted(tmp_path, records, capsys):
    folder = write_run(tmp_path / "run", records[:20])
    complete = json.dumps(records[20])
    with open(folder / "results.jsonl", "a", encoding="utf-8") as handle:
        handle.write(complete[: len(complete) // 2])  # a crash mid-write
    result = build_report(folder)
    assert result.skipped_lines == 1 and result.n_records == 20
    assert len(pd.read_csv(result.results_csv)) == 20
    assert "1 incomplete or unreadable line(s)" in result.html.read_text(encoding="utf-8")
    parser = argparse.ArgumentParser()
    add_report_arguments(parser)
    assert main_report(parser.parse_args([str(folder)])) == 0
    assert "skipped 1 incomplete or unreadable line" in capsys.readouterr().out


def test_line_cut_inside_a_multibyte_character_costs_one_line(tmp_path, records):
    folder = write_run(tmp_path / "run", records[:5])
    with open(folder / "results.jsonl", "ab") as handle:
        handle.write(json.dumps({"reason": "µs"}, ensure_ascii=False).encode()[:12])
    assert build_report(folder).skipped_lines == 1


def test_bad_folders_are_one_line_errors(tmp_path):
    with pytest.raises(BenchError, match="does not exist"):
        build_report(tmp_path / "missing")
    with pytest.raises(BenchError, match="no results.jsonl"):
        build_report(tmp_path)
    (tmp_path / "results.jsonl").write_text('{"status": "ok", "backe')
    with pytest.raises(BenchError, match="no complete record"):
        build_report(tmp_path)


def test_one_backend_that_skipped_everything_still_builds(tmp_path):
    rng = np.random.default_rng(0)
    records = [make_record("jax", "jit", "mlp", "adam", "relu", r, rng, status="skipped",
                           message="jax is not installed") for r in range(2)]
    result = build_report(write_run(tmp_path / "run", records, environment=None))
    page = result.html.read_text(encoding="utf-8")
    assert result.figures == [] and "nothing to plot" in page and "jax is not installed" in page
    assert "environment.json is missing" in page


def test_old_records_without_optional_fields(tmp_path):
    rng = np.random.default_rng(1)
    keep = {"backend", "model", "optimizer", "activation", "train_samples_per_s", "test_accuracy"}
    records = [{k: v for k, v in make_record("torch", "eager", "mlp", "adam", "relu", r, rng).items() if k in keep}
               for r in range(3)]
    result = build_report(write_run(tmp_path / "run", records))
    summary = pd.read_csv(result.summary_csv)
    assert len(summary) == 1 and summary["n_ok"].iloc[0] == 3  # no status field: no error means ok
    assert len(result.figures) == 1  # only throughput has data


def timed_records() -> list[dict]:
    """torch and jax, mlp and cnn, with phase times, worker start-up, compile-cache states, unconverged
    sgd cells (every cnn cell unconverged) and one noisy jax window."""
    rng = np.random.default_rng(3)
    records = []
    for backend, mode in (("torch", "eager"), ("jax", "jit")):
        for optimizer in ("sgd", "adam"):
            for repeat in range(2):
                record = make_record(backend, mode, "mlp", optimizer, "relu", repeat, rng)
                phases = {"time_build_seconds": 0.1, "time_compile_seconds": 0.5 if backend == "jax" else 0.0,
                          "time_train_seconds": 1.0, "time_window_seconds": 0.2, "time_eval_seconds": 0.05}
                record |= phases | {"duration_seconds": sum(phases.values()) + 0.01, "worker_pid": 7 + (backend == "jax"),
                                    "worker_setup_seconds": 3.0, "compile_cache": "cold" if backend == "jax" else "off",
                                    "converged": optimizer == "adam", "noisy": backend == "jax" and repeat == 0,
                                    "noise_reason": "foreign CPU 0.90 of each of 2 core(s) (limit 0.25)"}
                record["test_accuracy"] = 0.93 if optimizer == "adam" else 0.40
                records.append(record)
    return records + [r | {"model": "cnn", "cell_id": r["cell_id"].replace("mlp", "cnn"), "converged": False}
                      for r in records]


def test_unconverged_accuracy_is_no_result_noisy_throughput_is_marked_and_the_time_is_broken_down(tmp_path):
    records = timed_records()
    result = build_report(write_run(tmp_path / "run", records))
    page = result.html.read_text(encoding="utf-8")
    mlp = page[page.index("<h3>mlp</h3>"):page.index("<h3>cnn</h3>")]
    assert "93.0%" in mlp and "40.0%" not in mlp  # the sgd cells did not converge: left out, counted
    assert "2 not converged, left out" in mlp and "⚠ 2 noisy" in mlp
    cnn = page[page.index("<h3>cnn</h3>"):page.index('id="time"')]
    assert 'class="num unconverged">66.5%†' in cnn and "† Not converged" in cnn  # nothing converged: greyed
    time_table = page[page.index('id="time"'):page.index('id="figures"')]
    assert "<b>torch</b>" in time_table and "<td>cold</td>" in time_table and "<td>off</td>" in time_table
    assert "one repeat per configuration" not in page  # two repeats: the ratios' colours rest on a spread
    mixed = [r | {"compile_cache": "warm"} if r["backend"] == "jax" and r["repeat"] == 1 else r for r in records]
    assert time_breakdown(records_frame(mixed)).set_index("backend").loc["jax", "compile cache"] == "cold (4 cells), warm (4 cells)"
    costs = time_breakdown(records_frame(records))
    jax = costs[costs["backend"] == "jax"].iloc[0]
    assert jax["worker start-up"] == 3.0 and jax["compile / warm-up"] == pytest.approx(8 * 0.5)
    assert jax["total"] == pytest.approx(3.0 + 8 * 1.86) and jax["other"] == pytest.approx(8 * 0.01)
    assert any(f.stem == "time_breakdown" for f in result.figures)
    once = build_report(write_run(tmp_path / "once", [r for r in records if r["repeat"] == 0])).html.read_text(encoding="utf-8")
    assert "one repeat per configuration" in once  # no spread: every ratio grey, and the page says why


def test_unknown_baseline_is_an_error(built):
    result, _ = built
    with pytest.raises(BenchError, match="baseline 'pytorch' is not a backend"):
        build_report(result.run_dir, baseline="pytorch")


def _compare(tmp_path: Path, factor: float, *extra: str) -> tuple[int, pd.DataFrame]:
    a = write_run(tmp_path / "a", make_records(seed=1))
    b = write_run(tmp_path / "b", make_records(seed=2, speed_factor=factor))
    parser = argparse.ArgumentParser()
    add_compare_arguments(parser)
    code = main_compare(parser.parse_args([str(a), str(b), "--out", str(tmp_path / "out"), *extra]))
    return code, pd.read_csv(tmp_path / "out" / "compare.csv")


def test_compare_calls_a_real_2x_slowdown_and_fails_the_gate(tmp_path, capsys):
    code, rows = _compare(tmp_path, 0.5, "--fail-on", "0.05")
    train = rows[rows["metric"] == "train_samples_per_s"]
    assert code == 1
    assert (train["verdict"] == "slower").all() and train["regression"].all()
    assert train["change"].between(0.4, 0.6).all() and (train["change_high"] < 1).all()
    accuracy = rows[rows["metric"] == "test_accuracy"]
    assert (accuracy["verdict"] == "unchanged").all()
    out = capsys.readouterr().out
    assert "FAIL" in out and "slower" in out
    assert "regression" in (tmp_path / "out" / "compare.md").read_text() or "FAIL" in (
        tmp_path / "out" / "compare.md").read_text()


def test_compare_ignores_noise_and_passes_the_gate(tmp_path, capsys):
    code, rows = _compare(tmp_path, 1.0, "--fail-on", "0.05")
    assert code == 0
    measured = rows[rows["metric"].notna()]
    assert len(measured) > 50 and (measured["verdict"] == "unchanged").all()
    assert "PASS" in capsys.readouterr().out


def test_compare_gate_only_trips_past_the_threshold(tmp_path):
    a = write_run(tmp_path / "a", make_records(seed=1, noise=0.01))
    b = write_run(tmp_path / "b", make_records(seed=2, noise=0.01, speed_factor=0.85))
    lenient = compare_runs(a, b, fail_on=0.30)
    strict = compare_runs(a, b, fail_on=0.10)
    report_only = compare_runs(a, b, fail_on=None)
    assert (lenient.rows.loc[lenient.rows["metric"] == "train_samples_per_s", "verdict"] == "slower").all()
    assert (lenient.exit_code, strict.exit_code, report_only.exit_code) == (0, 1, 0)


def test_compare_flags_a_cell_that_stopped_finishing(tmp_path):
    records_a = make_records(seed=1)
    records_b = [r if not r["cell_id"].startswith("tf|mlp|adam|relu|") else
                 r | {"status": "failed", "error": "OOM"} for r in make_records(seed=2)]
    result = compare_runs(write_run(tmp_path / "a", records_a), write_run(tmp_path / "b", records_b), fail_on=0.05)
    assert result.exit_code == 1
    assert list(result.regressions["verdict"]) == ["stopped finishing"]


def test_compare_of_runs_from_different_code_says_so_and_still_compares(tmp_path, capsys):
    def run(name: str, code_hash: str | None, commit: str | None, seed: int) -> Path:
        identity = {"code_hash": code_hash, "code_commit": commit} if code_hash else {}
        return write_run(tmp_path / name, [r | identity for r in make_records(seed=seed)])

    old, new = run("old", "aaaa111122223333", "c0ffee", 1), run("new", "bbbb444455556666", "c0ffee-dirty", 2)
    parser = argparse.ArgumentParser()
    add_compare_arguments(parser)
    assert main_compare(parser.parse_args([str(old), str(new), "--out", str(tmp_path / "out")])) == 0
    out = " ".join(capsys.readouterr().out.split())  # rich wraps long lines
    assert (f"different code: A ({RUN_NAME}) ran code hash aaaa111122223333 (commit c0ffee); "
            f"B ({RUN_NAME}) ran code hash bbbb444455556666 (commit c0ffee-dirty)") in out
    assert "different code" in (tmp_path / "out" / "compare.md").read_text()
    assert len(pd.read_csv(tmp_path / "out" / "compare.csv")) > 50  # compared all the same
    same = compare_runs(old, run("again", "aaaa111122223333", "d00d", 3))
    unknown = compare_runs(old, run("before", None, None, 3))  # records from before code identities: nothing to say
    assert same.code_note is None and unknown.code_note is None


def _chromium() -> str | None:
    return next((shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome") if shutil.which(n)), None)


@pytest.mark.skipif(_chromium() is None, reason="headless Chromium is not installed (apt-get install chromium)")
def test_page_renders_with_figures_in_headless_chromium(built, tmp_path):
    result, _ = built
    shot = tmp_path / "report.png"
    done = subprocess.run([sys.executable, str(ROOT / "scripts" / "screenshot_report.py"), str(result.html),
                           "--out", str(shot)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    assert shot.stat().st_size > 50_000 and f"{len(result.figures)} embedded figure(s)" in done.stdout
    # the check is not vacuous: the same page with undecodable images is text on white and fails it
    broken = tmp_path / "broken.html"
    broken.write_text(re.sub(r"base64,[A-Za-z0-9+/=]+", "base64,AAAA", result.html.read_text(encoding="utf-8")))
    done = subprocess.run([sys.executable, str(ROOT / "scripts" / "screenshot_report.py"), str(broken),
                           "--out", str(tmp_path / "broken.png")], capture_output=True, text=True, timeout=120)
    assert done.returncode == 1 and "BLANK" in done.stdout


def test_the_rules_table_has_one_row_per_rule_with_a_value_for_every_backend(built):
    from reports.html import _rules_view
    from reports.records import load_run

    view = _rules_view(load_run(built[0].run_dir).records)
    assert view["backends"] == ["jax", "tf", "torch"]
    assert [title for title, _ in view["rows"]] == list(RULE_TITLES.values())
    assert all(len(values) == 3 and all(values) for _, values in view["rows"])
    adam = dict(view["rows"])["Adam epsilon"]
    assert adam[1].endswith(" *") and not adam[0].endswith(" *")  # tf's uncorrected epsilon is marked as a deviation


def test_every_phase_has_its_record_field_and_a_column_in_each_time_table(tmp_path):
    timed = {name for name in FIELDS if name.startswith("time_") and name.endswith("_seconds")}
    assert {phase.field for phase in PHASES} == timed - {"time_to_target_seconds"}
    result = build_report(write_run(tmp_path / "run", timed_records()))
    page = result.html.read_text(encoding="utf-8")
    time_table = page[page.index('id="time"'):page.index('id="figures"')]
    assert all(f'<th class="num">{phase.label}</th>' in time_table for phase in PHASES), time_table
    costs = time_breakdown(records_frame(timed_records())).set_index("backend")
    assert costs.loc["jax", Phase.WINDOW.label] == pytest.approx(8 * 0.2)

    console = Console(file=io.StringIO(), width=80)
    print_summary(console, result.run_dir, "torch")
    lines = console.file.getvalue().splitlines()
    header = next(line.split() for line in lines if line.split()[:1] == ["backend"])
    assert header == ["backend", "start", *(phase.column for phase in PHASES), "other", "total", "cache"]
    jax = next(line.split() for line in lines if line.split()[:1] == ["jax"])
    assert jax == ["jax", "3.0", "0.8", "4.0", "8.0", "1.6", "0.4", "0.1", "17.9", "cold"]
    assert "93.0%" in console.file.getvalue() and "vs torch" in console.file.getvalue()


def test_a_gate_that_cannot_judge_does_not_pass(tmp_path, capsys):
    """One repeat a side: a 93% throughput loss cannot be told from noise, so --fail-on must not say PASS;
    two a side are what the statistics need (GATE_REPEATS), and are judged."""
    a = write_run(tmp_path / "a", [r for r in make_records(seed=1) if r["repeat"] == 0])
    b = write_run(tmp_path / "b", [r for r in make_records(seed=2, speed_factor=0.07) if r["repeat"] == 0])
    parser = argparse.ArgumentParser()
    add_compare_arguments(parser)
    code = main_compare(parser.parse_args([str(a), str(b), "--out", str(tmp_path / "out"), "--fail-on", "0.05"]))
    out = " ".join(capsys.readouterr().out.split())
    assert code == 1
    assert "cannot judge: 1 repeat(s)" in out and "PASS" not in out
    assert compare_runs(a, b, fail_on=None).exit_code == 0  # without a gate there is nothing to pass or fail
    # enough repeats on both sides: the same loss is judged, and fails
    judged = compare_runs(write_run(tmp_path / "a3", make_records(seed=1)),
                          write_run(tmp_path / "b3", make_records(seed=2, speed_factor=0.07)), fail_on=0.05)
    assert judged.exit_code == 1 and judged.unjudged.empty and not judged.regressions.empty
    two = compare_runs(write_run(tmp_path / "a2", make_records(seed=1, repeats=2)),
                       write_run(tmp_path / "b2", make_records(seed=2, repeats=2, speed_factor=0.07)), fail_on=0.05)
    assert two.exit_code == 1 and not two.regressions.empty  # the loss is seen where two a side finished
    assert (two.unjudged[["n_a", "n_b"]].min(axis=1) < 2).all()  # only cells with a failed repeat are unjudged
    same = compare_runs(write_run(tmp_path / "a4", make_records(seed=1)),
                        write_run(tmp_path / "b4", make_records(seed=2)), fail_on=0.05)
    assert not same.cannot_judge and same.exit_code == 0


def test_a_model_measured_for_throughput_only_shows_its_speed_and_no_accuracy(tmp_path):
    """The quick profile's CNN trains on 128 rows for its speed: the page says "throughput only" with
    one line why, instead of a row of greyed accuracies and an accuracy map of failures."""
    records = [r | {"throughput_only": r["model"] == "cnn", "converged": r["model"] != "cnn"} for r in make_records()]
    result = build_report(write_run(tmp_path / "run", records))
    page = result.html.read_text(encoding="utf-8")
    cnn = page[page.index('id="model-cnn"'):] if 'id="model-cnn"' in page else page[page.index(">cnn<"):]
    assert "throughput only" in cnn and "Throughput only: this sweep measured the model for speed" in page
    assert "†" not in cnn[: cnn.index("</table>")]  # no greyed accuracy in the cnn headline
    figures = {p.stem for p in result.figures}
    assert any("mlp" in f and "accuracy" in f for f in figures) and not any("cnn" in f and "accuracy" in f for f in figures)
def test_a_step_time_percentile_from_too_few_steps_is_not_shown():
    """The one rule (bench/results/stats.py MIN_STEP_SAMPLES): an older record's p99 of 20 probe steps is
    their maximum, not a tail, so no view prints it; 100 steps or more are shown with their count."""
    base = {"cell_id": "c", "backend": "torch", "status": "ok", "step_time_ms_p50": 1.0, "step_time_ms_p90": 2.0,
            "step_time_ms_p99": 3.0}
    frame = records_frame([base | {"repeat": 0, "step_time_samples": 20}, base | {"repeat": 1, "step_time_samples": 100},
                           base | {"repeat": 2}])
    shown = frame[["step_time_ms_p50", "step_time_ms_p90", "step_time_ms_p99"]].notna().all(axis=1)
    assert shown.tolist() == [False, True, False] and MIN_STEP_SAMPLES == 100


def test_the_compile_table_sets_cold_and_warm_side_by_side(tmp_path):
    """A cold cell's own compile and its second compile from the caches it filled, a warm cell's compile,
    and a framework without a persistent cache ('off'), per backend, mode and model."""
    base = {"status": "ok", "model": "mlp", "repeat": 0}
    records = [
        base | {"cell_id": "t1", "backend": "torch", "mode": "compiled", "compile_cache": "cold", "compile_seconds": 30.0,
                "first_step_seconds": 30.1, "warm_compile_seconds": 2.0, "warm_first_step_seconds": 2.1,
                "graphs": 1, "graph_breaks": 0},
        base | {"cell_id": "t2", "backend": "torch", "mode": "compiled", "compile_cache": "warm", "compile_seconds": 4.0,
                "first_step_seconds": 4.1, "graphs": 1, "graph_breaks": 0},
        base | {"cell_id": "t3", "backend": "torch", "mode": "eager", "compile_seconds": 0.0},
        base | {"cell_id": "f1", "backend": "tf", "mode": "graph", "compile_cache": "off", "compile_seconds": 1.5,
                "first_step_seconds": 1.6},
    ]
    table = compile_table(records_frame(records)).set_index(["backend", "mode"])
    assert list(table.index) == [("torch", "compiled"), ("tf", "graph")]  # eager compiles nothing
    torch_row, tf_row = table.loc[("torch", "compiled")], table.loc[("tf", "graph")]
    assert (torch_row["compile cold"], torch_row["compile warm"]) == (30.0, 3.0)
    assert torch_row["first step warm"] == pytest.approx(3.1)
    assert (torch_row["graphs"], torch_row["graph breaks"], torch_row["cells"]) == (1, 0, 2)
    assert tf_row["compile off"] == 1.5 and np.isnan(tf_row["compile cold"]) and np.isnan(tf_row["compile warm"])
    folder = tmp_path / "run"
    folder.mkdir()
    (folder / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    build_report(folder)
    assert "Compile time, cold and warm" in (folder / "report.html").read_text(encoding="utf-8")
    assert pd.read_csv(folder / "compile.csv")["compile cold"].iloc[0] == 30.0

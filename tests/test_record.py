"""The record schema has one owner: every writer's records validate against it, the store's reader
upgrades old records and refuses newer ones, and the reports, the resume rule and the suite's rules
derive from the declarations (fields, statuses)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

import backends
from backends import device
from bench.errors import BenchError
from bench.measure.harness import run_cell
from bench.results.record import FIELD_KINDS, FIELDS, SCHEMA_VERSION, ResultRecord, Status
from bench.results.store import RunStore, read_records
from bench.results.upgrades import ABSENT_MEANS, LEGACY_SCHEMA_VERSION, STEPS, NewerRecord, upgrade
from bench.run.executors.local import WorkerSettings, run_sweep
from bench.spec.cell import Cell
from bench.spec.model import SEED_MODELS
from bench.spec.train import TrainSpec, training_rules
from reports import build_report
from reports.metrics import METRICS
from reports.records import (
    DERIVED_FIELDS,
    FLAG_FIELDS,
    NESTED_FIELDS,
    NUMBER_FIELDS,
    PROBLEM_STATUSES,
    SCHEMA,
    TEXT_FIELDS,
    load_run,
)
from tests.conftest import loaded_backend

ROOT = Path(__file__).resolve().parents[1]
V1_RUN = ROOT / "tests" / "fixtures" / "run_v1"


def _stored(records: list[ResultRecord], folder: Path) -> list[dict]:
    """The records as a run folder holds them: through the store, read back as JSON."""
    store = RunStore(folder)
    for record in records:
        store.append(record.to_json_dict())
    return read_records(store.results)[0]


def _assert_valid_current(stored: dict) -> None:
    assert stored["schema_version"] == SCHEMA_VERSION
    assert set(stored) <= set(FIELDS), set(stored) - set(FIELDS)
    record = ResultRecord.model_validate(stored)
    assert record.schema_version == SCHEMA_VERSION and not record.model_extra


def test_every_record_of_a_real_torch_cell_is_declared_and_versioned(tmp_path, mnist_small):
    pytest.importorskip("torch")
    cell = Cell("torch", SEED_MODELS["mlp"], TrainSpec(batch_size=64), "mnist-sample", probe_steps=3)
    ok = run_cell(loaded_backend("torch"), cell, mnist_small)
    skipped = run_cell(loaded_backend("torch"), Cell("torch", SEED_MODELS["mlp"], TrainSpec(precision="tf32"),
                                                     "mnist-sample"), mnist_small)
    stored = _stored([ok, skipped, ResultRecord.refused("torch", "cnn", "digits", "does not fit")], tmp_path)
    for record in stored:
        _assert_valid_current(record)
    assert [r["status"] for r in stored] == ["ok", "skipped", "skipped"]
    assert stored[0]["cell_id"] == cell.cell_id and stored[0]["test_accuracy"] > 0.5
    assert stored[2]["cell_id"] == Cell.refused_id("torch", "cnn")


def test_the_executor_failure_paths_write_declared_versioned_records(tmp_path, monkeypatch):
    """A cell whose data cannot load fails inside the worker, a killed worker fails its cell from the
    parent, and a backend that is not installed is skipped: all three records follow the schema."""
    pytest.importorskip("torch")
    settings = WorkerSettings(threads=1, cpu_set=(sorted(os.sched_getaffinity(0))[0],), device="cpu",
                              data_dir=None, val_split=0.1, train_size=300, test_size=100)
    train = TrainSpec(batch_size=64)
    cells = [Cell("torch", SEED_MODELS["mlp"], train, "nosuch"),
             Cell("torch", SEED_MODELS["mlp"], train, "mnist-sample", repeat=1),
             Cell("tf", SEED_MODELS["mlp"], train, "mnist-sample")]

    def kill_second(cell, pid):
        if cell.repeat == 1:
            os.kill(pid, signal.SIGKILL)

    real_reason = backends.unavailable_reason
    monkeypatch.setattr(backends, "unavailable_reason", lambda name: "not here" if name == "tf" else real_reason(name))
    records: list[ResultRecord] = []
    run_sweep(cells, settings, records.append, on_cell_start=kill_second)
    stored = _stored(records, tmp_path)
    assert [(r["status"], r["backend"]) for r in stored] == [("failed", "torch"), ("failed", "torch"), ("skipped", "tf")]
    for record in stored:
        _assert_valid_current(record)
    assert stored[0]["traceback"] and stored[0]["worker_pid"]  # failed inside the worker: its facts are kept
    assert "died with exit code -9" in stored[1]["error"] and stored[1]["framework_versions"]["torch"]
    assert stored[2]["reason"] == "not here"


def test_writing_an_undeclared_field_or_no_status_is_refused():
    with pytest.raises(TypeError, match="not in the record schema: new_metric; declare them in bench/results/record.py"):
        ResultRecord.build(cell_id="a", repeat=0, backend="torch", status="ok", new_metric=1.0)
    with pytest.raises(TypeError, match="needs status"):
        ResultRecord.build(cell_id="a", repeat=0, backend="torch")


def test_reading_upgrades_old_records_keeps_unknown_fields_and_fills_missing_ones():
    oldest = upgrade({"backend": "torch", "train_samples_per_s": 100.0, "energy_joules": 12.5})
    assert oldest["schema_version"] == LEGACY_SCHEMA_VERSION  # the version it was written with, as results.csv says
    assert oldest["status"] == "ok" and upgrade({"error": "RuntimeError: boom"})["status"] == "failed"
    assert upgrade({})["backend"] == "unknown"
    assert {name: oldest[name] for name in ABSENT_MEANS} == {"augment": "none", "semantics_policy": "harmonised",
                                                            "device_time_method": "not recorded",
                                                            "device_memory_method": "not recorded",
                                                            "schedule": "constant"}
    # a CPU record of before said nothing (null): "not recorded"; an old GPU record keeps its method
    assert upgrade({"backend": "torch", "device_time_method": None})["device_time_method"] == "not recorded"
    assert upgrade({"backend": "torch", "device_time_method": "cuda events"})["device_time_method"] == "cuda events"
    assert upgrade(oldest) == oldest  # a step applied twice changes nothing
    record = ResultRecord.model_validate(oldest)
    assert record.test_accuracy is None and record.model_extra == {"energy_joules": 12.5}
    current = {"schema_version": SCHEMA_VERSION, "cell_id": "a", "repeat": 0, "backend": "tf", "status": "failed",
               "augment": "hflip", "semantics_policy": "native", "device_time_method": device.CPU_DEVICE_TIME,
               "device_memory_method": device.CPU_DEVICE_MEMORY, "schedule": "warmup_cosine"}
    assert upgrade(current) == current


def test_every_older_version_has_one_upgrade_step():
    assert set(STEPS) == set(range(LEGACY_SCHEMA_VERSION, SCHEMA_VERSION))


def test_a_record_of_a_newer_schema_is_refused_not_misread(tmp_path):
    with pytest.raises(NewerRecord, match=f"record schema version {SCHEMA_VERSION + 1}, and this bench reads "
                                          f"versions up to {SCHEMA_VERSION}"):
        upgrade({"schema_version": SCHEMA_VERSION + 1, "cell_id": "a", "status": "ok"})
    folder = tmp_path / "run"
    shutil.copytree(V1_RUN, folder)
    with open(folder / "results.jsonl", "a", encoding="utf-8") as handle:
        newest = json.loads((V1_RUN / "results.jsonl").read_text().splitlines()[0])
        handle.write(json.dumps(newest | {"schema_version": SCHEMA_VERSION + 1, "energy_joules": 3.5}) + "\n")
    with pytest.raises(BenchError, match=r"results.jsonl, line 9: a record was written by record schema version"):
        build_report(folder)
    with pytest.raises(BenchError, match="line 9"):
        RunStore(folder).finished()  # nor does a resume count it as done
    assert not (folder / "results.csv").exists()


def test_the_status_flags_decide_resume_exit_code_and_problems(tmp_path):
    """One declaration: a resume reruns exactly the statuses that are not final, the reports list every
    status but ok as a problem, and curves and modes come from the statuses that trained."""
    assert [s for s in Status if not s.final] == ["failed", "timeout"]
    assert PROBLEM_STATUSES == ("skipped", "failed", "diverged", "timeout")
    assert [s for s in Status if s.trained] == ["ok", "diverged"]
    store = RunStore(tmp_path)
    for status in Status:
        store.append({"cell_id": status.value, "repeat": 0, "backend": "numpy", "status": status.value})
    assert store.finished() == {(s.value, 0) for s in Status if s.final}
    stored = json.loads(store.results.read_text().splitlines()[0])
    assert type(stored["status"]) is str and type(load_run(tmp_path).records["status"].iloc[0]) is str


def test_a_run_written_before_the_schema_version_still_reports(tmp_path):
    folder = tmp_path / "run_v1"
    shutil.copytree(V1_RUN, folder)
    raw = [json.loads(line) for line in (folder / "results.jsonl").read_text().splitlines()]
    assert all("schema_version" not in r for r in raw)
    stored, skipped = read_records(folder / "results.jsonl")
    assert skipped == 0 and {ResultRecord.model_validate(r).schema_version for r in stored} == {LEGACY_SCHEMA_VERSION}
    done = subprocess.run([sys.executable, "-m", "bench", "report", str(folder)], capture_output=True, text=True,
                          cwd=ROOT, timeout=300)
    assert done.returncode == 0, done.stderr
    assert f"({len(stored)} records" in done.stdout
    frame = load_run(folder).records
    assert set(frame["schema_version"]) == {LEGACY_SCHEMA_VERSION}
    assert (pd.read_csv(folder / "results.csv")["schema_version"] == LEGACY_SCHEMA_VERSION).all()
    page = (folder / "report.html").read_text(encoding="utf-8")
    assert "does not fit" in page and "Train throughput" in page  # the refused CNN and the headline


def test_the_reports_columns_and_metrics_come_from_the_schema():
    kinds = (TEXT_FIELDS, NUMBER_FIELDS, NESTED_FIELDS, FLAG_FIELDS)
    assert sorted(sum(kinds, ())) == sorted(SCHEMA) == sorted(FIELDS)
    assert {"rules", "framework_versions", "backend_threads", "cpu_set", "input_shape"} <= set(NESTED_FIELDS)
    assert {"device", "data_source", "requested_mode", "traceback", "memory_method"} <= set(TEXT_FIELDS)
    assert FIELD_KINDS["step_time_samples"] == FIELD_KINDS["worker_pid"] == "number"
    assert FIELD_KINDS["noisy"] == FIELD_KINDS["converged"] == "flag"
    for metric in METRICS:
        assert metric.field in FIELDS or metric.field in DERIVED_FIELDS, metric.field
        if metric.field in FIELDS:
            assert FIELD_KINDS[metric.field] == "number", metric.field
    assert len({m.field for m in METRICS}) == len(METRICS)


@pytest.mark.parametrize("name", ["momentum", "rho", "beta1", "beta2", "epsilon", "weight_decay",
                                  "bn_momentum", "bn_epsilon", "leaky_relu_slope", "loss", "precision"])
def test_the_stored_training_rules_follow_the_train_spec_defaults(name):
    default = TrainSpec()
    value = getattr(default, name)
    changed = {"loss": "mse", "precision": "bf16"}[name] if isinstance(value, str) else value / 2 + 0.0123
    assert training_rules(default) == training_rules()
    assert training_rules(default.model_copy(update={name: changed})) != training_rules(default), name


def test_a_worker_that_imports_the_harness_loads_neither_scipy_nor_pandas():
    """Peak memory is measured in the worker: the statistics it needs must not pull in the reports' stack."""
    code = "import sys, bench.run.executors.local; print(sorted({'scipy', 'pandas', 'reports'} & set(sys.modules)))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert done.stdout.strip() == "[]", done.stdout + done.stderr

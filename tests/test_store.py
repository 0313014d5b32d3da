import json

import pytest

from bench.errors import BenchError
from bench.results.store import RunStore, read_records


def test_records_are_appended_flushed_and_nan_becomes_null(tmp_path):
    store = RunStore(tmp_path / "run")
    store.append({"cell_id": "a", "repeat": 0, "status": "ok", "loss": float("nan"), "curve": [1.0, float("inf")]})
    store.append({"cell_id": "b", "repeat": 0, "status": "failed"})
    lines = (tmp_path / "run" / "results.jsonl").read_text().splitlines()
    assert json.loads(lines[0]) == {"cell_id": "a", "repeat": 0, "status": "ok", "loss": None, "curve": [1.0, None]}
    assert store.finished() == {("a", 0)}  # failed cells are retried by a rerun


def test_a_truncated_last_line_is_skipped_and_never_glued_to_the_next_record(tmp_path):
    store = RunStore(tmp_path)
    store.append({"cell_id": "a", "repeat": 0, "status": "ok"})
    with open(store.results, "a") as handle:
        handle.write('{"cell_id": "b", "rep')  # a crash mid-write
    records, skipped = read_records(store.results)
    assert [r["cell_id"] for r in records] == ["a"] and skipped == 1
    store.append({"cell_id": "c", "repeat": 0, "status": "ok"})
    records, skipped = read_records(store.results)
    assert [r["cell_id"] for r in records] == ["a", "c"] and skipped == 1


def test_an_unwritable_folder_is_one_clear_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(BenchError, match="cannot write to output folder"):
        RunStore(blocker / "run")


def test_a_resumed_run_keeps_the_earlier_environment(tmp_path):
    store = RunStore(tmp_path)
    store.write_environment({"created": "first"})
    store.write_environment({"created": "second"})
    saved = json.loads((tmp_path / "environment.json").read_text())
    assert saved["created"] == "second" and saved["previous"][0]["created"] == "first"

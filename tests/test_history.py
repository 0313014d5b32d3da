"""The history of runs: filing run folders, series keys, the step detector, the page, check and export.

Most tests write run folders with the record schema (bench/results/record.py) and made-up but
plausible figures, so they need no framework; the detector is tested on synthetic chains with
realistic noise, over many seeds, since a rate is what it promises; one test files a tiny real run.
"""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from bench.cli import main
from bench.results.record import ResultRecord
from bench.spec.cell import Cell
from bench.spec.model import SEED_MODELS
from bench.spec.train import TrainSpec
from reports.history.archive import ENVIRONMENT_VARIABLE, History, history_folder
from reports.history.detect import CANNOT, NO_STEP, judge
from reports.history.series import Chain, Point, Series, build_series, observations
from reports.metrics import TRAIN_THROUGHPUT

ROOT = Path(__file__).resolve().parents[1]
START = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
SPEED = {"torch": 50_000.0, "numpy": 30_000.0}


def write_run(folder: Path, number: int, *, slow: dict[str, float] | None = None, threads: int = 1,
              torch_version: str = "2.12.0", code: str = "c0dec0dec0dec0de", repeats: int = 3,
              noise: float = 0.03) -> Path:
    """A finished run folder as `bench run` writes it: torch and numpy on mlp/adam/relu, ``repeats`` repeats,
    throughputs jittered by ``noise`` and divided by ``slow[backend]``; run ``number`` starts a day after the last."""
    rng = np.random.default_rng(number)
    versions = {"torch": {"torch": torch_version}, "numpy": {"numpy": "2.4.6"}}
    run_id = folder.name
    lines = []
    for backend in SPEED:
        for repeat in range(repeats):
            train = TrainSpec(optimizer="adam", activation="relu", epochs=1, seed=repeat)
            cell = Cell(backend, SEED_MODELS["mlp"], train, "mnist-sample", repeat=repeat)
            speed = SPEED[backend] / (slow or {}).get(backend, 1.0) * float(np.exp(rng.normal(0, noise)))
            record = ResultRecord.for_cell(
                cell, run_id=run_id, status="ok", mode="eager" if backend == "torch" else "numpy", threads=threads,
                framework_versions=versions[backend], code_hash=code, code_commit="abc123", converged=True,
                train_samples_per_s=speed, inference_samples_per_s=5 * speed, compile_seconds=0.01,
                peak_rss_bytes=int(3e8 * float(np.exp(rng.normal(0, 0.005)))), test_accuracy=0.9, noisy=False)
            lines.append(json.dumps(record.to_json_dict()))
    created = (START + timedelta(days=number)).isoformat()
    folder.mkdir(parents=True)
    (folder / "results.jsonl").write_text("\n".join(lines) + "\n")
    (folder / "environment.json").write_text(json.dumps({
        "created": created, "cpu": "Test CPU 9000", "cores": 2, "threads": threads, "gpu": None,
        "os": "Linux-6.1.0-18-amd64-x86_64-with-glibc2.36", "versions": {"torch": torch_version}}))
    (folder / "run.json").write_text(json.dumps({
        "fingerprint": f"fp-{threads}-{torch_version}", "code": {"hash": code, "commit": "abc123"}, "created": created,
        "settings": {"backends": list(SPEED), "models": ["mlp"], "epochs": 1, "dataset": "mnist-sample", "seed": 0,
                     "threads": threads, "versions": {"torch": torch_version, "numpy": "2.4.6"}}}))
    return folder


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` with its bytes: what 'the history is unchanged' compares."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def run_cli(*argv: str) -> int:
    return main([str(a) for a in argv])


# -- the detector on synthetic chains --------------------------------------------------------------
def synthetic_chain(levels: list[float], seed: int, cv: float = 0.05, drift: float = 0.0, repeats: int = 3) -> Chain:
    """One series, cell and metric: run i has ``repeats`` values around ``levels[i]`` with ``cv`` repeat-to-repeat
    noise and, with ``drift``, a run-to-run offset of that size as well (both multiplicative)."""
    rng = np.random.default_rng(seed)
    chain = Chain(Series("s", 1, "machine", "sweep", []), "cell", "torch", "torch", "mlp", "torch · mlp",
                  TRAIN_THROUGHPUT)
    for i, level in enumerate(levels):
        values = level * np.exp(rng.normal(0, drift) + rng.normal(0, cv, repeats))
        chain.points.append(Point(f"e{i}", f"r{i}", START + timedelta(days=i), values, repeats, "torch 2.12.0", "c0de", 0))
    return chain


def test_no_false_alarm_on_20_stationary_runs_with_5_percent_noise():
    """40 series of 20 runs, 3 repeats each at 5% CV: the step rule keeps quiet in at least 39 (it promises at
    most the 5% Benjamini-Hochberg allows), and with 2% run-to-run drift on top still in at least 38."""
    quiet = [not any(j.step for j in judge([synthetic_chain([1000.0] * 20, seed)]).judgements) for seed in range(40)]
    drifting = [not any(j.step for j in judge([synthetic_chain([1000.0] * 20, seed, drift=0.02)]).judgements)
                for seed in range(40)]
    assert sum(quiet) >= 39 and sum(drifting) >= 38, (sum(quiet), sum(drifting))


def test_a_20_percent_step_with_3_repeats_is_found_once():
    found_exactly = 0
    for seed in range(20):
        detection = judge([synthetic_chain([1000.0] * 10 + [800.0] * 10, seed)])
        steps = [j for j in detection.judgements if j.step]
        if [j.index for j in steps] == [10]:
            found_exactly += 1
            assert steps[0].verdict == "slower" and steps[0].regression
            assert steps[0].change == pytest.approx(0.8, abs=0.08) and steps[0].q_value < 0.05
            after = detection.judgements[11]  # the lookback starts again at the step: one run is too few
            assert after.verdict == CANNOT and "since the step" in after.reason
    assert found_exactly >= 19


def test_cannot_judge_with_too_few_runs_or_repeats_never_no_change():
    detection = judge([synthetic_chain([1000.0, 1000.0, 1000.0, 500.0], seed=1)])
    assert [j.verdict for j in detection.judgements[:3]] == [CANNOT] * 3
    assert detection.judgements[3].verdict == "slower"  # a halving after three runs is found
    single = judge([synthetic_chain([1000.0] * 6, seed=2, repeats=1)])
    assert {j.verdict for j in single.judgements} == {CANNOT}
    assert "1 repeat; needs 2" in single.judgements[-1].reason
    quiet = judge([synthetic_chain([1000.0] * 6, seed=3)]).judgements[-1]
    assert quiet.verdict == NO_STEP and "could tell a change beyond" in quiet.reason


# -- filing runs -----------------------------------------------------------------------------------
def test_the_same_run_twice_changes_nothing_and_a_resumed_run_replaces_its_entry(tmp_path, capsys):
    history = tmp_path / "history"
    run = write_run(tmp_path / "run1", 1)
    assert run_cli("history", "add", run, "--history", history) == 0
    before = snapshot(history)
    assert run_cli("history", "add", run, "--history", history) == 0
    assert "nothing changed" in capsys.readouterr().out
    assert snapshot(history) == before
    grown = write_run(tmp_path / "grown" / "run1", 1, repeats=4)  # same run id, start and fingerprint: a resume
    assert run_cli("history", "add", grown, "--history", history) == 0
    assert "replacing" in capsys.readouterr().out
    (only,) = History(history).filed()
    assert only.entry["records"] == 8


def corrupt(kind: str, run: Path, other: Path) -> None:
    """Damage ``run`` the way ``kind`` says (``other`` is a run of another sweep)."""
    results = run / "results.jsonl"
    lines = results.read_text().splitlines()
    if kind == "bad JSON line":
        lines.insert(1, '{"cell_id": "torch|mlp", "repeat": ')
        results.write_text("\n".join(lines) + "\n")
    elif kind == "no results.jsonl":
        results.unlink()
    elif kind == "records of another run mixed in":
        results.write_text("\n".join(lines + (other / "results.jsonl").read_text().splitlines()[:1]) + "\n")
    elif kind == "records of another sweep mixed in":
        record = json.loads(lines[0]) | {"threads": 2}
        results.write_text("\n".join(lines + [json.dumps(record)]) + "\n")
    elif kind == "broken environment.json":
        (run / "environment.json").write_text("{not json")
    elif kind == "no run.json":
        (run / "run.json").unlink()


@pytest.mark.parametrize("kind", ["bad JSON line", "no results.jsonl", "records of another run mixed in",
                                  "records of another sweep mixed in", "broken environment.json", "no run.json"])
def test_a_corrupted_run_folder_is_one_line_and_exit_2_with_the_history_unchanged(tmp_path, capsys, kind):
    history = tmp_path / "history"
    assert run_cli("history", "add", write_run(tmp_path / "run1", 1), "--history", history) == 0
    before = snapshot(history)
    capsys.readouterr()
    good, bad = write_run(tmp_path / "run2", 2), write_run(tmp_path / "run3", 3)
    corrupt(kind, bad, write_run(tmp_path / "other", 4))
    assert run_cli("history", "add", good, bad, "--history", history) == 2  # the good one is not filed either
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err
    assert snapshot(history) == before


def test_series_are_one_machine_and_sweep_and_an_upgrade_is_a_mark_within_one(tmp_path):
    history = History(tmp_path / "history")
    runs = [write_run(tmp_path / f"run{n}", n) for n in (1, 2, 3)]
    runs += [write_run(tmp_path / "run4", 4, torch_version="2.13.0"), write_run(tmp_path / "run5", 5, threads=2)]
    history.add(runs)
    filed, frame = observations(history)
    series, chains = build_series(filed, frame)
    assert [len(s.runs) for s in series] == [4, 1]
    assert "2 threads" in series[1].machine and "1 thread · Linux x86_64 · no GPU" in series[0].machine
    torch = next(c for c in chains if c.series is series[0] and c.backend == "torch" and c.metric is TRAIN_THROUGHPUT)
    assert torch.marks(3) == ["torch 2.12.0 → torch 2.13.0"] and torch.marks(2) == []
    numpy = next(c for c in chains if c.series is series[0] and c.backend == "numpy" and c.metric is TRAIN_THROUGHPUT)
    assert numpy.marks(3) == []


def test_history_folder_default_and_environment(monkeypatch, tmp_path):
    monkeypatch.delenv(ENVIRONMENT_VARIABLE, raising=False)
    assert history_folder().parts[-2:] == ("bench", "history")
    monkeypatch.setenv(ENVIRONMENT_VARIABLE, str(tmp_path))
    assert history_folder() == tmp_path and history_folder(tmp_path / "x") == tmp_path / "x"


# -- report, check, export -------------------------------------------------------------------------
@pytest.fixture
def planted(tmp_path) -> Path:
    """Three alike runs, one from another machine (2 threads), then one with torch at half speed."""
    history = History(tmp_path / "history")
    history.add([write_run(tmp_path / f"run{n}", n) for n in (1, 2, 3)]
                + [write_run(tmp_path / "run4", 4, threads=2), write_run(tmp_path / "run5", 5, slow={"torch": 2.0})])
    return history.folder


def test_check_exits_1_naming_the_planted_regression(planted, capsys):
    assert run_cli("history", "check", "--fail-on", "0.10", "--history", planted) == 1
    out = capsys.readouterr().out
    assert "FAIL: run run5" in out and "torch · mlp · adam · relu: Train throughput" in out
    assert "numpy · mlp · adam · relu: Train" not in out.split("FAIL:")[1]
    assert run_cli("history", "check", "--run", "run3", "--history", planted) == 3  # two earlier runs: cannot judge
    assert "CANNOT JUDGE" in capsys.readouterr().out
    assert run_cli("history", "check", "--run", "run4", "--history", planted) == 3  # alone in its series
    assert run_cli("history", "check", "--run", "nope", "--history", planted) == 2


def test_check_passes_a_run_like_the_ones_before(tmp_path, capsys):
    history = History(tmp_path / "history")
    history.add([write_run(tmp_path / f"run{n}", n) for n in range(1, 6)])
    assert run_cli("history", "check", "--fail-on", "0.10", "--history", history.folder) == 0
    assert "PASS" in capsys.readouterr().out


def test_the_report_flags_exactly_the_planted_step_and_keeps_the_foreign_run_apart(planted, tmp_path):
    out = tmp_path / "page"
    assert run_cli("history", "report", "--history", planted, "--out", out) == 0
    points = pd.read_csv(out / "history.csv")
    steps = points[points["verdict"].isin(["slower", "faster", "worse", "better"])]
    assert set(zip(steps["backend"], steps["metric"], steps["run_id"])) == {
        ("torch", "train_samples_per_s", "run5"), ("torch", "inference_samples_per_s", "run5")}
    assert (steps["q_value"] < 0.05).all() and (steps["change"].between(0.4, 0.6)).all()
    assert set(points.loc[points["run_id"] == "run4", "series"]) == {"Series 2"}
    assert set(points.loc[points["run_id"] == "run4", "verdict"]) == {CANNOT}
    page = (out / "history.html").read_text()
    assert page.count('<img src="data:image/png;base64,') == 2  # one trend per series
    assert "http://" not in page and "https://" not in page and "lookback t-test on run means" in page
    assert len(pd.read_csv(out / "runs.csv")) == 5


def test_export_writes_github_action_benchmark_json(planted, tmp_path):
    assert run_cli("history", "export", "--history", planted, "--out", tmp_path / "gab") == 0
    bigger = json.loads((tmp_path / "gab" / "bench-bigger-is-better.json").read_text())
    smaller = json.loads((tmp_path / "gab" / "bench-smaller-is-better.json").read_text())
    names = {b["name"]: b for b in bigger}
    torch = names["torch · mlp · adam · relu · Train throughput"]
    assert torch["unit"] == "samples/s" and torch["value"] == pytest.approx(25_000, rel=0.1) and "run run5" in torch["extra"]
    assert {b["unit"] for b in smaller} == {"s", "bytes"} and all(set(b) >= {"name", "unit", "value"} for b in smaller)


def test_a_real_run_is_filed_and_its_first_check_cannot_judge(tmp_path):
    run = tmp_path / "real"
    command = [sys.executable, "-m", "bench", "run", "--backend", "numpy", "--models", "mlp", "--optimizers", "adam",
               "--activations", "relu", "--repeats", "2", "--epochs", "1", "--train-size", "256", "--min-window",
               "0.05", "--no-report", "--out", str(run)]
    subprocess.run(command, cwd=ROOT, check=True, capture_output=True, timeout=120)
    history = tmp_path / "history"
    assert run_cli("history", "add", run, "--history", history) == 0
    assert run_cli("history", "check", "--history", history) == 3
    (filed,) = History(history).filed()
    assert filed.entry["frameworks"]["numpy"].startswith("numpy ") and filed.entry["records"] == 2

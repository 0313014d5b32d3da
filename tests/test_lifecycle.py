"""The run lifecycle as a user meets it: killed drivers, concurrent runs, changed settings, Ctrl-C, Ray.

Real ``python -m bench run`` processes on tiny sweeps (torch, mlp, 230 training samples); the
executor's start-up rules are checked in-process on the NumPy backend, whose workers start fastest.
"""

from __future__ import annotations

import fcntl
import importlib.util
import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from bench.cli import main
from bench.errors import BenchError
from bench.measure.load import usable_cores
from bench.results.store import RunStore, write_atomic
from bench.run import code_identity
from bench.run.executors import local as executor
from bench.run.executors import ray as ray_executor
from bench.run.executors.local import WorkerSettings, run_sweep
from bench.run.executors.process import worker_cpu_set
from bench.run.lock import LOCK, WORKER_MARK, RunLock, RunLocked
from bench.spec.cell import Cell, WindowPlan
from bench.spec.model import SEED_MODELS
from bench.spec.train import TrainSpec
from reports.records import load_run
from tests.test_bad_input import snapshot

ROOT = Path(__file__).resolve().parents[1]
NUMPY_SWEEP = ["--backend", "numpy", "--models", "mlp", "--optimizers", "adam", "--activations", "relu",
               "--train-size", "256", "--epochs", "1", "--min-window", "0.05", "--window-budget", "0"]
SWEEP = ["--backend", "torch", "--models", "mlp", "--optimizers", "sgd,adam", "--activations", "relu",
         "--train-size", "256"]
THREADS = str(min(2, len(usable_cores())))
NUMPY = WorkerSettings(threads=1, cpu_set=worker_cpu_set(1), device="cpu", data_dir=None,
                       val_split=0.1, train_size=256, test_size=100)


def bench(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "bench", *args], capture_output=True, text=True, cwd=ROOT, timeout=300)


def start(tmp_path: Path, name: str, *args: str) -> tuple[subprocess.Popen, Path]:
    """A driver in the background; its output goes to a file (a full pipe would stall it)."""
    log = tmp_path / f"{name}.log"
    with open(log, "w") as handle:
        process = subprocess.Popen([sys.executable, "-m", "bench", *args], stdout=handle, stderr=subprocess.STDOUT, cwd=ROOT)
    return process, log


def wait_until(condition, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def lines(out: Path) -> list[str]:
    path = out / "results.jsonl"
    return path.read_text().splitlines() if path.exists() else []


def holder(out: Path) -> dict:
    try:
        return json.loads((out / LOCK).read_text() or "{}")
    except (OSError, json.JSONDecodeError):
        return {}


def running(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


@pytest.fixture(autouse=True)
def _torch():
    pytest.importorskip("torch")


def test_a_killed_driver_leaves_no_worker_and_its_resume_records_every_cell_once(tmp_path):
    out = tmp_path / "run"
    driver, log = start(tmp_path, "driver", "run", *SWEEP, "--repeats", "3", "--no-report", "--out", str(out))
    try:
        wait_until(lambda: lines(out) and holder(out).get("workers") or driver.poll() is not None, 180, "a first record")
        workers = [w["pid"] for w in holder(out)["workers"]]
        assert workers, log.read_text()
        driver.send_signal(signal.SIGKILL)
        driver.wait()
    finally:
        driver.kill()
    wait_until(lambda: not any(running(pid) for pid in workers), 10, "the worker to die with its driver")
    before = lines(out)
    assert 1 <= len(before) < 6

    resumed = bench("run", "--resume", str(out))
    assert resumed.returncode == 0, resumed.stderr + resumed.stdout
    assert f"{6 - len(before)} cells to run ({len(before)} already" in resumed.stdout
    assert "took over" in resumed.stdout
    after = lines(out)
    assert after[:len(before)] == before  # nothing that had finished was run or written again
    keys = [(json.loads(line)["cell_id"], json.loads(line)["repeat"]) for line in after]
    assert len(keys) == len(set(keys)) == 6
    assert holder(out) == {}  # released cleanly: no holder, no workers

    changed = bench("run", "--resume", str(out), "--seed", "7")
    assert changed.returncode == 2 and "seed: 0 -> 7" in changed.stderr
    assert len(changed.stderr.strip().splitlines()) == 1
    assert lines(out) == after


def test_a_second_run_into_a_folder_in_use_exits_2_and_ctrl_c_still_writes_the_report(tmp_path):
    out = tmp_path / "run"
    first, log = start(tmp_path, "first", "run", *SWEEP, "--repeats", "20", "--out", str(out))
    try:
        wait_until(lambda: lines(out) or first.poll() is not None, 180, "a first record")
        second = bench("run", *SWEEP, "--repeats", "20", "--out", str(out))
        first.send_signal(signal.SIGINT)
        assert first.wait(timeout=120) == 130, log.read_text()
    finally:
        first.kill()
    assert second.returncode == 2
    assert second.stderr.strip().splitlines() == [second.stderr.strip()]
    assert f"is in use by pid {first.pid}" in second.stderr
    assert "resume with: python -m bench run --resume" in log.read_text()
    records = [json.loads(line) for line in lines(out)]
    assert records and all(r["run_id"] == "run" for r in records)  # the second run wrote nothing
    assert (out / "report.html").is_file() and len(load_run(out).records) == len(records)


class OnStart:
    """A ``WorkerWatch`` that calls ``started(pid)`` as each worker process starts (and marks none)."""

    mark: dict[str, str] = {}

    def __init__(self, started) -> None:
        self.started = started

    def __call__(self, pid: int, alive: bool) -> None:
        if alive:
            self.started(pid)


def test_a_worker_killed_while_starting_is_started_again():
    killed = []

    def kill_first(pid: int) -> None:
        if not killed:
            killed.append(pid)
            os.kill(pid, signal.SIGKILL)

    records = []
    cells = [Cell("numpy", SEED_MODELS["mlp"], TrainSpec(batch_size=32), "mnist-sample")]
    run_sweep(cells, NUMPY, records.append, watch=OnStart(kill_first))
    assert [r.status for r in records] == ["ok"] and records[0].worker_pid != killed[0]


def test_a_worker_that_keeps_dying_at_start_up_fails_its_cells_never_skips_them():
    records = []
    cells = [Cell("numpy", SEED_MODELS["mlp"], TrainSpec(batch_size=32, seed=i), "mnist-sample", repeat=i) for i in range(2)]
    run_sweep(cells, NUMPY, records.append, watch=OnStart(lambda pid: os.kill(pid, signal.SIGKILL)))
    assert [r.status for r in records] == ["failed", "failed"]
    assert f"did not start in {executor.STARTUP_ATTEMPTS} attempts" in records[0].error


def test_the_cell_timeout_does_not_count_the_worker_start_up(tmp_path, monkeypatch):
    slow_start = 4.0
    (tmp_path / "sitecustomize.py").write_text(f"import time\ntime.sleep({slow_start})\n")  # every new interpreter
    monkeypatch.setenv("PYTHONPATH", str(tmp_path))
    records = []
    began = time.monotonic()
    # a cell well inside the timeout (short windows, no step-time probe), so only the start-up could exceed it
    cells = [Cell("numpy", SEED_MODELS["mlp"], TrainSpec(batch_size=32), "mnist-sample", probe_steps=0,
                  window=WindowPlan(min_seconds=0.05, budget_seconds=0.1))]
    run_sweep(cells, NUMPY, records.append, cell_timeout=slow_start - 1)
    assert time.monotonic() - began > slow_start
    assert [r.status for r in records] == ["ok"], records[0].reason


def sleeper(**marks: str) -> subprocess.Popen:
    """A live process that is not a bench worker (unless ``marks`` forge its environment)."""
    return subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"], env=os.environ | marks)


def forged_lock(folder: Path, processes: list[subprocess.Popen], token: str = "f" * 32) -> None:
    """A run.lock as a dead driver on this host would leave it, listing ``processes`` (real pids and
    creation times) as its workers."""
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    workers = [{"pid": p.pid, "create_time": psutil.Process(p.pid).create_time()} for p in processes]
    (folder / LOCK).write_text(json.dumps({"pid": gone.pid, "host": socket.gethostname(), "token": token, "workers": workers}))


def test_a_stale_lock_is_taken_over_and_only_its_proven_workers_stopped(tmp_path):
    token = "a" * 32
    leftover = sleeper(**{WORKER_MARK: f"{token} {tmp_path.resolve()}"})
    strangers = [sleeper(), sleeper(**{WORKER_MARK: f"{token} {tmp_path.resolve() / 'other'}"}),  # another folder's
                 sleeper(**{WORKER_MARK: f"{'b' * 32} {tmp_path.resolve()}"})]  # another run's
    try:
        forged_lock(tmp_path, [leftover, *strangers], token)
        with RunLock(tmp_path, "test") as lock:
            assert lock.stopped_leftovers == 1 and lock.left_alone == [p.pid for p in strangers]
            assert leftover.wait(timeout=10) == -signal.SIGKILL
            assert all(p.poll() is None for p in strangers)
            assert holder(tmp_path)["pid"] == os.getpid() and holder(tmp_path)["token"] == lock.token != token
            with pytest.raises(RunLocked, match=f"in use by pid {os.getpid()}"):
                RunLock(tmp_path, "second").acquire()
    finally:
        for process in [leftover, *strangers]:
            process.kill()


def test_a_lock_without_a_token_or_with_hostile_entries_signals_nothing(tmp_path):
    stranger = sleeper()
    try:
        created = psutil.Process(stranger.pid).create_time()
        entries = [{"pid": stranger.pid, "create_time": created}, {"pid": 0, "create_time": 0}, {"pid": -1, "create_time": 0},
                   {"pid": os.getpid(), "create_time": psutil.Process().create_time()}, {"pid": "x"}, "junk"]
        (tmp_path / LOCK).write_text(json.dumps({"pid": 1, "host": socket.gethostname(), "workers": entries}))
        with RunLock(tmp_path, "test") as lock:
            assert lock.stopped_leftovers == 0 and lock.left_alone == [stranger.pid]
        assert stranger.poll() is None
    finally:
        stranger.kill()
    target = tmp_path / "elsewhere.txt"
    target.write_text("precious")
    (tmp_path / "linked").mkdir()
    (tmp_path / "linked" / LOCK).symlink_to(target)  # would truncate and overwrite a file outside the folder
    (tmp_path / "folder" / LOCK).mkdir(parents=True)
    for folder in ("linked", "folder"):
        with pytest.raises(BenchError, match="it must be a plain file of the run folder"):
            RunLock(tmp_path / folder, "test").acquire()
    assert target.read_text() == "precious"


def test_a_forged_holder_cannot_write_to_the_terminal(tmp_path):
    fd = os.open(tmp_path / LOCK, os.O_RDWR | os.O_CREAT)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # a live holder whose file says anything
        os.write(fd, json.dumps({"pid": 1, "host": "h", "command": "x\n\x1b[2Jerror: fake"}).encode())
        with pytest.raises(RunLocked) as refused:
            RunLock(tmp_path, "test").acquire()
        assert "\n" not in str(refused.value) and "\x1b" not in str(refused.value) and "(x??[2Jerror: fake)" in str(refused.value)
    finally:
        os.close(fd)


def test_the_workers_of_a_run_carry_its_mark_and_a_takeover_stops_them(tmp_path):
    """A real sweep worker, left by a driver that is gone, is proven by its environment and stopped."""
    first = RunLock(tmp_path, "first").acquire()
    worker, _ = executor.start_worker("numpy", NUMPY, first)
    try:
        assert psutil.Process(worker.pid).environ()[WORKER_MARK] == first.mark[WORKER_MARK]
        left = (tmp_path / LOCK).read_text()
        os.close(first.fd)  # the driver dies: the kernel drops its lock, the file stays as it was
        worker.watch = None  # and nobody is left to write it
        with RunLock(tmp_path, "second") as second:
            assert json.loads(left)["workers"][0]["pid"] == worker.pid and second.stopped_leftovers == 1
            worker.process.join(timeout=10)
            assert worker.process.exitcode == -signal.SIGKILL
    finally:
        worker.stop(graceful=False)


@pytest.fixture(scope="module")
def numpy_run(tmp_path_factory) -> Path:
    """A finished two-repeat run folder (numpy backend, seconds), copied by each test that changes it."""
    out = tmp_path_factory.mktemp("numpy") / "run"
    result = bench("run", *NUMPY_SWEEP, "--repeats", "2", "--out", str(out))
    assert result.returncode == 0, result.stderr + result.stdout
    return out


def copy_of(run: Path, tmp_path: Path, name: str = "run") -> Path:
    return shutil.copytree(run, tmp_path / name)


def test_a_resume_with_a_forged_lock_leaves_an_unrelated_process_alive(numpy_run, tmp_path):
    out = copy_of(numpy_run, tmp_path)
    stranger = sleeper()
    try:
        forged_lock(out, [stranger])
        resumed = bench("run", "--resume", str(out), "--no-report")
        assert resumed.returncode == 0, resumed.stderr + resumed.stdout
        assert stranger.poll() is None
        assert f"listed live process(es) [{stranger.pid}] that are not provably workers" in resumed.stdout
        assert "stopped 0 leftover worker(s)" in resumed.stdout
    finally:
        stranger.kill()


def edited(path: Path, change) -> None:
    recorded = json.loads(path.read_text())
    change(recorded)
    path.write_text(json.dumps(recorded))


REFUSED = {  # (edit of the folder before, arguments, what the one line must say, what it must not)
    "resume with fewer repeats": (None, ["--resume", "{out}", "--repeats", "1"],
                                  "--repeats 1: {out} already holds 2 repeat(s) of its cells, and repeats may only grow; valid: 2 or more", None),
    "rerun with fewer repeats": (None, [*NUMPY_SWEEP, "--repeats", "1", "--out", "{out}"], "already holds 2 repeat(s)", None),
    "run.json edited to fewer repeats": (lambda r: r["arguments"].update(repeats=1), ["--resume", "{out}"],
                                         "--repeats 1: {out} already holds 2 repeat(s)", None),
    "resume overriding a setting": (None, ["--resume", "{out}", "--seed", "7"],
                                    "seed: 0 -> 7); leave out --seed to continue it as recorded, or choose another --out", "--resume {out}`"),
    "rerun with another setting": (None, [*NUMPY_SWEEP, "--repeats", "2", "--seed", "7", "--out", "{out}"],
                                   "continue it as recorded with `python -m bench run --resume {out}`", None),
    "run.json arguments edited": (lambda r: r["arguments"].update(seed=5), ["--resume", "{out}"],
                                  "seed: 0 -> 5); the arguments in {out}/run.json or this machine", "--resume {out}`"),
    "run.json fingerprint edited": (lambda r: r.update(fingerprint="0" * 16), ["--resume", "{out}"],
                                    "its \"fingerprint\" was edited, and its settings, which this run matches, hash to", "--resume {out}`"),
    "run.json settings edited": (lambda r: (r["settings"].update(seed=9), r.update(fingerprint="1" * 16)), ["--resume", "{out}"],
                                 "seed: 9 -> 0); {out}/run.json was edited", "--resume {out}`"),
}


@pytest.mark.parametrize("edit,args,message,never", REFUSED.values(), ids=REFUSED.keys())
def test_a_refused_rerun_says_what_differs_gives_a_remedy_that_works_and_changes_nothing(numpy_run, tmp_path, capsys,
                                                                                      edit, args, message, never):
    out = copy_of(numpy_run, tmp_path, "run (1); x")  # a folder name a shell would split or run
    if edit:
        edited(out / "run.json", edit)
    before = snapshot(out)
    assert main(["run", *(a.format(out=out) for a in args)]) == 2
    err = capsys.readouterr().err
    expected = message.format(out=shlex.quote(str(out)) if "`" in message else out)
    assert err.count("\n") == 1 and expected in err and "Traceback" not in err, err
    assert never is None or never.format(out=shlex.quote(str(out))) not in err, err
    assert snapshot(out) == before


def test_the_resume_hint_is_quoted_and_a_second_interrupt_during_the_report_exits_at_once(numpy_run, tmp_path):
    """Ctrl-C as the last cell ends, then again while the report is written: exit 130 at once, one
    line (a resume command that pastes as one argument), the records kept, the previous report in place."""
    out = copy_of(numpy_run, tmp_path, "run (2); echo pwned")
    report = (out / "report.html").read_bytes()
    interrupted = ("import os, signal, sys, time\n"
                   "import reports.build\n"
                   "from bench.cli import main\n"
                   "from bench.run import executors\n"
                   "local = executors.EXECUTORS['local']\n"
                   "finish = local.run\n"
                   "def run_then_interrupt(*args):\n"
                   "    finish(*args)\n"
                   "    os.kill(os.getpid(), signal.SIGINT)\n"
                   "    time.sleep(30)\n"
                   "def interrupted_again(*args, **kwargs):\n"
                   "    os.kill(os.getpid(), signal.SIGINT)\n"
                   "    time.sleep(30)\n"
                   "local.run = run_then_interrupt\n"
                   "reports.build.build_report = interrupted_again\n"
                   "sys.exit(main(sys.argv[1:]))\n")
    result = subprocess.run([sys.executable, "-c", interrupted, "run", "--resume", str(out), "--repeats", "3"],
                            capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert result.returncode == 130 and "Traceback" not in result.stderr + result.stdout, result.stderr
    (line,) = result.stderr.splitlines()
    hint = line.split("resume with: ")[1].removesuffix(" (interrupt again to skip the report)")
    assert shlex.split(hint) == ["python", "-m", "bench", "run", "--resume", str(out)]
    assert len(lines(out)) == 3 and (out / "report.html").read_bytes() == report
    assert not any(p.name.endswith(".tmp") for p in out.rglob("*"))


def test_ctrl_c_outside_a_sweep_exits_130_quietly(numpy_run, monkeypatch, capsys):
    import reports.build

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(reports.build, "build_report", interrupted)
    assert main(["report", str(numpy_run)]) == 130
    assert capsys.readouterr().err == ""


def test_a_reader_that_closes_early_ends_the_command_quietly(numpy_run):
    for command in (["report", str(numpy_run)], ["list"]):
        reader = subprocess.Popen([sys.executable, "-m", "bench", *command], stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, cwd=ROOT)
        reader.stdout.close()  # `| head -0`
        assert reader.wait(timeout=120) == 128 + signal.SIGPIPE and reader.stderr.read() == b"", command


def test_the_report_counts_the_latest_record_of_a_cell_that_was_run_again(tmp_path):
    store = RunStore(tmp_path)
    base = {"cell_id": "torch|mlp", "repeat": 0, "backend": "torch", "model": "mlp"}
    store.append(base | {"status": "failed", "error": "worker process died with exit code -9"})
    assert store.finished() == set()
    store.append(base | {"status": "ok", "test_accuracy": 0.9, "train_samples_per_s": 1000.0})
    assert store.finished() == {("torch|mlp", 0)}
    run = load_run(tmp_path)
    assert list(run.records["status"]) == ["ok"] and "superseded" in " ".join(run.notes)


def _copy_of_the_suite(tmp_path: Path) -> Path:
    """The source tree copied to edit (the real tree is never changed); not a git checkout."""
    tree = tmp_path / "tree"
    for name in ("bench", "backends", "reports"):
        shutil.copytree(ROOT / name, tree / name, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tree)
    return tree


def test_a_resume_after_the_measuring_code_changed_exits_2_naming_the_change(tmp_path):
    tree, out = _copy_of_the_suite(tmp_path), tmp_path / "run"

    def bench_in_copy(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "bench", "run", *args], capture_output=True, text=True,
                              cwd=tree, timeout=300)

    first = bench_in_copy("--backend", "numpy", "--models", "mlp", "--optimizers", "sgd", "--activations", "relu",
                          "--epochs", "1", "--train-size", "256", "--no-report", "--out", str(out))
    assert first.returncode == 0, first.stderr
    code = json.loads((out / "run.json").read_text())["code"]
    assert code == {"hash": code_identity.code_hash(), "commit": None}  # content only: not the folder, not __pycache__
    assert {(r["code_hash"], r["code_commit"]) for r in map(json.loads, lines(out))} == {(code["hash"], None)}

    recorded = json.loads((out / "run.json").read_text())
    write_atomic(out / "run.json", json.dumps({k: v for k, v in recorded.items() if k != "code"}))
    unknown = bench_in_copy("--resume", str(out))  # a folder from before code identities: resumes, with a note
    assert unknown.returncode == 0, unknown.stderr
    assert "recorded before runs kept a code identity" in " ".join(unknown.stdout.split())

    with open(tree / "backends" / "numpy_backend.py", "a", encoding="utf-8") as handle:
        handle.write("\n# an edit to an adapter\n")
    before = lines(out)
    refused = bench_in_copy("--resume", str(out))
    assert refused.returncode == 2 and refused.stderr.count("\n") == 1, refused.stderr
    changed = re.search(rf"the measuring code changed since {re.escape(str(out))} was recorded "
                        rf"\(code hash {code['hash']} -> ([0-9a-f]{{16}})", refused.stderr)
    assert changed and changed[1] != code["hash"], refused.stderr
    assert "new --out" in refused.stderr and "Traceback" not in refused.stderr
    assert lines(out) == before


def test_an_artifact_that_cannot_be_written_leaves_the_previous_one(tmp_path, monkeypatch):
    page = tmp_path / "report.html"
    write_atomic(page, "good")

    def full_disk(fd):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", full_disk)
    with pytest.raises(BenchError, match="cannot write .*report.html: No space left on device"):
        write_atomic(page, "truncated")
    assert page.read_text() == "good" and [p.name for p in tmp_path.iterdir()] == ["report.html"]


def test_cells_on_one_machine_claim_disjoint_cores(tmp_path, monkeypatch):
    monkeypatch.setattr(ray_executor, "CORE_LOCKS", tmp_path / "cores")
    cores = usable_cores()
    with ray_executor.claim_cores(1) as first:
        assert len(first) == 1 and first[0] in cores
        if len(cores) > 1:
            with ray_executor.claim_cores(len(cores) - 1) as rest:
                assert set(rest) == set(cores) - set(first)
    with ray_executor.claim_cores(len(cores)) as everything:  # released: all are free again
        assert set(everything) == set(cores)


def test_the_ray_executor_records_the_same_cells_and_statuses_as_the_local_one(tmp_path):
    pytest.importorskip("ray")
    outcomes = {}
    for name in ("local", "ray"):
        out = tmp_path / name
        result = bench("run", *SWEEP, "--threads", THREADS, "--no-report", "--executor", name, "--out", str(out))
        assert result.returncode == 0, result.stderr + result.stdout
        outcomes[name] = sorted((r["cell_id"], r["repeat"], r["status"]) for r in map(json.loads, lines(out)))
    assert outcomes["ray"] == outcomes["local"] and len(outcomes["local"]) == 2


def test_the_ray_executor_without_ray_is_one_line_and_writes_nothing(tmp_path, monkeypatch, capsys):
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "ray" else real_find_spec(name, *a))
    out = tmp_path / "run"
    assert main(["run", *SWEEP, "--executor", "ray", "--out", str(out)]) == 2
    assert capsys.readouterr().err.strip() == "error: --executor ray needs Ray, which is not installed (pip install -e '.[ray]')"
    assert not out.exists()


def test_an_installed_framework_that_cannot_start_fails_and_a_resume_reruns_it(tmp_path):
    """Only a package that is not there is "not installed" (skipped); a torch whose import raises is
    a failure everywhere: parity exits 1 naming it, its cells are failed (exit 1) and a resume after
    the repair runs them, and `bench list` says it is broken."""
    pytest.importorskip("torch")
    fake = tmp_path / "fake" / "torch"
    fake.mkdir(parents=True)
    message = "planted: this torch is broken"
    (fake / "__init__.py").write_text(f"raise ImportError({message!r})\n")
    broken = os.environ | {"PYTHONPATH": str(fake.parent)}

    def run(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "bench", *args], capture_output=True, text=True, cwd=ROOT,
                              timeout=300, env=env)

    parity = run("parity", "--backend", "torch", "--models", "mlp", "--optimizers", "adam", "--activations", "relu",
                 env=broken)
    assert parity.returncode == 1 and message in parity.stdout and "every rung passes" not in parity.stdout
    out = tmp_path / "run"
    sweep = ("run", "--backend", "torch", "--models", "mlp", "--optimizers", "adam", "--activations", "relu",
             "--epochs", "1", "--train-size", "256", "--no-report", "--out", str(out))
    assert run(*sweep, env=broken).returncode == 1
    records = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert [r["status"] for r in records] == ["failed"] and message in records[0]["error"]
    listed = run("list", env=broken)
    assert listed.returncode == 0 and "broken:" in listed.stdout and "planted" in listed.stdout
    resumed = run("run", "--resume", str(out), "--no-report")  # the real torch again
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert [json.loads(line)["status"] for line in (out / "results.jsonl").read_text().splitlines()] == ["failed", "ok"]


@pytest.mark.parametrize("error", [ImportError("no libcudart"), RuntimeError("CUDA init failed"), OSError("bad .so")])
def test_any_error_importing_an_installed_adapter_is_broken_not_unavailable(monkeypatch, error):
    import backends

    def fail(name: str):
        raise error

    monkeypatch.setattr(backends.importlib, "import_module", fail)
    with pytest.raises(backends.BackendBroken, match=f"installed but does not import: {type(error).__name__}"):
        backends.load("numpy")

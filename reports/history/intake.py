"""A run folder read for the history: what ran, on which machine, with which sweep, checked whole.

``bench history add`` files only what this module accepts, and it accepts a folder only whole: a
``results.jsonl`` with an unreadable line (a crash mid-write, a damaged file), records of another
sweep mixed in, a missing or broken ``environment.json`` or ``run.json`` is a BenchError (one line,
exit 2) before anything is written, so the history never holds half a run or a run it cannot place.

Where a run goes (docs/architecture.md, "History"): a *series* is one machine running one sweep.

- The machine (``Machine``) is what decides speed and cannot change between two runs of the same
  box: CPU model, core count, the threads the run used, OS family and architecture, GPU models
  and memory. Not the host name (CI runners are new machines with new names every run), not the
  kernel release or GPU driver (a patch update would start a new series every week; both stay
  visible in the run's environment.json).
- The sweep is the run's fingerprint of settings (bench/run/fingerprint.py) without the framework
  versions, the list of backends and the suite's version (``OUTSIDE_THE_SWEEP``): a framework
  upgrade is the change a user wants to see *within* a series, a backend added to a sweep leaves
  the others' series alone, and the cell id names the backend anyway. Everything else (data,
  split, seed, epochs, models' layers, hyperparameters, precision, modes) keeps two runs apart,
  because a cell id alone does not: it leaves out the seed, the split and the layers.

The measuring code is no key either: a code change is a marked point on the trend (``code_hash``),
like a framework upgrade, and the test across it says whether it moved a figure.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path

from bench.errors import BenchError
from bench.results.store import ENVIRONMENT, RESULTS, RUN, latest, read_records, read_run

OUTSIDE_THE_SWEEP = ("versions", "backends", "suite_version", "threads")
"""run.json settings that do not key a series: versions are change points within it, a backend added to the
sweep starts no new series for the others, and threads are part of the machine."""
ARCHITECTURES = ("x86_64", "amd64", "aarch64", "arm64", "ppc64le", "s390x", "riscv64", "i686", "i386")
VALID = "valid: a finished run folder written by `bench run` (results.jsonl, environment.json and run.json of one sweep)"


def short_digest(value: object, length: int = 12) -> str:
    """A stable hex digest of a JSON value (sorted keys), for keys that name series and machines."""
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()[:length]


def _os_family(platform_text: str) -> str:
    """'Linux x86_64' from platform.platform()'s 'Linux-6.1.0-18-amd64-x86_64-with-glibc2.36': the last
    architecture named, since a kernel release may name its flavour ('amd64') before the machine."""
    parts = str(platform_text).split("-")
    arch = next((p for p in reversed(parts) if p in ARCHITECTURES), "")
    return f"{parts[0]} {arch}".strip()


def _gpus(nvidia_smi: object) -> str:
    """'2 × NVIDIA H100 80GB HBM3 (81559 MiB)' from nvidia-smi's 'name, driver, memory' lines; 'none' without."""
    if not nvidia_smi:
        return "none"
    models = Counter()
    for line in str(nvidia_smi).splitlines():
        parts = [p.strip() for p in line.split(",")]
        if parts[0]:
            models[parts[0] + (f" ({parts[2]})" if len(parts) > 2 else "")] += 1
    return ", ".join(f"{n} × {name}" if n > 1 else name for name, n in sorted(models.items())) or "none"


@dataclass(frozen=True)
class Machine:
    """What decides a machine's speed and stays put between its runs (see the module docstring)."""

    cpu: str
    cores: int | None
    threads: int | None
    os: str
    gpu: str

    @classmethod
    def of(cls, environment: dict, settings: dict) -> Machine:
        threads = settings.get("threads", environment.get("threads"))
        return cls(str(environment.get("cpu")), environment.get("cores"), threads, _os_family(environment.get("os", "")),
                   _gpus(environment.get("gpu")))

    @property
    def key(self) -> str:
        return short_digest(asdict(self))

    @property
    def label(self) -> str:
        """'AMD EPYC · 2 cores · 1 thread · Linux x86_64 · no GPU'."""
        threads = f"{self.threads} thread{'s' if self.threads != 1 else ''}"
        gpu = "no GPU" if self.gpu == "none" else self.gpu
        return f"{self.cpu} · {self.cores} cores · {threads} · {self.os} · {gpu}"


def _same(field: str, setting: str) -> Callable[[dict, dict], bool]:
    return lambda record, settings: record.get(field) is None or record[field] == settings.get(setting)


def _among(field: str, setting: str) -> Callable[[dict, dict], bool]:
    return lambda record, settings: record.get(field) is None or record[field] in (settings.get(setting) or ())


def _versions_agree(record: dict, settings: dict) -> bool:
    recorded = settings.get("versions") or {}
    return all(recorded.get(package, version) == version for package, version in (record.get("framework_versions") or {}).items())


SWEEP_CHECKS: dict[str, Callable[[dict, dict], bool]] = {
    "backend": _among("backend", "backends"),
    "model": _among("model", "models"),
    "epochs": _same("epochs", "epochs"),
    "dataset": _same("dataset", "dataset"),
    "threads": _same("threads", "threads"),
    "framework_versions": _versions_agree,
}
"""What every record must share with its folder's run.json settings: a record that does not was measured by another sweep."""


def _json_object(path: Path) -> dict:
    if not path.is_file():
        raise BenchError(f"{path.parent} has no {path.name}; {VALID}")
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BenchError(f"cannot read {path}: {exc}; {VALID}") from None
    if not isinstance(value, dict):
        raise BenchError(f"{path} does not hold a JSON object; {VALID}")
    return value


def _date(run: dict, environment: dict, folder: Path) -> datetime:
    text = run.get("created") or environment.get("created")
    try:
        date = datetime.fromisoformat(str(text))
    except ValueError:
        raise BenchError(f"{folder}: run.json has no readable 'created' date ({text!r}); {VALID}") from None
    return date if date.tzinfo else date.replace(tzinfo=UTC)


def _check_one_sweep(folder: Path, records: list[dict], run: dict) -> None:
    """Records of another run or sweep mixed into results.jsonl are a BenchError naming the first one."""
    settings, code = run.get("settings") or {}, (run.get("code") or {}).get("hash")
    names = sorted({str(r.get("run_id")) for r in records if r.get("run_id") is not None})
    if len(names) > 1:
        raise BenchError(f"{folder}/{RESULTS} mixes records of several runs ({', '.join(names)}); {VALID}")
    for number, record in enumerate(records, start=1):
        if code and record.get("code_hash") not in (None, code):
            raise BenchError(f"{folder}/{RESULTS}: record {number} ({record.get('cell_id')}) was measured by code "
                             f"{record['code_hash']}, run.json by {code}: records of another run are mixed in; {VALID}")
        wrong = next((name for name, agrees in SWEEP_CHECKS.items() if not agrees(record, settings)), None)
        if wrong:
            raise BenchError(f"{folder}/{RESULTS}: record {number} ({record.get('cell_id')}) has {wrong} "
                             f"{record.get(wrong)!r}, which run.json's sweep does not: records of another sweep are "
                             f"mixed in; {VALID}")


def _frameworks(records: list[dict]) -> dict[str, str]:
    """Each backend's framework as its records name it: 'torch 2.13.0+cpu', 'tensorflow-cpu 2.21.0, keras 3.15.1'."""
    found: dict[str, str] = {}
    for record in records:
        versions = record.get("framework_versions")
        if record.get("backend") and isinstance(versions, dict) and versions:
            found.setdefault(record["backend"], ", ".join(f"{k} {v}" for k, v in sorted(versions.items())))
    return found


@dataclass(frozen=True)
class Candidate:
    """A checked run folder, ready to file: where it goes, how it is told apart, and its files' bytes."""

    folder: Path
    run_id: str
    date: datetime
    digest: str
    """Of the run id and results.jsonl's bytes: the same run added twice has the same digest."""
    origin: str
    """The run id, start time and fingerprint: the same run grown by a resume keeps its origin."""
    machine: Machine
    sweep: str
    frameworks: dict[str, str]
    code_hash: str | None
    code_commit: str | None
    cells: frozenset[tuple[str, int]]
    files: dict[str, bytes]

    @property
    def series(self) -> str:
        return short_digest([self.machine.key, self.sweep])

    @property
    def entry_id(self) -> str:
        """'20261207T035408Z-run1-3f2a9c1d': date first, so a listing of the history is in time order."""
        slug = re.sub(r"[^A-Za-z0-9_.-]+", "_", self.run_id).strip("._")[:40] or "run"
        return f"{self.date.astimezone(UTC):%Y%m%dT%H%M%SZ}-{slug}-{self.digest[:8]}"

    def entry(self) -> dict:
        """entry.json: everything the history needs to place the run without reading its records."""
        return {
            "entry": self.entry_id, "run_id": self.run_id, "date": self.date.isoformat(), "digest": self.digest,
            "origin": self.origin, "series": self.series, "sweep": self.sweep,
            "machine": asdict(self.machine) | {"key": self.machine.key, "label": self.machine.label},
            "frameworks": self.frameworks, "code_hash": self.code_hash, "code_commit": self.code_commit,
            "records": len(self.cells), "source": str(self.folder.resolve()),
        }


def read_candidate(folder: Path) -> Candidate:
    """Read and check one run folder; a BenchError (one line) for anything that is not one finished run."""
    folder = Path(folder)
    if not folder.is_dir():
        raise BenchError(f"run folder {folder} does not exist or is not a folder; {VALID}")
    results = folder / RESULTS
    if not results.is_file():
        raise BenchError(f"{folder} has no {RESULTS}; {VALID}")
    try:
        raw = results.read_bytes()
        records, skipped = read_records(results)
    except OSError as exc:
        raise BenchError(f"cannot read {results}: {exc.strerror or exc}") from None
    if skipped:
        raise BenchError(f"{results} has {skipped} unreadable line(s) (a crash mid-write or a damaged file): only a "
                         f"whole run is filed; {VALID}")
    if not records:
        raise BenchError(f"{results} holds no record: nothing to file; {VALID}")
    environment = _json_object(folder / ENVIRONMENT)
    run = read_run(folder)
    if run is None:
        raise BenchError(f"{folder} has no {RUN} (its sweep's settings), so its series cannot be told; {VALID}")
    missing = [key for key in ("cpu", "cores", "os") if environment.get(key) in (None, "")]
    if missing or not isinstance(run.get("settings"), dict):
        what = f"{ENVIRONMENT} lacks {', '.join(missing)}" if missing else f"{RUN} has no settings"
        raise BenchError(f"{folder}: {what}, so the machine or sweep it ran cannot be told; {VALID}")
    _check_one_sweep(folder, records, run)
    current = latest(records)
    run_id = str(next((r["run_id"] for r in current if r.get("run_id")), folder.name))
    settings = run["settings"]
    code = run.get("code") or {}
    return Candidate(
        folder=folder, run_id=run_id, date=_date(run, environment, folder),
        digest=hashlib.sha256(run_id.encode() + b"\0" + raw).hexdigest()[:16],
        origin=f"{run_id}|{run.get('created')}|{run.get('fingerprint')}",
        machine=Machine.of(environment, settings),
        sweep=short_digest({k: v for k, v in settings.items() if k not in OUTSIDE_THE_SWEEP}),
        frameworks=_frameworks(current), code_hash=code.get("hash"), code_commit=code.get("commit"),
        cells=frozenset((str(r.get("cell_id")), int(r.get("repeat") or 0)) for r in current),
        files={RESULTS: raw, ENVIRONMENT: (folder / ENVIRONMENT).read_bytes(), RUN: (folder / RUN).read_bytes()},
    )

"""The history folder: one sub-folder per filed run, each written whole or not at all.

Layout (plain files that pandas and ``json`` read; no server, no database)::

    HISTORY/runs/<entry>/entry.json        where the run goes: machine, sweep, series, frameworks, code, date, digest
    HISTORY/runs/<entry>/results.jsonl     its records, byte for byte as `bench run` wrote them
    HISTORY/runs/<entry>/environment.json  its machine, copied
    HISTORY/runs/<entry>/run.json          its settings, copied

``<entry>`` is ``<UTC start>-<run id>-<digest>``, so a listing is in time order. Nothing else is
kept: series, trends and steps are computed from these files on every report, so there is no
index to fall out of step with the runs (docs/architecture.md, "History").

Adding is checked whole first: every folder named on the command line is read and checked
(reports/history/intake.py) before anything is written, so one bad folder files none of them and
the history stays byte for byte as it was. A run is written into a hidden temporary folder, each
file fsynced, and renamed into place: a crash leaves the history without the run, never with half
of it. The same run added twice (same run id and results.jsonl bytes) is a no-op; the same run
grown by a resume (same run id, start time and fingerprint, more records) replaces its earlier
entry, and one that lost records is refused.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import platformdirs

from bench.errors import BenchError
from bench.results.store import RESULTS, latest, read_records, write_atomic
from reports.history.intake import Candidate, read_candidate

ENTRY = "entry.json"
RUNS = "runs"
ENVIRONMENT_VARIABLE = "BENCH_HISTORY"


def history_folder(given: Path | None = None) -> Path:
    """``--history DIR``, else $BENCH_HISTORY, else the user's data directory (``~/.local/share/bench/history``
    on Linux, as platformdirs places it on each system)."""
    if given is not None:
        return Path(given)
    if os.environ.get(ENVIRONMENT_VARIABLE):
        return Path(os.environ[ENVIRONMENT_VARIABLE])
    return platformdirs.user_data_path("bench") / "history"


@dataclass(frozen=True)
class Filed:
    """One run in the history: its folder and its entry.json."""

    folder: Path
    entry: dict

    @property
    def id(self) -> str:
        return self.entry["entry"]

    @property
    def date(self) -> datetime:
        return datetime.fromisoformat(self.entry["date"])

    def cells(self) -> set[tuple[str, int]]:
        records, _ = read_records(self.folder / RESULTS)
        return {(str(r.get("cell_id")), int(r.get("repeat") or 0)) for r in latest(records)}


REQUIRED = ("entry", "date", "digest", "origin", "series", "machine")
"""The fields of entry.json every reader relies on."""


def _read_entry(path: Path) -> Filed:
    """One entry.json; unreadable, or lacking a field of REQUIRED, is a BenchError naming it."""
    try:
        entry = json.loads(path.read_text(encoding="utf-8"))
        missing = [key for key in REQUIRED if key not in entry]
        if missing:
            raise ValueError(f"no {', '.join(missing)}")
        datetime.fromisoformat(entry["date"])
    except (OSError, ValueError, TypeError) as exc:
        raise BenchError(f"cannot read {path}: {exc}; entries are written by `bench history add`: remove or restore "
                         "that folder") from None
    return Filed(path.parent, entry)


class History:
    """A history folder (it need not exist until the first run is added)."""

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)
        self.runs = self.folder / RUNS

    def filed(self) -> list[Filed]:
        """Every filed run in time order; an entry.json that cannot be read is a BenchError naming it.

        Two entries of one origin (a crash between filing a resumed run and removing its earlier
        entry) count once, as the one with more records.
        """
        if self.folder.exists() and not self.folder.is_dir():
            raise BenchError(f"history folder {self.folder} is a file; valid: a folder (--history DIR)")
        found: dict[str, Filed] = {}
        for path in sorted(self.runs.glob(f"[!.]*/{ENTRY}")) if self.runs.is_dir() else []:
            filed = _read_entry(path)
            entry = filed.entry
            kept = found.get(entry["origin"])
            if kept is None or entry.get("records", 0) > kept.entry.get("records", 0):
                found[entry["origin"]] = filed
        return sorted(found.values(), key=lambda f: (f.date, f.id))

    def add(self, folders: list[Path]) -> list[str]:
        """File ``folders``; one line per folder saying what happened. Nothing is written unless all are valid."""
        candidates = [read_candidate(folder) for folder in folders]
        filed = self.filed()
        by_digest = {f.entry["digest"]: f for f in filed}
        by_origin = {f.entry["origin"]: f for f in filed}
        lines, plan = [], []
        for candidate in candidates:
            known = by_digest.get(candidate.digest)
            if known is not None:
                lines.append(f"{candidate.folder}: already in the history as {known.id}; nothing changed")
                continue
            earlier = by_origin.get(candidate.origin)
            if earlier is not None and not earlier.cells() <= candidate.cells:
                raise BenchError(f"{candidate.folder} is run {candidate.run_id} filed earlier as {earlier.id}, but it "
                                 "lacks records that entry holds; valid: the same run grown by a resume, or another run")
            plan.append((candidate, earlier))
            by_digest[candidate.digest] = Filed(self.runs / candidate.entry_id, candidate.entry())
        for candidate, earlier in plan:
            self._write(candidate)
            if earlier is not None:
                shutil.rmtree(earlier.folder, ignore_errors=True)
                lines.append(f"{candidate.folder}: filed as {candidate.entry_id}, replacing {earlier.id} "
                             f"({earlier.entry.get('records')} -> {len(candidate.cells)} records: the run was resumed)")
            else:
                lines.append(f"{candidate.folder}: filed as {candidate.entry_id} in series {candidate.series} "
                             f"({candidate.machine.label})")
        return lines

    def _write(self, candidate: Candidate) -> None:
        """The run's files into a hidden folder, each fsynced, then one rename makes the entry appear whole."""
        final = self.runs / candidate.entry_id
        staging = self.runs / f".adding-{candidate.entry_id}-{os.getpid()}"
        try:
            staging.mkdir(parents=True, exist_ok=False)
            for name, data in candidate.files.items():
                write_atomic(staging / name, data)
            write_atomic(staging / ENTRY, json.dumps(candidate.entry(), indent=2))
            os.rename(staging, final)
        except OSError as exc:
            raise BenchError(f"cannot write {final}: {exc.strerror or exc}; the history is as it was") from None
        finally:
            shutil.rmtree(staging, ignore_errors=True)

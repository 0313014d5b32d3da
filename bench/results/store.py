"""The results store: one run = one folder, one JSON line per finished cell and repeat.

Each record is appended and flushed to disk (fsync) the moment its cell ends, so a crash loses
nothing finished and a rerun into the same folder resumes where it stopped. Reading parses JSON
line by line and never unpickles; a truncated last line (a crash mid-write) is skipped and counted,
and so is a line too long to be a record, never held in memory whole.
Every record is read as a current one (bench/results/upgrades.py), so no reader knows older schemas.
A cell whose status is not final (failed, timed out) is run again by a resume and recorded again:
the latest record of each ``(cell_id, repeat)`` is the one that counts (``latest``). Every other file of the folder is
written whole to a temporary name and renamed (``write_atomic``), so a crash or a full disk leaves
the previous version in place, never a truncated one.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
from collections.abc import Iterator
from pathlib import Path

from bench.errors import BenchError
from bench.results.record import Status
from bench.results.upgrades import NewerRecord, upgrade

RESULTS = "results.jsonl"
ENVIRONMENT = "environment.json"
RUN = "run.json"
FINAL = tuple(status for status in Status if status.final)
"""Statuses a resume keeps: it does not run those cells again."""


SMALL_FILE_LIMIT = 16 * 2**20
"""Largest file of a run that is read whole (run.json, environment.json, a model.json, a sweep's TOML
file) and longest line of results.jsonl: each is a few KiB, so a larger one is not what it claims to
be, and is refused (or a line skipped) before it is read into memory."""
UNSAFE_IN_NAMES = re.compile(r"[^A-Za-z0-9._-]")


def read_small(path: Path, what: str) -> bytes:
    """The bytes of a file that is read whole, its size checked first (``SMALL_FILE_LIMIT``): a BenchError
    naming it when it is larger than a ``what`` can be. OSError (missing, unreadable) is the caller's."""
    size = Path(path).stat().st_size
    if size > SMALL_FILE_LIMIT:
        raise BenchError(f"{path} is {size:,} bytes, more than any {what} ({SMALL_FILE_LIMIT:,} at most); is it the right file?")
    return Path(path).read_bytes()


def _lines(handle) -> Iterator[bytes | None]:
    """The lines of a binary file, each read with at most ``SMALL_FILE_LIMIT`` bytes in memory; a
    longer line is passed over in pieces and given as None."""
    while raw := handle.readline(SMALL_FILE_LIMIT):
        if len(raw) < SMALL_FILE_LIMIT or raw.endswith(b"\n"):
            yield raw
            continue
        while (rest := handle.readline(SMALL_FILE_LIMIT)) and not rest.endswith(b"\n"):
            pass
        yield None


def file_stem(text: str, limit: int, key: str | None = None) -> str:
    """A bounded, unique file or folder name in a run folder for free text (a model name, a cell id).

    Characters outside [A-Za-z0-9._-] become '-' and the text is cut to ``limit`` characters, so
    the name is safe and fits any file system; both steps merge texts that read alike (``a/b`` and
    ``a_b``, long names that share a beginning), so a short hash of the exact ``key`` (default: the
    text) follows, and no two texts ever share a file.
    """
    readable = UNSAFE_IN_NAMES.sub("-", text)[:limit]
    return f"{readable}_{hashlib.sha256((text if key is None else key).encode()).hexdigest()[:8]}"


def _clean(value):
    """JSON has no NaN/inf: store them as null so every reader (pandas, browsers) can parse the file."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    return value


def read_records(path: Path) -> tuple[list[dict], int]:
    """The records of a results.jsonl, upgraded to the current schema, and the number of lines skipped as unreadable.

    Lines are decoded one at a time from bytes, so a crash that cut a line inside a multi-byte
    character costs that line only, like any other truncated line. A record of a newer schema than
    this code reads is a BenchError naming the line: reading it as a current record would misread it.
    """
    records, skipped = [], 0
    with open(path, "rb") as handle:
        for number, raw in enumerate(_lines(handle), start=1):
            if raw is None:  # a line longer than any record: not one
                skipped += 1
                continue
            if not raw.strip():
                continue
            try:
                record = json.loads(raw.decode("utf-8"))
            except (UnicodeDecodeError, json.JSONDecodeError):
                skipped += 1
                continue
            if not isinstance(record, dict):
                skipped += 1
                continue
            try:
                records.append(upgrade(record))
            except NewerRecord as exc:
                raise NewerRecord(f"{path}, line {number}: {exc}") from None
    return records, skipped


def latest(records: list[dict]) -> list[dict]:
    """The last record of each (cell_id, repeat), in the order they were written.

    A failed or timed-out cell that a resume ran again has two records; only the newer one counts.
    Records without a cell id (none are written today) are all kept.
    """
    newest: dict[object, int] = {}
    for index, record in enumerate(records):
        key = (record["cell_id"], record.get("repeat")) if record.get("cell_id") is not None else index
        newest[key] = index
    keep = set(newest.values())
    return [record for index, record in enumerate(records) if index in keep]


def write_atomic(path: Path, data: str | bytes) -> None:
    """Write ``path`` whole or not at all: a temporary file in the same folder, fsync, then rename.

    A crash, Ctrl-C or a full disk leaves the previous file as it was (and no temporary file);
    an OSError becomes a BenchError naming the file.
    """
    path = Path(path)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    payload = data.encode("utf-8") if isinstance(data, str) else data
    try:
        with open(temporary, "wb") as handle:
            handle.write(payload)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except OSError as exc:
        raise BenchError(f"cannot write {path}: {exc.strerror or exc}") from None
    finally:
        temporary.unlink(missing_ok=True)


def read_run(folder: Path) -> dict | None:
    """run.json of a run folder (its fingerprint and arguments), or None where there is none."""
    path = Path(folder) / RUN
    if not path.exists():
        return None
    try:
        recorded = json.loads(read_small(path, RUN).decode("utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BenchError(f"cannot read {path}: {exc}") from None
    if not isinstance(recorded, dict):
        raise BenchError(f"{path} does not hold a JSON object")
    return recorded


class RunStore:
    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            probe = self.folder / ".write-test"
            probe.write_text("")
            probe.unlink()
        except OSError as exc:
            raise BenchError(f"cannot write to output folder {self.folder}: {exc.strerror or exc}") from None
        self.results = self.folder / RESULTS

    def finished(self) -> set[tuple[str, int]]:
        """(cell_id, repeat) pairs whose latest record has a final status (Status.final): a rerun skips them."""
        if not self.results.exists():
            return set()
        records, _ = read_records(self.results)
        return {(r.get("cell_id"), r.get("repeat")) for r in latest(records) if r.get("status") in FINAL}

    def has_records(self) -> bool:
        return self.results.exists() and self.results.stat().st_size > 0

    def read_run(self) -> dict | None:
        return read_run(self.folder)

    def write_run(self, run: dict) -> None:
        write_atomic(self.folder / RUN, json.dumps(_clean(run), indent=2))

    def append(self, record: dict) -> None:
        """Append one record durably; a full disk or failing device is a BenchError (exit 2, one line).

        A write cut short leaves a partial last line, which readers skip and the next append
        starts a fresh line after, so the records before it stay intact.
        """
        line = json.dumps(_clean(record), sort_keys=False, allow_nan=False)
        try:
            with open(self.results, "a", encoding="utf-8") as handle:
                if handle.tell() and not self._ends_with_newline():
                    handle.write("\n")  # a previous crash left a partial line: never glue onto it
                handle.write(line + "\n")
                handle.flush()
                os.fsync(handle.fileno())
        except OSError as exc:
            raise BenchError(f"cannot append to {self.results}: {exc.strerror or exc}; the records before are kept: "
                             "make space and rerun into the same folder to resume") from None

    def _ends_with_newline(self) -> bool:
        with open(self.results, "rb") as handle:
            handle.seek(-1, os.SEEK_END)
            return handle.read(1) == b"\n"

    def write_environment(self, environment: dict) -> None:
        """environment.json; a resumed run keeps the earlier sessions' environments under 'previous'."""
        path = self.folder / ENVIRONMENT
        if path.exists():
            try:
                earlier = json.loads(path.read_text())
                environment["previous"] = earlier.pop("previous", []) + [earlier]
            except json.JSONDecodeError:
                pass
        write_atomic(path, json.dumps(_clean(environment), indent=2))

"""Upgrades of stored records to the current record schema: all the history a reader needs, in one place.

Like asv's ``api_version``: every record says which version of bench/results/record.py wrote it
(``schema_version``; a record without one was written before versions existed and is version 1),
and ``STEPS`` turns a record of each version into one of the next. The store's reader applies them
in order (``upgrade``), so a resume and the reports see current records only and ``reports/`` knows
no history. ``schema_version`` keeps the version the record was *written* with, as its field says
(results.csv shows it); steps fill or rename fields, so applying them twice changes nothing.

A record newer than this code is refused (``NewerRecord``, a one-line error): the version is bumped
only when an existing field changes meaning or type (record.py's rule), so reading such a record
as the current version would misread it rather than miss a field.

Optional fields join the schema without a bump, so a record of any version may lack one; where
that absence meant a value (the cell trained before the axis existed, at what is now its default,
or a method a record did not yet state), ``ABSENT_MEANS`` says so.
"""

from __future__ import annotations

from collections.abc import Callable

from bench.errors import BenchError
from bench.results.record import SCHEMA_VERSION, Status
from bench.spec.train import TrainSpec

LEGACY_SCHEMA_VERSION = 1
"""What a record without ``schema_version`` is: written before records were versioned."""
UNKNOWN_BACKEND = "unknown"
"""The backend of a version-1 record that does not name one."""


class NewerRecord(BenchError):
    """A record written by a newer record schema than this code reads."""


def _from_v1(record: dict) -> dict:
    """Version 1 -> 2. Version 2 made ``backend`` and ``status`` required: the oldest version-1 records
    predate the status field (they ended failed when they hold an error, else ok), and may lack the backend."""
    status = record.get("status") or (Status.FAILED if record.get("error") else Status.OK).value
    return record | {"status": status, "backend": record.get("backend") or UNKNOWN_BACKEND}


STEPS: dict[int, Callable[[dict], dict]] = {1: _from_v1}
"""The step from each version to the next; one entry per version before ``SCHEMA_VERSION``."""

_DEFAULT = TrainSpec()
NOT_RECORDED = "not recorded"
ABSENT_MEANS: dict[str, str] = {
    "augment": _DEFAULT.augment.label,  # before augmentation existed, every cell trained plain
    "semantics_policy": _DEFAULT.semantics,  # before policies existed, every cell ran harmonised
    "device_time_method": NOT_RECORDED,  # before every backend said how (or why not), CPU cells said nothing
    "device_memory_method": NOT_RECORDED,
    "schedule": _DEFAULT.schedule,  # before schedules existed, every cell trained at a constant rate
}
"""Optional fields whose absence (or null) in a record of any version means a value: the axis's default,
or for a method field, that the record did not say."""


def stored_version(stored: dict) -> int:
    """The schema version a stored record was written with (1 for records written before versions existed)."""
    version = stored.get("schema_version")
    return version if isinstance(version, int) else LEGACY_SCHEMA_VERSION


def upgrade(stored: dict) -> dict:
    """``stored`` as a current record (its ``schema_version`` still the one it was written with).

    A record from a newer schema is a NewerRecord error: this code cannot know what changed.
    """
    written = stored_version(stored)
    if written > SCHEMA_VERSION:
        raise NewerRecord(f"a record was written by record schema version {written}, and this bench reads "
                          f"versions up to {SCHEMA_VERSION}: read it with the newer bench that wrote it")
    record = dict(stored)
    for version in range(written, SCHEMA_VERSION):
        record = STEPS[version](record)
    filled = {name: meaning for name, meaning in ABSENT_MEANS.items() if record.get(name) is None}
    return record | filled | {"schema_version": written}

"""The run fingerprint: a hash of everything that changes a run's results, kept in ``run.json``.

A run folder holds one sweep. Resuming matches cells by ``(cell_id, repeat)``, and a cell id leaves
out the seed, the data split, the model's layers and every fixed hyperparameter, so a rerun with
any of those changed would serve old results under new settings and pool both in one report. The
fingerprint closes that: a run into a folder whose fingerprint differs is refused before anything
is written, with the settings that differ and a remedy that works for why they differ (flags
typed now, an edited run.json, another machine), never the command that was just refused. Only
``repeats`` may grow (more samples of the same cells): fewer than the folder's run.json or
records hold is refused, so run.json never claims less than its records show. Where the run
executes (``--executor``, ``--out``, timeouts, report options) is not part of it.

The settings leave out the code that measures them, so ``run.json`` also keeps the run's code
identity (bench/run/code_identity.py), beside the fingerprint rather than inside it: a resume
after the measuring code changed is refused with its own message (``CodeChanged``), and a folder
recorded before code identities existed keeps its fingerprint and resumes, with a note that its
earlier records' code is unknown. ``suite_version`` (the package version, rarely bumped) stays in
the settings so those folders' fingerprints still match.

``run.json`` also keeps the run's command-line arguments, so ``bench run --resume RUN_DIR``
continues with the recorded settings.
"""

from __future__ import annotations

import argparse
import hashlib
import json
from dataclasses import dataclass, fields
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path

from bench.errors import BenchError
from bench.results.store import RUN, RunStore, read_records, read_run
from bench.run import environment
from bench.run.code_identity import CodeIdentity
from bench.run.environment import command_line
from bench.run.grid import Sweep
from bench.spec.data import Dataset
from bench.spec.train import DEFAULT_LEARNING_RATES, TrainSpec

NOT_RESULTS = {"repeats", "data_dir", "custom_models", "models_explicit", "backends", "size_sources", "throughput_only"}
"""Sweep fields left out: repeats may grow; the data folder's path does not change the (checksummed) data;
models and backends enter as their definitions and resolved names."""
NOT_RECORDED_ARGS = {"command", "out", "resume", "argv"}
"""Arguments ``--resume`` does not take from run.json: where the run is, not what it runs."""
PATH_ARGS = {"config", "data_dir"}
"""Recorded as absolute paths, so a resume from another directory reads the same files."""


class FingerprintMismatch(BenchError):
    """The run folder was recorded with other settings."""


class CodeChanged(BenchError):
    """The run folder was recorded by other measuring code."""


class RepeatsShrink(BenchError):
    """A rerun asks for fewer repeats than the run folder already holds."""


def _suite_version() -> str:
    try:
        return metadata.version("bench")
    except metadata.PackageNotFoundError:
        return "unknown"


def _framework_versions(backend_names: list[str]) -> dict[str, str]:
    """Versions of NumPy and of the chosen backends' packages (tensorflow-cpu counts as tensorflow,
    jaxlib as jax): installing an unrelated framework does not change this run's fingerprint."""
    import backends

    wanted = {"numpy"} | {pkg for name in backend_names for pkg in backends.REGISTRY[name].requires}
    return {pkg: version for pkg, version in environment.versions(environment.RESULT_PACKAGES).items()
            if pkg.removesuffix("-cpu").removesuffix("lib") in wanted}


def describe(sweep: Sweep, backend_names: list[str], data: Dataset, threads: int, device: str) -> dict:
    """The settings that decide this run's results, as plain JSON values."""
    specs = sweep.model_specs()
    return {
        "suite_version": _suite_version(),
        "versions": _framework_versions(backend_names),
        "backends": list(backend_names),
        **{f.name: getattr(sweep, f.name) for f in fields(Sweep) if f.name not in NOT_RESULTS},
        "augment": [a.label for a in sweep.augment],
        "data": {k: v for k, v in data.describe().items() if k != "data_source"},
        "model_definitions": {name: specs[name].model_dump(mode="json", exclude={"description"}) for name in sweep.models},
        "training_defaults": TrainSpec().model_dump(mode="json") | {"learning_rates": DEFAULT_LEARNING_RATES},
        "threads": threads,
        "device": device,
    }


def digest(settings: dict) -> str:
    return hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _flat(value, prefix: str = "") -> dict[str, object]:
    if isinstance(value, dict) and value:
        out = {}
        for key, item in value.items():
            out |= _flat(item, f"{prefix}.{key}" if prefix else str(key))
        return out
    return {prefix: value}


def _short(value) -> str:
    text = "(absent)" if value is _ABSENT else json.dumps(value, default=str)
    return text if len(text) <= 60 else text[:57] + "..."


_ABSENT = object()


def differences(recorded: dict, current: dict) -> list[str]:
    """'seed: 0 -> 7' for each setting that differs, nested ones by dotted name."""
    old, new = _flat(recorded), _flat(current)
    keys = [k for k in dict.fromkeys([*old, *new]) if old.get(k, _ABSENT) != new.get(k, _ABSENT)]
    return [f"{k}: {_short(old.get(k, _ABSENT))} -> {_short(new.get(k, _ABSENT))}" for k in keys]


def check(store: RunStore, settings: dict, code: CodeIdentity, rerun: Rerun) -> str | None:
    """Refuse a folder recorded with other settings (FingerprintMismatch), with fewer repeats than it
    holds (RepeatsShrink) or by other measuring code (CodeChanged), all exit 2 with nothing written;
    a note to print where the recorded code is unknown."""
    recorded = store.read_run()
    if recorded is None:
        if store.has_records():
            raise FingerprintMismatch(
                f"run folder {store.folder} has results but no run.json (written by an older bench), so its "
                "settings cannot be checked; choose another --out")
        return None
    if recorded.get("fingerprint") != digest(settings):
        changed = differences(recorded.get("settings", {}), settings)
        raise FingerprintMismatch(f"run folder {store.folder} was recorded with other settings "
                                  f"({'; '.join(changed) or 'fingerprint differs'}); {_remedy(store.folder, recorded, settings, rerun)}")
    _check_repeats(store, recorded, rerun)
    if not store.has_records():
        return None  # nothing measured yet: no two versions of the code to pool
    return _check_code(store.folder, recorded.get("code"), code)


@dataclass(frozen=True)
class Rerun:
    """What the command asks of a folder that may already hold a run: how it was typed, for the advice
    a refusal gives, and how many repeats it wants."""

    resuming: bool
    overrides: list[str]
    """The flags typed now that set a result setting (with ``--resume``: that override the recorded ones)."""
    repeats: int
    repeats_from: str
    """The flag or TOML key the repeat count came from."""


def _remedy(folder: Path, recorded: dict, settings: dict, rerun: Rerun) -> str:
    """Advice that works for why the settings differ: never the command that was just refused."""
    run_json = Path(folder) / RUN
    if digest(recorded.get("settings", {})) != recorded.get("fingerprint"):
        if digest(recorded.get("settings", {})) == digest(settings):
            return (f"its \"fingerprint\" was edited, and its settings, which this run matches, hash to {digest(settings)}: "
                    f"restore that value in {run_json} to continue it, or choose another --out")
        return (f"{run_json} was edited (its settings no longer give its fingerprint), so what its records were "
                "measured with is unknown: restore the original file to continue it, or choose another --out")
    if not rerun.resuming:
        return (f"continue it as recorded with `{command_line(['run', '--resume', str(folder)])}`, or choose another "
                "--out for these settings")
    if rerun.overrides:
        return (f"leave out {', '.join(dict.fromkeys(rerun.overrides))} to continue it as recorded, or choose another "
                "--out for these settings")
    return (f"the arguments in {run_json} or this machine (framework versions, cores) no longer give the recorded "
            "values (left of each arrow): restore them to continue it, or run the sweep's flags into another --out")


def _check_repeats(store: RunStore, recorded: dict, rerun: Rerun) -> None:
    """Repeats may only grow: a folder's run.json must never claim fewer repeats than it or its
    records hold, or the report would pool repeats the run says it does not have."""
    arguments = recorded.get("arguments") if isinstance(recorded.get("arguments"), dict) else {}
    held = [arguments.get("repeats")]
    if store.has_records():
        held += [record["repeat"] + 1 for record in read_records(store.results)[0] if isinstance(record.get("repeat"), int)]
    most = max((n for n in held if isinstance(n, int) and not isinstance(n, bool)), default=0)
    if rerun.repeats < most:
        raise RepeatsShrink(f"{rerun.repeats_from} {rerun.repeats}: {store.folder} already holds {most} repeat(s) of its "
                            f"cells, and repeats may only grow; valid: {most} or more (or choose another --out)")


def _check_code(folder: Path, recorded: object, code: CodeIdentity) -> str | None:
    if not isinstance(recorded, dict) or not recorded.get("hash"):
        return (f"note: {folder} was recorded before runs kept a code identity, so its earlier records may come "
                f"from other code; resuming with code hash {code.hash}")
    if recorded["hash"] == code.hash:
        return None
    commits = f", commit {recorded.get('commit') or 'unknown'} -> {code.commit or 'unknown'}"
    raise CodeChanged(
        f"the measuring code changed since {folder} was recorded (code hash {recorded['hash']} -> {code.hash}"
        f"{commits}: files under backends/ or bench/'s measuring modules differ), so resuming would pool two "
        "versions of the code; run the same flags into a new --out (and `bench compare` the two), or restore the "
        "recorded code to resume")


def record(store: RunStore, settings: dict, code: CodeIdentity, args: argparse.Namespace) -> None:
    """Write run.json: the fingerprint, its settings, the code identity and the arguments ``--resume`` reuses."""
    earlier = store.read_run() or {}
    recorded_args = {k: str(Path(v).resolve()) if k in PATH_ARGS and v else v
                     for k, v in vars(args).items() if k not in NOT_RECORDED_ARGS}
    store.write_run({
        "fingerprint": digest(settings),
        "code": code.as_dict(),
        "created": earlier.get("created") or datetime.now(UTC).isoformat(timespec="seconds"),
        "arguments": recorded_args,
        "settings": settings,
    })


def recorded_arguments(folder: Path) -> dict:
    """The arguments of the run in ``folder``, for ``--resume``; a folder without run.json is an error."""
    if not Path(folder).is_dir():
        raise BenchError(f"run folder {folder} does not exist; --resume continues a run folder written by `bench run`")
    recorded = read_run(Path(folder))
    if recorded is None or not isinstance(recorded.get("arguments"), dict):
        raise BenchError(f"{folder} has no run.json with recorded arguments: is it a run folder written by `bench run`?")
    return recorded["arguments"]

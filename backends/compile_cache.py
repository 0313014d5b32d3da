"""The persistent compilation caches: which policy a run chose, where they live, and what each framework is told.

A compile time means nothing without the cache state behind it: torch inductor keeps compiled
graphs and kernels on disk by default (``/tmp/torchinductor_<user>``), JAX keeps executables in its
persistent cache once enabled, so a second run's compile times are loads, not compilations. A run
chooses one policy (``bench run --compile-cache``), and every record says what its compiled code
came from (``compile_cache``: off, cold or warm; docs/architecture.md, "Measuring"):

- ``warm`` (default): the caches live in a folder of the suite's (``~/.cache/bench/compile-cache``,
  moved with ``BENCH_COMPILE_CACHE=DIR``), kept across cells and runs. A cell whose code was
  compiled before (an earlier run, an earlier repeat) loads it and says ``warm``; one that
  compiled anything new says ``cold``.
- ``cold``: the caches live in the run folder (``compile-cache/``) and each cell starts with them
  empty, in-memory compiled code included, so its compile time is a compilation from nothing.
  Where that compile stored code, the harness then compiles the step once more from the caches it
  just filled (in-memory code forgotten, the disk kept) and records that warm first step beside the
  cold one (``warm_first_step_seconds``, ``warm_compile_seconds``): cold and warm side by side from
  one run, which the report's compile table shows per backend, mode and model.
- ``off``: persistent caches disabled (torch's FX-graph and AOTAutograd caches, JAX's persistent
  cache), and emptied per cell like ``cold`` (torch always writes its kernels' shared objects to its
  cache folder); the records say ``off``.

Framework-free: the worker applies ``environment`` before its framework is imported (torch reads
its cache settings at import), and the adapters empty their caches (``Backend.forget_compiled``).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path

POLICIES = ("warm", "cold", "off")
"""``--compile-cache`` values, the default first."""
POLICY_ENV = "BENCH_COMPILE_CACHE_POLICY"
"""How a worker tells its adapter the run's policy (set before the framework loads)."""
FOLDER_ENV = "BENCH_COMPILE_CACHE"
"""The warm caches' folder (default ``~/.cache/bench/compile-cache``); each backend keeps a subfolder."""
RUN_FOLDER = "compile-cache"
"""The run folder's subfolder holding the caches of a ``cold`` or ``off`` run."""


def warm_folder() -> Path:
    """Where the caches live: ``$BENCH_COMPILE_CACHE`` (a worker's is set by ``environment``), else
    ``~/.cache/bench/compile-cache``."""
    value = os.environ.get(FOLDER_ENV, "")
    return Path(value) if value else Path.home() / ".cache" / "bench" / "compile-cache"


def folder(policy: str, run_folder: Path) -> Path:
    """The caches' folder for a run with ``policy``: shared when warm, the run's own otherwise."""
    return warm_folder() if policy == "warm" else Path(run_folder) / RUN_FOLDER


def _torch(policy: str, where: Path) -> dict[str, str]:
    """Inductor reads these at import: its cache folder (compiled graphs, kernels, Triton's on a GPU)
    and whether its FX-graph and AOTAutograd caches are used."""
    on = "0" if policy == "off" else "1"
    return {"TORCHINDUCTOR_CACHE_DIR": str(where), "TORCHINDUCTOR_FX_GRAPH_CACHE": on,
            "TORCHINDUCTOR_AUTOGRAD_CACHE": on, "TRITON_CACHE_DIR": str(where / "triton")}


ENVIRONMENT: dict[str, Callable[[str, Path], dict[str, str]]] = {"torch": _torch}
"""Per backend whose framework reads its cache settings from the environment, what to set for its
folder under a policy. (The JAX adapter configures its cache itself, from ``backend_folder``.)"""


def environment(backend: str, policy: str, caches: Path) -> dict[str, str]:
    """What a worker of ``backend`` sets before importing its framework: the policy and the caches'
    folder for its adapter, and the framework's own settings pointing at ``caches/<backend>``."""
    settings = ENVIRONMENT.get(backend)
    own = settings(policy, Path(caches) / backend) if settings else {}
    return {POLICY_ENV: policy, FOLDER_ENV: str(caches)} | own


def policy() -> str:
    """The policy this process runs under (a worker's, set by ``environment``; ``warm`` elsewhere)."""
    return os.environ.get(POLICY_ENV, POLICIES[0])


def backend_folder(backend: str) -> Path | None:
    """The folder of ``backend``'s persistent cache in this process, None when the policy is off."""
    return None if policy() == "off" else warm_folder() / backend


def empty(where: Path) -> None:
    """Remove everything inside ``where`` (the folder itself stays, as the framework was told it)."""
    where = Path(where)
    if where.is_dir():
        for entry in where.iterdir():
            shutil.rmtree(entry) if entry.is_dir() and not entry.is_symlink() else entry.unlink()

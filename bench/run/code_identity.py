"""Which code measured a run: a content hash of the measuring code, and the git commit for people.

The fingerprint (bench/run/fingerprint.py) pins a run's settings but not the code that measures
them, so a resume after editing an adapter would pool the old code's figures with the new code's
in one report. ``current()`` names the code two ways; run.json and every record keep both, a
resume refuses other code, and ``bench compare`` says when two runs differ in it.

- ``hash``: SHA-256 over the .py files of ``MEASURING``, every package or module whose code can
  change a recorded figure: the adapters (backends/), the spec they build from (bench/spec), the
  NumPy oracle (bench/reference), the training loop, harness and throughput windows
  (bench/measure), the saved-model format (bench/models), the executors that set up the workers
  (bench/run/executors), the percentiles of step times (bench/results/stats.py) and the matmul
  peak behind ``peak_fraction`` (bench/run/environment.py). Each file enters as its path inside
  the package and its bytes, in sorted path order, so the hash follows the content only: not
  mtimes, the folder the tree is in, ``__pycache__`` or compiled files. The CLI, the reports and
  the record schema are left out: they change how figures are kept and shown, not the figures.
- ``commit``: the git commit of the checkout, ``-dirty`` appended when its tree has uncommitted
  or untracked changes (the commit alone then does not say what ran); None outside a git
  checkout. It is for a reader who wants that code back; the hash is what a resume compares.
"""

from __future__ import annotations

import hashlib
import importlib.util
import subprocess
from dataclasses import dataclass
from pathlib import Path

MEASURING = ("backends", "bench.spec", "bench.reference", "bench.measure", "bench.models", "bench.run.executors",
             "bench.results.stats", "bench.run.environment")
"""Packages (all their .py files, recursively) and modules whose code can change a measured figure."""
DIRTY = "-dirty"


@dataclass(frozen=True)
class CodeIdentity:
    hash: str
    commit: str | None

    def as_dict(self) -> dict[str, str | None]:
        """As run.json keeps it."""
        return {"hash": self.hash, "commit": self.commit}

    def record_fields(self) -> dict[str, str | None]:
        """As every record keeps it (bench/results/record.py ``code_hash``, ``code_commit``)."""
        return {"code_hash": self.hash, "code_commit": self.commit}


def _files(name: str) -> list[tuple[str, Path]]:
    """(path inside the package, file) for each .py file of the package or module ``name``."""
    spec = importlib.util.find_spec(name)
    if spec is None or spec.origin is None:
        raise ImportError(f"measuring code {name} not found: update MEASURING in bench/run/code_identity.py")
    prefix = name.replace(".", "/")
    if not spec.submodule_search_locations:
        return [(f"{prefix}.py", Path(spec.origin))]
    folder = Path(spec.origin).parent
    return [(f"{prefix}/{path.relative_to(folder).as_posix()}", path) for path in folder.rglob("*.py")]


def code_hash() -> str:
    """The content hash of the measuring code (16 hex digits, like the fingerprint)."""
    digest = hashlib.sha256()
    for relative, path in sorted(pair for name in MEASURING for pair in _files(name)):
        digest.update(relative.encode() + b"\0" + hashlib.sha256(path.read_bytes()).digest())
    return digest.hexdigest()[:16]


def _git(root: Path, *args: str) -> str | None:
    try:
        return subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True, timeout=10,
                              check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None


def commit() -> str | None:
    """HEAD of the checkout the suite runs from, with ``-dirty`` for uncommitted or untracked changes;
    None when the suite's folder is not the top of a git checkout (an installed copy, a copied tree)."""
    root = Path(__file__).resolve().parents[2]
    top = _git(root, "rev-parse", "--show-toplevel")
    if top is None or Path(top).resolve() != root:
        return None
    head = _git(root, "rev-parse", "HEAD")
    if not head:
        return None
    return head + (DIRTY if _git(root, "status", "--porcelain") else "")


def current() -> CodeIdentity:
    return CodeIdentity(code_hash(), commit())

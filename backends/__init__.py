"""Registry of backends, imported lazily so a machine with one framework runs that one.

Nothing here imports a framework: ``available`` asks importlib whether the framework's package
exists, and ``load`` imports the adapter module only when a worker needs it.
"""

from __future__ import annotations

import importlib
import importlib.util
import subprocess
import sys
from collections.abc import Mapping
from dataclasses import dataclass

from bench.errors import BackendUnavailable, unknown


@dataclass(frozen=True)
class Mode:
    """One execution mode of a backend: what it runs (stored with every record as ``mode_description``),
    whether it compiles the training step (what ``--modes best`` runs), whether it exists only on a GPU."""

    description: str
    compiles: bool = False
    gpu_only: bool = False


@dataclass(frozen=True)
class BackendEntry:
    name: str
    module: str
    cls: str
    requires: tuple[str, ...]  # top-level packages that must be importable
    extra: str  # pip extra that installs them
    description: str
    modes: Mapping[str, Mode]
    """The backend's execution modes, the default first. Declared here, not in the adapter, so the CLI
    checks a requested mode and expands ``best`` without importing a framework; the adapter reads
    them (``modes = REGISTRY[name].modes``) and implements what each one does."""
    engine: str
    """The framework whose kernels run the maths: torch, tensorflow, jax or numpy."""
    wrapper: str | None = None
    """The library between the spec and the engine, where there is one: ``keras`` for Keras 3, whose
    engine is its ``KERAS_BACKEND`` (the adapters set it from here). Every record states both
    (``Backend.facts``), so the report's wrapper-cost view pairs a wrapper with the native adapter
    of its engine without importing this registry (docs/architecture.md, "Keras engines")."""


REGISTRY: dict[str, BackendEntry] = {
    "torch": BackendEntry("torch", "backends.torch_backend", "TorchBackend", ("torch",), "torch", "PyTorch", {
        "eager": Mode("eager: nn.Module op by op"),
        "compiled": Mode("compiled: torch.compile of the train step as one graph (forward, loss, gradients by "
                         "torch.autograd.grad, weight decay, the optimizer's functional update); the row gather runs "
                         "eagerly before it", compiles=True),
        "compiled-cudagraphs": Mode("compiled-cudagraphs: the compiled train step replayed as CUDA graphs "
                                    "(torch.compile mode='reduce-overhead'; GPU only)", compiles=True, gpu_only=True),
    }, engine="torch"),
    "tf": BackendEntry("tf", "backends.keras_backend", "KerasBackend", ("tensorflow", "keras"), "tf", "Keras 3 on TensorFlow", {
        "graph": Mode("graph: tf.function, no XLA", compiles=True),
        "eager": Mode("eager: op by op (run_eagerly)"),
        "xla": Mode("xla: tf.function(jit_compile=True)", compiles=True),
    }, engine="tensorflow", wrapper="keras"),
    "jax": BackendEntry("jax", "backends.jax_backend", "JaxBackend", ("jax", "flax", "optax"), "jax", "JAX with Flax and Optax", {
        "jit": Mode("jit: jax.jit train step, state donated", compiles=True),
        "eager": Mode("eager: jax.disable_jit, op by op"),
    }, engine="jax"),
    "keras-jax": BackendEntry("keras-jax", "backends.keras_jax_backend", "KerasJaxBackend", ("keras", "jax"), "keras-jax",
                              "Keras 3 on JAX", {
        "jit": Mode("jit: Keras' JAX train step (stateless_call, optimizer.stateless_apply) under jax.jit, state donated "
                    "(jit_compile=True, Keras' default on JAX)", compiles=True),
        "eager": Mode("eager: the same step op by op (run_eagerly)"),
    }, engine="jax", wrapper="keras"),
    "keras-torch": BackendEntry("keras-torch", "backends.keras_torch_backend", "KerasTorchBackend", ("keras", "torch"),
                                "keras-torch", "Keras 3 on PyTorch", {
        "eager": Mode("eager: Keras' torch train step, op by op (jit_compile=False, Keras' default on torch)"),
        "compiled": Mode("compiled: the same step under torch.compile (jit_compile=True)", compiles=True),
    }, engine="torch", wrapper="keras"),
    "numpy": BackendEntry("numpy", "backends.numpy_backend", "NumpyBackend", ("numpy",), "",
                          "the NumPy reference (oracle, slow)", {
        "eager": Mode("eager: NumPy, float64 inside, float32 at the boundary"),
    }, engine="numpy"),
}
ALIASES = {"pytorch": "torch", "tensorflow": "tf", "keras-tf": "tf", "keras-tensorflow": "tf", "reference": "numpy"}
FRAMEWORK_BACKENDS = ("torch", "tf", "jax")
"""What ``--backend all`` means: the frameworks compared, each through its usual API. The NumPy
oracle is opt-in by name; Keras on JAX and on torch through the ``keras`` group."""
GROUPS = {"all": FRAMEWORK_BACKENDS, "keras": ("tf", "keras-jax", "keras-torch")}
"""Names that stand for several backends in ``--backend`` (a comma list may mix them: ``all,keras``
is all five). Missing members of a group are recorded as skipped; a backend named alone must be
installed. ``keras`` is not in ``all``: the default sweep keeps its ~5 minute budget on 2 cores."""


BEST = "best"
"""The mode name that a sweep expands, per backend, to every compiled mode it has."""


def expand_modes(name: str, modes: list[str], on_gpu: bool) -> list[str]:
    """The modes to run on backend ``name``: ``best`` becomes each of its compiled modes (those
    needing a GPU only when the run may use one; a backend that compiles nothing runs its default
    mode), other names stay; order kept, duplicates dropped."""
    offered = REGISTRY[canonical_name(name)].modes
    best = [m for m, how in offered.items() if how.compiles and (on_gpu or not how.gpu_only)] or ["default"]
    return list(dict.fromkeys(m for mode in modes for m in (best if mode == BEST else [mode])))


def canonical_name(name: str) -> str:
    key = ALIASES.get(name.strip().lower(), name.strip().lower())
    if key not in REGISTRY:
        raise BackendUnavailable(unknown("backend", name, [*REGISTRY, *GROUPS]))
    return key


def group_of(name: str) -> tuple[str, ...] | None:
    """The members of group ``name`` (``all``, ``keras``), None when it names no group."""
    return GROUPS.get(name.strip().lower())


def expand(names: list[str]) -> list[str]:
    """Registry names for ``--backend`` values: groups become their members, aliases their backend;
    order kept, duplicates dropped; BackendUnavailable for a name that is neither."""
    return list(dict.fromkeys(n for name in names for n in (group_of(name) or [canonical_name(name)])))


def missing_packages(name: str) -> list[str]:
    """Packages the backend needs that are not installed (empty when it can run)."""
    return [pkg for pkg in REGISTRY[name].requires if importlib.util.find_spec(pkg) is None]


def unavailable_reason(name: str) -> str | None:
    missing = missing_packages(name)
    if not missing:
        return None
    extra = REGISTRY[name].extra
    return f"{', '.join(missing)} not installed (pip install -e '.[{extra}]')"


class BackendBroken(RuntimeError):
    """The framework is installed but its adapter does not import (the import raises): a failure,
    never a skip. Its cells are recorded failed and rerun by ``--resume``, ``bench parity`` exits 1,
    and ``bench list`` marks the backend broken; only a package that is not there is "not installed"."""


def load(name: str):
    """Instantiate a backend's adapter: BackendUnavailable when its packages are not installed,
    BackendBroken when they are and the import fails."""
    entry = REGISTRY[canonical_name(name)]
    reason = unavailable_reason(entry.name)
    if reason:
        raise BackendUnavailable(f"backend {entry.name!r} unavailable: {reason}")
    try:
        module = importlib.import_module(entry.module)
    except BackendUnavailable:  # available, but not in this process (backends/keras_engine.py)
        raise
    except Exception as exc:  # an installed framework whose import raises, whatever it raises, is broken
        raise BackendBroken(f"backend {entry.name!r} is installed but does not import: "
                            f"{type(exc).__name__}: {exc}") from exc
    return getattr(module, entry.cls)()


IMPORT_CHECK_SECONDS = 120.0
"""How long ``import_problems`` waits for a framework's import (TensorFlow takes seconds)."""


def import_problems(names: list[str]) -> dict[str, str]:
    """For each installed backend among ``names`` whose adapter does not import, the last line of the
    error. Each import runs in its own child process, all at once, so this process loads no framework
    and one broken framework cannot break the check of another."""
    children = {name: subprocess.Popen([sys.executable, "-c", f"import {REGISTRY[name].module}"],
                                       stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
                for name in names if unavailable_reason(name) is None}
    problems = {}
    for name, child in children.items():
        try:
            _, err = child.communicate(timeout=IMPORT_CHECK_SECONDS)
        except subprocess.TimeoutExpired:
            child.kill()
            problems[name] = f"importing it took over {IMPORT_CHECK_SECONDS:g} s"
            continue
        if child.returncode != 0:
            lines = [line for line in err.splitlines() if line.strip()]
            problems[name] = lines[-1] if lines else f"import exited with status {child.returncode}"
    return problems

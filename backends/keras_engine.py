"""Which engine Keras 3 runs on in this process: chosen once, before Keras is imported.

Keras reads ``KERAS_BACKEND`` when it is first imported and cannot change engine afterwards, so each
Keras adapter (``keras_backend`` on TensorFlow, ``keras_jax_backend``, ``keras_torch_backend``)
calls ``start`` at the top of its module, before it imports ``keras_base``. Workers are fresh
spawned processes (bench/run/executors/process.py) that import one adapter by name, so each gets
its engine; a process where Keras already runs on another engine is refused (``EngineTaken``),
never silently measured on the wrong one (docs/architecture.md, "Keras engines").
"""

from __future__ import annotations

import os
import sys
from types import ModuleType

from backends import REGISTRY
from bench.errors import BackendUnavailable


class EngineTaken(BackendUnavailable, ImportError):
    """Keras already runs on another engine in this process: the backend is unavailable *here* (a
    fresh process has it), not broken, so ``backends.load`` lets it through as unavailable; an
    ImportError too, because it is raised while the adapter's module is imported."""


def start(backend_name: str) -> ModuleType:
    """Keras on the engine the registry declares for ``backend_name`` (its ``engine`` field)."""
    engine = REGISTRY[backend_name].engine
    if "keras" not in sys.modules:
        os.environ["KERAS_BACKEND"] = engine
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TF's INFO/WARNING banners; errors still show
    import keras

    running = keras.backend.backend()
    if running != engine:
        raise EngineTaken(f"keras is already running on {running!r} in this process; the {backend_name} backend "
                          f"needs Keras on {engine!r}, in a fresh process (KERAS_BACKEND={engine})")
    return keras

"""JAX's persistent compilation cache for the JAX adapter: turned on in the run's cache folder, and whether a cell hit it.

A sweep compiles many small steps; a second run loads them instead of compiling again, so every
record says whether its compile time was ``cold`` or ``warm`` (never compared unlabelled). Where the
cache lives and whether it is on follow the run's ``--compile-cache`` (backends/compile_cache.py).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jax

from backends import compile_cache


class CacheEvents:
    """Counts JAX's persistent-cache misses: each compiles an executable and stores it. A cell with no
    miss since its build loaded all its compiled code ('warm'); hits need no count of their own."""

    misses = 0

    @classmethod
    def listen(cls, event: str, **_: Any) -> None:
        if event == "/jax/compilation_cache/cache_misses":
            cls.misses += 1


def enable() -> Path | None:
    """Turn on JAX's persistent compilation cache for every computation, however small or quick to
    compile: the sweep compiles many small steps, and a second run loads them instead (records say
    'cold' or 'warm', so a compile time is never compared across the two unlabelled)."""
    folder = compile_cache.backend_folder("jax")
    if folder is None:
        jax.config.update("jax_enable_compilation_cache", False)
        return None
    folder.mkdir(parents=True, exist_ok=True)
    jax.config.update("jax_compilation_cache_dir", str(folder))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", -1)
    return folder


def forget(folder: Path | None, disk: bool) -> None:
    """``jax.clear_caches`` drops every in-memory trace and executable; ``disk`` empties the
    persistent cache's folder as well (``--compile-cache cold``; backends/compile_cache.py)."""
    jax.clear_caches()
    if disk and folder is not None:
        compile_cache.empty(folder)


jax.monitoring.register_event_listener(CacheEvents.listen)

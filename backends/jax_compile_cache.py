"""JAX's persistent compilation cache for the JAX adapter: where it lives, and whether a cell hit it.

A sweep compiles many small steps; a second run loads them instead of compiling again, so every
record says whether its compile time was ``cold`` or ``warm`` (never compared unlabelled).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import jax

COMPILE_CACHE_ENV = "BENCH_COMPILE_CACHE"
"""Folder of JAX's persistent compilation cache (default ~/.cache/bench/jax-compilation); 'off' disables it."""


class CacheEvents:
    """Counts JAX's persistent-cache misses: each compiles an executable and stores it. A cell with no
    miss since its build loaded all its compiled code ('warm'); hits need no count of their own."""

    misses = 0

    @classmethod
    def listen(cls, event: str, **_: Any) -> None:
        if event == "/jax/compilation_cache/cache_misses":
            cls.misses += 1


def compile_cache_dir() -> Path | None:
    """Where the persistent compilation cache lives, or None when the user turned it off."""
    value = os.environ.get(COMPILE_CACHE_ENV, "")
    if value.lower() == "off":
        return None
    return Path(value) if value else Path.home() / ".cache" / "bench" / "jax-compilation"


def enable() -> Path | None:
    """Turn on JAX's persistent compilation cache for every computation, however small or quick to
    compile: the sweep compiles many small steps, and a second run loads them instead (records say
    'cold' or 'warm', so a compile time is never compared across the two unlabelled)."""
    folder = compile_cache_dir()
    if folder is None:
        jax.config.update("jax_enable_compilation_cache", False)
        return None
    folder.mkdir(parents=True, exist_ok=True)
    jax.config.update("jax_compilation_cache_dir", str(folder))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", -1)
    return folder


jax.monitoring.register_event_listener(CacheEvents.listen)

"""Peak host memory of one cell, sampled while it trains.

``ru_maxrss`` is a lifetime peak and a worker runs many cells, so the harness samples the resident
set itself around each cell's timed epochs (docs/architecture.md, "Measuring"). Framework-free
(psutil only), so every backend's ``peak_rss_bytes`` is read the same way. The sampler keeps count of
its own CPU time (``cpu_seconds``), which the load monitor leaves out of the training's CPU time.
"""

from __future__ import annotations

import threading
import time

import psutil

SAMPLE_SECONDS = 0.02
"""How often the resident set is read; the record's ``memory_method`` states it."""


class PeakRssSampler:
    """Peak resident memory of this process while a block runs, sampled every ``interval`` seconds."""

    def __init__(self, interval: float = SAMPLE_SECONDS) -> None:
        self.interval = interval
        self.process = psutil.Process()
        self.peak = 0
        self.cpu_seconds = 0.0
        """CPU time the sampler thread has used, as of its latest sample (its own thread clock)."""
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self.process.memory_info().rss)
            self.cpu_seconds = time.thread_time()
            self._stop.wait(self.interval)
        self.cpu_seconds = time.thread_time()

    def __enter__(self) -> PeakRssSampler:
        self.peak = self.process.memory_info().rss
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self.process.memory_info().rss)

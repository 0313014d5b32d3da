"""One driver per run folder: an OS lock on ``run.lock``, held for the life of the driver.

Two drivers writing one folder would record every cell twice and measure while fighting for the
cores, so a second ``bench run`` into a folder that is in use stops at once and names the holder.
The lock is ``flock`` on an open file: the kernel drops it when its holder dies, however it dies,
so a lock left by a killed driver is simply taken over. The file also lists the driver's worker
processes; the driver that takes over stops any of them still alive (a platform without a
parent-death signal, or a worker caught mid-exit), so a resumed run never measures beside one.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import time
from datetime import UTC, datetime
from pathlib import Path

import psutil

from bench.errors import BenchError

LOCK = "run.lock"
LEFTOVER_WAIT = 10.0
"""Seconds to wait for a leftover worker to exit after SIGKILL before giving up on the folder."""


class RunLocked(BenchError):
    """Another live driver is writing this run folder."""


def _holder_text(holder: dict) -> str:
    if not holder.get("pid"):
        return "another bench run"
    text = f"pid {holder['pid']} on {holder.get('host', '?')}"
    if holder.get("started"):
        text += f" since {holder['started']}"
    return text + (f" ({holder['command']})" if holder.get("command") else "")


class RunLock:
    """The run folder's lock and its record of who holds it: pid, host, command and worker pids."""

    def __init__(self, folder: Path, command: str) -> None:
        self.path = Path(folder) / LOCK
        self.command = command
        self.fd: int | None = None
        self.workers: dict[int, float] = {}
        self.stopped_leftovers = 0
        self.previous: dict = {}
        """What a dead holder left in the lock file (empty when the last driver ended cleanly)."""

    def acquire(self) -> RunLock:
        """Take the lock or raise RunLocked naming the holder; stop a dead holder's leftover workers."""
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = self._read(fd)
            os.close(fd)
            raise RunLocked(f"run folder {self.path.parent} is in use by {_holder_text(holder)}; "
                            f"wait for it to finish, or choose another --out") from None
        self.fd = fd
        self.previous = self._read(fd)
        self.stopped_leftovers = _stop_leftovers(self.previous)
        self._write()
        return self

    def release(self) -> None:
        """Empty the file (nobody holds it, no workers) and unlock; the file stays, so no race on a new inode."""
        if self.fd is None:
            return
        try:
            os.ftruncate(self.fd, 0)
        finally:
            os.close(self.fd)  # closing drops the flock
            self.fd = None

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()

    def watch(self, pid: int, alive: bool) -> None:
        """Keep the list of live worker pids in the lock file (an ``executor.WorkerWatch``)."""
        if alive:
            try:
                self.workers[pid] = psutil.Process(pid).create_time()
            except psutil.Error:
                return
        else:
            self.workers.pop(pid, None)
        self._write()

    def _write(self) -> None:
        holder = {
            "pid": os.getpid(), "host": socket.gethostname(), "command": self.command,
            "started": datetime.fromtimestamp(psutil.Process().create_time(), UTC).isoformat(timespec="seconds"),
            "workers": [{"pid": pid, "create_time": created} for pid, created in self.workers.items()],
        }
        data = json.dumps(holder).encode()
        os.ftruncate(self.fd, 0)
        os.pwrite(self.fd, data, 0)

    @staticmethod
    def _read(fd: int) -> dict:
        try:
            text = os.pread(fd, 1 << 20, 0).decode()
            holder = json.loads(text) if text.strip() else {}
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):
            return {}
        return holder if isinstance(holder, dict) else {}


def _stop_leftovers(holder: dict) -> int:
    """SIGKILL the workers a dead driver on this host left alive; how many there were.

    A pid counts only with the creation time recorded for it, so a recycled pid is never touched.
    """
    if holder.get("host") != socket.gethostname():
        return 0
    leftovers = []
    for entry in holder.get("workers", []):
        try:
            process = psutil.Process(int(entry["pid"]))
            if abs(process.create_time() - float(entry["create_time"])) < 0.01 and process.status() != psutil.STATUS_ZOMBIE:
                leftovers.append(process)
        except (psutil.Error, KeyError, TypeError, ValueError):
            continue
    for process in leftovers:
        try:
            process.kill()
        except psutil.Error:
            continue
    deadline = time.monotonic() + LEFTOVER_WAIT
    while alive := [p for p in leftovers if _running(p)]:
        if time.monotonic() > deadline:
            raise BenchError(f"leftover worker(s) {[p.pid for p in alive]} of an earlier run did not exit; stop them first")
        time.sleep(0.05)
    return len(leftovers)


def _running(process: psutil.Process) -> bool:
    """Alive and not a zombie (a container's init may never reap a dead driver's children)."""
    try:
        return process.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


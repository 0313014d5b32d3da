"""One driver per run folder: an OS lock on ``run.lock``, held for the life of the driver.

Two drivers writing one folder would record every cell twice and measure while fighting for the
cores, so a second ``bench run`` into a folder that is in use stops at once and names the holder.
The lock is ``flock`` on an open file: the kernel drops it when its holder dies, however it dies,
so a lock left by a killed driver is simply taken over. The file also lists the driver's worker
processes; the driver that takes over stops any of them still alive (a platform without a
parent-death signal, or a worker caught mid-exit), so a resumed run never measures beside one.

The file is only a claim, and anyone who can write the folder can forge it: a pid and a creation
time prove nothing about what a process is. So each driver draws a random token, records it in
the file and starts every worker with ``WORKER_MARK`` = token and run folder in its environment
(``mark``, set at spawn by bench/run/executors/process.py). A listed process is signalled only
when its own initial environment (/proc/PID/environ, which it cannot change and another user
cannot read) carries the recorded token and this folder; any other live entry is reported and
left alone (docs/architecture.md, "Run lifecycle").
"""

from __future__ import annotations

import fcntl
import json
import os
import secrets
import socket
import stat
import time
from datetime import UTC, datetime
from pathlib import Path

import psutil

from bench.errors import BenchError

LOCK = "run.lock"
LEFTOVER_WAIT = 10.0
"""Seconds to wait for a leftover worker to exit after SIGKILL before giving up on the folder."""
WORKER_MARK = "BENCH_WORKER_OF"
"""The environment variable a driver's workers start with: '<run token> <run folder>'."""


class RunLocked(BenchError):
    """Another live driver is writing this run folder."""


def printable(value: object) -> str:
    """A value from the lock file as one line of plain text: the file may be forged, and a newline or
    a terminal escape in it must not reach the user's terminal as one."""
    return "".join(c if c.isprintable() else "?" for c in str(value))


def _holder_text(holder: dict) -> str:
    if not holder.get("pid"):
        return "another bench run"
    text = f"pid {holder['pid']} on {holder.get('host', '?')}"
    if holder.get("started"):
        text += f" since {holder['started']}"
    return printable(text + (f" ({holder['command']})" if holder.get("command") else ""))


class RunLock:
    """The run folder's lock and its record of who holds it: pid, host, command, run token and worker pids.

    It is the driver's ``WorkerWatch`` (bench/run/executors/process.py): called as each worker
    starts and ends, and ``mark`` is the environment each worker starts with.
    """

    def __init__(self, folder: Path, command: str) -> None:
        self.path = Path(folder) / LOCK
        self.command = command
        self.fd: int | None = None
        self.token = secrets.token_hex(16)
        self.mark = {WORKER_MARK: _mark(self.token, self.path.parent)}
        self.workers: dict[int, float] = {}
        self.stopped_leftovers = 0
        self.left_alone: list[int] = []
        """Live processes the previous holder's file listed that are not provably its workers: not signalled."""
        self.previous: dict = {}
        """What a dead holder left in the lock file (empty when the last driver ended cleanly)."""

    def acquire(self) -> RunLock:
        """Take the lock or raise RunLocked naming the holder; stop a dead holder's leftover workers."""
        try:  # never through a symbolic link, which would make the lock truncate and write a file elsewhere
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK, 0o644)
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                os.close(fd)
                raise OSError(0, "not a regular file")
        except OSError as exc:
            raise BenchError(f"cannot use {self.path} as the run lock ({exc.strerror or exc}): it must be a plain file "
                             "of the run folder; remove it, or choose another --out") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = self._read(fd)
            os.close(fd)
            raise RunLocked(f"run folder {self.path.parent} is in use by {_holder_text(holder)}; "
                            f"wait for it to finish, or choose another --out") from None
        self.fd = fd
        self.previous = self._read(fd)
        self.stopped_leftovers, self.left_alone = _stop_leftovers(self.previous, self.path.parent)
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

    def __call__(self, pid: int, alive: bool) -> None:
        """Keep the list of live worker pids in the lock file (the ``WorkerWatch`` protocol)."""
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
            "token": self.token,
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


def _mark(token: str, folder: Path) -> str:
    return f"{token} {Path(folder).resolve()}"


def _listed(holder: dict) -> list[psutil.Process]:
    """The live processes the lock file lists as workers, each with the creation time recorded for it
    (a recycled pid is another process); never this process or one of its ancestors."""
    entries = holder.get("workers")
    if not isinstance(entries, list):
        return []
    own = {os.getpid()} | {parent.pid for parent in psutil.Process().parents()}
    listed = []
    for entry in entries:
        try:
            pid = int(entry["pid"])
            if pid <= 0 or pid in own:
                continue
            process = psutil.Process(pid)
            if abs(process.create_time() - float(entry["create_time"])) < 0.01 and _running(process):
                listed.append(process)
        except (psutil.Error, KeyError, TypeError, ValueError, OverflowError):
            continue
    return listed


def _provably_a_worker(process: psutil.Process, holder: dict, folder: Path) -> bool:
    """Whether ``process`` was started as a worker of the driver that wrote ``holder`` for ``folder``:
    its initial environment carries that driver's token and this folder (``WORKER_MARK``)."""
    token = holder.get("token")
    if not isinstance(token, str) or len(token) < 32:
        return False
    try:
        return process.environ().get(WORKER_MARK) == _mark(token, folder)
    except psutil.Error:  # gone, a zombie, or another user's process (its environment is not readable)
        return False


def _stop_leftovers(holder: dict, folder: Path) -> tuple[int, list[int]]:
    """SIGKILL the workers a dead driver on this host left alive; how many there were, and the pids
    of the live processes the file lists that are not provably its workers (left alone)."""
    if holder.get("host") != socket.gethostname():
        return 0, []
    listed = _listed(holder)
    leftovers = [process for process in listed if _provably_a_worker(process, holder, folder)]
    for process in leftovers:
        try:
            process.kill()  # psutil refuses a pid that has been reused since it was proven
        except psutil.Error:
            continue
    deadline = time.monotonic() + LEFTOVER_WAIT
    while alive := [p for p in leftovers if _running(p)]:
        if time.monotonic() > deadline:
            raise BenchError(f"leftover worker(s) {[p.pid for p in alive]} of an earlier run did not exit; stop them first")
        time.sleep(0.05)
    return len(leftovers), [process.pid for process in listed if process not in leftovers]


def _running(process: psutil.Process) -> bool:
    """Alive and not a zombie (a container's init may never reap a dead driver's children)."""
    try:
        return process.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


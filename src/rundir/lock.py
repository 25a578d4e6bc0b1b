"""The run directory's lock: held (`flock`, exclusive) by the one process running the run,
for the run's whole life, and probed read-only by whoever asks whether it runs (`lock_probe`).

    <run_dir>/.lock   "host H, pid P" of the holder
"""

from __future__ import annotations

import errno
import fcntl
import os
import socket
import time
from pathlib import Path

from .files import LOCK, open_run_file


class RunLocked(RuntimeError):
    """Another process holds the run directory's lock."""


class RunLock:
    """An exclusive lock on a run directory, held for the whole life of the run, so that two
    launchers never train the same run: the second gets `RunLocked` naming the holder.

    `flock` is released by the kernel when the holder dies in any way (kill -9 included). On
    network file systems it is only as good as their lock manager: NFS (v4, or v3 with lockd)
    maps it to a POSIX lock, Lustre needs the `flock` mount option.
    """

    def __init__(self, run_dir: Path, *, enabled: bool = True):
        self.path = Path(run_dir) / LOCK
        self.enabled = enabled
        self._fd: int | None = None

    def __enter__(self) -> RunLock:
        if self.enabled:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = open_run_file(self.path, os.O_RDWR | os.O_CREAT)
            try:
                _flock_exclusive(fd)
            except BlockingIOError:
                holder = os.read(fd, 200).decode(errors="replace").strip() or "unknown"
                os.close(fd)
                raise RunLocked(f"running elsewhere ({holder}): {self.path.parent}") from None
            os.ftruncate(fd, 0)
            os.write(fd, f"host {socket.gethostname()}, pid {os.getpid()}".encode())
            self._fd = fd
        return self

    def __exit__(self, *exc) -> None:
        if self._fd is not None:
            os.close(self._fd)  # releases the lock; the file stays (unlinking it would race)
            self._fd = None


def _flock_exclusive(fd: int, tries: int = 100) -> None:
    """Take the exclusive lock without waiting for a runner, but past a `lock_probe`: its shared
    lock lasts microseconds, and a start it refused would be a run lost to a read-only look.
    A runner holds the lock exclusively, so when a shared lock can be had, only probes hold it."""
    for _ in range(tries):
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            try:
                fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            except BlockingIOError:
                raise BlockingIOError("held by a runner") from None
            fcntl.flock(fd, fcntl.LOCK_UN)
            time.sleep(0.001)
    raise BlockingIOError("held by probes")


# What `lock_probe` says about a run's lock: a holder ("host H, pid P"), FREE, or NO_FLOCK (the
# file system refuses flock: liveness then comes from the heartbeat alone).
FREE, NO_FLOCK = "", None


def lock_probe(run_dir: Path) -> str | None:
    """Who holds the run's lock, without writing anything: "host H, pid P" of the process
    running the run now, `FREE` ("") when none does, `NO_FLOCK` (None) when this file
    system has no working flock. A non-blocking shared lock on a read-only descriptor: the
    lock file is neither created nor rewritten, and a run starting meanwhile is not refused
    (`_flock_exclusive` waits out a probe)."""
    try:
        fd = os.open(os.path.join(run_dir, LOCK), os.O_RDONLY | os.O_NOFOLLOW)
    except OSError:  # no lock file: the run never started here (or the directory is unreadable)
        return FREE
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return os.read(fd, 200).decode(errors="replace").strip() or "unknown"
        except OSError as error:
            if error.errno in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
                return NO_FLOCK
            raise
        fcntl.flock(fd, fcntl.LOCK_UN)
        return FREE
    finally:
        os.close(fd)

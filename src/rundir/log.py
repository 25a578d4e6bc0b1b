"""A run's log: `<run_dir>/train.log`, its stdout and stderr (also still on the console),
appended across resumes."""

from __future__ import annotations

import contextlib
import os
import socket
import sys
import time
from pathlib import Path

from .files import open_run_file, write_all
from .heartbeat import slurm_ids


class _Tee:
    """The console first, then the log file: when the file cannot be written (a full disk, a
    read-only file system) the console still gets every line, and the file's error is
    reported there once."""

    def __init__(self, stream, fd: int, path: Path):
        self.stream, self.fd, self.path = stream, fd, path
        self.broken = False

    def write(self, text):
        n = self.stream.write(text)
        self.stream.flush()
        if not self.broken:
            try:
                write_all(self.fd, text.encode(errors="replace"))
            except OSError as error:
                self.broken = True
                self.stream.write(
                    f"warning: {self.path} cannot be written ({error}); output goes to the console only\n"
                )
                self.stream.flush()
        return n

    def flush(self):
        self.stream.flush()

    def __getattr__(self, name):
        return getattr(self.stream, name)


@contextlib.contextmanager
def tee_output(path: Path, *, enabled: bool = True):
    """Copy this process's stdout and stderr (Python-level writes) to `path`, appended, so
    a run's log sits in its own directory across resumes. Never through a symbolic link."""
    if not enabled:
        yield
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = open_run_file(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
    saved = sys.stdout, sys.stderr
    sys.stdout, sys.stderr = _Tee(sys.stdout, fd, path), _Tee(sys.stderr, fd, path)
    job = slurm_ids()["slurm_job_id"]
    try:
        print(
            f"--- {time.strftime('%Y-%m-%d %H:%M:%S')} on {socket.gethostname()} pid {os.getpid()}"
            f"{' job ' + str(job) if job else ''}",
            file=_Tee(_Null(), fd, path),
        )
        yield
    finally:
        sys.stdout, sys.stderr = saved
        os.close(fd)


class _Null:
    def write(self, text):
        return len(text)

    def flush(self):
        pass

"""Where and how a run is running: its heartbeat, its log, and the provenance in result.json.

    <run_dir>/heartbeat.json   written when the run starts, then rewritten atomically at most
                               every `train.heartbeat_every_s` seconds (checked at each step):
                               {host, pid, slurm_job_id, slurm_array_task_id, step, epoch, time}
                               and, when the run failed and could not write result.json (a full
                               disk), "unrecorded_failure": {error, time}, rewritten in place
    <run_dir>/train.log        the run's stdout and stderr (also still on the console)

`python -m src.launch status` reads heartbeats to tell a running run (fresh heartbeat) from
a killed one (stale heartbeat, or a dead pid on this host).
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import sys
import time
from pathlib import Path

from .records import atomic_write, open_run_file, write_all

HEARTBEAT, LOG = "heartbeat.json", "train.log"


def slurm_ids() -> dict:
    """The SLURM job of this process, as `squeue -r` names it (`<array job>_<task>` for a
    task of a job array), or None outside SLURM."""
    env = os.environ
    task = env.get("SLURM_ARRAY_TASK_ID")
    if task is not None and env.get("SLURM_ARRAY_JOB_ID"):
        job = f"{env['SLURM_ARRAY_JOB_ID']}_{task}"
    else:
        job = env.get("SLURM_JOB_ID")
    return {"slurm_job_id": job, "slurm_array_task_id": int(task) if task is not None else None}


def available_cpus() -> int:
    """CPUs this process may use: the SLURM allocation, else the affinity mask."""
    if os.environ.get("SLURM_CPUS_PER_TASK"):
        return int(os.environ["SLURM_CPUS_PER_TASK"])
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def whereabouts() -> dict:
    return {"host": socket.gethostname(), "pid": os.getpid(), **slurm_ids()}


class Heartbeat:
    """Writes `<run_dir>/heartbeat.json`: at once (so that the file exists from the run's
    start), then on `maybe_beat` when `every_s` seconds have passed, and on `beat`. A beat is
    a ~200-byte write to a temporary file and a rename, with no fsync (a heartbeat lost in a
    crash is as good as a stale one)."""

    def __init__(self, run_dir: Path, *, every_s: float = 60.0, enabled: bool = True):
        self.path = Path(run_dir) / HEARTBEAT
        self.enabled = enabled
        self.every_s = every_s
        self.where = whereabouts()
        self.last = {"step": 0, "epoch": 0}
        self._next = 0.0

    def beat(self, step: int, epoch: int) -> None:
        if not self.enabled:
            return
        self.last = {"step": step, "epoch": epoch}
        atomic_write(self.path, self._content().encode(), durable=False)
        self._next = time.monotonic() + self.every_s

    def maybe_beat(self, step: int, epoch: int) -> None:
        if self.enabled and time.monotonic() >= self._next:
            self.beat(step, epoch)

    def _content(self, **extra) -> str:
        return json.dumps({**self.where, **self.last, "time": time.time(), **extra})

    def record_unrecorded_failure(self, error: str) -> None:
        """Mark the heartbeat with the failure that result.json could not take (a full disk),
        rewriting the existing file in place: no new file or directory entry, and no new disk
        block for a file this small, so this works where result.json could not be written."""
        if not self.enabled:
            return
        first = (error.strip().splitlines() or [""])[0]
        data = self._content(unrecorded_failure={"error": first, "time": time.time()}).encode()
        fd = open_run_file(self.path, os.O_WRONLY)  # no O_CREAT, no O_TRUNC
        try:
            os.pwrite(fd, data, 0)  # (pwrite returns short only where write_all would fail too)
            os.ftruncate(fd, len(data))
        finally:
            os.close(fd)


def read_heartbeat(run_dir: Path) -> dict | None:
    try:
        return json.loads((Path(run_dir) / HEARTBEAT).read_text())
    except (OSError, ValueError):  # absent, or from a writer killed mid-write on a non-POSIX FS
        return None


def unrecorded_failure(run_dir: Path) -> dict | None:
    """{error, time} of a failure the run could not write to result.json (a full disk), as
    its heartbeat was marked (`Heartbeat.record_unrecorded_failure`), or None."""
    beat = read_heartbeat(run_dir)
    failure = beat.get("unrecorded_failure") if isinstance(beat, dict) else None
    return failure if isinstance(failure, dict) else None


def process_alive(host: str | None, pid: int | None) -> bool | None:
    """Whether `pid` lives, when the heartbeat was written on this host; None if unknowable."""
    if host != socket.gethostname() or not pid:
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def process_start(pid: int) -> str | None:
    """What a reused pid cannot fake about process `pid`: this boot's id and the process's
    start time (clock ticks after boot, field 22 of /proc/<pid>/stat); None where unknown."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()  # (the name in parentheses may hold spaces)
        with open("/proc/sys/kernel/random/boot_id") as f:
            boot = f.read().strip()
        return f"{boot}:{fields[19]}"
    except (OSError, IndexError):
        return None


def same_process(host: str | None, pid: int | None, started: str | None) -> bool:
    """Whether the process recorded as `pid` on `host`, started at `started` (`process_start`),
    still lives: its pid alone is not enough (a pid is reused once its process is gone). A
    record without a start time (an older one) is judged by the pid."""
    if not process_alive(host, pid):
        return False
    return started is None or process_start(pid) in (started, None)


def provenance(run_dir: Path) -> dict:
    """Host, SLURM job, hardware, torch and thread count of this process, and the run's log."""
    import torch

    from .sparse.kernels import cpu_info  # (the one reader of /proc/cpuinfo)

    gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else None
    return {
        "host": socket.gethostname(),
        **slurm_ids(),
        "cpu_model": cpu_info()["model"],
        "gpu_model": gpu,
        "torch_version": torch.__version__,
        "threads": torch.get_num_threads(),
        "log": str(Path(run_dir).resolve() / LOG),
    }


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

"""Where and how a run is running: its heartbeat, its log, and the provenance in result.json.

    <run_dir>/heartbeat.json   rewritten atomically every `log_every` steps and at each epoch:
                               {host, pid, slurm_job_id, slurm_array_task_id, step, epoch, time}
    <run_dir>/train.log        the run's stdout and stderr (also still on the console)

`python -m src.launch status` reads heartbeats to tell a running run (fresh heartbeat) from
a killed one (stale heartbeat, or a dead pid on this host).
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import socket
import sys
import time
from pathlib import Path

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
    """Writes `<run_dir>/heartbeat.json`; `beat` is cheap (a ~200-byte write and a rename)."""

    def __init__(self, run_dir: Path, *, enabled: bool = True):
        self.path = Path(run_dir) / HEARTBEAT
        self.enabled = enabled
        self.where = whereabouts()

    def beat(self, step: int, epoch: int) -> None:
        if not self.enabled:
            return
        tmp = self.path.with_name(f".{HEARTBEAT}.tmp-{os.getpid()}")
        # no fsync: a heartbeat lost in a crash is as good as a stale one
        tmp.write_text(json.dumps({**self.where, "step": step, "epoch": epoch, "time": time.time()}))
        os.replace(tmp, self.path)


def read_heartbeat(run_dir: Path) -> dict | None:
    try:
        return json.loads((Path(run_dir) / HEARTBEAT).read_text())
    except (OSError, ValueError):  # absent, or from a writer killed mid-write on a non-POSIX FS
        return None


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


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def provenance(run_dir: Path) -> dict:
    """Host, SLURM job, hardware, torch and thread count of this process, and the run's log."""
    import torch

    gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else None
    return {"host": socket.gethostname(), **slurm_ids(), "cpu_model": _cpu_model(), "gpu_model": gpu,
            "torch_version": torch.__version__, "threads": torch.get_num_threads(),
            "log": str(Path(run_dir).resolve() / LOG)}


class _Tee:
    def __init__(self, stream, file):
        self.stream, self.file = stream, file

    def write(self, text):
        self.file.write(text)
        self.file.flush()
        return self.stream.write(text)

    def flush(self):
        self.stream.flush()

    def __getattr__(self, name):
        return getattr(self.stream, name)


@contextlib.contextmanager
def tee_output(path: Path, *, enabled: bool = True):
    """Copy this process's stdout and stderr (Python-level writes) to `path`, appended, so
    a run's log sits in its own directory across resumes."""
    if not enabled:
        yield
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        f.write(f"--- {time.strftime('%Y-%m-%d %H:%M:%S')} on {socket.gethostname()} pid {os.getpid()}"
                f"{' job ' + str(slurm_ids()['slurm_job_id']) if slurm_ids()['slurm_job_id'] else ''}\n")
        saved = sys.stdout, sys.stderr
        sys.stdout, sys.stderr = _Tee(sys.stdout, f), _Tee(sys.stderr, f)
        try:
            yield
        finally:
            sys.stdout, sys.stderr = saved

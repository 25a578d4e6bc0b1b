"""Where and how a run is running: its heartbeat.

    <run_dir>/heartbeat.json   written when the run starts, after its first training step and
                               at the end of its first epoch (so that a new run shows its pace
                               and first accuracies at once), then at most every
                               `train.heartbeat_every_s` seconds (checked at each step; one beat
                               a minute keeps the metadata load of 1,000s of runs low):
                               {host, pid, slurm_job_id, slurm_array_task_id, step, epoch, time}
                               and, once training started, {epochs, total_steps, start_step,
                               pace_from: [step, time] of this attempt's first step} (for the
                               ETA) and the latest epoch's {val_acc, test_acc}
                               and, when the run failed and could not write result.json (a full
                               disk), "unrecorded_failure": {error, time}, rewritten in place

`python -m src.launch status` reads heartbeats to tell a running run (fresh heartbeat) from
a killed one (stale heartbeat, or a dead pid on this host).
"""

from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path
from typing import Any

from .files import HEARTBEAT, atomic_write, open_run_file


def slurm_ids() -> dict:
    """The SLURM job of this process, as `squeue -r` names it (`<array job>_<task>` for a
    task of a job array), or None outside SLURM."""
    env = os.environ
    task = env.get("SLURM_ARRAY_TASK_ID")
    job: str | None
    if task is not None and env.get("SLURM_ARRAY_JOB_ID"):
        job = f"{env['SLURM_ARRAY_JOB_ID']}_{task}"
    else:
        job = env.get("SLURM_JOB_ID")
    return {"slurm_job_id": job, "slurm_array_task_id": int(task) if task is not None else None}


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
        self.last: dict[str, Any] = {"step": 0, "epoch": 0}
        self._next = 0.0
        self._epochs_seen = 0  # epochs ended in this attempt

    def beat(self, step: int, epoch: int, **latest) -> None:
        """Write now; ``latest``: the latest epoch's accuracies (val_acc, test_acc), kept until replaced."""
        if not self.enabled:
            return
        self.last = {**self.last, "step": step, "epoch": epoch, **latest}
        if "pace_from" not in self.last and step > self.last.get("start_step", step):
            # the pace is counted from the first step on: it leaves out the first step's warm-up
            self.last["pace_from"] = [step, time.time()]
        atomic_write(self.path, self._content().encode(), durable=False)
        self._next = time.monotonic() + self.every_s

    def training(self, *, epochs: int, total_steps: int, start_step: int) -> None:
        """Training starts (or resumes) at ``start_step``: the schedule goes into every beat from
        now on, and the first step's `maybe_beat` writes at once (not after `every_s`)."""
        self.last.update(epochs=epochs, total_steps=total_steps, start_step=start_step)
        self.last.pop("pace_from", None)
        self._next = 0.0
        self._epochs_seen = 0

    def epoch_end(self, step: int, epoch: int, **accuracies) -> None:
        """An epoch ended with these accuracies: written at once after this attempt's first
        epoch, otherwise carried by the next beat that is due."""
        self._epochs_seen += 1
        if self._epochs_seen == 1:
            self.beat(step, epoch, **accuracies)
        else:
            self.last.update(accuracies)
            self.maybe_beat(step, epoch)

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


def eta_s(beat: dict, now: float | None = None) -> float | None:
    """Seconds until the run ends, from its pace since this attempt's first step (evaluation
    included), counted from `now`: it follows a run that slows down or speeds up,
    and goes on counting down between beats. None before its first step."""
    try:
        first_step, first_time = beat["pace_from"]
        done = beat["step"] - first_step
        pace = (beat["time"] - first_time) / done  # seconds per step
        left = (beat["total_steps"] - beat["step"]) * pace - ((time.time() if now is None else now) - beat["time"])
    except (KeyError, TypeError, ZeroDivisionError):
        return None
    return max(0.0, left)


def progress_text(beat: dict, now: float | None = None) -> str:
    """`epoch 3/10 step 1266/4220 val 85.1 % test 84.9 % ETA 2 min` (what a heartbeat says)."""
    epochs, total = beat.get("epochs"), beat.get("total_steps")
    parts = [
        f"epoch {beat.get('epoch')}" + (f"/{epochs}" if epochs else ""),
        f"step {beat.get('step')}" + (f"/{total}" if total else ""),
    ]
    parts += [f"{name} {beat[key]:.1f} %" for key, name in (("val_acc", "val"), ("test_acc", "test")) if key in beat]
    eta = eta_s(beat, now)
    if eta is not None:
        parts.append(f"ETA {duration(eta)}")
    return " ".join(parts)


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
    if pid is None or not process_alive(host, pid):
        return False
    return started is None or process_start(pid) in (started, None)


def duration(seconds: float) -> str:
    seconds = int(seconds)
    if seconds < 90:
        return f"{seconds} s"
    if seconds < 5400:
        return f"{round(seconds / 60)} min"
    return f"{seconds // 3600} h {round(seconds % 3600 / 60)} min"

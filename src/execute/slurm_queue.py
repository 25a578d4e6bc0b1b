"""The one reader of the SLURM queue, and of the submission records that say which runs are in
which job (`<sweep dir>/submission.json`, written by the SLURM launcher)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from ..rundir.state import IN_QUEUE

SUBMISSION = "submission.json"


def queue_states(job_ids: set[str]) -> dict[str, str]:
    """`squeue` state of each queued job / array task among `job_ids` (one call for all)."""
    if not job_ids:
        return {}
    arrays = sorted({j.split("_")[0] for j in job_ids})
    try:
        out = subprocess.run(
            ["squeue", "-h", "-r", "-o", "%i|%T", "-j", ",".join(arrays)], capture_output=True, text=True, timeout=60
        )
    except (OSError, subprocess.TimeoutExpired):
        return {}  # no SLURM here: nothing is queued
    states = {}
    for line in out.stdout.splitlines():  # squeue exits 1 when every job has left the queue
        job, _, queue_state = line.strip().partition("|")
        states[job] = queue_state
    return states


def submitted_jobs(records: list[Path]) -> dict[str, str]:
    """run_dir -> SLURM job id (`<array job>_<task>`) from submission records, the latest winning."""
    jobs: dict[str, str] = {}
    for path in sorted(records, key=lambda p: json.loads(p.read_text()).get("time", 0)):
        for job in json.loads(path.read_text()).get("jobs", []):
            for run in job["runs"]:
                jobs[str(Path(run).resolve())] = job["job_id"]
    return jobs


def still_queued(records: list[Path]) -> dict[str, str]:
    """run_dir -> job id, for the runs of these submissions whose SLURM job is still in the queue."""
    submitted = submitted_jobs(records)
    states = queue_states(set(submitted.values()))
    return {run: job for run, job in submitted.items() if states.get(job) in IN_QUEUE}

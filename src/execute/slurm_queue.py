"""The one reader of the SLURM queue, and of the submission records that say which runs are in
which job (`<sweep dir>/submission.json`, written by the SLURM launcher); the scheduler's
refusals as one error line.

A scheduler that does not answer is never read as an answer: an `squeue` that fails (the
controller down) or does not return within `DST_SLURM_QUERY_TIMEOUT_S` seconds (default 30;
a hung controller) raises `QueueUnknown`, so that `status` says "queue unknown" instead of
"missing", and `--detach` refuses to submit runs that may be running instead of guessing.
An `sbatch` that fails (a wrong account, a partition that is down) is a `SchedulerError`
carrying sbatch's own message, which the launch prints as one `error:` line, exiting non-zero.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

from ..rundir.state import IN_QUEUE

SUBMISSION = "submission.json"


# (a BaseException: it passes through Hydra's `run_and_report`, which would print any
# Exception raised by a launcher as a traceback; `src.launch` prints it as one line)


class SchedulerError(BaseException):
    """The scheduler refused or could not be asked; the message says what it said."""


class QueueUnknown(Exception):
    """`squeue` did not answer: the queue's state is unknown (the message says why)."""


QUERY_TIMEOUT_S = 30.0


def query_timeout() -> float:
    """Seconds to wait for `squeue` (`DST_SLURM_QUERY_TIMEOUT_S`, default 30)."""
    try:
        return float(os.environ.get("DST_SLURM_QUERY_TIMEOUT_S", QUERY_TIMEOUT_S))
    except ValueError:
        return QUERY_TIMEOUT_S


def queue_states(job_ids: set[str]) -> dict[str, str]:
    """`squeue` state of each queued job / array task among `job_ids` (one call for all); a
    job that has left the queue is absent. Raises `QueueUnknown` when squeue does not answer."""
    if not job_ids:
        return {}
    arrays = sorted({j.split("_")[0] for j in job_ids})
    timeout = query_timeout()
    try:
        out = subprocess.run(
            ["squeue", "-h", "-r", "-o", "%i|%T", "-j", ",".join(arrays)],
            capture_output=True,
            text=True,
            timeout=timeout,
        )
    except subprocess.TimeoutExpired:
        raise QueueUnknown(f"squeue did not answer within {timeout:g} s (controller hung?)") from None
    except OSError as error:
        raise QueueUnknown(f"squeue could not be run ({error.strerror or error})") from None
    # squeue exits 1, saying "Invalid job id", when every job asked about has left the queue
    if out.returncode != 0 and "invalid job id" not in out.stderr.lower():
        said = " ".join(out.stderr.split()) or f"exit status {out.returncode}"
        raise QueueUnknown(f"squeue failed: {said}")
    states = {}
    for line in out.stdout.splitlines():
        job, _, queue_state = line.strip().partition("|")
        if job:
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
    """run_dir -> job id, for the runs of these submissions whose SLURM job is still in the
    queue. Raises `QueueUnknown` when squeue does not answer."""
    submitted = submitted_jobs(records)
    states = queue_states(set(submitted.values()))
    return {run: job for run, job in submitted.items() if states.get(job) in IN_QUEUE}


def submission_error(error: BaseException) -> SchedulerError:
    """sbatch's refusal (as submitit raises it) as a `SchedulerError` with sbatch's message."""
    text = " ".join(str(error).split()) or type(error).__name__
    return SchedulerError(f"submitting to SLURM failed: {text}")

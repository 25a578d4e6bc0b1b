"""End-to-end tests of submitit on the real single-node SLURM cluster (scripts/slurm/).

Run with ``python -m pytest -m slurm tests/test_slurm_cluster.py`` (as root on Debian; a cold
start installs the packages). About 2 minutes, almost all of it the time-limit test.

What SLURM 22.05 (Debian 12) does with a job's time limit, as measured here -- it decides the
parameters of ``test_timed_out_job_is_requeued_and_resumes``:

* slurmctld checks time limits only every 30 s (a compile-time constant), at a fixed phase of
  its own clock, so a job is ended 0-30 s after its limit (OverTimeLimit=0): SIGTERM, then
  SIGKILL ``KillWait`` (5 s) later; sacct says TIMEOUT.
* ``--signal=USR2@D`` (submitit always sends it, D = ``slurm_signal_delay_s``, default 90) is
  delivered to the job *steps* (submitit runs the work in an srun step), at the first of those
  checks that is past ``end - D - 30 s``. With the default D=90 and a 1-minute job, that is the
  first check after the start: the job is signalled 0-30 s into every run, and requeued again
  and again until ``max_num_timeout`` runs out. So short limits need a small D: with D=5 the
  signal comes 25-55 s into a 1-minute run, and always at least one check (30 s) before the
  kill, which leaves submitit plenty of time to checkpoint and requeue.
* submitit's handler treats every USR2 in a job shorter than ~12 min as a timeout (not a
  preemption): it calls ``checkpoint()``, pickles the result and runs ``scontrol requeue``.
  That is refused ("Requested operation is presently disabled") unless the job is requeueable:
  slurm.conf sets JobRequeue=1 because submitit does not pass ``--requeue``.
* A requeued job keeps its job id and may only start again once its launch credential has
  expired (AuthInfo=cred_expire, default 120 s, here 10 s), and then only when the scheduler
  next runs (sched_interval=5 here, default 60 s): it restarts ~15 s after the requeue.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
import submitit

pytestmark = [pytest.mark.slurm, pytest.mark.slow]


def _executor(folder: Path, cluster, **params) -> submitit.AutoExecutor:
    max_num_timeout = params.pop("max_num_timeout", 0)
    executor = submitit.AutoExecutor(folder=folder, cluster="slurm", slurm_max_num_timeout=max_num_timeout)
    executor.update_parameters(slurm_partition=cluster.partition, **params)
    return executor


def _final_state(job: submitit.Job, timeout_s: float = 30.0) -> str:
    """The job's state from sacct, once it is final (submitit caches states for a few seconds)."""
    deadline = time.monotonic() + timeout_s
    while True:
        state = job.get_info(mode="force").get("State", "UNKNOWN")
        if state not in {"PENDING", "RUNNING", "REQUEUED", "COMPLETING", "UNKNOWN"}:
            return state
        if time.monotonic() > deadline:
            return state
        time.sleep(1)


def square_in_job(x: int) -> dict:
    return {
        "square": x * x,
        "job_id": os.environ.get("SLURM_JOB_ID"),
        "partition": os.environ.get("SLURM_JOB_PARTITION"),
        "cpus": os.environ.get("SLURM_CPUS_PER_TASK"),
    }


def test_function_job_returns_its_result(slurm_cluster, tmp_path):
    executor = _executor(tmp_path, slurm_cluster, timeout_min=5, cpus_per_task=1, mem_gb=1)
    job = executor.submit(square_in_job, 7)

    result = job.result()

    assert result == {
        "square": 49,
        "job_id": job.job_id,
        "partition": slurm_cluster.partition,
        "cpus": "1",
    }
    # accounting (slurmdbd) works: submitit reads the final state through sacct
    assert _final_state(job) == "COMPLETED"


def timed_sleep(seconds: float) -> tuple[float, float]:
    start = time.time()
    time.sleep(seconds)
    return start, time.time()


def test_one_gib_jobs_run_side_by_side(slurm_cluster, tmp_path):
    """DefMemPerCPU/RealMemory leave room for concurrent 1-GiB, 1-CPU jobs (an array here)."""
    executor = _executor(tmp_path, slurm_cluster, timeout_min=5, cpus_per_task=1, mem_gb=1)
    jobs = executor.map_array(timed_sleep, [4.0, 4.0])

    (start0, end0), (start1, end1) = [job.result() for job in jobs]

    overlap = min(end0, end1) - max(start0, start1)
    assert overlap > 2.0, "the two array tasks ran one after the other"


def test_cancelled_job_is_seen_as_finished(slurm_cluster, tmp_path):
    """A job killed before it wrote its result is seen as done, through sacct (slurmdbd).

    Without accounting submitit cannot tell it from a running job and ``result()`` waits
    forever. (``result()`` would then raise UncompletedJobError, after a fixed 15 s grace
    for the result file, which this test does not wait for.)
    """
    executor = _executor(tmp_path, slurm_cluster, timeout_min=5, cpus_per_task=1, mem_gb=1)
    job = executor.submit(time.sleep, 300)
    deadline = time.monotonic() + 60
    while job.get_info(mode="force").get("State") != "RUNNING":
        assert time.monotonic() < deadline, "job did not start within 60 s"
        time.sleep(0.5)

    job.cancel()

    deadline = time.monotonic() + 30
    while not job.done(force_check=True):
        assert time.monotonic() < deadline, f"cancelled job still not done: {job.state}"
        time.sleep(0.5)
    assert _final_state(job).startswith("CANCELLED")
    assert not job.paths.result_pickle.exists()

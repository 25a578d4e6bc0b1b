"""One SLURM job running a pack of a sweep's runs, `concurrent_runs` at a time.

The SLURM launcher (hydra_plugins/dst_slurm_launcher) submits a job array whose every task
calls a `Pack` with its share of the runs. Each run is its own process (forked from the pack,
which has imported torch once: a short run does not pay the interpreter's start-up again) in
its own run directory (records, checkpoint, resume, train.log), with the job's CPUs split
between the concurrent runs. On any stop signal (`execute.stop`: TERM, INT, USR1, USR2, HUP,
XCPU) no run starts and every running run checkpoints at its next step; once all have stopped,
a time-limit / preemption warning (USR1, USR2, XCPU) has the job requeued (submitit pickles the
Pack again; the requeued job skips the runs that finished and resumes the rest), any other
signal ends the task non-zero, and launching again resumes them. A run dies with its pack (a
parent-death signal), so that none trains on outside the allocation.
A run killed by another signal (a segfault, the OOM killer) is recorded as failed, naming the
signal, and the task then exits non-zero (by `rundir.exit_code`, as every launcher).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from .execute.pool import ChildEntry, PackedRun, Pool
from .execute.slurm_queue import SUBMISSION
from .execute.stop import StopRequest
from .rundir import atomic_write_text, classify, exit_code, finished_status, open_run_file, record_death

__all__ = ["Pack", "PackedRun", "submission_lock", "write_submission"]
SUBMISSION_LOCK = ".submission.lock"


@dataclass
class Pack:
    child: ChildEntry  # `execute.child.run_in_child`, given by the launcher (pickled by reference)
    sweep_dir: str
    concurrent_runs: int = 1
    threads: int | None = None  # per run; None: the whole allocation (one run at a time)

    def __call__(self, runs: list[PackedRun]) -> list[dict]:
        pool = Pool(self.child, self.sweep_dir, self.concurrent_runs, self.threads, launcher=None, poll_s=0.1)
        # every stop signal, submitit's preemption handler kept (hand_over() requeues); SLURM
        # signals the whole step, but the request is passed on to the runs in case it did not
        pool.stop = stop = StopRequest.preemption(forward=pool.forward)
        # decided again at each start: a requeued job finds the runs its last attempt finished
        todo = [r for r in runs if finished_status(Path(r.run_dir), r.config) is None]
        print(
            f"pack of {len(runs)} run(s): {len(runs) - len(todo)} already finished, "
            f"{self.concurrent_runs} at a time, {self.threads or 'all'} thread(s) each",
            flush=True,
        )
        outcomes = {r.run_dir: "skipped" for r in runs if r not in todo}

        def start(run: PackedRun) -> PackedRun:
            print(f"run #{run.idx} started: {run.run_dir}", flush=True)
            return run

        def exited(run: PackedRun, code: int, started_at: float, started: float) -> None:
            record_death(Path(run.run_dir), run.config, code, started_at)
            row = classify(Path(run.run_dir), expected=run.config)
            outcomes[run.run_dir] = row.state
            detail = f" ({row.detail})" if row.state in ("failed", "stale", "damaged") else ""
            print(f"run #{run.idx} {row.state}: {run.run_dir}{detail}", flush=True)

        not_started = pool.run(todo, start, exited)
        if stop():
            print(
                f"stopped by {stop.name}: checkpointed {sum(o == 'interrupted' for o in outcomes.values())} run(s); "
                f"{len(not_started)} not started; "
                + ("handing over to requeue" if stop.requeues else "not requeued (launching again resumes them)"),
                flush=True,
            )
            stop.hand_over()  # (a time-limit / preemption warning: submitit requeues the job and exits)
            raise RuntimeError(f"stopped by {stop.name} before its runs finished; launching again resumes them")
        elif exit_code(o for o in outcomes.values() if o != "skipped") != 0:
            # the SLURM task fails with its runs (sacct, --dependency)
            bad = sorted(f"{o}: {d}" for d, o in outcomes.items() if o != "skipped" and exit_code([o]))
            raise RuntimeError(f"{len(bad)} of the pack's {len(runs)} run(s) did not finish:\n  " + "\n  ".join(bad))
        return [{"run_dir": r.run_dir, "status": outcomes.get(r.run_dir, "not started")} for r in runs]

    def checkpoint(self, runs: list[PackedRun]):
        """submitit's hook on the time-limit / preemption signal: run the same pack again
        (finished runs are skipped then, interrupted ones resume from their checkpoints)."""
        import submitit  # only in a SLURM job (the pack is pickled without it)

        return submitit.helpers.DelayedSubmission(self, runs)


@contextlib.contextmanager
def submission_lock(directory: Path):
    """Held by a SLURM launch from reading which of the sweep's runs are queued to writing its
    own submission record: an exclusive flock on `<directory>/.submission.lock` (the folder of
    the sweep's launch directories, whose submission records say what is queued), so that two
    launches of one sweep at the same moment never submit a run twice. The second waits, then
    finds the first's jobs in the queue."""
    Path(directory).mkdir(parents=True, exist_ok=True)
    fd = open_run_file(Path(directory) / SUBMISSION_LOCK, os.O_RDWR | os.O_CREAT)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # (releases the lock)


def write_submission(
    sweep_dir: Path,
    *,
    overrides: list[str],
    jobs: list,
    packs: list[list[PackedRun]],
    skipped: int,
    runs_per_job: int,
    concurrent_runs: int,
    detach: bool,
) -> Path:
    """`<sweep dir>/submission.json`: which runs are in which SLURM job, and how it was launched
    (read by `python -m src.launch status`)."""
    record = {
        "time": time.time(),
        "submitted_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "command": [sys.executable, "-m", "src.launch", *overrides],
        "cwd": os.getcwd(),
        "overrides": overrides,
        "runs_per_job": runs_per_job,
        "concurrent_runs": concurrent_runs,
        "detach": detach,
        "already_finished": skipped,
        "jobs": [
            {
                "job_id": job.job_id,
                "runs": [str(Path(r.run_dir).resolve()) for r in pack],
                "overrides": [r.overrides for r in pack],
            }
            for job, pack in zip(jobs, packs)
        ],
    }
    path = Path(sweep_dir) / SUBMISSION
    atomic_write_text(path, json.dumps(record, indent=2))
    return path

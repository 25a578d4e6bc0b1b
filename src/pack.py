"""One SLURM job running a pack of a sweep's runs, `concurrent_runs` at a time.

The SLURM launcher (hydra_plugins/dst_slurm_launcher) submits a job array whose every task
calls a `Pack` with its share of the runs. Each run is its own process (forked from the pack,
which has imported torch once: a short run does not pay the interpreter's start-up again) in
its own run directory (records, checkpoint, resume, train.log), with the job's CPUs split
between the concurrent runs. On the time-limit / preemption signal every running run
checkpoints at its next step, and once all have stopped the job is requeued (submitit
pickles the Pack again); the requeued job skips the runs that finished and resumes the rest.
A run killed by another signal (a segfault, the OOM killer) is recorded as failed, naming the
signal, and the task then exits non-zero (by `rundir.exit_code`, as every launcher).
"""

from __future__ import annotations

import json
import multiprocessing
import os
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from .rundir import atomic_write_text, classify, exit_code, finished_status, open_run_file, record_death

SUBMISSION = "submission.json"


@dataclass
class PackedRun:
    idx: int  # the run's job number in the Hydra sweep (its `<sweep dir>/<idx>/job.log`)
    overrides: list[str]
    run_dir: str
    config: dict  # the run's resolved RunConfig, composed and validated at submission


@dataclass
class Pack:
    sweep_dir: str
    concurrent_runs: int = 1
    threads: int | None = None  # per run; None: the whole allocation (one run at a time)

    def __call__(self, runs: list[PackedRun]) -> list[dict]:
        from .runner import PreemptionFlag, preload

        preload()  # once here, inherited by every forked run

        stop = PreemptionFlag()  # takes submitit's USR2 handler; hand_over() requeues
        # decided again at each start: a requeued job finds the runs its last attempt finished
        todo = [r for r in runs if finished_status(Path(r.run_dir), r.config) is None]
        print(
            f"pack of {len(runs)} run(s): {len(runs) - len(todo)} already finished, "
            f"{self.concurrent_runs} at a time, {self.threads or 'all'} thread(s) each",
            flush=True,
        )
        fork = multiprocessing.get_context("fork")
        running: dict[int, tuple[PackedRun, multiprocessing.Process, float]] = {}
        outcomes = {r.run_dir: "skipped" for r in runs if r not in todo}
        forwarded = False
        while todo or running:
            while todo and len(running) < self.concurrent_runs and not stop():
                run = todo.pop(0)
                print(f"run #{run.idx} started: {run.run_dir}", flush=True)
                proc = fork.Process(target=run_in_child, args=(run, self.sweep_dir, self.threads), daemon=False)
                proc.start()
                running[run.idx] = (run, proc, time.time())
            if stop() and not forwarded:  # SLURM signals the whole step; forward in case it did not
                for _, proc, _ in running.values():
                    _send(proc.pid, stop._signal)
                forwarded = True
            for idx, (run, proc, started) in list(running.items()):
                if not proc.is_alive():
                    proc.join()
                    del running[idx]
                    record_death(Path(run.run_dir), run.config, proc.exitcode, started)
                    row = classify(Path(run.run_dir), expected=run.config)
                    outcomes[run.run_dir] = row.state
                    print(
                        f"run #{run.idx} {row.state}: {run.run_dir}"
                        + (f" ({row.detail})" if row.state in ("failed", "stale", "damaged") else ""),
                        flush=True,
                    )
            if stop() and not running:
                break
            time.sleep(0.1)
        if stop():
            print(
                f"checkpointed {sum(o == 'interrupted' for o in outcomes.values())} run(s); "
                f"{len(todo)} not started; handing over to requeue",
                flush=True,
            )
            stop.hand_over()
        elif (
            exit_code(o for o in outcomes.values() if o != "skipped") != 0
        ):  # the SLURM task fails with its runs (sacct, --dependency)
            bad = sorted(f"{o}: {d}" for d, o in outcomes.items() if o != "skipped" and exit_code([o]))
            raise RuntimeError(f"{len(bad)} of the pack's {len(runs)} run(s) did not finish:\n  " + "\n  ".join(bad))
        return [{"run_dir": r.run_dir, "status": outcomes.get(r.run_dir, "not started")} for r in runs]

    def checkpoint(self, runs: list[PackedRun]):
        """submitit's hook on the time-limit / preemption signal: run the same pack again
        (finished runs are skipped then, interrupted ones resume from their checkpoints)."""
        import submitit

        return submitit.helpers.DelayedSubmission(self, runs)


def run_in_child(run: PackedRun, sweep_dir: str, threads: int | None, launcher: int | None = None) -> None:
    """One run, in a process forked from a pack or from the local launcher (`launcher`: its
    pid): output to `<sweep dir>/<idx>/job.log` (and the run's train.log), the stop flag
    installed first thing. A local run also takes its own session (a Ctrl-C at the terminal
    reaches the launcher only, which passes it on), its thread count before any parallel op,
    and SIGTERM when the launcher dies (`runner.die_with_launcher`)."""
    from .config import RunConfig
    from .runner import PreemptionFlag, die_with_launcher, run_one

    stop = None  # local: SIGTERM / SIGINT / SIGUSR2 stop the run (`train.StopOnSignal`)
    if launcher is None:
        stop = PreemptionFlag(requeue=False)
    else:
        for sig in (signal.SIGTERM, signal.SIGINT):  # not the launcher's forwarding handler
            signal.signal(sig, signal.SIG_DFL)
        signal.pthread_sigmask(signal.SIG_SETMASK, set())  # the launcher blocks them while it forks
        os.setsid()
        os.environ["DST_LAUNCHER_PID"] = str(launcher)
        die_with_launcher()
    if threads is not None:
        os.environ["OMP_NUM_THREADS"] = os.environ["MKL_NUM_THREADS"] = str(threads)
        import torch

        torch.set_num_threads(threads)
    job_dir = Path(sweep_dir) / str(run.idx)
    job_dir.mkdir(parents=True, exist_ok=True)
    log = open_run_file(job_dir / "job.log", os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    os.dup2(log, 1)
    os.dup2(log, 2)
    cfg = RunConfig.from_dict(run.config)
    cfg.train.progress = False
    if threads is not None:
        cfg.train.threads = threads
    result = run_one(cfg, Path(run.run_dir), stop)
    sys.stdout.flush()
    sys.stderr.flush()
    sys.exit(exit_code([result["status"]]))


def _send(pid: int, sig) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass


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

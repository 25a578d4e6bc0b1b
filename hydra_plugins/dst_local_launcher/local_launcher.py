"""A Hydra launcher that runs a sweep's jobs on this machine with bounded concurrency.

Each job runs its resolved run config, as planned (composed and validated) by
`python -m src.launch` and saved in the sweep dir's plan (`src.plan.planned_jobs`), in its own
process (so a crash or a leak stays in its run), forked from the launcher once it has imported
torch and the trainer: a run does not pay the interpreter's and torch's start-up again (the
same child entry as a SLURM pack's runs, `src.execute.child.run_in_child`). The launcher forks from a
single-threaded loop (no other thread may hold a lock the child would inherit). Each run takes
its own session, its thread count fixed through OMP_NUM_THREADS / MKL_NUM_THREADS and
`train.threads` before any parallel op, and writes its output to `<sweep dir>/<job num>/job.log`
(its resolved config next to it, `config.json`: `python -m src.launch --run-config <config.json>
--run-dir <run dir>` runs it again by hand). At most `max_workers` (default: CPUs //
threads_per_job) run at once, so the cores are never oversubscribed. A run the launch found
finished starts no process.

Jobs never outlive the launcher: every stop signal sent to it (`src.execute.stop`: TERM, INT,
USR1, USR2, HUP, XCPU) is passed on to the running jobs (which checkpoint and record themselves
as interrupted; a second Ctrl-C aborts them), no further job starts, and the launcher ends with
its summary; if the launcher is killed outright, each job gets SIGTERM from the kernel
(PR_SET_PDEATHSIG, set by the job itself, see `src.execute.stop.die_with_parent`). A job
killed by another signal (a segfault, the OOM killer) is recorded as failed, naming the signal
(`rundir.record_death`).

(No `from __future__ import annotations` here: Hydra imports plugins without registering
them in sys.modules, which string annotations on dataclasses need.)
"""

import json
import logging
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from hydra.core.config_store import ConfigStore
from hydra.core.utils import JobReturn, JobStatus, filter_overrides
from hydra.plugins.launcher import Launcher
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig

from src.checks import validated
from src.execute.environment import available_cpus
from src.execute.pool import PackedRun, Pool
from src.execute.stop import STOP_SIGNALS, StopRequest
from src.plan import Job, job_of, launch_plan
from src.rundir import atomic_write, finished_status, record_death, run_dir_link
from src.status import SweepProgress

log = logging.getLogger(__name__)


@dataclass
class LocalPoolLauncherConf:
    _target_: str = "hydra_plugins.dst_local_launcher.local_launcher.LocalPoolLauncher"
    threads_per_job: int = 1
    max_workers: int | None = None


ConfigStore.instance().store(group="hydra/launcher", name="dst_local", node=LocalPoolLauncherConf, provider="dst")


class LocalPoolLauncher(Launcher):
    def __init__(self, threads_per_job: int = 1, max_workers: int | None = None) -> None:
        self.threads_per_job = threads_per_job
        self.max_workers = max_workers or max(1, available_cpus() // threads_per_job)
        self.config: DictConfig | None = None
        self.stop = StopRequest()  # (`_run_all` installs the one that listens)

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        self.config = config
        self.hydra_context = hydra_context

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        assert self.config is not None
        sweep_dir = Path(str(self.config.hydra.sweep.dir))
        sweep_dir.mkdir(parents=True, exist_ok=True)
        log.info(
            f"Launching {len(job_overrides)} jobs locally, {self.max_workers} at a time, "
            f"{self.threads_per_job} thread(s) each"
        )
        jobs = [(initial_job_idx + i, list(o)) for i, o in enumerate(job_overrides)]
        # the launch's own saved plan (`launch_plan`); a launch that did not go through
        # `src.launch` (Hydra flags such as --config-dir), or a sweep dir holding an earlier
        # launch's plan, has none: each job is composed then (`_job`)
        self.plan = launch_plan(sweep_dir)
        self.progress = SweepProgress(len(jobs), self.max_workers)
        returns = self._run_all(sweep_dir, jobs)
        print(self.progress.summary(), flush=True)
        return returns

    def _job(self, overrides):
        if self.plan is not None:
            job = self.plan.get(tuple(overrides))
            if job is None:
                raise RuntimeError(f"not a job of this launch's plan: {' '.join(overrides)}")
            return job
        run_cfg, run_dir = job_of(self.hydra_context.config_loader.load_sweep_config(self.config, list(overrides)))
        return Job(list(overrides), validated(run_cfg), run_dir, finished_status(run_dir, run_cfg.to_dict()))

    def _run_all(self, sweep_dir: Path, jobs) -> list[JobReturn]:
        """Run the jobs in the pool, `max_workers` at a time; every stop signal (`execute.stop`)
        is passed on to the running jobs and starts no more."""
        # torch and the trainer (importing the child entry imports them once, before the forks):
        # not at the top, since Hydra imports every launcher plugin on each launch, a dry run too
        from src.execute.child import run_in_child

        pool = Pool(run_in_child, str(sweep_dir), self.max_workers, self.threads_per_job, launcher=os.getpid())
        pool.stop = self.stop = StopRequest(STOP_SIGNALS, forward=pool.forward)
        returns: dict[int, JobReturn] = {}

        def start(job):
            idx, overrides = job
            ret, run = self._prepare(sweep_dir, idx, overrides)
            returns[idx] = ret
            if run is not None:
                log.info(f"\t#{idx} : {' '.join(filter_overrides(overrides))}")
                self.progress.started(run.run_dir)
            return run

        def exited(run: PackedRun, code: int, started_at: float, started: float) -> None:
            returns[run.idx] = self._finish(sweep_dir, returns[run.idx], run, code, started, started_at)

        next_poll = 0.0

        def waiting() -> None:  # the running runs' epochs, from their heartbeats
            nonlocal next_poll
            if time.monotonic() >= next_poll:
                self.progress.poll()
                next_poll = time.monotonic() + 0.5

        with self.stop:
            for idx, overrides in pool.run(jobs, start, exited, waiting):  # skipped or not started
                returns[idx], _ = self._prepare(sweep_dir, idx, overrides)
        return [returns[idx] for idx, _ in jobs]

    def _prepare(self, sweep_dir: Path, idx: int, overrides: list[str]):
        """The job's JobReturn, and the run to fork (None: already finished, or the launcher was stopped)."""
        job_dir = sweep_dir / str(idx)
        ret = JobReturn(overrides=overrides, working_dir=str(job_dir), task_name="src.launch")
        job = self._job(overrides)
        if job.finished:  # no process start for a run that is already done
            ret.status, ret.return_value = JobStatus.COMPLETED, {"status": "skipped"}
            self.progress.skipped()
            return ret, None
        if self.stop():
            ret.status, ret.return_value = JobStatus.COMPLETED, {"status": "not started"}
            return ret, None
        job_dir.mkdir(parents=True, exist_ok=True)
        link = run_dir_link(job_dir)  # never written through: `status` names it
        if link:
            print(f"error: job #{idx}: {link}", file=sys.stderr, flush=True)
            ret.status, ret.return_value = JobStatus.COMPLETED, {"status": "damaged"}
            self.progress.skipped()
            return ret, None
        config = job.config.to_dict()
        config["train"].update(threads=self.threads_per_job, progress=False)
        # (never through a planted link: `atomic_write`, and the child opens job.log with O_NOFOLLOW)
        atomic_write(job_dir / "config.json", json.dumps(config, indent=2, sort_keys=True).encode(), durable=False)
        return ret, PackedRun(idx, list(overrides), str(job.run_dir), config)

    def _finish(self, sweep_dir: Path, ret: JobReturn, run, code: int, started: float, started_at: float) -> JobReturn:
        idx, run_dir = run.idx, Path(run.run_dir)
        if not self.stop():  # (a second Ctrl-C aborts at once: interrupted by the user)
            record_death(run_dir, run.config, code, started_at)  # killed by another signal: failed, named
        self.progress.finished(run_dir, started)
        if code in (0, 1) or code < 0:  # 1: the run failed and recorded why; the sweep goes on
            ret.status, ret.return_value = JobStatus.COMPLETED, {"exit_code": code}
        else:
            ret.status = JobStatus.FAILED  # the job's process itself failed (not its run)
            log_file = sweep_dir / str(idx) / "job.log"
            ret.return_value = RuntimeError(
                f"job #{idx} exited with {code}; the end of {log_file}:\n" + _tail(log_file)
            )
        return ret


def _tail(path: Path, lines: int = 20) -> str:
    try:
        return "".join(path.read_text(errors="replace").splitlines(keepends=True)[-lines:])
    except OSError as error:
        return f"(unreadable: {error})"

"""A Hydra launcher that runs a sweep's jobs on this machine with bounded concurrency.

Each job runs its resolved run config, as planned (composed and validated) by
`python -m src.launch` and saved in the sweep dir's plan (`src.plan.planned_jobs`), in its own process (so a crash or a leak stays in its run):
`python -m src.launch --run-config <sweep dir>/<job num>/config.json --run-dir <run dir>`,
with its thread count fixed through OMP_NUM_THREADS / MKL_NUM_THREADS and `train.threads`;
at most `max_workers` (default: CPUs // threads_per_job) run at once, so the cores are never
oversubscribed. A run the launch found finished starts no process. Each job's output goes to
`<sweep dir>/<job num>/job.log`.

Jobs never outlive the launcher: SIGTERM / SIGINT sent to it are passed on to the running
jobs (which checkpoint and record themselves as interrupted; a second Ctrl-C aborts them) and
no further job starts; if the launcher is killed outright, each job gets SIGTERM from the
kernel (PR_SET_PDEATHSIG, set by the job itself, see `src.runner`). A job killed by another
signal (a segfault, the OOM killer) is recorded as failed, naming the signal (`runstate.record_death`).

(No `from __future__ import annotations` here: Hydra imports plugins without registering
them in sys.modules, which string annotations on dataclasses need.)
"""


import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional, Sequence

from hydra.core.config_store import ConfigStore
from hydra.core.utils import JobReturn, JobStatus, filter_overrides
from hydra.plugins.launcher import Launcher
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig

log = logging.getLogger(__name__)


@dataclass
class LocalPoolLauncherConf:
    _target_: str = "hydra_plugins.dst_local_launcher.local_launcher.LocalPoolLauncher"
    threads_per_job: int = 1
    max_workers: Optional[int] = None


ConfigStore.instance().store(group="hydra/launcher", name="dst_local", node=LocalPoolLauncherConf, provider="dst")


class LocalPoolLauncher(Launcher):
    def __init__(self, threads_per_job: int = 1, max_workers: Optional[int] = None) -> None:
        from src.runinfo import available_cpus

        self.threads_per_job = threads_per_job
        self.max_workers = max_workers or max(1, available_cpus() // threads_per_job)
        self.config: Optional[DictConfig] = None
        self._children: set = set()
        self._children_lock = threading.Lock()
        self._stop_signal: Optional[int] = None

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        self.config = config
        self.hydra_context = hydra_context

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        assert self.config is not None
        sweep_dir = Path(str(self.config.hydra.sweep.dir))
        sweep_dir.mkdir(parents=True, exist_ok=True)
        log.info(f"Launching {len(job_overrides)} jobs locally, {self.max_workers} at a time, "
                 f"{self.threads_per_job} thread(s) each")
        jobs = [(initial_job_idx + i, list(o)) for i, o in enumerate(job_overrides)]
        from src.plan import PLAN, planned_jobs
        from src.status import SweepProgress

        # the launch's saved plan; a launch that did not go through `src.launch` (Hydra flags
        # such as --config-dir) has none: each job is composed then (`_compose`)
        self.plan = planned_jobs(sweep_dir) if (sweep_dir / PLAN).exists() else None

        self.progress = SweepProgress(len(jobs), self.max_workers)
        previous = {}
        if threading.current_thread() is threading.main_thread():
            previous = {sig: signal.signal(sig, self._forward) for sig in (signal.SIGTERM, signal.SIGINT)}
        try:
            with ThreadPoolExecutor(self.max_workers) as pool:
                returns = list(pool.map(lambda job: self._run(sweep_dir, *job), jobs))
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
        print(self.progress.summary(), flush=True)
        return returns

    def _job(self, overrides):
        from src.plan import Job, job_of
        from src.runstate import finished_status

        if self.plan is not None:
            job = self.plan.get(tuple(overrides))
            if job is None:
                raise RuntimeError(f"not a job of this launch's plan: {' '.join(overrides)}")
            return job
        run_cfg, run_dir = job_of(self.hydra_context.config_loader.load_sweep_config(self.config, list(overrides)))
        return Job(list(overrides), run_cfg.validate(), run_dir, finished_status(run_dir, run_cfg.to_dict()))

    def _forward(self, signum, frame) -> None:
        """Pass the signal on to the running jobs; start no more."""
        self._stop_signal = signum
        with self._children_lock:
            children = list(self._children)
        for child in children:
            if child.poll() is None:
                child.send_signal(signum)

    def _run(self, sweep_dir: Path, idx: int, overrides: List[str]) -> JobReturn:
        job_dir = sweep_dir / str(idx)
        ret = JobReturn(overrides=overrides, working_dir=str(job_dir), task_name="src.launch")
        job = self._job(overrides)
        run_dir = job.run_dir
        if job.finished:  # no process start for a run that is already done
            ret.status, ret.return_value = JobStatus.COMPLETED, {"status": "skipped"}
            self.progress.skipped()
            return ret
        if self._stop_signal is not None:
            ret.status, ret.return_value = JobStatus.COMPLETED, {"status": "not started"}
            return ret
        job_dir.mkdir(parents=True, exist_ok=True)
        threads = str(self.threads_per_job)
        env = {**os.environ, "OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads,
               "DST_LAUNCHER_PID": str(os.getpid())}
        config = job.config.to_dict()
        config["train"].update(threads=self.threads_per_job, progress=False)
        (job_dir / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True))
        cmd = [sys.executable, "-m", "src.launch", "--run-config", str(job_dir / "config.json"),
               "--run-dir", str(run_dir)]
        log.info(f"\t#{idx} : {' '.join(filter_overrides(overrides))}")
        started, started_at = self.progress.started(), time.time()
        # Its own session: a Ctrl-C at the terminal reaches the launcher only, which passes it on once.
        # (A file, not a pipe: a job that outlives a killed launcher can still write its output.)
        with open(job_dir / "job.log", "w") as out:
            child = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)
            with self._children_lock:
                self._children.add(child)
                if self._stop_signal is not None:  # the signal came while this job was starting
                    child.send_signal(self._stop_signal)
            code = child.wait()
            with self._children_lock:
                self._children.discard(child)
        from src.runstate import record_death

        if self._stop_signal is None:  # (a second Ctrl-C aborts at once: interrupted by the user)
            record_death(run_dir, config, code, started_at)  # killed by another signal: failed, named
        self.progress.finished(run_dir, started)
        if code in (0, 1) or code < 0:  # 1: the run failed and recorded why; the sweep goes on
            ret.status, ret.return_value = JobStatus.COMPLETED, {"exit_code": code}
        else:
            ret.status = JobStatus.FAILED  # the job's process itself failed (not its run)
            ret.return_value = RuntimeError(f"job #{idx} exited with {code}; the end of {job_dir / 'job.log'}:\n"
                                            + _tail(job_dir / "job.log"))
        return ret


def _tail(path: Path, lines: int = 20) -> str:
    try:
        return "".join(path.read_text(errors="replace").splitlines(keepends=True)[-lines:])
    except OSError as error:
        return f"(unreadable: {error})"

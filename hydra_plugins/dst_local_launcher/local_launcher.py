"""A Hydra launcher that runs a sweep's jobs on this machine with bounded concurrency.

Each job runs as its own `python -m src.launch` process (so a crash or a leak stays in its
run) with its thread count fixed through OMP_NUM_THREADS / MKL_NUM_THREADS and
`train.threads`; at most `max_workers` (default: CPUs // threads_per_job) run at once, so
the cores are never oversubscribed. Each job's output goes to `<sweep dir>/<job num>/job.log`.

(No `from __future__ import annotations` here: Hydra imports plugins without registering
them in sys.modules, which string annotations on dataclasses need.)
"""


import logging
import os
import subprocess
import sys
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
        from src.train import available_cpus  # not at import: plugin discovery must stay light

        self.threads_per_job = threads_per_job
        self.max_workers = max_workers or max(1, available_cpus() // threads_per_job)
        self.config: Optional[DictConfig] = None

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
        from src.status import SweepProgress

        self.progress = SweepProgress(len(jobs), self.max_workers)
        with ThreadPoolExecutor(self.max_workers) as pool:
            returns = list(pool.map(lambda job: self._run(sweep_dir, *job), jobs))
        print(self.progress.summary(), flush=True)
        return returns

    def _run(self, sweep_dir: Path, idx: int, overrides: List[str]) -> JobReturn:
        job_dir = sweep_dir / str(idx)
        ret = JobReturn(overrides=overrides, working_dir=str(job_dir), task_name="src.launch")
        from src.records import read_finished_result

        run_dir = self._run_dir(overrides)
        if read_finished_result(run_dir) is not None:  # no process start for a run that is already done
            ret.status, ret.return_value = JobStatus.COMPLETED, {"status": "skipped"}
            self.progress.skipped()
            return ret
        job_dir.mkdir(parents=True, exist_ok=True)
        threads = str(self.threads_per_job)
        env = {**os.environ, "OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads}
        search_path = [a for a in sys.argv if a.startswith("hydra.searchpath=")]
        cmd = [sys.executable, "-m", "src.launch", *overrides, *search_path, f"train.threads={threads}",
               "train.progress=false", f"hydra.run.dir={job_dir}"]
        log.info(f"\t#{idx} : {' '.join(filter_overrides(overrides))}")
        started = self.progress.started()
        with open(job_dir / "job.log", "w") as out:
            code = subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT, env=env).returncode
        self.progress.finished(run_dir, started)
        if code in (0, 1):  # 1: the run failed and recorded why; the sweep goes on
            ret.status, ret.return_value = JobStatus.COMPLETED, {"exit_code": code}
        else:
            ret.status = JobStatus.FAILED
            ret.return_value = RuntimeError(f"job #{idx} exited with {code}; see {job_dir / 'job.log'}")
        return ret

    def _run_dir(self, overrides: List[str]) -> Path:
        from src.launch import job_of

        return job_of(self.hydra_context.config_loader.load_sweep_config(self.config, list(overrides)))[1]

"""hydra-submitit-launcher's SLURM launcher, with runs packed into jobs and detached submission.

    hydra.launcher.runs_per_job=K     a job array of ceil(N / K) tasks, K runs each
    hydra.launcher.concurrent_runs=C  C runs at a time inside a task, the task's CPUs split
                                      between them (on a GPU job, the C runs share its GPU)
    hydra.launcher.detach=true        submit, write the submission record, return at once
                                      (what `python -m src.launch --detach` sets)

The runs are the launch's planned jobs (composed and validated once by `python -m src.launch`;
each task gets their resolved configs). Runs that already finished are not submitted. Each
task is a `src.pack.Pack`; every launch writes `<sweep dir>/submission.json` (job ids, the
runs of each job, the command line, the time), which `python -m src.launch status` reads.

(No `from __future__ import annotations` here: Hydra imports plugins without registering
them in sys.modules, which string annotations on dataclasses need.)
"""

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from hydra.core.config_store import ConfigStore
from hydra.core.utils import JobReturn, JobStatus
from hydra_plugins.hydra_submitit_launcher.config import BaseQueueConf, SlurmQueueConf
from hydra_plugins.hydra_submitit_launcher.submitit_launcher import SlurmLauncher
from omegaconf import OmegaConf

log = logging.getLogger(__name__)


@dataclass
class PackedSlurmConf(SlurmQueueConf):
    _target_: str = "hydra_plugins.dst_slurm_launcher.slurm_launcher.PackedSlurmLauncher"
    runs_per_job: int = 1
    concurrent_runs: int = 1
    detach: bool = False


ConfigStore.instance().store(group="hydra/launcher", name="dst_slurm", node=PackedSlurmConf, provider="dst")


class PackedSlurmLauncher(SlurmLauncher):
    def __init__(self, runs_per_job: int = 1, concurrent_runs: int = 1, detach: bool = False, **params: Any):
        super().__init__(**params)
        if runs_per_job < 1 or concurrent_runs < 1:
            raise ValueError(f"hydra.launcher.runs_per_job and concurrent_runs: must be >= 1, "
                             f"got {runs_per_job} and {concurrent_runs}")
        self.runs_per_job, self.concurrent_runs, self.detach = runs_per_job, min(concurrent_runs, runs_per_job), detach

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        from src.launch import planned_job
        from src.pack import Pack, PackedRun, write_submission

        assert self.config is not None and self.hydra_context is not None
        sweep_dir = Path(str(self.config.hydra.sweep.dir))
        sweep_dir.mkdir(parents=True, exist_ok=True)
        runs, todo = [], []  # todo: the runs not finished (the launch's plan decided it)
        for i, overrides in enumerate(job_overrides):
            job = planned_job(overrides, lambda: self.hydra_context.config_loader.load_sweep_config(
                self.config, list(overrides)))
            runs.append(PackedRun(initial_job_idx + i, list(overrides), str(job.run_dir.resolve()),
                                  job.config.to_dict()))
            if not job.finished:
                todo.append(runs[-1])
        k = self.runs_per_job
        packs = [todo[i:i + k] for i in range(0, len(todo), k)]
        cpus = self.params.get("cpus_per_task") or 1
        threads = max(1, cpus // self.concurrent_runs) if self.concurrent_runs > 1 else None
        jobs = self._executor().map_array(Pack(str(sweep_dir), self.concurrent_runs, threads), packs) if packs else []
        record = write_submission(
            sweep_dir, overrides=list(self.config.hydra.overrides.task), jobs=jobs, packs=packs,
            skipped=len(runs) - len(todo), runs_per_job=k, concurrent_runs=self.concurrent_runs, detach=self.detach)
        ids = sorted({j.job_id.split("_")[0] for j in jobs})
        print(f"submitted {len(todo)} run(s) ({len(runs) - len(todo)} already finished) as {len(packs)} SLURM "
              f"job(s) of <= {k} run(s), {self.concurrent_runs} at a time: job id(s) {', '.join(ids) or '-'}; "
              f"record: {record}", flush=True)
        outcome = {r.run_dir: "skipped" for r in runs if r not in todo}
        if not self.detach:
            for job, pack in zip(jobs, packs):
                try:
                    for item in job.results()[0]:
                        outcome[item["run_dir"]] = item["status"]
                except Exception as error:  # the job died without its runs' outcomes; their records tell
                    log.error(f"SLURM job {job.job_id} failed: {error}")
                    outcome.update({r.run_dir: "job failed" for r in pack})
        returns = []
        for r in runs:
            ret = JobReturn(overrides=r.overrides, working_dir=str(sweep_dir / str(r.idx)), task_name="src.launch")
            ret.status, ret.return_value = JobStatus.COMPLETED, {"status": outcome.get(r.run_dir, "submitted")}
            returns.append(ret)
        return returns

    def _executor(self):
        """The submitit executor, with the parameters mapped as hydra-submitit-launcher does."""
        import submitit

        init_keys = {"submitit_folder", "max_num_timeout"}
        executor = submitit.AutoExecutor(folder=self.params["submitit_folder"], cluster="slurm",
                                         slurm_max_num_timeout=self.params["max_num_timeout"])
        base = set(OmegaConf.structured(BaseQueueConf).keys())
        executor.update_parameters(**{k if k in base else f"slurm_{k}": v for k, v in self.params.items()
                                      if k not in init_keys})
        return executor

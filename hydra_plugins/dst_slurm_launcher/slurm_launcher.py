"""hydra-submitit-launcher's SLURM launcher, with runs packed into jobs and detached submission.

    hydra.launcher.runs_per_job=K     a job array of ceil(N / K) tasks, K runs each
    hydra.launcher.concurrent_runs=C  C runs at a time inside a task, the task's CPUs split
                                      between them (on a GPU job, the C runs share its GPU)
    hydra.launcher.detach=true        submit, write the submission record, return at once
                                      (what `python -m src.launch --detach` sets)

The runs are the launch's planned jobs (composed and validated once by `python -m src.launch`,
read from the plan it saved in the sweep dir; each task gets their resolved configs). Runs that
already finished are not submitted, and neither are runs whose job of an earlier submission of
the same sweep is still queued or running (its submission record and one `squeue` call). Each
task is a `src.pack.Pack`; every launch writes `<sweep dir>/submission.json` (job ids, the
runs of each job, the command line, the time), which `python -m src.launch status` reads.

(No `from __future__ import annotations` here: Hydra imports plugins without registering
them in sys.modules, which string annotations on dataclasses need.)
"""

import logging
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import submitit
from hydra.core.config_store import ConfigStore
from hydra.core.utils import JobReturn, JobStatus
from hydra_plugins.hydra_submitit_launcher.config import BaseQueueConf, SlurmQueueConf
from hydra_plugins.hydra_submitit_launcher.submitit_launcher import SlurmLauncher
from omegaconf import OmegaConf

from src.checks import validated
from src.execute.pool import PackedRun
from src.execute.slurm_queue import QueueUnknown, SchedulerError, still_queued, submission_error
from src.pack import Pack, submission_lock, write_submission
from src.plan import Job, job_of, launch_plan
from src.rundir import finished_status

log = logging.getLogger(__name__)


@dataclass
class PackedSlurmConf(SlurmQueueConf):
    _target_: str = "hydra_plugins.dst_slurm_launcher.slurm_launcher.PackedSlurmLauncher"
    runs_per_job: int = 1
    concurrent_runs: int = 1
    detach: bool = False
    # The command that runs Python in the job (default: the interpreter that submitted it), e.g.
    # "apptainer exec --nv image.sif python" or another environment's python
    python: Optional[str] = None  # noqa: UP045  (OmegaConf reads Optional, not str | None)


ConfigStore.instance().store(group="hydra/launcher", name="dst_slurm", node=PackedSlurmConf, provider="dst")


class PackedSlurmLauncher(SlurmLauncher):
    def __init__(self, runs_per_job: int = 1, concurrent_runs: int = 1, detach: bool = False, **params: Any):
        super().__init__(**params)
        if runs_per_job < 1 or concurrent_runs < 1:
            raise ValueError(
                f"hydra.launcher.runs_per_job and concurrent_runs: must be >= 1, "
                f"got {runs_per_job} and {concurrent_runs}"
            )
        self.runs_per_job, self.concurrent_runs, self.detach = runs_per_job, min(concurrent_runs, runs_per_job), detach

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        assert self.config is not None and self.hydra_context is not None
        sweep_dir = Path(str(self.config.hydra.sweep.dir))
        sweep_dir.mkdir(parents=True, exist_ok=True)
        planned = launch_plan(sweep_dir)
        # One submitter of the sweep at a time, from reading which runs are queued to writing
        # this submission's record: two launches at once never submit a run twice.
        with submission_lock(sweep_dir.parent):
            # the runs of the sweep's earlier submissions (records beside this launch's sweep dir) still queued
            try:
                in_queue = still_queued(sorted(sweep_dir.parent.glob("*/submission.json")))
            except QueueUnknown as error:  # its earlier jobs may be running these runs: no guessing
                raise SchedulerError(
                    f"queue unknown: {error}; nothing submitted, since the sweep's earlier jobs may still be "
                    f"running its runs; launch again once squeue answers"
                ) from None
            runs, todo, jobs_of_runs = [], [], []  # todo: the runs not finished (the plan decided it) nor queued
            for i, overrides in enumerate(job_overrides):
                if planned is not None:
                    job = planned.get(tuple(overrides))
                    if job is None:
                        raise RuntimeError(f"not a job of this launch's plan: {' '.join(overrides)}")
                else:  # a launch that did not go through `src.launch` (Hydra flags): composed here
                    run_cfg, run_dir = job_of(
                        self.hydra_context.config_loader.load_sweep_config(self.config, list(overrides))
                    )
                    job = Job(list(overrides), validated(run_cfg), run_dir, finished_status(run_dir, run_cfg.to_dict()))
                runs.append(
                    PackedRun(initial_job_idx + i, list(overrides), str(job.run_dir.resolve()), job.config.to_dict())
                )
                jobs_of_runs.append(job)
                if not job.finished and runs[-1].run_dir not in in_queue:
                    todo.append(runs[-1])
            finished = sum(job.finished is not None for job in jobs_of_runs)
            waiting = {in_queue[r.run_dir] for r in runs if r.run_dir in in_queue and r not in todo}
            if waiting:
                print(
                    f"{sum(r.run_dir in in_queue for r in runs)} run(s) not submitted again: their job(s) of an "
                    f"earlier submission are still queued or running: {', '.join(sorted(waiting))}",
                    flush=True,
                )
            k = self.runs_per_job
            packs = [todo[i : i + k] for i in range(0, len(todo), k)]
            cpus = self.params.get("cpus_per_task") or 1
            threads = max(1, cpus // self.concurrent_runs) if self.concurrent_runs > 1 else None
            # the runs' entry, pickled by reference (torch: Hydra imports every plugin on each launch)
            from src.execute.child import run_in_child

            jobs = []
            if packs:
                try:
                    jobs = self._executor().map_array(
                        Pack(run_in_child, str(sweep_dir), self.concurrent_runs, threads), packs
                    )
                except (RuntimeError, OSError, subprocess.SubprocessError) as error:  # (submitit's FailedJobError)
                    raise submission_error(error) from None
            record = write_submission(
                sweep_dir,
                overrides=list(self.config.hydra.overrides.task),
                jobs=jobs,
                packs=packs,
                skipped=finished,
                runs_per_job=k,
                concurrent_runs=self.concurrent_runs,
                detach=self.detach,
            )
            ids = sorted({j.job_id.split("_")[0] for j in jobs})
            print(
                f"submitted {len(todo)} run(s) ({finished} already finished, {len(runs) - len(todo) - finished} "
                f"queued or running in earlier submissions) as {len(packs)} SLURM "
                f"job(s) of <= {k} run(s), {self.concurrent_runs} at a time: job id(s) {', '.join(ids) or '-'}; "
                f"record: {record}",
                flush=True,
            )
        outcome = {r.run_dir: "skipped" if r.run_dir not in in_queue else "queued" for r in runs if r not in todo}
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
        init_keys = {"submitit_folder", "max_num_timeout", "python"}
        executor = submitit.AutoExecutor(
            folder=self.params["submitit_folder"],
            cluster="slurm",
            slurm_max_num_timeout=self.params["max_num_timeout"],
            slurm_python=self.params.get("python"),
        )
        base = set(OmegaConf.structured(BaseQueueConf).keys())
        executor.update_parameters(
            **{k if k in base else f"slurm_{k}": v for k, v in self.params.items() if k not in init_keys}
        )
        return executor

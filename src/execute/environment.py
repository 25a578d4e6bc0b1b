"""What a run process learns from the launcher's environment (SLURM, submitit, torchrun):
read here, on the launch side, so that the trainer reads none of it."""

from __future__ import annotations

import os


def available_cpus() -> int:
    """CPUs this process may use: the SLURM allocation, else the affinity mask."""
    if os.environ.get("SLURM_CPUS_PER_TASK"):
        return int(os.environ["SLURM_CPUS_PER_TASK"])
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def export_distributed() -> None:
    """Several SLURM tasks of a submitit job: export torchrun's variables (RANK, WORLD_SIZE,
    LOCAL_RANK, MASTER_ADDR ...) from the task environment, so that the trainer joins the
    process group as under torchrun."""
    if (
        "WORLD_SIZE" not in os.environ
        and int(os.environ.get("SLURM_NTASKS", "1")) > 1
        and os.environ.get("SUBMITIT_EXECUTOR") == "slurm"
    ):
        from submitit.helpers import TorchDistributedEnvironment  # only in a multi-task SLURM job

        TorchDistributedEnvironment().export(set_cuda_visible_devices=False)

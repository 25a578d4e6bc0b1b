"""What every result.json says about where it came from: the experiment, the code, and the
host, job, hardware and log of the process that ran it."""

from __future__ import annotations

import subprocess
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import torch

from ..rundir.files import LOG
from ..rundir.heartbeat import whereabouts
from ..rundir.identity import identity_hash
from ..sparse.kernels import cpu_info  # (the one reader of /proc/cpuinfo)


def code_version() -> str:
    """`git describe` of the source tree, or the package version outside a checkout."""
    here = Path(__file__).resolve().parent
    try:
        out = subprocess.run(
            ["git", "describe", "--always", "--dirty", "--abbrev=12"],
            cwd=here,
            capture_output=True,
            text=True,
            timeout=10,
        )
        if out.returncode == 0 and out.stdout.strip():
            return out.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        pass
    try:
        return version("fantastic-dst")
    except PackageNotFoundError:
        return "unknown"


def provenance(config: dict, run_dir: Path) -> dict:
    """The experiment (its config and identity hash), the code, and this process: host, SLURM
    job, hardware, torch and thread count, and the run's log."""
    where = whereabouts()
    return {
        "config": config,
        "config_hash": identity_hash(config),
        "code_version": code_version(),
        "seed": config["train"]["seed"],
        "host": where["host"],
        "slurm_job_id": where["slurm_job_id"],
        "slurm_array_task_id": where["slurm_array_task_id"],
        "cpu_model": cpu_info()["model"],
        "gpu_model": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
        "torch_version": torch.__version__,
        "threads": torch.get_num_threads(),
        "log": str(Path(run_dir).resolve() / LOG),
    }

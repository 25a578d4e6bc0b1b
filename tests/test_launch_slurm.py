"""Sweeps through hydra-submitit-launcher on a real SLURM cluster (tests/slurm_cluster.py):
records are written, and a job whose time limit is shorter than its run checkpoints, is
requeued, resumes and ends exactly as an uninterrupted run.

Why the time-limit job is set up as it is (measured, see tests/test_slurm_cluster.py): SLURM
checks limits every 30 s, so with `signal_delay_s=5` and a 1-minute limit the USR2 warning
comes 25-55 s into each attempt. The run's length is not a fixed epoch count: a machine twice
as fast would finish one before the first warning and test nothing. It is sized from a short
calibration run on this machine to ~2 minutes of training, so it is interrupted at least once
on any machine and finishes within the allowed requeues (each attempt makes >= ~20 s of progress).
"""

import json
import math
import statistics
import subprocess
import sys
from pathlib import Path

import pytest

from src.rundir import read_metrics, read_result

from .slurm_cluster import launch, slurm_args

REPO = Path(__file__).resolve().parent.parent
pytestmark = [pytest.mark.slurm, pytest.mark.slow]


def test_sweep_on_slurm_writes_run_records(slurm_cluster, tmp_path):
    out = launch(
        "-m",
        "setup=smoke",
        "criterion=magnitude,snip",
        "seed=1,2",
        "train.epochs=1",
        f"runs_root={tmp_path}",
        "name=slurm_sweep",
        *slurm_args(slurm_cluster),
    )
    assert out.returncode == 0, out.stdout + out.stderr + slurm_cluster.logs()
    assert "summary: 4 completed" in out.stdout
    results = [json.loads(p.read_text()) for p in (tmp_path / "slurm_sweep").glob("*/result.json")]
    assert len(results) == 4 and all(r["status"] == "completed" for r in results)
    assert sorted((r["config"]["sparsity"]["criterion"], r["seed"]) for r in results) == [
        ("magnitude", 1),
        ("magnitude", 2),
        ("snip", 1),
        ("snip", 2),
    ]
    assert all(r["config"]["train"]["threads"] is None for r in results)  # threads from SLURM_CPUS_PER_TASK
    assert list((tmp_path / ".hydra" / "slurm_sweep").glob("*/.submitit/*/*_log.out"))


def epochs_lasting(seconds, tmp_path, base):
    """Epochs of `base` that train for about `seconds` here, from a 20-epoch calibration run."""
    out = subprocess.run(
        [sys.executable, "-m", "src.launch", *base, "train.epochs=20", f"runs_root={tmp_path / 'calibration'}"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    (run_dir,) = (tmp_path / "calibration" / "default").iterdir()
    epoch_s = statistics.median(r["epoch_time"] for r in read_metrics(run_dir) if r["kind"] == "epoch")
    return max(250, math.ceil(seconds / epoch_s))


def test_time_limit_requeues_and_resumes_to_the_same_result(slurm_cluster, tmp_path):
    base = ["setup=smoke", "train.save_model=true", "train.threads=1", "seed=7"]
    run = [*base, f"train.epochs={epochs_lasting(120, tmp_path, base)}"]
    # the uninterrupted reference, computed on the other core meanwhile
    local = subprocess.Popen(
        [sys.executable, "-m", "src.launch", *run, f"runs_root={tmp_path / 'local'}"],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    out = launch(
        "-m",
        *run,
        f"runs_root={tmp_path / 'slurm'}",
        *slurm_args(slurm_cluster, timeout_min=1, signal_delay_s=5, max_num_timeout=10),
    )
    local_out, _ = local.communicate(timeout=900)
    assert local.returncode == 0, local_out
    assert out.returncode == 0, out.stdout + out.stderr + slurm_cluster.logs()

    (slurm_dir,) = (tmp_path / "slurm" / "default").iterdir()
    (local_dir,) = (tmp_path / "local" / "default").iterdir()
    assert slurm_dir.name == local_dir.name  # same experiment identity
    slurm_result, local_result = read_result(slurm_dir), read_result(local_dir)
    assert slurm_result["status"] == "completed" and slurm_result["resumed_at_steps"], slurm_result
    assert local_result["resumed_at_steps"] == []
    assert "interrupted at step" in (slurm_dir / "train.log").read_text()  # the run's own log, across attempts
    assert "handing over to requeue" in "".join(p.read_text() for p in (tmp_path / "slurm").rglob("*_log.out"))

    def strip(rows):
        return [{k: v for k, v in r.items() if "time" not in k} for r in rows]

    assert strip(read_metrics(slurm_dir)) == strip(read_metrics(local_dir))
    assert slurm_result["final"] == local_result["final"]
    import torch

    a = torch.load(slurm_dir / "model_final.pt", weights_only=False)
    b = torch.load(local_dir / "model_final.pt", weights_only=False)
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key
    for key in a["masks"]:
        assert torch.equal(a["masks"][key], b["masks"][key]), key

"""Packing many short runs into SLURM jobs: wall time of a 32-run smoke sweep (one epoch each)
on the running SLURM cluster, one run per job (K=1, 1 CPU each) vs 8 runs per job two at a time
(K=8, C=2, 2 CPUs each: the same CPUs in use at once), from launch to the last result.

    bash scripts/slurm/start.sh && export SLURM_CONF=/tmp/dst-slurm/etc/slurm.conf
    python -m bench.slurm_packing        # -> bench/results/slurm_packing.json

Not part of bench.run_all: it needs a SLURM cluster (and takes a few minutes on 2 cores).
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from src.rundir import read_result

from .common import write_result

RUNS = 32
SWEEP = ["-m", "setup=smoke", f"seed=range(1,{RUNS + 1})", "train.epochs=1", "name=pack"]
VARIANTS = {
    "K1": {"runs_per_job": 1, "concurrent_runs": 1, "cpus_per_task": 1},
    "K8_C2": {"runs_per_job": 8, "concurrent_runs": 2, "cpus_per_task": 2},
}


def partition() -> str:
    out = subprocess.run(["sinfo", "-h", "-o", "%P"], capture_output=True, text=True, check=True).stdout.split()
    return next((p.rstrip("*") for p in out if p.endswith("*")), out[0])


def time_sweep(params: dict, root: Path) -> float:
    launcher = {"partition": partition(), "timeout_min": 30, "mem_gb": 1, **params}
    cmd = [
        sys.executable,
        "-m",
        "src.launch",
        *SWEEP,
        f"runs_root={root}",
        "launcher=slurm",
        *[f"hydra.launcher.{k}={v}" for k, v in launcher.items()],
    ]
    start = time.perf_counter()
    out = subprocess.run(cmd, capture_output=True, text=True)
    took = time.perf_counter() - start
    completed = sum((read_result(d) or {}).get("status") == "completed" for d in (root / "pack").iterdir())
    if out.returncode != 0 or completed != RUNS:
        raise SystemExit(f"sweep failed ({completed}/{RUNS} completed):\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}")
    return took


def main() -> None:
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    seconds = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, params in VARIANTS.items():
            seconds[name] = time_sweep(params, Path(tmp) / name)
            print(f"{name}: {RUNS} runs in {seconds[name]:.1f} s", flush=True)
    path = write_result(
        "slurm_packing",
        {
            "runs": RUNS,
            "variants": VARIANTS,
            "wall_s": seconds,
            "speedup_K8_C2_over_K1": seconds["K1"] / seconds["K8_C2"],
            "note": "one measurement each, launch to last result, on the local single-node cluster",
        },
    )
    print(f"K=8, C=2 is {seconds['K1'] / seconds['K8_C2']:.2f}x faster than K=1; {path}")


if __name__ == "__main__":
    main()

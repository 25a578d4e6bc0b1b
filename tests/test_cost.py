"""Cost before compute: a launch and its dry run say the runs x epochs they commit to and an
estimate of the time, from completed runs on this machine or the committed table of rates."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _launch(*args, cwd=REPO):
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run(
        [sys.executable, "-m", "src.launch", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=600
    )


def test_the_design_cards_sweep_says_six_100_epoch_runs_before_anything_starts(tmp_path):
    out = _launch("-m", "criterion=magnitude,mest", "seed=1,2,3", f"runs_root={tmp_path}", "--dry-run")
    assert out.returncode == 0, out.stderr
    assert "6 run(s); 0 already finished (will be skipped); to train: 6 x 100 epochs = 600 epochs" in out.stdout
    estimate = [line for line in out.stdout.splitlines() if line.startswith("estimate:")]
    assert estimate, out.stdout
    from src.sparse.kernels import cpu_info

    if cpu_info()["model"] == "AMD EPYC":  # the committed table's machine: 6.6 s/epoch (DST, density 0.05)
        assert "1.1 run-hours" in estimate[0] and "6.6 s/epoch" in estimate[0] and "here, " in estimate[0]
    else:
        assert "no measured rate on this machine for lenet5 on fashion_mnist (dst)" in estimate[0]


def test_the_rate_is_learned_from_runs_that_completed_here(tmp_path):
    first = _launch("setup=smoke", "seed=1", f"runs_root={tmp_path}")
    assert first.returncode == 0, first.stderr[-2000:]
    assert "estimate: no measured rate" in first.stdout  # nothing known yet for this set-up
    out = _launch("-m", "setup=smoke", "seed=2,3", "train.epochs=10", f"runs_root={tmp_path}", "--dry-run")
    assert out.returncode == 0, out.stderr
    assert "2 run(s); 0 already finished (will be skipped); to train: 2 x 10 epochs = 20 epochs" in out.stdout
    line = next(line for line in out.stdout.splitlines() if line.startswith("estimate:"))
    assert f"1 completed run(s) under {tmp_path}" in line
    rate = float(re.search(r"([\d.]+) s/epoch", line).group(1))
    assert 0 < rate < 60

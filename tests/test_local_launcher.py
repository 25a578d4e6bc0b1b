"""The local launcher forks its runs from itself, once it has imported torch and the trainer:
each run is still its own process (own session, lock, records) and still dies with the launcher."""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

import pytest

from src.plan import expand
from src.rundir import read_result
from tests.test_faults import PY, REPO, _alive, holder_pid, lines, sweep_args, wait_for


def _stat(pid: int) -> list[str]:
    with open(f"/proc/{pid}/stat") as f:
        return f.read().split(")")[-1].split()  # [state, ppid, pgrp, session, ...]


def _cmdline(pid: int) -> bytes:
    with open(f"/proc/{pid}/cmdline", "rb") as f:
        return f.read()


@pytest.mark.slow
def test_runs_are_forked_from_the_launcher_and_die_with_it(tmp_path):
    argv = [*sweep_args(tmp_path), "seed=1,2", "hydra.launcher.max_workers=2"]
    jobs = expand(argv[1:], check_data=False)
    assert len(jobs) == 2
    launcher = subprocess.Popen(
        [PY, "-m", "src.launch", *argv], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    children = []
    try:
        wait_for(lambda: all(holder_pid(j.run_dir) and lines(j.run_dir) for j in jobs), what="both runs")
        children = [holder_pid(j.run_dir) for j in jobs]
        assert len(set(children)) == 2
        for child in children:
            state, ppid, _, session = _stat(child)[:4]
            assert int(ppid) == launcher.pid  # a child of the launcher ...
            assert _cmdline(child) == _cmdline(launcher.pid)  # ... forked, not a fresh interpreter
            assert int(session) == child  # its own session: a terminal's Ctrl-C reaches the launcher only
        launcher.kill()  # SIGKILL: nothing forwards; the kernel tells each run (PR_SET_PDEATHSIG)
        launcher.communicate(timeout=60)
        wait_for(lambda: not any(_alive(c) for c in children), timeout=90, what="the orphaned runs to stop")
    finally:
        launcher.kill()
        for child in children:
            if _alive(child):
                os.kill(child, signal.SIGKILL)
    for job in jobs:
        result = read_result(job.run_dir)
        assert result["status"] == "interrupted"  # each checkpointed on its way out
        assert result["threads"] == 1  # hydra.launcher.threads_per_job=1, fixed in the forked child
        assert (job.run_dir / "checkpoint.pt").exists()
    job_logs = sorted(Path(tmp_path, ".hydra", "s").glob("*/*/job.log"))
    assert len(job_logs) == 2 and all("received SIGTERM" in p.read_text() for p in job_logs)


def test_a_forked_run_imports_nothing_from_torch_that_its_parent_did_not(tmp_path):
    """`execute.child` (the child entry) is what the local launcher and a SLURM pack import before they fork: a run
    started after it imports no more of torch (torch builds its first optimizer through
    `torch._dynamo`, ~1.5 s, which every forked run paid again before)."""
    script = f"""
import sys
import src.execute.child
import threading, torch
assert threading.active_count() == 1 and not torch.cuda.is_initialized()  # still safe to fork
before = set(sys.modules)
from src.train import train
from tests.test_train import tiny
cfg = tiny(); cfg.train.epochs = 1
assert train(cfg, {str(tmp_path / "run")!r})["status"] == "completed"
late = sorted(m for m in set(sys.modules) - before if m.split(".")[0] in ("torch", "numpy", "sympy"))
print("LATE", late)
"""
    out = subprocess.run([PY, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "LATE []" in out.stdout, out.stdout[-2000:]

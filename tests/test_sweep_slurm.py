"""Sweeps at cluster scale on the real SLURM cluster (tests/slurm_cluster.py): runs packed into
jobs that survive a time-limit requeue, and fire-and-forget submission followed by `status`.

The time-limit timing is explained in tests/test_launch_slurm.py and tests/test_slurm_cluster.py:
with a 1-minute limit and `signal_delay_s=5` the USR2 warning comes 25-55 s into each attempt,
and the job restarts ~15 s after its requeue.
"""

import functools
import json
import subprocess
import time

import pytest

from src.plan import sweep_of
from src.rundir import read_metrics, read_result
from src.status import status as status_of_target

from .slurm_cluster import launch, slurm_args

# overrides composed by the planner, as `python -m src.launch status` does
status = functools.partial(status_of_target, planner=sweep_of)

pytestmark = [pytest.mark.slurm, pytest.mark.slow]


def test_packed_runs_share_a_job_and_resume_after_a_time_limit_requeue(slurm_cluster, tmp_path):
    # three runs of >= 30 s each (~0.15 s per epoch on an idle core), two at a time, in one
    # 1-minute job: the pack needs > 60 s, so the time limit's signal (25-55 s into the job)
    # falls in its middle; the running runs checkpoint, the job is requeued and resumes them.
    sweep = ["setup=smoke", "seed=1,2,3", "train.epochs=200", f"runs_root={tmp_path}", "name=packed"]
    out = launch(
        "-m",
        *sweep,
        *slurm_args(
            slurm_cluster,
            cpus_per_task=2,
            timeout_min=1,
            signal_delay_s=5,
            max_num_timeout=6,
            runs_per_job=3,
            concurrent_runs=2,
        ),
    )
    assert out.returncode == 0, out.stdout + out.stderr + slurm_cluster.logs()
    assert "summary: 3 completed" in out.stdout
    assert "as 1 SLURM job(s) of <= 3 run(s), 2 at a time" in out.stdout

    results = [read_result(d) for d in sorted((tmp_path / "packed").iterdir())]
    assert all(r["status"] == "completed" for r in results)
    assert len({r["slurm_job_id"] for r in results}) == 1  # one job ran them all
    assert all(r["threads"] == 1 and r["config"]["train"]["threads"] == 1 for r in results)  # 2 CPUs / 2 runs
    assert any(r["resumed_at_steps"] for r in results), "the time limit interrupted no run"
    for run_dir, r in zip(sorted((tmp_path / "packed").iterdir()), results):
        epochs = [m["epoch"] for m in read_metrics(run_dir, "epoch")]
        assert epochs == list(range(1, 201)), run_dir  # each epoch once, across the resumes
        assert r["steps"] == r["total_steps"]
        if r["resumed_at_steps"]:
            assert "interrupted at step" in (run_dir / "train.log").read_text()

    pack_log = "".join(p.read_text() for p in (tmp_path / ".hydra").rglob("*_log.out"))
    assert "checkpointed" in pack_log and "handing over to requeue" in pack_log
    # two at a time: the second run started before the first one ended
    lines = pack_log.splitlines()
    assert lines.index(next(x for x in lines if x.startswith("run #1 started"))) < lines.index(
        next(x for x in lines if x.startswith("run #0 completed") or x.startswith("run #0 interrupted"))
    )
    # launching again submits nothing: every run finished
    again = launch("-m", *sweep, *slurm_args(slurm_cluster, cpus_per_task=2, runs_per_job=3, concurrent_runs=2))
    assert "submitted 0 run(s) (3 already finished, 0 queued or running" in again.stdout, again.stdout + again.stderr


def test_detach_submits_and_returns_and_status_follows_the_jobs(slurm_cluster, tmp_path):
    sweep = [
        "setup=smoke",
        "seed=1,2",
        "train.epochs=40",
        f"runs_root={tmp_path}",
        "name=detached",
        *slurm_args(slurm_cluster),
        "+hydra.launcher.additional_parameters.hold=true",
    ]  # queued until released
    started = time.monotonic()
    out = launch(*sweep, "--detach")
    assert out.returncode == 0, out.stdout + out.stderr + slurm_cluster.logs()
    assert time.monotonic() - started < 30  # returned without waiting for the (held) jobs
    (record_path,) = (tmp_path / ".hydra" / "detached").glob("*/submission.json")
    record = json.loads(record_path.read_text())
    job_ids = {job["job_id"] for job in record["jobs"]}
    assert len(job_ids) == 2 and all(len(job["runs"]) == 1 for job in record["jobs"])
    assert record["overrides"] and record["command"][-len(record["overrides"]) :] == record["overrides"]
    array = job_ids.pop().split("_")[0]
    assert f"job id(s) {array}" in out.stdout

    table = status(sweep)
    assert list(table["state"]) == ["queued", "queued"], table
    assert set(status(record_path.parent)["state"]) == {"queued"}  # the sweep dir names the same runs

    subprocess.run(["scontrol", "release", array], check=True)
    seen = set()
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        states = set(status(sweep)["state"])
        seen |= states
        if states == {"completed"}:
            break
        time.sleep(1)
    assert "running" in seen and states == {"completed"}, (seen, slurm_cluster.logs())
    text = launch("status", *sweep)
    assert text.returncode == 0 and "total" in text.stdout and "completed" in text.stdout, text.stdout + text.stderr

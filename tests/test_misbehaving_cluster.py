"""A misbehaving cluster is told the truth: every signal a scheduler or a user may send to a
launcher or a SLURM pack, a failing or hung scheduler, a reused pid, records that cannot be
used, and settings that would silently change the experiment (docs/guarantees.md, "A
misbehaving cluster"). Everything here is done for real: real signals to real processes, an
`sbatch` / `squeue` first on PATH that fails or hangs, a live unrelated process at the
launcher's recorded pid, real files and links."""

import functools
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from src.plan import expand, sweep_of
from src.rundir import read_metrics, read_result
from src.status import status as status_of_target

# overrides composed by the planner, as `python -m src.launch status` does
status = functools.partial(status_of_target, planner=sweep_of)

REPO = Path(__file__).resolve().parent.parent
PY = sys.executable
# ~0.1-0.3 s an epoch: a run that is surely still training when the test acts on it
LONG = ["setup=smoke", "train.epochs=120", "train.log_every=5", "train.threads=1"]


def cli(*args, timeout=300, env=None):
    return subprocess.run(
        [PY, "-m", "src.launch", *args], cwd=REPO, capture_output=True, text=True, timeout=timeout, env=env
    )


def wait_for(condition, timeout=120.0, what=""):
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def ppid_of(pid: int) -> int:
    with open(f"/proc/{pid}/stat") as f:
        return int(f.read().split(")")[-1].split()[1])


def beat(run_dir: Path) -> dict | None:
    try:
        return json.loads((run_dir / "heartbeat.json").read_text())
    except (OSError, ValueError):
        return None


def training(run_dir: Path) -> bool:
    """The run has written its first metrics: it is past start-up, in its training loop."""
    return (run_dir / "metrics.jsonl").exists() and (run_dir / "metrics.jsonl").stat().st_size > 0


def kill_all(*procs):
    for p in procs:
        if isinstance(p, subprocess.Popen):
            if p.poll() is None:
                p.kill()
            p.wait()
        elif p and alive(p):
            os.kill(p, signal.SIGKILL)


# ---------------------------------------------------------------------------- 1: every signal
@pytest.mark.slow
@pytest.mark.parametrize("sig", ["SIGUSR1", "SIGHUP", "SIGXCPU"])
def test_every_signal_to_the_local_launcher_checkpoints_its_runs_and_ends_with_a_summary(tmp_path, sig):
    args = [*LONG, "seed=1,2", f"runs_root={tmp_path}", "name=sig"]
    first, second = expand(args, check_data=False)
    launcher = subprocess.Popen(
        [PY, "-m", "src.launch", "-m", *args, "hydra.launcher.threads_per_job=1", "hydra.launcher.max_workers=1"],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    child = None
    try:
        wait_for(lambda: training(first.run_dir) or launcher.poll() is not None, what="run 1 to train")
        child = beat(first.run_dir)["pid"]
        launcher.send_signal(getattr(signal, sig))
        out, _ = launcher.communicate(timeout=120)
        wait_for(lambda: not alive(child), timeout=30, what="the run to stop")
    finally:
        kill_all(launcher, child)
    assert launcher.returncode == 1, out  # by the one rule: a run was interrupted
    assert "runs done in" in out and "summary: 1 interrupted" in out, out
    result = read_result(first.run_dir)
    assert result["status"] == "interrupted" and (first.run_dir / "checkpoint.pt").exists(), result
    assert not (second.run_dir / "result.json").exists()  # never started
    if sig != "SIGUSR1":
        return
    again = cli("-m", *args, "hydra.launcher.threads_per_job=1", "hydra.launcher.max_workers=2", timeout=600)
    assert again.returncode == 0 and "summary: 2 completed" in again.stdout, again.stdout + again.stderr
    resumed = read_result(first.run_dir)
    assert resumed["resumed_at_steps"] == [result["steps"]]
    assert [m["epoch"] for m in read_metrics(first.run_dir, "epoch")] == list(range(1, 121))  # each epoch once


@pytest.mark.slow
def test_a_packed_run_dies_with_its_pack(tmp_path):
    """A pack killed outright (SIGKILL: nothing can forward) leaves no run training: each gets
    SIGTERM from the kernel (parent-death signal), checkpoints and records itself interrupted."""
    (job,) = expand([*LONG, f"runs_root={tmp_path}", "name=pk"], check_data=False)
    code = textwrap.dedent(f"""
        import json
        from src.execute.child import run_in_child
        from src.pack import Pack, PackedRun
        run = PackedRun(0, [], {str(job.run_dir)!r}, json.loads({json.dumps(json.dumps(job.config.to_dict()))}))
        Pack(run_in_child, {str(tmp_path / "sweep")!r}, concurrent_runs=1, threads=1)([run])
    """)
    pack = subprocess.Popen([PY, "-c", code], cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    child = None
    try:
        wait_for(lambda: training(job.run_dir) or pack.poll() is not None, what="the packed run to train")
        child = beat(job.run_dir)["pid"]
        assert ppid_of(child) == pack.pid
        pack.kill()
        pack.wait()
        wait_for(lambda: not alive(child), timeout=30, what="the orphaned run to stop")
    finally:
        kill_all(pack, child)
    assert read_result(job.run_dir)["status"] == "interrupted"


@pytest.mark.slurm
@pytest.mark.slow
def test_sigusr1_to_a_slurm_pack_checkpoints_requeues_and_resumes_exactly(slurm_cluster, tmp_path):
    from .slurm_cluster import launch, slurm_args

    # short runs (the signal comes as the first one's first epoch ends); a time limit far off
    sweep = [*LONG, "train.epochs=40", "seed=1,2", f"runs_root={tmp_path}", "name=usr1"]
    first, second = expand(sweep, check_data=False)
    out = launch(*sweep, *slurm_args(slurm_cluster, runs_per_job=2, concurrent_runs=1, timeout_min=20), "--detach")
    assert out.returncode == 0, out.stdout + out.stderr + slurm_cluster.logs()
    (record,) = (tmp_path / ".hydra" / "usr1").glob("*/submission.json")
    job_ids = {j["job_id"].split("_")[0] for j in json.loads(record.read_text())["jobs"]}
    child = None
    try:
        wait_for(lambda: training(first.run_dir), timeout=180, what="run 1 to train in its job")
        child = beat(first.run_dir)["pid"]
        pack = ppid_of(child)
        os.kill(pack, signal.SIGUSR1)  # what many sites send before a time limit
        wait_for(lambda: not alive(child), timeout=60, what="the pack's running run to stop")
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline and set(status(sweep).state) != {"completed"}:
            time.sleep(2)
        assert list(status(sweep).state) == ["completed", "completed"], (status(sweep), slurm_cluster.logs())
    finally:
        subprocess.run(["scancel", *job_ids], check=False)
        kill_all(child)
    result = read_result(first.run_dir)
    assert result["resumed_at_steps"], result  # checkpointed at the signal, resumed by the requeued job
    assert [m["epoch"] for m in read_metrics(first.run_dir, "epoch")] == list(range(1, 41))
    assert read_result(second.run_dir)["status"] == "completed"  # the unstarted run was not lost


# ---------------------------------------------------------------------------- 2: a failing scheduler
def fake_scheduler(tmp_path: Path, **scripts: str) -> dict:
    """An environment whose PATH finds these scripts first (`sbatch="..."`: its body)."""
    bin_dir = tmp_path / "fake-bin"
    bin_dir.mkdir(exist_ok=True)
    for name, body in scripts.items():
        path = bin_dir / name
        path.write_text("#!/bin/sh\n" + textwrap.dedent(body))
        path.chmod(0o755)
    return {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"}


SLURM = ["launcher=slurm", "hydra.launcher.partition=debug", "hydra.launcher.timeout_min=5"]


def test_a_failing_sbatch_is_one_error_line_and_a_non_zero_exit(tmp_path):
    env = fake_scheduler(
        tmp_path,
        sbatch="""
            echo "sbatch: error: Batch job submission failed: Invalid account or account/partition combination specified" >&2
            exit 1
        """,
    )
    out = cli("setup=smoke", "seed=1,2", f"runs_root={tmp_path}", "name=nosub", *SLURM, "--detach", env=env)
    assert out.returncode != 0, out.stdout + out.stderr
    assert "Traceback" not in out.stderr and "detached" not in out.stdout, out.stdout + out.stderr
    errors = [line for line in out.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "Invalid account or account/partition combination" in errors[0], out.stderr


@pytest.mark.parametrize("squeue", ["fails", "hangs"])
def test_an_unanswered_squeue_is_queue_unknown_and_detach_refuses_to_resubmit(tmp_path, squeue):
    calls = tmp_path / "sbatch-calls"
    submit = f"""
        echo "$@" >> {calls}
        echo "Submitted batch job 4242"
    """
    sweep = ["setup=smoke", "seed=1,2", f"runs_root={tmp_path}", "name=hung", *SLURM]
    first = cli(*sweep, "--detach", env=fake_scheduler(tmp_path, sbatch=submit))
    assert first.returncode == 0 and "job id(s) 4242" in first.stdout, first.stdout + first.stderr
    body = {
        "fails": """
            echo "slurm_load_jobs error: Unable to contact slurm controller (connect failure)" >&2
            exit 1
        """,
        "hangs": "sleep 600\n",
    }[squeue]
    env = {**fake_scheduler(tmp_path, sbatch=submit, squeue=body), "DST_SLURM_QUERY_TIMEOUT_S": "3"}
    started = time.monotonic()
    table = cli("status", *sweep, env=env, timeout=120)
    assert table.returncode == 0, table.stdout + table.stderr
    assert "queue unknown" in table.stdout and "missing" not in table.stdout, table.stdout
    again = cli(*sweep, "--detach", env=env, timeout=120)
    assert again.returncode != 0, again.stdout + again.stderr
    errors = [line for line in again.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "queue unknown" in errors[0] and "Traceback" not in again.stderr, again.stderr
    assert len(calls.read_text().splitlines()) == 1  # nothing submitted a second time
    assert time.monotonic() - started < 100


# ---------------------------------------------------------------------------- 3: a reused pid
@pytest.mark.slow
def test_a_launchers_pid_reused_by_a_live_process_does_not_keep_runs_planned(tmp_path):
    args = [*LONG, "seed=1,2", f"runs_root={tmp_path}", "name=reuse"]
    first, second = expand(args, check_data=False)
    launcher = subprocess.Popen(
        [PY, "-m", "src.launch", "-m", *args, "hydra.launcher.threads_per_job=1", "hydra.launcher.max_workers=1"],
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    other = None
    try:
        wait_for(lambda: training(first.run_dir) or launcher.poll() is not None, what="run 1 to train")
        # a live process that is not the launcher, started later (as a process reusing its pid would be)
        other = subprocess.Popen(["sleep", "600"])
        assert list(status(args).state) == ["running", "planned"]
        launcher.kill()  # its run checkpoints on its way out (parent-death signal); run 2 never starts
        launcher.wait()
        wait_for(lambda: (first.run_dir / "result.json").exists(), timeout=60, what="run 1's record")
        (plan,) = (tmp_path / ".hydra" / "reuse").glob("*/plan.json")
        record = json.loads(plan.read_text())
        record["pid"] = other.pid  # the launcher's pid, now a live process of someone else
        plan.write_text(json.dumps(record))
        assert list(status(args).state) == ["interrupted", "missing"]
        watch = cli("status", *args, "--watch", "1", timeout=60)  # returns: nothing will change
        assert watch.returncode == 0 and "missing" in watch.stdout, watch.stdout + watch.stderr
    finally:
        kill_all(launcher, other)


# ---------------------------------------------------------------------------- 4: unusable records
def test_a_completed_record_without_its_final_metric_is_damaged_not_completed(tmp_path):
    args = ["setup=smoke", "train.epochs=1", "train.threads=1", "seed=1,2", f"runs_root={tmp_path}", "name=rec"]
    out = cli("-m", *args)
    assert out.returncode == 0, out.stdout + out.stderr
    a, b = expand(args, check_data=False)
    assert "format" in read_result(a.run_dir)  # records carry their format version
    edited = read_result(a.run_dir)
    del edited["final"]  # an older record, a hand edit
    (a.run_dir / "result.json").write_text(json.dumps(edited))
    newer = read_result(b.run_dir)
    newer["format"] = 10**6  # written by a newer version of the project
    (b.run_dir / "result.json").write_text(json.dumps(newer))
    table = status(args)
    assert list(table.state) == ["damaged", "damaged"], table
    assert "final" in table.detail[0] and "format" in table.detail[1], list(table.detail)
    text = cli("status", *args)
    assert "damaged" in text.stdout and "completed" not in text.stdout.splitlines()[0], text.stdout


@pytest.mark.slow
def test_another_experiments_checkpoint_in_a_run_directory_is_shown_with_its_reason(tmp_path):
    base = [*LONG, f"runs_root={tmp_path}", "name=ck"]
    (theirs,) = expand([*base, "seed=1"], check_data=False)
    (ours,) = expand([*base, "seed=2"], check_data=False)
    run = subprocess.Popen([PY, "-m", "src.launch", *base, "seed=1"], cwd=REPO, stdout=subprocess.DEVNULL)
    try:
        wait_for(lambda: training(theirs.run_dir) or run.poll() is not None, what="the first run to train")
        run.send_signal(signal.SIGTERM)
        assert run.wait(timeout=120) == 1
    finally:
        kill_all(run)
    ours.run_dir.mkdir(parents=True)
    shutil.copy(theirs.run_dir / "checkpoint.pt", ours.run_dir / "checkpoint.pt")
    out = cli(*base, "seed=2")
    assert out.returncode != 0 and "another experiment" in out.stdout + out.stderr
    (row,) = status([*base, "seed=2"]).itertuples()
    assert row.state in ("failed", "damaged") and "checkpoint.pt" in row.detail, row
    assert "another experiment" in row.detail and "killed?" not in row.detail, row


# ---------------------------------------------------------------------------- 5: silent fallbacks
def test_a_data_root_that_is_a_file_is_refused_before_launch(tmp_path):
    not_a_dir = tmp_path / "fashion.tar"
    not_a_dir.write_bytes(b"not a dataset directory")
    out = cli("setup=lenet5_fmnist", f"data.root={not_a_dir}", "train.epochs=1", f"runs_root={tmp_path / 'runs'}")
    assert out.returncode == 2, out.stdout + out.stderr
    assert out.stderr.startswith("error: data.root:") and len(out.stderr.strip().splitlines()) == 1, out.stderr
    assert not (tmp_path / "runs" / "default").exists() or not any((tmp_path / "runs" / "default").iterdir())


def test_a_runs_root_inside_another_runs_directory_is_refused_before_launch(tmp_path):
    args = ["setup=smoke", "train.epochs=1", "train.threads=1", f"runs_root={tmp_path}"]
    out = cli(*args)
    assert out.returncode == 0, out.stdout + out.stderr
    (run_dir,) = (tmp_path / "default").iterdir()
    inside = run_dir / "more"
    out = cli("setup=smoke", "train.epochs=1", "seed=5", f"runs_root={inside}")
    assert out.returncode == 2, out.stdout + out.stderr
    assert out.stderr.startswith("error: runs_root:") and str(run_dir) in out.stderr, out.stderr
    assert len(out.stderr.strip().splitlines()) == 1 and not inside.exists(), out.stderr


def test_node_local_scratch_is_never_reached_through_another_users_link(tmp_path):
    shared = tmp_path / "shared-tmp"  # a world-writable scratch space, as /tmp on a node
    shared.mkdir(mode=0o1777)
    victim = tmp_path / "victims-files"
    victim.mkdir()
    args = ["setup=smoke", "train.epochs=2", "train.threads=1", f"train.scratch_dir={shared}", f"runs_root={tmp_path}"]
    (job,) = expand(args, check_data=False)
    where = hashlib.sha256(str(job.run_dir.resolve()).encode()).hexdigest()[:10]
    link = shared / f"{job.run_dir.name}-{where}"
    link.symlink_to(victim)  # planted before the run, where its scratch directory would go
    os.lchown(link, 65534, 65534)  # by another user
    before = victim.stat().st_mtime_ns
    out = cli(*args)
    assert out.returncode == 0, out.stdout + out.stderr
    assert read_result(job.run_dir)["status"] == "completed"
    assert victim.stat().st_mtime_ns == before and not list(victim.iterdir())  # nothing written through it
    assert link.is_symlink()  # left as it was, and reported
    assert "train.scratch_dir" in (job.run_dir / "train.log").read_text()

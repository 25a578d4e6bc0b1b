"""A run's lifecycle with real processes: the identity check wherever a run is skipped, the
state classifier (liveness from the lock first, clock skew, the saved plan), the read-only
lock probe, a pack's run killed by a signal, and the one exit-code rule."""

import functools
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

from src.plan import expand, read_plan, sweep_of
from src.rundir import STATES, RunLock, RunLocked, classify, exit_code, lock_probe
from src.status import status as status_of_target

# overrides composed by the planner, as `python -m src.launch status` does
status = functools.partial(status_of_target, planner=sweep_of)

REPO = Path(__file__).resolve().parent.parent
PY = sys.executable
SMOKE = ["setup=smoke", "train.epochs=1", "train.threads=1"]


def cli(*args, timeout=300, **kw):
    return subprocess.run(
        [PY, "-m", "src.launch", *args], cwd=REPO, capture_output=True, text=True, timeout=timeout, **kw
    )


def wait_for(condition, timeout=120.0, what=""):
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def hold_lock(run_dir: Path) -> subprocess.Popen:
    """A real second process that takes the run's lock as a starting run does, and keeps it."""
    code = textwrap.dedent(f"""
        import sys, time
        from src.rundir import RunLock
        with RunLock({str(run_dir)!r}):
            print("locked", flush=True)
            time.sleep(600)
    """)
    proc = subprocess.Popen([PY, "-c", code], cwd=REPO, stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "locked"
    return proc


def long_run(tmp_path, name="live", **kw) -> tuple[list[str], Path, subprocess.Popen]:
    """A real run that trains for minutes, started through the launch; its overrides, directory, process."""
    args = [
        "setup=smoke",
        "train.epochs=500",
        "train.log_every=5",
        "train.threads=1",
        f"runs_root={tmp_path}",
        f"name={name}",
    ]
    (job,) = expand(args, check_data=False)
    proc = subprocess.Popen(
        [PY, "-m", "src.launch", *args], cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, **kw
    )
    wait_for(lambda: (job.run_dir / "heartbeat.json").exists() or proc.poll() is not None, what="its heartbeat")
    assert proc.poll() is None
    return args, job.run_dir, proc


def stop(proc):
    if proc.poll() is None:
        proc.kill()
    proc.wait()


# ---------------------------------------------------------------------------- 1: identity
@pytest.mark.slow
def test_a_copied_finished_run_is_refused_as_another_experiments_never_counted_finished(tmp_path):
    sweep = [*SMOKE, "optim.lr=0.05,0.01", f"runs_root={tmp_path}", "name=copy"]
    a, b = expand(sweep, check_data=False)
    done = cli(*SMOKE, "optim.lr=0.05", f"runs_root={tmp_path}", "name=copy")
    assert done.returncode == 0, done.stdout + done.stderr
    b.run_dir.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run(["cp", "-a", str(a.run_dir), str(b.run_dir)], check=True)

    out = cli("-m", *sweep, "hydra.launcher.threads_per_job=1")
    text = out.stdout + out.stderr
    assert "2 run(s); 1 already finished" in out.stdout, text
    assert "optim.lr: 0.05 -> 0.01" in text and "config hash" in text, text  # both hashes, the differing field
    assert out.returncode == 1, text  # B is not a result; its directory is refused, not trained over
    table = status([*sweep])
    row = table.set_index("run_dir").loc[str(b.run_dir.resolve())]
    assert row.state == "damaged" and "records of another experiment" in row.detail, row.detail
    assert "optim.lr: 0.05 -> 0.01" in row.detail  # the plan knows the run's config: the fields too
    assert json.loads((b.run_dir / "result.json").read_text())["config"]["optim"]["lr"] == 0.05  # untouched
    # without a plan (a directory of runs), the directory's own identity hash still refuses it
    by_dir = status(tmp_path / "copy").set_index("run_dir")
    assert by_dir.loc[str(b.run_dir.resolve()), "state"] == "damaged"
    assert by_dir.loc[str(a.run_dir.resolve()), "state"] == "completed"


# ---------------------------------------------------------------------------- 2: liveness
@pytest.mark.slow
def test_a_stopped_live_run_is_running_not_stale_and_its_kill_makes_it_stale(tmp_path):
    args, run_dir, proc = long_run(tmp_path)
    try:
        os.kill(proc.pid, signal.SIGSTOP)  # a live process that beats no more (a busy node)
        time.sleep(2)
        row = status(args, stale_after=1).iloc[0]
        assert row.state == "running" and f"pid {proc.pid}" in row.detail, row.to_dict()
        # a status clock 20 min ahead: still running (its lock is held), not interrupted
        assert status(args, now=time.time() + 1200).iloc[0].state == "running"
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        row = status(args, stale_after=1).iloc[0]
        assert row.state == "stale" and "no process holds its lock" in row.detail, row.to_dict()
    finally:
        stop(proc)


def test_a_run_holding_its_lock_before_its_first_heartbeat_is_starting_and_watch_waits(tmp_path):
    args = [*SMOKE, "seed=1,2", f"runs_root={tmp_path}", "name=w"]
    first, second = expand(args, check_data=False)
    (first.run_dir / "result.json").parent.mkdir(parents=True)
    (first.run_dir / "result.json").write_text(
        json.dumps({"status": "completed", "config": first.config.to_dict(), "final": {"test_acc": 90.0}})
    )
    holder = hold_lock(second.run_dir)  # the launcher has just started the last run
    try:
        table = status(args)
        assert list(table.state) == ["completed", "starting"], table.to_dict("records")
        assert f"pid {holder.pid}" in table.state.iloc[1] + table.detail.iloc[1]
        watch = subprocess.Popen(
            [PY, "-m", "src.launch", "status", "-m", *args, "--watch", "0.2"],
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        time.sleep(8)
        assert watch.poll() is None, watch.communicate()[0]  # still watching: a run is starting
    finally:
        stop(holder)
    out, _ = watch.communicate(timeout=60)  # the holder died: nothing runs, the watch ends
    assert watch.returncode == 0 and "stale" in out, out
    assert status(args).state.iloc[1] == "stale"


def test_a_heartbeat_from_the_future_is_skew_not_a_live_run(tmp_path):
    args = [*SMOKE, f"runs_root={tmp_path}", "name=skew"]
    (job,) = expand(args, check_data=False)
    job.run_dir.mkdir(parents=True)
    (job.run_dir / "result.json").write_text(
        json.dumps({"status": "interrupted", "steps": 7, "config": job.config.to_dict()})
    )
    # written by a node whose clock is 20 min ahead, after the run was interrupted there
    (job.run_dir / "heartbeat.json").write_text(
        json.dumps({"host": "node7", "pid": 4242, "step": 7, "epoch": 1, "time": time.time() + 1200})
    )
    row = status(args).iloc[0]
    assert row.state == "interrupted" and "in the future: clock skew" in row.detail, row.to_dict()
    watch = cli("status", *args, "--watch", "0.2", timeout=60)  # ends: nothing is running
    assert watch.returncode == 0 and "interrupted" in watch.stdout


def test_an_unrecorded_failure_in_the_heartbeat_is_failed_not_stale(tmp_path):
    run = tmp_path / "r"
    run.mkdir()
    (run / "heartbeat.json").write_text(
        json.dumps(
            {
                "host": "n1",
                "pid": 1,
                "step": 3,
                "epoch": 1,
                "time": time.time() - 5000,
                "unrecorded_failure": {
                    "error": "OSError: [Errno 28] No space left on device",
                    "time": time.time() - 4000,
                },
            }
        )
    )
    row = classify(run)
    assert row.state == "failed"
    assert row.detail == "could not record the result (disk full?): OSError: [Errno 28] No space left on device"


@pytest.mark.slow
def test_status_of_a_local_sweep_dir_lists_its_runs_not_its_job_log_folders(tmp_path):
    args = [*SMOKE, "seed=1,2", f"runs_root={tmp_path}", "name=sd"]
    out = cli("-m", *args, "hydra.launcher.threads_per_job=1")
    assert out.returncode == 0, out.stdout + out.stderr
    (sweep_dir,) = (tmp_path / ".hydra" / "sd").iterdir()
    plan = read_plan(sweep_dir)
    assert [Path(r["run_dir"]).name for r in plan["runs"]] == [j.run_dir.name for j in expand(args, check_data=False)]
    assert {"0", "1"} <= {p.name for p in sweep_dir.iterdir()}  # the job-log folders
    for target in (sweep_dir, str(sweep_dir)):
        assert list(status(target).state) == ["completed", "completed"]
    (sweep_dir / "plan.json").unlink()  # a launch from before plans: its multirun.yaml says what it ran
    assert list(status(sweep_dir).state) == ["completed", "completed"]


# ---------------------------------------------------------------------------- 3: the lock probe
def test_the_lock_probe_writes_nothing_and_never_refuses_a_run_start(tmp_path):
    runs = [tmp_path / f"r{i}" for i in range(5)]
    assert lock_probe(runs[0]) == "" and not runs[0].exists()  # nothing created
    for run in runs:
        run.mkdir()
        with RunLock(run):
            pass
    before = {r: ((r / ".lock").read_bytes(), (r / ".lock").stat().st_mtime_ns) for r in runs}
    probe = subprocess.Popen(
        [
            PY,
            "-c",
            textwrap.dedent(f"""
        import time
        from src.rundir import lock_probe
        runs = {[str(r) for r in runs]!r}
        deadline = time.monotonic() + 60
        print("probing", flush=True)
        while time.monotonic() < deadline:
            for r in runs:
                lock_probe(r)
    """),
        ],
        cwd=REPO,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert probe.stdout.readline().strip() == "probing"
        assert {r: ((r / ".lock").read_bytes(), (r / ".lock").stat().st_mtime_ns) for r in runs} == before
        refused = 0
        for _ in range(40):  # run starts while another process probes in a loop
            for run in runs:
                try:
                    with RunLock(run):
                        pass
                except RunLocked:
                    refused += 1
        assert refused == 0
    finally:
        stop(probe)
    holder = hold_lock(runs[0])
    try:
        assert lock_probe(runs[0]) == f"host {os.uname().nodename}, pid {holder.pid}"
        read_only = tmp_path / "ro"
        shutil.copytree(runs[1], read_only)
        read_only.chmod(0o555)
        assert lock_probe(read_only) == ""  # a read-only copy of the records: probed all the same
    finally:
        stop(holder)


# ---------------------------------------------------------------------------- 4: a pack's run killed
@pytest.mark.slow
def test_a_packed_run_killed_by_a_signal_is_failed_naming_it_and_the_task_exits_non_zero(tmp_path):
    args = ["setup=smoke", "train.log_every=5", "seed=1,2", f"runs_root={tmp_path}", "name=pk"]
    slow, quick = (
        expand([*args, "train.epochs=500"], check_data=False)[0],
        expand([*args, "train.epochs=1"], check_data=False)[1],
    )
    # fmt: off
    pack = subprocess.Popen([PY, "-c", textwrap.dedent(f"""
        import json, sys
        from src.execute.child import run_in_child
        from src.pack import Pack, PackedRun
        runs = [PackedRun(i, [], d, json.loads(c)) for i, (d, c) in enumerate({[
            (str(slow.run_dir), json.dumps(slow.config.to_dict())),
            (str(quick.run_dir), json.dumps(quick.config.to_dict()))]!r})]
        print(Pack(run_in_child, {str(tmp_path / 'sweep')!r}, concurrent_runs=2, threads=1)(runs))
    """)], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    # fmt: on
    try:
        wait_for(lambda: (slow.run_dir / "heartbeat.json").exists(), what="the long run's heartbeat")
        pid = json.loads((slow.run_dir / "heartbeat.json").read_text())["pid"]
        os.kill(pid, signal.SIGSEGV)  # the run's process dies as by a segfault
        out, _ = pack.communicate(timeout=300)
    finally:
        stop(pack)
    assert pack.returncode != 0, out  # the SLURM task fails with its run
    assert "failed" in out and "killed by SIGSEGV" in out, out
    result = json.loads((slow.run_dir / "result.json").read_text())
    assert result["status"] == "failed" and "killed by SIGSEGV" in result["error"]
    assert classify(slow.run_dir).state == "failed" and classify(quick.run_dir).state == "completed"


# ---------------------------------------------------------------------------- one vocabulary, one rule
def test_one_exit_code_rule():
    assert exit_code(["completed", "diverged", "running", "queued", "starting"]) == 0
    for bad in ("failed", "interrupted", "stale", "missing", "damaged", "planned", "unknown"):
        assert exit_code(["completed", bad]) == 1, bad
    assert exit_code([]) == 0
    assert set(STATES) == {
        "planned",
        "queued",
        "unknown",
        "starting",
        "running",
        "completed",
        "diverged",
        "failed",
        "interrupted",
        "stale",
        "missing",
        "damaged",
    }


# ---------------------------------------------------------------------------- 5: --detach twice
@pytest.mark.slurm
@pytest.mark.slow
def test_detach_does_not_resubmit_runs_whose_job_is_still_queued(slurm_cluster, tmp_path):
    from .slurm_cluster import launch, slurm_args

    sweep = [
        *SMOKE,
        "seed=1,2",
        f"runs_root={tmp_path}",
        "name=twice",
        *slurm_args(slurm_cluster),
        "+hydra.launcher.additional_parameters.hold=true",
    ]  # queued until released
    first = launch(*sweep, "--detach")
    assert first.returncode == 0, first.stdout + first.stderr + slurm_cluster.logs()
    try:
        again = launch(*sweep, "--detach")  # the sweep's jobs are still queued
        assert again.returncode == 0, again.stdout + again.stderr
        assert "submitted 0 run(s)" in again.stdout and "2 run(s) not submitted again" in again.stdout, again.stdout
        records = [json.loads(p.read_text()) for p in (tmp_path / ".hydra" / "twice").glob("*/submission.json")]
        assert sorted(len(r["jobs"]) for r in records) == [0, 2]  # one submission of the two runs, no duplicate
        assert set(status(sweep).state) == {"queued"}
    finally:
        ids = {
            j["job_id"].split("_")[0]
            for p in (tmp_path / ".hydra" / "twice").glob("*/submission.json")
            for j in json.loads(p.read_text())["jobs"]
        }
        if ids:
            subprocess.run(["scancel", *ids], check=False)


# ---------------------------------------------------------------------------- identity: one definition
def test_run_identity_keeps_the_sparsity_fields_that_matter_for_the_mode(monkeypatch):
    from src.config import RunConfig
    from src.rundir import identity, run_identity
    from src.sparse.config import SparsityConfig

    dst = RunConfig().to_dict()
    assert run_identity(dst)["sparsity"] == identity.sparsity_identity(dst["sparsity"])
    assert "backend" not in run_identity(dst)["sparsity"] and "criterion" in run_identity(dst)["sparsity"]
    dense = RunConfig(sparsity=SparsityConfig(mode="dense", criterion="snip")).to_dict()
    assert run_identity(dense)["sparsity"] == {"mode": "dense"}
    static = RunConfig(sparsity=SparsityConfig(mode="static")).to_dict()
    assert set(run_identity(static)["sparsity"]) == set(identity.SPARSITY_STATIC_FIELDS)
    monkeypatch.setattr(identity, "SPARSITY_STATIC_FIELDS", ("mode", "density", "growth"))
    assert set(run_identity(static)["sparsity"]) == {"mode", "density", "growth"}  # no list of its own


def test_the_completeness_table_says_what_status_says_of_an_unfinished_run(tmp_path):
    import analysis
    from src.config import RunConfig

    run = tmp_path / "lenet5-dst-s0-0123456789"
    run.mkdir()
    (run / "config.json").write_text(json.dumps(RunConfig().to_dict()))
    holder = hold_lock(run)
    try:
        (problem,) = analysis.completeness(analysis.load_runs(tmp_path)).problems.itertuples()
        assert problem.status == "starting"  # alive: not a loss
    finally:
        stop(holder)
    (problem,) = analysis.completeness(analysis.load_runs(tmp_path)).problems.itertuples()
    assert problem.status == "stale"


def test_no_floor_imports_the_one_above_it():
    """The classifier knows nothing of planning or launching; status nothing of planning (the
    planner is handed to it); packs and the child entry nothing of the CLI."""
    for module, above in (
        (
            "src.rundir",
            ("src.plan", "src.launch", "src.status", "src.pack", "src.execute.child", "src.config", "torch", "hydra"),
        ),
        ("src.plan", ("src.launch", "src.pack", "src.execute.child")),
        ("src.execute.child", ("src.launch", "src.status", "src.pack", "src.plan")),
        ("src.status", ("src.launch", "src.pack", "src.execute.child", "src.plan")),
        ("src.pack", ("src.launch", "src.status", "src.plan")),
    ):
        code = f"import sys, {module}; print([m for m in {above!r} if m in sys.modules])"
        out = subprocess.run([PY, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
        assert out.stdout.strip() == "[]", (module, out.stdout)


def test_a_diverged_run_exits_zero_by_the_one_rule(tmp_path):
    out = subprocess.run(
        [
            PY,
            "-m",
            "src.train",
            "model.name=lenet5",
            "data.name=synthetic",
            "data.kwargs={input_shape: [1, 28, 28], num_classes: 10, num_train: 640, num_test: 200}",
            "train.epochs=1",
            "train.threads=1",
            "train.log_every=5",
            "optim.lr=1e12",
            "--run-dir",
            str(tmp_path),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert json.loads((tmp_path / "result.json").read_text())["status"] == "diverged", out.stdout + out.stderr
    assert out.returncode == 0, out.stdout + out.stderr


@pytest.mark.slow
def test_a_run_waiting_in_a_live_launch_is_planned_and_missing_once_the_launch_is_gone(tmp_path):
    args = ["setup=smoke", "train.epochs=500", "train.log_every=5", "seed=1,2", f"runs_root={tmp_path}", "name=pl"]
    first, _ = expand(args, check_data=False)
    launch = subprocess.Popen(
        [PY, "-m", "src.launch", "-m", *args, "hydra.launcher.threads_per_job=1", "hydra.launcher.max_workers=1"],
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for(lambda: (first.run_dir / "heartbeat.json").exists() or launch.poll() is not None, what="run 1")
        assert list(status(args).state) == ["running", "planned"]
        launch.send_signal(signal.SIGTERM)  # passed on to its job, which checkpoints; run 2 never starts
        assert launch.wait(timeout=120) == 1
    finally:
        stop(launch)
    assert list(status(args).state) == ["interrupted", "missing"]


def test_without_a_working_flock_liveness_comes_from_the_heartbeat(tmp_path):
    """(`lock_probe` says NO_FLOCK where flock fails with ENOLCK / EOPNOTSUPP; given here as the
    classifier's input: no file system of this machine refuses flock.)"""
    from src.rundir import NO_FLOCK
    from src.rundir.state import state

    now = time.time()
    beat = {"host": "node3", "pid": 77, "step": 40, "epoch": 2}
    fresh = state(tmp_path, lock=NO_FLOCK, heartbeat={**beat, "time": now - 30}, now=now)
    assert fresh.state == "running" and "no working flock here" in fresh.detail
    old = state(tmp_path, lock=NO_FLOCK, heartbeat={**beat, "time": now - 3600}, now=now)
    assert old.state == "stale" and "no working flock here" in old.detail
    ahead = state(tmp_path, lock=NO_FLOCK, heartbeat={**beat, "time": now + 1200}, now=now)
    assert ahead.state == "stale" and "clock skew" in ahead.detail  # a future heartbeat is not trusted


def test_a_watch_refresh_reads_only_the_record_files_that_changed(tmp_path):
    from src.status import Reader, Sweep, rows

    runs = []
    for i in range(2):
        run = tmp_path / "sweep" / f"lenet5-dst-s{i}-0123456789"
        run.mkdir(parents=True)
        (run / "config.json").write_text("{}")
        (run / "result.json").write_text(json.dumps({"status": "interrupted", "steps": 3}))
        runs.append(run)
    sweep, reader = Sweep.of(tmp_path / "sweep"), Reader()
    assert [r[3] for r in rows(sweep, reader=reader)] == ["interrupted", "interrupted"]
    # the same size, time and inode: not read again (written in place, its time set back)
    first = runs[0] / "result.json"
    st = first.stat()
    with open(first, "r+") as f:
        f.write(json.dumps({"status": "failed", "steps": 3, "error": "x"})[: st.st_size].ljust(st.st_size))
    os.utime(first, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert [r[3] for r in rows(sweep, reader=reader)] == ["interrupted", "interrupted"]
    (runs[1] / "result.json").write_text(
        json.dumps({"status": "completed", "steps": 9, "final": {"test_acc": 90.0}})
    )  # changed: read
    assert [r[3] for r in rows(sweep, reader=reader)] == ["interrupted", "completed"]
    assert rows(sweep)[0][3] == "damaged"  # a fresh reader reads it all (the in-place write cut it short)


def test_a_watch_refresh_hashes_a_result_again_once_it_changed(tmp_path):
    """The identity hash of a result's config is kept between refreshes, with the file's
    version: a result replaced by another experiment's is damaged at the next refresh."""
    from src.rundir.identity import directory_name
    from src.status import Reader, Sweep, rows
    from tests.test_train import tiny

    ours, theirs = tiny().to_dict(), tiny().to_dict()
    theirs["optim"]["lr"] = ours["optim"]["lr"] * 2
    run = tmp_path / "sweep" / directory_name(ours)
    run.mkdir(parents=True)
    (run / "config.json").write_text(json.dumps(ours))
    (run / "result.json").write_text(json.dumps({"status": "completed", "config": ours, "final": {"test_acc": 9.0}}))
    sweep, reader = Sweep.of(tmp_path / "sweep"), Reader()
    assert [r[3] for r in rows(sweep, reader=reader)] == ["completed"]
    (run / "result.json").write_text(json.dumps({"status": "completed", "config": theirs, "final": {"test_acc": 9.0}}))
    (row,) = rows(sweep, reader=reader)
    assert row[3] == "damaged" and "another experiment" in row[4]


def test_run_directories_keep_their_names_across_versions():
    """A run's directory name (its identity hash) is what a resumed or extended sweep finds its
    finished runs by: these were written by an earlier version of the project and must still
    be found (a change here makes every existing sweep run again)."""
    for sweep, overrides, name in (
        ("fmnist_fig1_dense", ["seed=1"], "lenet5-dense-s1-32e718bef7"),
        ("fmnist_fig1_static", ["seed=3", "sparsity.density=0.5"], "lenet5-static-d0.5-s3-f5cffaa0e6"),
        (
            "fmnist_fig1",
            ["seed=1", "sparsity.density=0.05", "criterion=set", "growth=random"],
            "lenet5-dst-d0.05-set-random-s1-4d6a35850b",
        ),
    ):
        (job,) = expand([f"+sweeps={sweep}", *overrides, "runs_root=/nonexistent"], check_data=False)
        assert job.run_dir.name == name, (sweep, overrides)

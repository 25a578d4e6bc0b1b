"""Run files that are safe and light on a shared file system, each fault injected for real: a
real symbolic link planted in a run directory (before or during the run), a real tmpfs filled
by another process mid-epoch, a real read-only bind mount over a running run's directory, a
real second process on a refused run directory."""

import json
import os
import subprocess
import time
from pathlib import Path

import pytest
import torch

from src.launch import summarize
from src.plan import Job
from src.rundir import LinkRefused, read_heartbeat, read_metrics, read_result, tee_output
from src.train import train
from tests.test_faults import PY, REPO, args, config, lines, start_train, stop_after, strip_times, wait_for


def snapshot(directory: Path) -> dict:
    """Every file under ``directory``: its bytes (a link: where it points)."""
    return {
        str(p.relative_to(directory)): (os.readlink(p) if p.is_symlink() else p.read_bytes())
        for p in sorted(directory.rglob("*"))
        if p.is_symlink() or p.is_file()
    }


# ---------------------------------------------------------------------------- links
@pytest.mark.parametrize("name", ["metrics.jsonl", ".lock"])
def test_a_run_never_writes_through_a_planted_link(tmp_path, name):
    victim = tmp_path / "victim.txt"
    victim.write_bytes(b"the user's precious file\n" * 10)
    run = tmp_path / "run"
    run.mkdir()
    (run / name).symlink_to(victim)
    with pytest.raises(LinkRefused, match=f"refusing to write through a symbolic link: {run / name}"):
        train(config(args()), run)
    assert victim.read_bytes() == b"the user's precious file\n" * 10


def test_the_log_is_never_appended_through_a_link(tmp_path):
    victim = tmp_path / "victim.txt"
    victim.write_text("keep\n")
    (tmp_path / "train.log").symlink_to(victim)
    with pytest.raises(LinkRefused):
        with tee_output(tmp_path / "train.log"):
            print("a line that must not reach the victim")
    assert victim.read_text() == "keep\n"


def test_a_forked_runs_job_log_is_never_written_through_a_link(tmp_path):
    """A local or packed run's output file under the sweep dir (`<sweep>/<idx>/job.log`)."""
    import multiprocessing

    from src.execute.child import PackedRun, run_in_child

    victim = tmp_path / "victim.txt"
    victim.write_text("keep\n")
    (tmp_path / "sweep" / "0").mkdir(parents=True)
    (tmp_path / "sweep" / "0" / "job.log").symlink_to(victim)
    run = PackedRun(0, [], str(tmp_path / "run"), config(args()).to_dict())
    child = multiprocessing.get_context("fork").Process(target=run_in_child, args=(run, str(tmp_path / "sweep"), 1))
    child.start()
    child.join(120)
    assert child.exitcode not in (0, None)
    assert victim.read_text() == "keep\n" and not (tmp_path / "run").exists()


def test_links_planted_mid_run_at_the_temporary_names_are_never_written_through(tmp_path):
    """The old temporary names were `.<name>.tmp-<pid>` (the pid is in heartbeat.json): links
    planted there mid-run made the run overwrite their targets."""
    victims = {name: tmp_path / f"victim-{name}" for name in ("heartbeat.json", "checkpoint.pt", "result.json")}
    for victim in victims.values():
        victim.write_text("keep")
    run = tmp_path / "run"
    pid = {}

    def plant():
        if not pid and (run / "heartbeat.json").exists():
            pid["pid"] = read_heartbeat(run)["pid"]
            for name, victim in victims.items():
                (run / f".{name}.tmp-{pid['pid']}").symlink_to(victim)
            time.sleep(1.1)  # so that a heartbeat is due after the planting
        return False

    cfg = config(args(**{"train.heartbeat_every_s": 1}))
    assert train(cfg, run, should_stop=plant)["status"] == "completed"
    assert pid and read_heartbeat(run)["step"] > 0  # planted, then a heartbeat, checkpoints, the result
    assert all(v.read_text() == "keep" for v in victims.values())
    assert read_result(run)["status"] == "completed"


# ---------------------------------------------------------------------------- a full disk
@pytest.fixture
def tmpfs(tmp_path):
    """A real 1 MB tmpfs (needs root and mount)."""
    mount = tmp_path / "disk"
    mount.mkdir()
    try:
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount)], capture_output=True)
    except OSError as error:
        pytest.skip(f"cannot mount a tmpfs here: {error}")
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (root needed): {done.stderr.decode().strip()}")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=True)


def fill(disk: Path) -> None:
    """Another process fills the file system to its last block."""
    subprocess.run(["dd", "if=/dev/zero", f"of={disk / 'filler'}", "bs=4k"], capture_output=True)
    assert os.statvfs(disk).f_bavail == 0


@pytest.mark.slow
def test_a_disk_filled_mid_epoch_leaves_whole_lines_no_temp_files_and_the_failure_seen(tmpfs, capsys):
    run = tmpfs / "run"
    cfg = config(args(steps_per_epoch=800))
    filled = {}

    def fill_at_step_100():  # called between steps: the disk fills in the middle of epoch 1
        if not filled and len(read_metrics(run, "update")) >= 14:
            fill(tmpfs)
            filled["at"] = read_metrics(run)
        return False

    with pytest.raises(OSError, match="No space left on device"):
        train(cfg, run, should_stop=fill_at_step_100)
    data = (run / "metrics.jsonl").read_bytes()
    assert data.endswith(b"\n") and [json.loads(x) for x in data.splitlines()] == [
        json.loads(x) for x in data.splitlines()
    ]  # every line whole
    assert len(read_metrics(run)) >= len(filled["at"])
    assert not list(run.glob(".*.tmp-*")), sorted(p.name for p in run.iterdir())
    err = capsys.readouterr().err
    if read_result(run) is None:  # the failure record needed space too: seen all the same
        assert f"could not record the failure in {run}: [Errno 28] No space left on device" in err
        mark = read_heartbeat(run)["unrecorded_failure"]
        assert "No space left on device" in mark["error"] and time.time() - mark["time"] < 600
        summary = summarize([Job([], cfg, run)])
        assert summary == {"failed": 1}
        assert f"failed: {run}: could not record the result (disk full?)" in capsys.readouterr().err
    else:
        assert read_result(run)["status"] == "failed"


@pytest.mark.slow
def test_a_full_disk_reaches_the_console_first_when_nothing_can_be_recorded(tmpfs):
    run = tmpfs / "run"
    process = start_train(args(steps_per_epoch=2000), run)
    wait_for(lambda: len([r for r in lines(run) if r["kind"] == "update"]) >= 10, what="training")
    fill(tmpfs)
    out, err = process.communicate(timeout=300)
    assert process.returncode != 0
    assert f"could not record the failure in {run}: [Errno 28] No space left on device" in err, err
    assert read_result(run) is None and "No space" in read_heartbeat(run)["unrecorded_failure"]["error"]
    assert (run / "metrics.jsonl").read_bytes().endswith(b"\n")
    assert not list(run.glob(".*.tmp-*"))


# ---------------------------------------------------------------------------- read-only
@pytest.mark.slow
def test_a_file_system_turned_read_only_mid_run_is_reported_on_the_console(tmp_path):
    run = tmp_path / "run"
    process = start_train(args(steps_per_epoch=2000), run)
    wait_for(lambda: len([r for r in lines(run) if r["kind"] == "update"]) >= 5, what="training")
    # A read-only view of the directory mounted over it: every new write in it fails (EROFS).
    bound = subprocess.run(["mount", "--bind", "-o", "ro", str(run), str(run)], capture_output=True)
    if bound.returncode != 0:
        process.kill()
        pytest.skip(f"cannot bind-mount read-only here: {bound.stderr.decode().strip()}")
    try:
        out, err = process.communicate(timeout=300)
    finally:
        subprocess.run(["umount", str(run)], check=True)
    assert process.returncode != 0
    assert f"could not record the failure in {run}: [Errno 30] Read-only file system" in err, err
    assert (run / "metrics.jsonl").read_bytes().endswith(b"\n")


# ---------------------------------------------------------------------------- a refused directory
@pytest.mark.slow
def test_a_refused_run_directory_is_left_byte_identical(tmp_path):
    run = tmp_path / "run"
    subprocess.run(
        [PY, "-m", "src.train", *args(), "--run-dir", str(run)], cwd=REPO, capture_output=True, check=True, timeout=300
    )
    before = snapshot(run)
    assert {"train.log", ".lock", "result.json", "metrics.jsonl"} <= set(before)
    out = subprocess.run(
        [PY, "-m", "src.train", *args(**{"optim.lr": 0.001}), "--run-dir", str(run)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 2 and "optim.lr: 0.05 -> 0.001" in out.stderr, out.stderr
    assert snapshot(run) == before


# ---------------------------------------------------------------------------- load
def checkpoints_seen(run: Path):
    """A should_stop that records, at each step, the epoch of the run directory's checkpoint."""
    seen = []

    def stop():
        path = run / "checkpoint.pt"
        epoch = torch.load(path, weights_only=True)["progress"]["epoch"] if path.exists() else None
        if not seen or seen[-1] != epoch:
            seen.append(epoch)
        return False

    return stop, seen


def test_checkpoints_every_n_epochs(tmp_path):
    stop, seen = checkpoints_seen(tmp_path)
    cfg = config(args(epochs=5, **{"train.checkpoint_every": 2}))
    assert train(cfg, tmp_path, should_stop=stop)["status"] == "completed"
    assert seen == [None, 2, 4]
    assert not (tmp_path / "checkpoint.pt").exists()


def test_a_minimum_interval_skips_epoch_checkpoints_but_a_stop_always_takes_one(tmp_path, reference):
    stop, seen = checkpoints_seen(tmp_path)
    calls = {"n": 0}

    def stop_in_epoch_2():
        stop()
        calls["n"] += 1
        return calls["n"] == 25

    cfg = config(args(**{"train.checkpoint_interval_min": 10}))
    assert train(cfg, tmp_path, should_stop=stop_in_epoch_2)["status"] == "interrupted"
    assert seen == [None]  # no epoch checkpoint within 10 minutes
    assert torch.load(tmp_path / "checkpoint.pt", weights_only=True)["progress"]["step"] == 25
    assert train(cfg, tmp_path)["resumed_at_steps"] == [25]
    assert strip_times(read_metrics(tmp_path)) == reference


def test_scratch_checkpoints_are_copied_to_the_run_directory_and_resume_anywhere(tmp_path, reference):
    run, scratch = tmp_path / "run", tmp_path / "node-local"
    cfg = config(args(epochs=2, **{"train.checkpoint_interval_min": 10, "train.scratch_dir": str(scratch)}))
    calls = {"n": 0}

    def crash_in_epoch_2():
        calls["n"] += 1
        if calls["n"] == 25:
            raise RuntimeError("node died")
        return False

    with pytest.raises(RuntimeError):
        train(cfg, run, should_stop=crash_in_epoch_2)
    (local,) = scratch.glob("*/checkpoint.pt")  # epoch 1, on the node only (the interval is 10 min)
    epoch_1 = torch.load(local, weights_only=True)["progress"]
    assert epoch_1["epoch"] == 1 and not (run / "checkpoint.pt").exists()
    assert train(cfg, run)["resumed_at_steps"] == [epoch_1["step"]]  # on the same node: from its scratch copy
    assert strip_times(read_metrics(run)) == reference and not local.exists()

    other = tmp_path / "other"  # preempted on one node, resumed on another
    assert train(cfg, other, should_stop=stop_after(25))["status"] == "interrupted"
    assert (other / "checkpoint.pt").exists()  # the stop's checkpoint is in the run directory
    for path in scratch.rglob("checkpoint.pt"):
        path.unlink()  # another node has no scratch copy
    assert train(cfg, other)["resumed_at_steps"] == [25]
    assert strip_times(read_metrics(other)) == reference


def test_the_heartbeat_is_on_a_time_interval_and_there_from_the_start(tmp_path):
    steps = []

    def watch():
        steps.append(read_heartbeat(tmp_path)["step"])  # exists at the first step already
        return False

    cfg = config(args(**{"train.heartbeat_every_s": 3600, "train.log_every": 1}))
    result = train(cfg, tmp_path, should_stop=watch)
    assert result["status"] == "completed"
    per_epoch = result["total_steps"] // cfg.train.epochs
    # the first step's beat and the first epoch's end; no step-count beats: the next is due in an hour
    assert set(steps) == {1, per_epoch}, steps


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("train.checkpoint_every", 0, "train.checkpoint_every: must be >= 1, got 0"),
        ("train.checkpoint_interval_min", -1, "train.checkpoint_interval_min: must be >= 0, got -1"),
        ("train.heartbeat_every_s", 0, "train.heartbeat_every_s: must be >= 1, got 0"),
    ],
)
def test_load_settings_are_validated_naming_the_field(field, value, message):
    with pytest.raises(ValueError, match=message):
        config(args(**{field: value})).validate()


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("reference")
    assert train(config(args()), run_dir)["status"] == "completed"
    return strip_times(read_metrics(run_dir))

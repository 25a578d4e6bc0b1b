"""Every run is recorded once and exactly, whatever happens to it: each test injects the
fault for real (SIGKILL / SIGTERM / SIGINT / SIGUSR2 to a real process, a truncated file on
disk, a second process, a full file system) and checks the records afterwards."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

import analysis
from analysis import columns as C
from src.config import RunConfig
from src.execute.stop import StopRequest
from src.plan import expand
from src.rundir import RunDirConflict, metrics_damage, read_metrics, read_result
from src.train import train

REPO = Path(__file__).resolve().parent.parent
PY = sys.executable


def args(steps_per_epoch: int = 18, epochs: int = 2, **extra) -> list[str]:
    """A small sparse MLP on generated binary data (about a millisecond a step; 10 % of the
    samples are held out, so an epoch is 0.9 x ``steps_per_epoch`` steps)."""
    return [
        "model.name=mlp_higgs",
        "data.name=synthetic",
        "data.kwargs.input_shape=[24]",
        "data.kwargs.num_classes=2",
        "data.kwargs.binary=true",
        f"data.kwargs.num_train={steps_per_epoch * 32}",
        "data.kwargs.num_test=100",
        "data.kwargs.class_separation=6.0",
        "data.batch_size=32",
        "data.eval_batch_size=100",
        f"train.epochs={epochs}",
        "train.threads=1",
        "train.log_every=5",
        "train.checkpoint_interval_min=0",
        "train.progress=false",
        "train.save_model=true",
        "optim.lr=0.05",
        "sparsity.density=0.5",
        "sparsity.update_frequency=7",
        "sparsity.prune_rate=0.3",
        *(f"{k}={v}" for k, v in extra.items()),
    ]


def config(argv: list[str]) -> RunConfig:
    """The RunConfig `python -m src.train argv` runs."""
    merged = OmegaConf.merge(OmegaConf.structured(RunConfig), OmegaConf.from_dotlist(argv))
    return RunConfig.from_dict(OmegaConf.to_container(merged, resolve=True))


def start_train(argv: list[str], run_dir: Path, **kw) -> subprocess.Popen:
    return subprocess.Popen(
        [PY, "-m", "src.train", *argv, "--run-dir", str(run_dir)],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        **kw,
    )


def wait_for(condition, timeout: float = 120.0, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.01)


def lines(run_dir: Path) -> list[dict]:
    """The metrics lines written so far (the last one may be half written: skipped)."""
    path = run_dir / "metrics.jsonl"
    rows = []
    for line in path.read_text().splitlines() if path.exists() else []:
        try:
            rows.append(json.loads(line))
        except ValueError:
            pass
    return rows


def strip_times(rows):
    return [{k: v for k, v in r.items() if "time" not in k} for r in rows]


def stop_after(n: int):
    calls = {"n": 0}

    def stop():
        calls["n"] += 1
        return calls["n"] == n

    return stop


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The records of the small run, trained once without any fault."""
    run_dir = tmp_path_factory.mktemp("reference")
    assert train(config(args()), run_dir)["status"] == "completed"
    return strip_times(read_metrics(run_dir))


# ---------------------------------------------------------------------------- 1, 2: duplicate records
@pytest.mark.slow
def test_kill_9_before_and_after_the_first_checkpoint_records_every_line_once(tmp_path):
    argv = args(steps_per_epoch=800)
    clean = tmp_path / "clean"
    train(config(argv), clean)
    run = tmp_path / "run"
    # Killed before its first checkpoint, with update lines already written.
    first = start_train(argv, run)
    wait_for(lambda: lines(run), what="the first metrics line")
    first.kill()
    first.wait()
    assert not (run / "checkpoint.pt").exists(), "the kill came too late for this test"
    # Killed again mid-epoch 2, with lines after the epoch-1 checkpoint.
    second = start_train(argv, run)
    wait_for(lambda: [r for r in lines(run) if r["kind"] == "update" and r["step"] > 850], what="epoch 2 lines")
    second.kill()
    second.wait()
    assert (run / "checkpoint.pt").exists() and read_result(run) is None
    assert train(config(argv), run)["status"] == "completed"
    assert strip_times(read_metrics(run)) == strip_times(read_metrics(clean))  # once each, bit-identical


def test_resume_after_lost_metrics_lines_starts_over_without_nul_padding(tmp_path, reference):
    cfg = config(args())
    assert train(cfg, tmp_path, should_stop=stop_after(25))["status"] == "interrupted"  # in epoch 2
    metrics = tmp_path / "metrics.jsonl"
    metrics.write_bytes(metrics.read_bytes()[:40])  # lines the checkpoint counts are gone
    assert train(cfg, tmp_path)["status"] == "completed"
    assert b"\0" not in metrics.read_bytes() and metrics_damage(tmp_path) is None
    assert strip_times(read_metrics(tmp_path)) == reference
    assert list(tmp_path.glob("checkpoint.pt.corrupt-*"))  # the unusable checkpoint is kept aside


# ---------------------------------------------------------------------------- 3: run directory identity
def test_a_run_directory_belongs_to_one_experiment(tmp_path):
    first = config(args())
    assert train(first, tmp_path, should_stop=stop_after(25))["status"] == "interrupted"
    other = config(args(**{"optim.lr": 0.001, "train.epochs": 3}))
    with pytest.raises(RunDirConflict) as refused:
        train(other, tmp_path, should_stop=lambda: pytest.fail("trained"))
    message = str(refused.value)
    assert "optim.lr: 0.05 -> 0.001" in message and "train.epochs: 2 -> 3" in message
    assert message.count("config hash") == 1 and "this run's is" in message
    assert json.loads((tmp_path / "config.json").read_text())["optim"]["lr"] == 0.05  # not rewritten
    assert read_result(tmp_path)["status"] == "interrupted"  # the first run's records are intact
    result = train(other, tmp_path, force=True)  # an explicit start over
    assert result["status"] == "completed" and result["config"]["optim"]["lr"] == 0.001
    assert result["resumed_at_steps"] == [] and [e["epoch"] for e in read_metrics(tmp_path, "epoch")] == [1, 2, 3]


@pytest.mark.slow
def test_cli_refuses_a_finished_run_directory_of_another_config(tmp_path):
    assert train(config(args()), tmp_path)["status"] == "completed"
    out = subprocess.run(
        [PY, "-m", "src.train", *args(**{"optim.lr": 0.001}), "--run-dir", str(tmp_path)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 2 and "optim.lr: 0.05 -> 0.001" in out.stderr, out.stderr
    assert read_result(tmp_path)["config"]["optim"]["lr"] == 0.05


# ---------------------------------------------------------------------------- 4, 5: concurrency
def launch(*argv, **kw) -> subprocess.Popen:
    return subprocess.Popen(
        [PY, "-m", "src.launch", *argv], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **kw
    )


def sweep_args(tmp_path, steps_per_epoch=3000, epochs=20):
    # setup=smoke with a long epoch, so the job is surely running while the test acts on it.
    return [
        "-m",
        "setup=smoke",
        "model.name=mlp_higgs",
        "data.kwargs.input_shape=[24]",
        "data.kwargs.num_classes=2",
        "+data.kwargs.binary=true",
        f"data.kwargs.num_train={steps_per_epoch * 32}",
        f"train.epochs={epochs}",
        f"runs_root={tmp_path}",
        "name=s",
        "hydra.launcher.threads_per_job=1",
    ]


def holder_pid(run_dir: Path) -> int | None:
    try:
        text = (run_dir / ".lock").read_text()
    except FileNotFoundError:
        return None
    return int(text.rsplit("pid ", 1)[1]) if "pid " in text else None


@pytest.mark.slow
def test_a_second_launcher_skips_the_run_the_first_is_training_and_signals_are_forwarded(tmp_path):
    argv = sweep_args(tmp_path)
    (job,) = expand(argv[1:], check_data=False)
    first = launch(*argv)
    try:
        wait_for(lambda: holder_pid(job.run_dir) and lines(job.run_dir), what="the first launcher's job")
        second = subprocess.run([PY, "-m", "src.launch", *argv], cwd=REPO, capture_output=True, text=True, timeout=300)
        assert second.returncode == 0, second.stdout + second.stderr
        assert "summary: 1 running" in second.stdout
        job_log = "".join(p.read_text() for p in (tmp_path / ".hydra" / "s").glob("*/0/job.log"))
        assert f"running elsewhere (host {os.uname().nodename}, pid {holder_pid(job.run_dir)})" in job_log
        assert len(list((tmp_path / ".hydra" / "s").iterdir())) == 2  # one log directory per launch
        first.send_signal(signal.SIGTERM)  # passed on to the job: checkpoint, record, exit
        out, _ = first.communicate(timeout=120)
    finally:
        first.kill()
    assert "summary: 1 interrupted" in out, out
    result = read_result(job.run_dir)
    assert result["status"] == "interrupted" and (job.run_dir / "checkpoint.pt").exists()
    assert metrics_damage(job.run_dir) is None  # one writer: no interleaved lines


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGINT])
def test_killing_or_interrupting_the_launcher_stops_its_jobs(tmp_path, sig):
    argv = sweep_args(tmp_path)
    (job,) = expand(argv[1:], check_data=False)
    launcher = launch(*argv)
    wait_for(lambda: holder_pid(job.run_dir) and lines(job.run_dir), what="the job")
    child = holder_pid(job.run_dir)
    launcher.send_signal(sig)  # SIGKILL: the kernel tells the job; SIGINT: the launcher passes it on
    out, _ = launcher.communicate(timeout=120)
    if sig == signal.SIGINT:
        assert "summary: 1 interrupted" in out, out
    try:
        wait_for(lambda: not _alive(child), timeout=60, what="the orphaned job to stop")
    finally:
        if _alive(child):
            os.kill(child, signal.SIGKILL)
    assert read_result(job.run_dir)["status"] == "interrupted"  # it checkpointed on its way out
    assert (job.run_dir / "checkpoint.pt").exists()


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except FileNotFoundError:
        return False


# ---------------------------------------------------------------------------- 6: signals
@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT, signal.SIGUSR2])
def test_a_signal_checkpoints_at_the_next_step_and_records_interrupted(tmp_path, sig, reference):
    argv = args(steps_per_epoch=800)
    process = start_train(argv, tmp_path)
    wait_for(lambda: [r for r in lines(tmp_path) if r["kind"] == "update" and r["step"] > 100], what="training")
    process.send_signal(sig)
    out, err = process.communicate(timeout=120)
    assert f"received {sig.name}" in err, err
    result = read_result(tmp_path)
    assert result["status"] == "interrupted" and result["steps"] > 100
    assert result["epochs_completed"] == 0  # stopped mid-epoch, not at the next epoch checkpoint
    ckpt = torch.load(tmp_path / "checkpoint.pt", weights_only=True)
    assert ckpt["progress"]["step"] == result["steps"]
    if sig == signal.SIGTERM:  # and it resumes exactly (compared with a run without the signal)
        clean = tmp_path.parent / "clean"
        train(config(argv), clean)
        assert train(config(argv), tmp_path)["status"] == "completed"
        assert strip_times(read_metrics(tmp_path)) == strip_times(read_metrics(clean))


def test_a_second_ctrl_c_aborts_at_once():
    with StopRequest.on_signals() as stop:
        os.kill(os.getpid(), signal.SIGINT)
        assert stop() and stop.received == signal.SIGINT
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(1)


# ---------------------------------------------------------------------------- 7, 8, 9: corrupt files
@pytest.mark.slow
def test_a_truncated_result_is_reported_and_the_run_done_again(tmp_path):
    argv = [
        "-m",
        "setup=smoke",
        "train.epochs=1",
        "seed=1,2",
        f"runs_root={tmp_path}",
        "name=s",
        "hydra.launcher.threads_per_job=1",
    ]
    jobs = expand(argv[1:], check_data=False)
    for job in jobs:
        train(job.config, job.run_dir)
    damaged = jobs[0].run_dir / "result.json"
    damaged.write_text(damaged.read_text()[:100])
    out = subprocess.run([PY, "-m", "src.launch", *argv], cwd=REPO, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout + out.stderr
    assert f"unreadable run record {damaged}" in out.stderr
    assert "summary: 1 completed, 1 skipped" in out.stdout
    assert read_result(jobs[0].run_dir)["status"] == "completed"


def test_a_truncated_checkpoint_is_kept_aside_and_the_run_starts_over(tmp_path, reference):
    cfg = config(args())
    train(cfg, tmp_path, should_stop=stop_after(25))
    checkpoint = tmp_path / "checkpoint.pt"
    checkpoint.write_bytes(checkpoint.read_bytes()[: checkpoint.stat().st_size // 2])
    truncated = checkpoint.read_bytes()
    result = train(cfg, tmp_path)
    assert result["status"] == "completed" and result["resumed_at_steps"] == []
    (aside,) = tmp_path.glob("checkpoint.pt.corrupt-*")
    assert aside.read_bytes() == truncated
    assert strip_times(read_metrics(tmp_path)) == reference


def test_a_garbage_config_of_a_finished_run_is_recovered_from_its_result(tmp_path):
    run = tmp_path / "run"
    train(config(args()), run)
    (run / "config.json").write_text("\x00garbage{")
    assert train(config(args()), run, should_stop=lambda: pytest.fail("trained again"))["status"] == "completed"
    (row,) = analysis.load_runs(tmp_path, cache=False).to_dict("records")
    assert row[C.STATUS] == "completed" and row["model.name"] == "mlp_higgs"
    assert "config.json unreadable; config taken from result.json" in row[C.DAMAGE]


# ---------------------------------------------------------------------------- 10: full disk
@pytest.fixture
def small_disk(tmp_path):
    """A directory on a 600 kB file system (a tmpfs when we may mount one), else a directory
    whose files this test's processes may not grow beyond 600 kB (RLIMIT_FSIZE)."""
    mount = tmp_path / "disk"
    mount.mkdir()
    try:
        mounted = (
            subprocess.run(
                ["mount", "-t", "tmpfs", "-o", "size=600k", "tmpfs", str(mount)], capture_output=True
            ).returncode
            == 0
        )
    except OSError:  # no mount command
        mounted = False
    limit = None
    if not mounted:
        import resource

        def limit():
            signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
            resource.setrlimit(resource.RLIMIT_FSIZE, (600_000, 600_000))

    yield mount, limit
    if mounted:
        subprocess.run(["umount", str(mount)], check=True)


@pytest.mark.slow
def test_a_full_disk_leaves_no_temporary_file_and_the_error_is_kept(small_disk):
    disk, limit = small_disk
    run = disk / "run"
    run.mkdir()
    (run / ".checkpoint.pt.tmp-99999").write_bytes(b"x" * 1000)  # left by a killed run
    # mlp_cifar10: a 2 x 14 MB checkpoint (weights + momentum) that cannot fit.
    argv = args(
        **{
            "model.name": "mlp_cifar10",
            "data.kwargs.input_shape": "[3,32,32]",
            "data.kwargs.num_classes": 10,
            "data.kwargs.binary": "false",
        }
    )
    out = subprocess.run(
        [PY, "-m", "src.train", *argv, "--run-dir", str(run)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
        preexec_fn=limit,
    )
    assert out.returncode != 0
    assert not list(run.glob(".*.tmp-*")), list(run.iterdir())  # neither the stale one nor its own
    result = read_result(run)  # the failed write freed its space: the failure is recorded
    assert result["status"] == "failed" and (
        "No space left on device" in result["error"] or "File too large" in result["error"]
    ), out.stderr
    assert result["error"] in out.stderr


# ---------------------------------------------------------------------------- 11, 12: security
class _Planted:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (Path(self.marker),))


def test_a_planted_pickle_is_never_executed(tmp_path):
    run, marker = tmp_path / "run", tmp_path / "pwned"
    cfg = config(args())
    train(cfg, run, should_stop=stop_after(25))
    torch.save({"model": _Planted(str(marker))}, run / "checkpoint.pt")
    result = train(cfg, run)
    assert not marker.exists()
    assert result["status"] == "completed" and list(run.glob("checkpoint.pt.corrupt-*"))
    final = torch.load(run / "model_final.pt", weights_only=True)  # the final weights load safely too
    assert set(final) == {"model", "masks"}


@pytest.mark.parametrize("name", ["../../x", "/tmp/x", "a/b", "..", ".hidden", ""])
def test_a_sweep_name_is_one_safe_path_component(name):
    with pytest.raises(ValueError, match="name: .* must be one path component"):
        expand(["setup=smoke", f"name='{name}'"], check_data=False)


# ---------------------------------------------------------------------------- validation gaps
@pytest.mark.parametrize(
    "override, message",
    [
        ("optim.lr=nan", "optim.lr: must be a finite number >= 0, got nan"),
        ("optim.lr=inf", "optim.lr: must be a finite number >= 0, got inf"),
        ("optim.momentum=-0.5", "optim.momentum: must be >= 0"),
        ("optim.weight_decay=-1e-4", "optim.weight_decay: must be >= 0"),
        ("train.max_steps=0", "train.max_steps: must be >= 1, got 0"),
        ("sparsity.gamma=-1", "sparsity.gamma: must be >= 0"),
        ("+data.kwargs.num_trian=10", r"data.kwargs: unknown key\(s\) \['num_trian'\]; valid: \[.*'num_train'"),
        ("+model.kwargs.dropuot=0.1", r"model.kwargs: unknown key\(s\) \['dropuot'\]; valid: \[\]"),
    ],
)
def test_values_that_failed_inside_the_job_are_refused_before_launch(override, message):
    with pytest.raises(ValueError, match=message):
        expand(["setup=smoke", override], check_data=False)


# ---------------------------------------------------------------------------- analysis
@pytest.mark.parametrize("damage", ["nul_padded", "duplicated", "result_null", "result_list"])
def test_damaged_records_are_reported_not_counted(tmp_path, damage):
    from tests import analysis_fixtures as fx

    run = fx.write_run(tmp_path / "run", fx.config(), test_acc=50.0)
    metrics, result = run / "metrics.jsonl", run / "result.json"
    if damage == "nul_padded":
        metrics.write_bytes(metrics.read_bytes() + bytes(300))
    if damage == "duplicated":
        metrics.write_bytes(metrics.read_bytes() * 2)
    if damage == "result_null":
        result.write_text("null")
    if damage == "result_list":
        result.write_text("[1, 2]")
    runs = analysis.load_runs(tmp_path, cache=False)
    assert runs[C.STATUS].tolist() == [C.DAMAGED]
    assert analysis.completeness(runs).problems[C.STATUS].tolist() == [C.DAMAGED]

"""Nothing outside a run's own files changes what a run computes or records. Each fault is
injected for real, through the command line: a result.json copied from another run, real
symbolic links at the run directory, the sweep directory and the files above them, a saved
plan edited or cut short on disk, two real `--detach` processes against the local SLURM
cluster at once, and a real full tmpfs under the launch's files."""

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from src.plan import expand
from tests.test_faults import args
from tests.test_run_files import snapshot

REPO = Path(__file__).resolve().parent.parent
PY = sys.executable
SMOKE = ["setup=smoke", "train.epochs=1", "train.threads=1"]


def run(*cmd, timeout=300, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([PY, *cmd], cwd=REPO, capture_output=True, text=True, timeout=timeout, **kw)


def cli(*argv, **kw) -> subprocess.CompletedProcess:
    return run("-m", "src.launch", *argv, **kw)


def train_cli(argv: list[str], run_dir: Path) -> subprocess.CompletedProcess:
    return run("-m", "src.train", *argv, "--run-dir", str(run_dir))


def no_traceback(out: subprocess.CompletedProcess) -> None:
    assert "Traceback" not in out.stdout + out.stderr, out.stdout + out.stderr


# ---------------------------------------------------------------------------- 2: a copied result
@pytest.mark.slow
@pytest.mark.parametrize("entry", ["src.train", "src.launch --run-config"])
def test_a_result_copied_from_another_run_is_refused_and_the_directory_left_byte_identical(tmp_path, entry):
    a, b = tmp_path / "a", tmp_path / "b"
    for run_dir, lr in ((a, 0.05), (b, 0.01)):
        out = train_cli(args(**{"optim.lr": lr}), run_dir)
        assert out.returncode == 0, out.stderr
    shutil.copy(a / "result.json", b / "result.json")  # b's own config.json stays
    before = snapshot(b)
    if entry == "src.train":
        out = train_cli(args(**{"optim.lr": 0.01}), b)
    else:
        out = cli("--run-config", str(b / "config.json"), "--run-dir", str(b))
    assert out.returncode != 0, out.stdout + out.stderr
    assert "completed" not in out.stdout, out.stdout  # not the other run's accuracy
    assert "result.json" in out.stderr and "another experiment" in out.stderr, out.stderr
    assert "optim.lr: 0.05 -> 0.01" in out.stderr, out.stderr
    no_traceback(out)
    assert snapshot(b) == before  # train.log included: nothing appended before the refusal


# ---------------------------------------------------------------------------- 3: links above the run
@pytest.mark.slow
@pytest.mark.parametrize("link", ["run dir (launch)", "run dir (src.train)", "sweep dir (launch)"])
def test_a_run_or_sweep_directory_that_is_a_link_is_refused_naming_it(tmp_path, link):
    overrides = [*SMOKE, f"runs_root={tmp_path / 'runs'}", "name=linked"]
    (job,) = expand(overrides, check_data=False)
    elsewhere = tmp_path / "elsewhere"
    target = elsewhere if link.startswith("run dir") else elsewhere / job.run_dir.name
    target.mkdir(parents=True)
    (target / "metrics.jsonl").write_text("the user's precious lines\n")
    (target / "config.json").write_text("not a run's config\n")
    before = snapshot(elsewhere)
    if link.startswith("run dir"):
        job.run_dir.parent.mkdir(parents=True)
        job.run_dir.symlink_to(target)
        named = job.run_dir
    else:
        job.run_dir.parent.parent.mkdir(parents=True)
        job.run_dir.parent.symlink_to(elsewhere)
        named = job.run_dir.parent
    if link == "run dir (src.train)":
        out = train_cli(args(), job.run_dir)
    else:
        out = cli(*overrides)
    assert out.returncode != 0, out.stdout + out.stderr
    assert "symbolic link" in out.stderr and str(named) in out.stderr, out.stderr
    no_traceback(out)
    assert snapshot(elsewhere) == before


@pytest.mark.slow
@pytest.mark.parametrize("link", ["launch dir", "job dir"])
def test_the_launchs_own_directories_are_never_written_through_a_link(tmp_path, link):
    """The launch's sweep dir (`hydra.sweep.dir`: its plan, multirun.yaml, job logs) and a
    job's directory in it (`<sweep dir>/0`: its config.json and job.log)."""
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    for name in ("config.json", "job.log", "plan.json", "multirun.yaml"):
        (elsewhere / name).write_text("the user's own file\n")
    before = snapshot(elsewhere)
    sweep_dir = tmp_path / "sweep"
    if link == "launch dir":
        sweep_dir.symlink_to(elsewhere)
        named = sweep_dir
    else:
        sweep_dir.mkdir()
        (sweep_dir / "0").symlink_to(elsewhere)
        named = sweep_dir / "0"
    out = cli("-m", *SMOKE, f"runs_root={tmp_path / 'runs'}", "name=j", f"hydra.sweep.dir={sweep_dir}")
    assert out.returncode != 0, out.stdout + out.stderr
    assert "symbolic link" in out.stderr and str(named) in out.stderr, out.stderr
    no_traceback(out)
    assert snapshot(elsewhere) == before
    if link == "job dir":
        shown = cli("status", str(sweep_dir))
        assert "symbolic link" in shown.stdout and str(named) in shown.stdout, shown.stdout + shown.stderr


@pytest.mark.slow
def test_hydras_multirun_yaml_is_never_written_through_a_link(tmp_path):
    victim = tmp_path / "victim.yaml"
    victim.write_text("keep\n")
    sweep_dir = tmp_path / "sweep"
    sweep_dir.mkdir()
    (sweep_dir / "multirun.yaml").symlink_to(victim)
    out = cli("-m", *SMOKE, f"runs_root={tmp_path / 'runs'}", "name=m", f"hydra.sweep.dir={sweep_dir}")
    assert victim.read_text() == "keep\n"
    assert out.returncode == 0, out.stdout + out.stderr
    assert not (sweep_dir / "multirun.yaml").is_symlink()  # the link itself was replaced


def test_the_analysis_cache_never_writes_through_a_link_at_a_temporary_name(tmp_path):
    """The cache's temporary names were `.<name>.tmp-<pid>`: predictable, so a planted link
    there made the report overwrite its target and the cache itself become a link."""
    import analysis
    from tests import analysis_fixtures as fx

    sweep = tmp_path / "sweep"
    fx.write_run(sweep / "r1", fx.config(**{"sparsity.density": 0.1}), test_acc=90.0)
    victims = {}
    for name in (".analysis_cache.parquet", ".analysis_cache.parquet.sha256"):
        victims[name] = tmp_path / f"victim-{name}"
        victims[name].write_text("keep")
        (sweep / f".{name}.tmp-{os.getpid()}").symlink_to(victims[name])
    runs = analysis.load_runs(sweep)
    assert len(runs) == 1
    assert all(v.read_bytes() == b"keep" for v in victims.values())
    cache = sweep / ".analysis_cache.parquet"
    assert cache.is_file() and not cache.is_symlink()


def test_every_temporary_file_has_an_unpredictable_name():
    """No writer builds a temporary file's name from its pid or a fixed suffix (such a name
    can be planted as a link beforehand): they go through `tempfile` / `atomic_write`."""
    import re

    pattern = re.compile(r"""tmp-\{os\.getpid\(\)\}|with_suffix\(["'][^"']*\.tmp["']\)|["'][^"'\s]*\.tmp["']""")
    found = []
    for folder in ("src", "analysis", "scripts", "bench", "hydra_plugins"):
        for path in sorted((REPO / folder).rglob("*.py")):
            for number, line in enumerate(path.read_text().splitlines(), 1):
                if pattern.search(line):
                    found.append(f"{path.relative_to(REPO)}:{number}: {line.strip()}")
    assert not found, "\n".join(found)


# ---------------------------------------------------------------------------- 4: the saved plan
@pytest.mark.slow
def test_a_plan_edited_after_its_launch_never_runs_another_config_in_a_run_directory(tmp_path):
    """A launch that finds a saved plan in its sweep dir (here: the same sweep dir again,
    through an interpolation) must not run a config edited into it (magnitude -> snip)."""
    sweep_dir = tmp_path / "sweep"
    overrides = [*SMOKE, "criterion=magnitude", f"runs_root={tmp_path / 'runs'}", "name=p"]
    first = cli("-m", *overrides, f"hydra.sweep.dir={sweep_dir}")
    assert first.returncode == 0, first.stdout + first.stderr
    (job,) = expand(overrides, check_data=False)
    shutil.rmtree(job.run_dir)  # to be trained again
    configs = sweep_dir / "plan-configs.jsonl"
    assert '"magnitude"' in configs.read_text()
    configs.write_text(configs.read_text().replace('"magnitude"', '"snip"'))
    again = cli(
        "-m", *overrides, "hydra.sweep.dir=${oc.env:SWEEP_DIR}", env={**os.environ, "SWEEP_DIR": str(sweep_dir)}
    )
    recorded = json.loads((job.run_dir / "config.json").read_text()) if (job.run_dir / "config.json").exists() else {}
    assert recorded.get("sparsity", {}).get("criterion") in (None, "magnitude"), again.stdout + again.stderr
    if not recorded:  # refused: the damaged plan is named
        assert str(configs) in again.stderr, again.stdout + again.stderr
    no_traceback(again)


def test_each_planned_config_is_checked_against_its_runs_identity_hash_before_it_runs(tmp_path):
    """What the launchers read (`launch_plan`): a config edited on disk between the plan's
    saving and its reading is refused, naming the file and line, before any job starts."""
    from src.plan import PlanDamaged, launch_plan, planned_jobs, write_plan

    overrides = [*SMOKE, "criterion=magnitude,snip", f"runs_root={tmp_path / 'runs'}", "name=p"]
    jobs = expand(overrides, check_data=False)
    sweep_dir = tmp_path / "sweep"
    write_plan(sweep_dir, jobs, overrides)
    assert [j.config.sparsity.criterion for j in planned_jobs(sweep_dir).values()] == ["magnitude", "snip"]
    configs = sweep_dir / "plan-configs.jsonl"
    first, second = configs.read_text().splitlines()
    configs.write_text(first.replace('"magnitude"', '"snip"') + "\n" + second + "\n")
    with pytest.raises(PlanDamaged, match=f"damaged plan {configs}:1: .*identity hash"):
        planned_jobs(sweep_dir)
    with pytest.raises(SystemExit, match=f"^error: damaged plan {configs}:1"):
        launch_plan(sweep_dir)


@pytest.mark.slow
def test_a_truncated_plan_never_blocks_status_of_the_other_launches(tmp_path):
    overrides = ["-m", *SMOKE, "optim.lr=0.05,0.01", f"runs_root={tmp_path}", "name=cut"]
    first = cli(*overrides)
    assert first.returncode == 0, first.stdout + first.stderr
    (plan,) = (tmp_path / ".hydra" / "cut").glob("*/plan.json")
    plan.write_bytes(plan.read_bytes()[: len(plan.read_bytes()) // 2])
    time.sleep(1.1)  # the next launch's sweep dir is another one (time-pid)
    second = cli(*overrides)
    assert second.returncode == 0, second.stdout + second.stderr
    out = cli("status", *overrides)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "total" in out.stdout and " 2 " in out.stdout.split("total")[1], out.stdout  # 2 completed
    assert str(plan) in out.stderr and len([x for x in out.stderr.splitlines() if str(plan) in x]) == 1, out.stderr
    no_traceback(out)
    # the damaged launch itself: its plan is named in one error line
    own = cli("status", str(plan.parent))
    assert own.returncode != 0 and str(plan) in own.stderr, own.stdout + own.stderr
    no_traceback(own)


@pytest.mark.slow
def test_a_truncated_plan_configs_file_is_named_in_one_line(tmp_path):
    overrides = ["-m", *SMOKE, "optim.lr=0.05,0.01", f"runs_root={tmp_path}", "name=cut"]
    first = cli(*overrides)
    assert first.returncode == 0, first.stdout + first.stderr
    a, b = expand(overrides[1:], check_data=False)
    shutil.copy(a.run_dir / "result.json", b.run_dir / "result.json")  # damaged: status explains it from the plan
    (configs,) = (tmp_path / ".hydra" / "cut").glob("*/plan-configs.jsonl")
    data = configs.read_bytes()
    configs.write_bytes(data[: data.index(b"\n") + 40])  # the second line cut short
    out = cli("status", *overrides)
    no_traceback(out)
    assert str(configs) in out.stderr, out.stdout + out.stderr
    assert "damaged" in out.stdout and "completed" in out.stdout, out.stdout


# ---------------------------------------------------------------------------- 5: --detach twice at once
@pytest.mark.slurm
@pytest.mark.slow
def test_two_detached_submissions_at_once_submit_each_run_once(slurm_cluster, tmp_path):
    from src.plan import sweep_of
    from src.status import status
    from tests.slurm_cluster import slurm_args

    sweep = [
        *SMOKE,
        "seed=1,2",
        f"runs_root={tmp_path}",
        "name=race",
        *slurm_args(slurm_cluster),
        "+hydra.launcher.additional_parameters.hold=true",  # queued until released
    ]
    # A busy controller: sbatch takes 3 s, so the two launches surely overlap between reading
    # the queue and writing their submission records.
    slow = tmp_path / "bin"
    slow.mkdir()
    (slow / "sbatch").write_text(f'#!/bin/sh\nsleep 3\nexec {shutil.which("sbatch")} "$@"\n')
    (slow / "sbatch").chmod(0o755)
    env = {**os.environ, "PATH": f"{slow}{os.pathsep}{os.environ['PATH']}"}
    procs = [
        subprocess.Popen(
            [PY, "-m", "src.launch", *sweep, "--detach"],
            env=env,
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    outs = [p.communicate(timeout=600) for p in procs]
    records = [json.loads(p.read_text()) for p in (tmp_path / ".hydra" / "race").glob("*/submission.json")]
    ids = {j["job_id"].split("_")[0] for r in records for j in r["jobs"]}
    try:
        assert all(p.returncode == 0 for p in procs), outs
        queued = subprocess.run(
            ["squeue", "-h", "-r", "-o", "%i", "-j", ",".join(sorted(ids))], capture_output=True, text=True
        ).stdout.split()
        assert len(queued) == 2, (queued, outs)  # one job per run, not two
        assert sorted(len(r["jobs"]) for r in records) == [0, 2], records
        text = "".join(o for out in outs for o in out)
        assert "2 already finished" not in text and "2 queued" in text, text
        assert set(status(sweep, planner=sweep_of).state) == {"queued"}
    finally:
        if ids:
            subprocess.run(["scancel", *ids], check=False)


# ---------------------------------------------------------------------------- 6: links and locks in status
@pytest.mark.slow
def test_status_says_which_link_was_refused_and_where(tmp_path):
    victim = tmp_path / "victim.txt"
    victim.write_text("keep\n")
    sweep_dir = tmp_path / "sweep"
    overrides = ["-m", *SMOKE, "seed=1,2,3", f"runs_root={tmp_path / 'runs'}", "name=l"]
    lock_job, log_job, joblog_job = expand(overrides[1:], check_data=False)
    for job in (lock_job, log_job):
        job.run_dir.mkdir(parents=True)
    (lock_job.run_dir / ".lock").symlink_to(victim)
    (log_job.run_dir / "train.log").symlink_to(victim)
    (sweep_dir / "2").mkdir(parents=True)
    (sweep_dir / "2" / "job.log").symlink_to(victim)
    launched = cli(*overrides, f"hydra.sweep.dir={sweep_dir}")
    assert launched.returncode != 0
    assert victim.read_text() == "keep\n"
    out = cli("status", str(sweep_dir))
    no_traceback(out)
    lines = out.stdout.splitlines()
    for job, link in (
        (lock_job, lock_job.run_dir / ".lock"),
        (log_job, log_job.run_dir / "train.log"),
        (joblog_job, sweep_dir / "2" / "job.log"),
    ):
        (line,) = [x for x in lines if job.run_dir.name in x]
        assert "symbolic link" in line and str(link) in line, out.stdout
    assert "killed before its first heartbeat" not in out.stdout and "missing" not in out.stdout, out.stdout


# ---------------------------------------------------------------------------- 7: a full disk at launch
@pytest.fixture
def tiny_disk(tmp_path):
    """A real 64 kB tmpfs (needs root and mount)."""
    mount = tmp_path / "disk"
    mount.mkdir()
    try:
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mount)], capture_output=True)
    except OSError as error:
        pytest.skip(f"cannot mount a tmpfs here: {error}")
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (root needed): {done.stderr.decode().strip()}")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=True)


def fill_leaving(disk: Path, pages: int) -> None:
    """Another process fills the file system, then gives back exactly `pages` blocks."""
    filler = disk / "filler"
    subprocess.run(["dd", "if=/dev/zero", f"of={filler}", "bs=4k"], capture_output=True)
    assert os.statvfs(disk).f_bavail == 0
    os.truncate(filler, filler.stat().st_size - pages * os.statvfs(disk).f_bsize)
    assert os.statvfs(disk).f_bavail == pages


@pytest.mark.slow
@pytest.mark.parametrize("room", [0, 2], ids=["plan", "multirun.yaml"])
def test_a_full_disk_while_saving_the_plan_or_multirun_yaml_is_one_error_line(tmp_path, tiny_disk, room):
    """room=0: the plan cannot be saved; room=2: the plan's two files fit, Hydra's
    multirun.yaml does not."""
    sweep_dir = tiny_disk / "sweep"
    fill_leaving(tiny_disk, room)
    out = cli("-m", *SMOKE, f"runs_root={tmp_path / 'runs'}", "name=full", f"hydra.sweep.dir={sweep_dir}")
    assert out.returncode != 0, out.stdout + out.stderr
    no_traceback(out)
    errors = [x for x in out.stderr.splitlines() if x.startswith("error:")]
    assert len(errors) == 1 and "No space left on device" in errors[0], out.stderr
    left = sorted(p.name for p in sweep_dir.rglob("*")) if sweep_dir.exists() else []
    assert "multirun.yaml" not in left and not [n for n in left if ".tmp" in n], left  # nothing half-written
    assert not list((tmp_path / "runs").rglob("config.json"))  # no run started

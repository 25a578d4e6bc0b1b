"""Sweep status from the run directories (heartbeats, results), Hydra sweep syntax, the help
pages and the console scripts. The SLURM side (packing, --detach, queued) is in test_sweep_slurm.py."""

import functools
import importlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import tomllib

from src.launch import main as launch_main
from src.plan import expand, sweep_of
from src.rundir import read_heartbeat
from src.status import counts
from src.status import status as status_of_target
from src.train import main as train_main

# overrides composed by the planner, as `python -m src.launch status` does
status = functools.partial(status_of_target, planner=sweep_of)

REPO = Path(__file__).resolve().parent.parent


def cli(module, *args, timeout=120):
    return subprocess.run(
        [sys.executable, "-m", module, *args], capture_output=True, text=True, timeout=timeout, cwd=REPO
    )


@pytest.mark.slow
def test_status_shows_a_running_run_and_a_killed_one_as_stale(tmp_path):
    sweep = [
        "setup=smoke",
        "train.epochs=500",
        "train.log_every=5",
        "train.heartbeat_every_s=1",
        "seed=1,2",
        f"runs_root={tmp_path}",
        "name=st",
    ]
    proc = subprocess.Popen(
        [sys.executable, "-m", "src.launch", *[a.replace("seed=1,2", "seed=1") for a in sweep]],
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 120
        while True:
            table = status(sweep)
            if table.loc[0, "state"] == "running" and table.loc[0, "step"]:
                break
            assert proc.poll() is None and time.monotonic() < deadline, table.to_dict("records")
            time.sleep(0.5)
        run = table.iloc[0]
        assert (run.pid, run.job) == (proc.pid, None) and run.detail.startswith(f"{run.host} pid {proc.pid} epoch ")
        assert "/500 step " in run.detail, run.detail
        assert table.loc[1, "state"] == "missing"
        # its lock is held: running, however old its heartbeat looks
        assert status(sweep, stale_after=60, now=time.time() + 3600).loc[0, "state"] == "running"

        os.kill(proc.pid, signal.SIGKILL)  # no result, no clean-up: only the heartbeat remains
        proc.wait()
    finally:
        if proc.poll() is None:
            proc.kill()
    table = status(sweep)
    assert list(table["state"]) == ["stale", "missing"]
    assert "killed?" in table.loc[0, "detail"] and read_heartbeat(table.loc[0, "run_dir"])["pid"] == proc.pid
    grid = counts(table)
    assert grid.loc["total", "runs"] == 2 and grid.loc["total", "stale"] == 1 and grid.loc["total", "missing"] == 1

    text = cli("src.launch", "status", "-m", *sweep)
    assert text.returncode == 0 and "stale:" in text.stdout and "killed?" in text.stdout, text.stdout + text.stderr
    by_dir = cli("src.launch", "status", str(tmp_path / "st"))  # the runs found in a runs directory
    assert "stale" in by_dir.stdout and "missing" not in by_dir.stdout, by_dir.stdout + by_dir.stderr


def test_every_hydra_sweep_syntax_expands():
    jobs = expand(
        ["setup=smoke", "criterion=glob(snip*)", "seed=range(1,3)", "sparsity.density=choice(0.1,0.2)"],
        check_data=False,
    )
    assert sorted({j.config.sparsity.criterion for j in jobs}) == ["snip", "snip_half", "snip_plus"]
    assert {j.config.train.seed for j in jobs} == {1, 2} and {j.config.sparsity.density for j in jobs} == {0.1, 0.2}
    assert len(jobs) == 12


@pytest.mark.parametrize(
    "args, message",
    [
        (["setup=smoke", "sparsity.density=abc"], "could not be converted to Float"),  # Hydra's cause kept
        (["-m", "setup=smoke", "sparsity.density=interval(0.1,0.5)"], "interval() needs a sampling sweeper"),
        (["-m", "setup=smoke", "criterion=glob(nothing*)"], "no run"),
        (["setup=smoke", "seed=1,2", "--detach"], "--detach: needs a SLURM launcher"),
        (
            ["-m", "setup=smoke", "seed=1,2", "launcher=slurm", "hydra.launcher.runs_per_job=0"],
            "hydra.launcher.runs_per_job: must be an integer >= 1, got 0",
        ),
    ],
)
def test_launch_errors_keep_their_cause(args, message, capsys):
    assert launch_main([*args, "--dry-run" if "--detach" not in args else "runs_root=/nonexistent/x"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err, err


def test_help_pages(capsys):
    assert launch_main(["--help"]) == 0
    page = capsys.readouterr().out
    for word in (
        "--dry-run",
        "--detach",
        "status",
        "sweeps (add with +sweeps=NAME): conv_dense",
        "criterion:",
        "runs_per_job",
        "examples:",
    ):
        assert word in page, word
    assert train_main(["--help"]) == 0 and capsys.readouterr().out.startswith("usage: python -m src.train")
    assert train_main(["sparsity.density=abc", "--run-dir", "/nonexistent/never"]) == 2
    assert capsys.readouterr().err.splitlines() == [
        "error: sparsity.density: Value 'abc' of type 'str' could not be converted to Float"
    ]
    assert train_main(["sparsity.density=1.5", "--run-dir", "/nonexistent/never"]) == 2
    assert capsys.readouterr().err.startswith("error: sparsity.density: must be in (0, 1]")


def test_console_scripts_point_at_entry_points():
    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    assert set(scripts) == {"dst-launch", "dst-train", "dst-report"}
    for target in scripts.values():
        module, function = target.split(":")
        assert callable(getattr(importlib.import_module(module), function)), target


@pytest.mark.slow
def test_a_pack_runs_its_runs_side_by_side_and_skips_finished_ones(tmp_path):
    from src.execute.child import run_in_child
    from src.pack import Pack, PackedRun
    from src.rundir import read_result

    jobs = expand(["setup=smoke", "train.epochs=1", "seed=1,2,3", f"runs_root={tmp_path}"], check_data=False)
    runs = [PackedRun(i, j.overrides, str(j.run_dir), j.config.to_dict()) for i, j in enumerate(jobs)]
    pack = Pack(run_in_child, str(tmp_path / "sweep"), concurrent_runs=2, threads=1)
    assert [o["status"] for o in pack(runs)] == ["completed"] * 3
    results = [read_result(j.run_dir) for j in jobs]
    assert all(r["threads"] == 1 and r["config"]["train"]["threads"] == 1 for r in results)
    assert len({r["host"] for r in results}) == 1 and "epoch 1/1" in (jobs[0].run_dir / "train.log").read_text()
    assert (tmp_path / "sweep" / "2" / "job.log").exists()
    assert [o["status"] for o in pack(runs)] == ["skipped"] * 3


def test_status_of_a_directory_tells_apart_cells_its_names_do_not(tmp_path):
    """Two launches into one sweep name that differ only in the learning rate (a field the
    run directories' names do not carry): `status DIR` shows two cells, each labelled with
    its lr, not one cell of four runs."""
    for lr in ("0.01", "0.1"):
        args = ["-m", "setup=smoke", "train.max_steps=2", "seed=1,2", f"optim.lr={lr}", f"runs_root={tmp_path}"]
        assert launch_main([*args, "name=lr"]) == 0
    names = sorted(p.name for p in (tmp_path / "lr").iterdir() if not p.name.startswith("."))
    assert len(names) == 4 and len({n.rsplit("-s", 1)[0] for n in names}) == 1, names  # one name-cell
    table = status(str(tmp_path / "lr"))
    assert sorted(set(table.cell)) == [f"{names[0].rsplit('-s', 1)[0]} optim.lr={lr}" for lr in (0.01, 0.1)]
    out = cli("src.launch", "status", str(tmp_path / "lr"))
    assert out.returncode == 0 and "optim.lr=0.01" in out.stdout and "optim.lr=0.1" in out.stdout, out.stdout

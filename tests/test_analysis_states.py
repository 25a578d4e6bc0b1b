"""One status vocabulary from the run record to the report: the runs table's ``status`` is the
state `src.rundir.state` gives (the word ``python -m src.launch status`` shows), for real
processes holding, beating and dying, and for real damaged files."""

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pandas as pd
import pytest

import analysis
import analysis.load
from analysis import columns as C
from analysis.__main__ import main as cli
from analysis.completeness import ORDER
from src.rundir.state import STATES
from src.status import status
from tests import analysis_fixtures as fx

REPO = Path(__file__).resolve().parents[1]


def runner(run_dir: Path, *, heartbeat: bool) -> subprocess.Popen:
    """A real process that takes the run's lock as a run does (and, with ``heartbeat``, writes
    its first heartbeat), then waits to be killed."""
    code = textwrap.dedent(f"""
        import time
        from src.rundir.heartbeat import Heartbeat
        from src.rundir.lock import RunLock
        with RunLock({str(run_dir)!r}):
            if {heartbeat!r}:
                Heartbeat({str(run_dir)!r}).beat(step=3, epoch=0)
            print("ready", flush=True)
            time.sleep(600)
    """)
    proc = subprocess.Popen(
        [sys.executable, "-c", code],
        cwd=REPO,
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    assert proc.stdout.readline().strip() == "ready"
    return proc


def sigkill(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.kill(proc.pid, signal.SIGKILL)
    proc.wait()


def states(root: Path, **load) -> tuple[dict, dict]:
    """(analysis status, `status` state) per run directory name."""
    runs = analysis.load_runs(root, **load)
    told = status(root)
    return (
        {Path(d).name: s for d, s in zip(runs[C.RUN_DIR], runs[C.STATUS])},
        {Path(d).name: s for d, s in zip(told["run_dir"], told["state"])},
    )


def test_every_status_of_the_runs_table_is_a_state_of_the_classifier(tmp_path):
    fx.write_run(tmp_path / "done", fx.config(**{"train.seed": 0}), test_acc=50.0)
    fx.write_run(tmp_path / "failed", fx.config(**{"train.seed": 1}), status="failed")
    fx.write_run(tmp_path / "killed", fx.config(**{"train.seed": 2}), result=False)
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "config.json").write_text('{"model": ')
    runs = analysis.load_runs(tmp_path)
    assert set(runs[C.STATUS]) <= set(STATES)
    assert sorted(ORDER) == sorted(STATES)  # each state once, in the tables' order
    assert set(analysis.cell_accounting(runs).columns) == {C.RUNS, *STATES}


def test_a_run_without_a_result_has_the_state_status_gives_it_live_then_killed(tmp_path):
    starting = fx.write_run(tmp_path / "starting", fx.config(**{"train.seed": 0}), result=False)
    running = fx.write_run(tmp_path / "running", fx.config(**{"train.seed": 1}), result=False)
    fx.write_run(tmp_path / "done", fx.config(**{"train.seed": 2}), test_acc=50.0)
    holders = [runner(starting, heartbeat=False), runner(running, heartbeat=True)]
    try:
        ours, theirs = states(tmp_path)
        assert ours == theirs == {"starting": "starting", "running": "running", "done": "completed"}
        problems = analysis.completeness(analysis.load_runs(tmp_path)).problems.set_index(C.RUN_DIR)
        assert "no heartbeat yet" in problems.loc[str(starting), C.DETAIL]
    finally:
        for proc in holders:
            sigkill(proc)
    # Killed: nothing holds the locks any more. The cached rows are used (no record changed),
    # the states are asked again.
    with pytest.MonkeyPatch.context() as m:
        m.setattr(analysis.load, "read_run", lambda d: pytest.fail(f"{d} read although the cache is current"))
        ours, theirs = states(tmp_path)
    assert ours == theirs == {"starting": "stale", "running": "stale", "done": "completed"}
    report = analysis.completeness(analysis.load_runs(tmp_path))
    assert report.summary().splitlines()[0] == "3 runs: 1 completed, 2 stale"
    detail = report.problems.set_index(C.RUN_DIR)[C.DETAIL]
    assert "killed" in detail[str(running)] and "killed before its first heartbeat" in detail[str(starting)]


def test_a_dead_lock_and_no_heartbeat_is_stale_as_status_says(tmp_path):
    run = fx.write_run(tmp_path / "r", fx.config(), result=False)
    sigkill(runner(run, heartbeat=False))  # its lock file stays, held by no one
    assert (run / ".lock").exists()
    assert states(tmp_path) == ({"r": "stale"}, {"r": "stale"})


@pytest.mark.parametrize("damage", ["truncated", "not_a_result", "null"])
def test_an_unreadable_result_is_damaged_in_the_analysis_as_in_status(tmp_path, damage):
    run = fx.write_run(tmp_path / "r", fx.config(), test_acc=50.0)
    result = run / "result.json"
    if damage == "truncated":
        result.write_bytes(result.read_bytes()[:40])  # cut short, as by a full disk
    elif damage == "null":  # valid JSON, but no record: not the same as no result.json
        result.write_text("null")
    else:
        result.write_text(json.dumps({"status": "finished"}))
    assert states(tmp_path) == ({"r": "damaged"}, {"r": "damaged"})
    problem = analysis.completeness(analysis.load_runs(tmp_path)).problems.iloc[0]
    assert problem[C.STATUS] == "damaged" and "result.json" in problem[C.DETAIL]


def test_a_failed_run_retried_is_running_as_status_says(tmp_path):
    run = fx.write_run(tmp_path / "r", fx.config(), status="failed")
    assert states(tmp_path) == ({"r": "failed"}, {"r": "failed"})
    holder = runner(run, heartbeat=True)  # the retry: it holds the lock and beats
    try:
        assert states(tmp_path) == ({"r": "running"}, {"r": "running"})
    finally:
        sigkill(holder)


def test_no_finished_runs_yet_names_the_states(tmp_path, capsys):
    fx.write_run(tmp_path / "a", fx.config(**{"train.seed": 0}), result=False)
    fx.write_run(tmp_path / "b", fx.config(**{"train.seed": 1}), status="failed")
    assert cli(["report", str(tmp_path)]) == 1
    assert capsys.readouterr().err.strip() == "no finished runs yet (1 failed, 1 stale)"


def test_the_report_says_each_unfinished_run_in_the_words_of_status(tmp_path):
    for seed in range(3):
        fx.write_run(tmp_path / f"s{seed}", fx.config(**{"train.seed": seed}), test_acc=50.0 + seed)
    killed = fx.write_run(tmp_path / "s3", fx.config(**{"train.seed": 3}), result=False)
    assert cli(["report", str(tmp_path), "--out", str(tmp_path / "report")]) == 0
    tables = tmp_path / "report" / "tables"
    problems = pd.read_csv(tables / "not_completed.csv").set_index(C.RUN_DIR)
    assert problems.loc[str(killed), C.STATUS] == status(tmp_path).set_index("run_dir").loc[str(killed), "state"]
    assert problems.loc[str(killed), C.STATUS] == "stale"
    header = (tables / "runs_by_status.md").read_text().splitlines()[2]
    assert header == "| setup | kind | completed | stale |"  # no column for the states no run is in
    assert {"queued", "planned", "stale"} <= set(pd.read_csv(tables / "runs_by_status.csv").columns)  # (the CSV: all)
    assert "(3 of 4; 1 stale)" in (tables / "cell_results.md").read_text()
    index = (tmp_path / "report" / "index.md").read_text()
    assert "3 completed, 1 stale" in index
    for word in ("incomplete", "unreadable"):
        assert word not in index

"""Feedback during a run: the first heartbeat comes with the first training step (not after
`heartbeat_every_s`), `status` and the local launcher show per running run its epoch, latest
accuracies and an ETA that follows its progress, and `status` of a path that does not exist
says so in one line."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

from src.rundir.heartbeat import eta_s, progress_text

REPO = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": str(REPO)}


def _launch(*args, **kwargs):
    return subprocess.run(
        [sys.executable, "-m", "src.launch", *args], cwd=REPO, env=ENV, capture_output=True, text=True, **kwargs
    )


def test_the_eta_follows_the_runs_pace_and_counts_down_between_beats():
    beat = {"step": 110, "epoch": 1, "epochs": 10, "total_steps": 1000, "pace_from": [10, 1000.0], "time": 1100.0}
    assert eta_s(beat, now=1100.0) == 890.0  # 1 s a step since the first step, 890 steps left
    assert eta_s(beat, now=1130.0) == 860.0  # not frozen between beats
    slower = {**beat, "step": 160, "time": 1250.0}  # 150 steps in 250 s: the run slowed down
    assert round(eta_s(slower, now=1250.0)) == round(840 * 250 / 150)
    assert eta_s({**beat, "step": 10, "time": 1000.0}) is None  # only the first step: no pace yet
    assert eta_s({"step": 3, "epoch": 0, "time": 5.0}) is None  # a heartbeat of an older run
    text = progress_text({**beat, "val_acc": 85.04, "test_acc": 84.91}, now=1100.0)
    assert text == "epoch 1/10 step 110/1000 val 85.0 % test 84.9 % ETA 15 min"


def test_a_running_run_beats_at_its_first_step_and_status_shows_epoch_accuracy_and_eta(tmp_path):
    run = subprocess.Popen(
        [sys.executable, "-m", "src.launch", "setup=smoke", "train.epochs=400", "train.heartbeat_every_s=3600"]
        # small batches: an epoch of seconds, so that the beat of its first step is seen before the epoch's
        + ["data.batch_size=2", f"runs_root={tmp_path}"],
        cwd=REPO,
        env=ENV,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        beats, deadline = [], time.monotonic() + 240
        while time.monotonic() < deadline and not any("test_acc" in b for b in beats):
            for path in tmp_path.glob("default/*/heartbeat.json"):
                try:
                    beats.append(json.loads(path.read_text()))
                except ValueError:
                    pass
            time.sleep(0.2)
        assert any(b["step"] >= 1 and b["epoch"] == 0 for b in beats), beats[-3:]  # within the first epoch
        assert any("test_acc" in b for b in beats), beats[-3:]  # and again at the end of an epoch
        time.sleep(1)  # a little pace to go on
        status = _launch("status", str(tmp_path / "default"), timeout=300)
        assert status.returncode == 0, status.stderr
        line = next(line for line in status.stdout.splitlines() if "pid" in line)
        assert re.search(r"epoch \d+/400 step \d+/\d+ val [\d.]+ % test [\d.]+ % ETA \d", line), line
    finally:
        run.send_signal(signal.SIGTERM)
        run.wait(timeout=120)


def test_the_local_launcher_shows_each_runs_epochs_with_accuracy_and_eta(tmp_path):
    out = _launch("-m", "setup=smoke", "seed=1,2", "train.epochs=6", f"runs_root={tmp_path}", timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    epochs = re.findall(
        r"^epoch (\d)/6 lenet5-\S+ val [\d.]+ % test [\d.]+ % — run ETA \d+ s, sweep ETA \d+ s$", out.stdout, re.M
    )
    assert len(epochs) >= 2, out.stdout
    assert out.stdout.index("epoch ") < out.stdout.index("[1/2] completed")  # before any run ended


def test_status_of_a_path_that_does_not_exist_says_so_in_one_line(tmp_path):
    out = _launch("status", str(tmp_path / "nonexistent"), timeout=300)
    assert out.returncode == 2
    assert out.stderr.strip().count("\n") == 0 and "does not exist" in out.stderr, out.stderr

"""`make study` end to end on a tiny slice of the study (the real Makefile target, the real
sweep files, the real launcher, the record script), and that a second call resumes: the
finished runs are skipped and the record is rewritten from all of them."""

from __future__ import annotations

import csv
import json
import os
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SLICE = (
    "setup=smoke sparsity.density=0.5 criterion=magnitude growth=random seed=1 train.epochs=2 "
    "sparsity.update_frequency=5"
)


def make_study(tmp_path: Path, args: str, launcher: str = "local") -> subprocess.CompletedProcess:
    # STUDY_LAUNCHER=local: on this machine even when a SLURM cluster answers (the suite's own
    # SLURM tests may have left one running).
    env = {k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MFLAGS")}
    return subprocess.run(
        [
            "make",
            "--no-print-directory",
            "study",
            f"RUNS={tmp_path / 'runs'}",
            f"STUDY_OUT={tmp_path / 'record'}",
            f"STUDY_LAUNCHER={launcher}",
            f"ARGS={args}",
        ],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )


def test_make_study_refuses_an_unknown_launcher_before_running_anything(tmp_path):
    out = make_study(tmp_path, SLICE, launcher="slurmm")
    assert out.returncode == 2
    assert "STUDY_LAUNCHER=slurmm: allowed values are auto, local, slurm" in out.stderr
    assert not (tmp_path / "runs").exists() and not (tmp_path / "record").exists()


@pytest.mark.slow
def test_make_study_runs_resumes_and_writes_the_record(tmp_path):
    first = make_study(tmp_path, SLICE)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    assert "launcher=local" in first.stdout
    with open(tmp_path / "record" / "runs.csv") as f:
        rows = list(csv.DictReader(f))
    assert [(r["mode"], r["density"], r["status"]) for r in rows] == [
        ("dense", "1", "completed"),
        ("static", "0.5", "completed"),
        ("dst", "0.5", "completed"),
    ]
    dst = rows[2]
    assert (dst["criterion"], dst["growth"], dst["seed"]) == ("magnitude", "random", "1")
    assert int(dst["topology_updates"]) > 0 and int(rows[1]["topology_updates"]) == 0
    assert float(dst["final_test_acc"]) <= float(dst["best_test_acc"])
    assert json.loads((tmp_path / "record" / "throughput.json").read_text())["completed"] == 3
    assert (tmp_path / "record" / "report" / "index.html").exists()

    # resumed with a second seed: the first seed's runs are skipped, the record has both
    second = make_study(tmp_path, SLICE.replace("seed=1", "seed=1,2"))
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    assert second.stdout.count("1 already finished (will be skipped)") == 3
    with open(tmp_path / "record" / "runs.csv") as f:
        assert len(list(csv.DictReader(f))) == 6

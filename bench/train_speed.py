"""End-to-end training speed against the reference implementation, side by side.

The paper's LeNet-5 / Fashion-MNIST configuration (SGD 0.01 Nesterov, batch 128, ERK density
0.05, magnitude pruning, random growth, update every 800 steps) for 3 epochs, each run a fresh
process timed from start to exit, 2 threads:

- ``ours``: ``python -m src.launch setup=lenet5_fmnist sparsity.density=0.05 train.epochs=3``;
- ``ours_dense``: the same run dense (what a training epoch costs without sparsity);
- ``reference``: the paper's code (``main.main`` with the same settings, through
  ``scripts/fidelity_stats.py one``), when ``../shared/reference`` is present.

The three alternate within each repeat, so a change in the machine's load hits all of them.
Targets: ours <= 0.25 x the reference's wall time (median over repeats); a DST training epoch
no slower than a dense one (the sparse Linear layers make it faster).
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from src.rundir import read_metrics, read_result

from .common import RESULTS, write_result

ROOT = Path(__file__).resolve().parents[1]
FIDELITY = ROOT / "scripts" / "fidelity_stats.py"
THREADS = 2
EPOCHS = 3
OURS = [
    "setup=lenet5_fmnist",
    "sparsity.mode=dst",
    "sparsity.density=0.05",
    "sparsity.criterion=magnitude",
    "sparsity.growth=random",
    f"train.epochs={EPOCHS}",
    "train.progress=false",
    f"train.threads={THREADS}",
]
REFERENCE_CELL = {"mode": "dst", "density": 0.05, "update_frequency": 800, "growth": "random", "criterion": "magnitude"}


def _env() -> dict:
    return {**os.environ, "OMP_NUM_THREADS": str(THREADS), "PYTHONPATH": str(ROOT)}


def run_ours(overrides: list[str]) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        subprocess.run(
            [sys.executable, "-m", "src.launch", *overrides, f"runs_root={tmp}", "name=speed"],
            check=True,
            capture_output=True,
            cwd=ROOT,
            env=_env(),
        )
        wall = time.perf_counter() - start
        (run_dir,) = (Path(tmp) / "speed").iterdir()
        epochs = read_metrics(run_dir, "epoch")
        result = read_result(run_dir)
    return {
        "process_wall_s": wall,
        "epoch_train_s": [e["train_time"] for e in epochs],
        "epoch_total_s": [e["epoch_time"] for e in epochs],
        "final_test_acc": result["final"]["test_acc"],
        "layer_backend": result.get("layer_backend"),
    }


def run_reference(code: Path, env: dict) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        subprocess.run(
            [
                sys.executable,
                str(FIDELITY),
                "one",
                "--impl",
                "reference",
                "--settings",
                json.dumps(REFERENCE_CELL),
                "--seed",
                "1",
                "--epochs",
                str(EPOCHS),
                "--run-dir",
                tmp,
                "--code",
                str(code),
            ],
            check=True,
            capture_output=True,
            cwd=ROOT,
            env={**env, "OMP_NUM_THREADS": str(THREADS)},
        )
        wall = time.perf_counter() - start
        result = json.loads((Path(tmp) / "result.json").read_text())
    return {"process_wall_s": wall, "final_test_acc": result["final_test_acc"]}


def reference_runner():
    """(code, env) for the reference implementation, or None when it is not on this machine."""
    sys.path.insert(0, str(FIDELITY.parent))
    import fidelity_stats

    if not fidelity_stats.REFERENCE.is_dir():
        return None
    return fidelity_stats.prepare_reference(RESULTS / "reference_cache")


def main(repeats: int = 3) -> dict:
    runner = reference_runner()
    runs: dict[str, list] = {"ours": [], "ours_dense": [], "reference": []}
    for _ in range(repeats):
        runs["ours"].append(run_ours(OURS))
        runs["ours_dense"].append(run_ours([*OURS, "sparsity.mode=dense"]))
        if runner is not None:
            runs["reference"].append(run_reference(*runner))
    wall = {name: statistics.median(r["process_wall_s"] for r in rs) for name, rs in runs.items() if rs}
    epoch = {
        name: statistics.median(t for r in runs[name] for t in r["epoch_train_s"]) for name in ("ours", "ours_dense")
    }
    summary = {
        "ours_wall_s": wall["ours"],
        "ours_dense_wall_s": wall["ours_dense"],
        "reference_wall_s": wall.get("reference"),
        "ours_over_reference": wall["ours"] / wall["reference"] if "reference" in wall else None,
        "ours_over_reference_target": 0.25,
        "ours_epoch_train_s": epoch["ours"],
        "dense_epoch_train_s": epoch["ours_dense"],
        "dst_over_dense_epoch": epoch["ours"] / epoch["ours_dense"],
        "repeats": repeats,
        "load_after": os.getloadavg()[0],
    }
    path = write_result("train_speed", {"summary": summary, "runs": runs})
    ref = (
        f"reference {wall['reference']:.1f} s -> ours x{summary['ours_over_reference']:.2f}"
        if "reference" in wall
        else "reference not found (../shared/reference)"
    )
    print(
        f"LeNet-5/FMNIST d0.05 {EPOCHS} epochs, start to exit, median of {repeats}: ours {wall['ours']:.1f} s, "
        f"{ref}; DST epoch {epoch['ours']:.2f} s vs dense {epoch['ours_dense']:.2f} s "
        f"(x{summary['dst_over_dense_epoch']:.2f})"
    )
    print(f"wrote {path}")
    return summary


if __name__ == "__main__":
    main()

"""End-to-end training speed: LeNet-5 on Fashion-MNIST at density 0.05 (magnitude pruning,
random growth, update every 800 steps, batch 128, 3 epochs, 2 threads), and the same run
dense, each as a fresh `python -m src.train` process timed from start to exit.

Targets: (a) DST total wall time <= 0.4 x the reference implementation's ~85 s for this run
on this machine (measured separately: ~23 s per epoch plus ~15 s start-up and evaluation);
(b) a DST training epoch <= 1.1 x a dense one.
"""

from __future__ import annotations

import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from src.records import read_metrics, read_result

from .common import write_result

REFERENCE_SECONDS = 85.0
COMMON = ["model.name=lenet5", "data.name=fashion_mnist", "data.batch_size=128", "train.epochs=3",
          "train.threads=2", "train.progress=false", "sparsity.update_frequency=800"]
RUNS = {
    "dst": ["sparsity.mode=dst", "sparsity.density=0.05", "sparsity.criterion=magnitude", "sparsity.growth=random"],
    "dense": ["sparsity.mode=dense"],
}


def timed_run(overrides: list[str]) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        subprocess.run([sys.executable, "-m", "src.train", *COMMON, *overrides, "--run-dir", tmp],
                       check=True, capture_output=True, env={"OMP_NUM_THREADS": "2", "PATH": "/usr/bin:/bin"})
        wall = time.perf_counter() - start
        epochs = read_metrics(Path(tmp), "epoch")
        result = read_result(Path(tmp))
    return {
        "process_wall_s": wall,
        "epoch_train_s": [e["train_time"] for e in epochs],
        "epoch_total_s": [e["epoch_time"] for e in epochs],
        "final_test_acc": result["final"]["test_acc"],
        "steps_per_s": result["steps_per_s"],
    }


def main(repeats: int = 2) -> None:
    runs = {name: [timed_run(o) for _ in range(repeats)] for name, o in RUNS.items()}
    best = {name: min(rs, key=lambda r: r["process_wall_s"]) for name, rs in runs.items()}
    dst_epoch = statistics.median(t for r in runs["dst"] for t in r["epoch_train_s"])
    dense_epoch = statistics.median(t for r in runs["dense"] for t in r["epoch_train_s"])
    summary = {
        "dst_wall_s": best["dst"]["process_wall_s"],
        "reference_wall_s": REFERENCE_SECONDS,
        "wall_ratio_vs_reference": best["dst"]["process_wall_s"] / REFERENCE_SECONDS,
        "wall_ratio_target": 0.4,
        "dst_epoch_train_s": dst_epoch,
        "dense_epoch_train_s": dense_epoch,
        "dst_over_dense_epoch": dst_epoch / dense_epoch,
        "dst_over_dense_target": 1.1,
    }
    path = write_result("train_speed", {"summary": summary, "runs": runs})
    print(f"LeNet-5/FMNIST 3 epochs: DST {summary['dst_wall_s']:.1f} s wall "
          f"({summary['wall_ratio_vs_reference']:.2f} x the reference's {REFERENCE_SECONDS:.0f} s); "
          f"DST epoch {dst_epoch:.2f} s vs dense {dense_epoch:.2f} s (x{summary['dst_over_dense_epoch']:.3f})")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()

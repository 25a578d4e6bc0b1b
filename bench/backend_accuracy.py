"""Same accuracy from the sparse execution backend, on Fashion-MNIST at density 0.05 (ERK;
magnitude pruning, gradient growth, so every update also forms the sparse layers' dense
gradients), batch 128, for several seeds with `backend=auto` and `backend=masked`:

- ``mlp``: MLP 784-1024-512-10, SGD lr 0.05 cosine, an update every 100 steps, 2 epochs
  (fc1, fc2 run sparse under auto);
- ``lenet5``: LeNet-5 with the paper's optimizer (SGD 0.01 Nesterov, weight decay 5e-4), an
  update every 100 steps, 3 epochs (conv2 and fc3 run sparse under auto).

Not part of `run_all` (minutes of CPU):

    python -m bench.backend_accuracy [seeds]
"""

from __future__ import annotations

import statistics
import sys
import tempfile
from pathlib import Path

from src.config import RunConfig
from src.sparse import SparsityConfig
from src.train import train

from .common import write_result


def config(setup: str, backend: str, seed: int) -> RunConfig:
    cfg = RunConfig()
    cfg.data.name = "fashion_mnist"
    cfg.train.threads, cfg.train.progress, cfg.train.seed = 1, False, seed
    if setup == "mlp":
        cfg.model.name, cfg.train.epochs = "mlp_fashion_mnist", 2
        cfg.optim.lr, cfg.optim.lr_schedule = 0.05, "cosine"
    else:
        cfg.model.name, cfg.train.epochs = "lenet5", 3
        cfg.optim.lr, cfg.optim.weight_decay, cfg.optim.nesterov = 0.01, 5e-4, True
    cfg.sparsity = SparsityConfig(
        density=0.05, criterion="magnitude", growth="gradient", update_frequency=100, backend=backend
    )
    return cfg


def run(setup: str, backend: str, seed: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        result = train(config(setup, backend, seed), Path(tmp))
    return {
        "test_acc": result["final"]["test_acc"],
        "train_time": result["train_time"],
        "layer_backend": result["layer_backend"],
    }


def main(seeds: int = 5) -> None:
    runs = {
        setup: {b: [run(setup, b, s) for s in range(seeds)] for b in ("auto", "masked")} for setup in ("mlp", "lenet5")
    }
    summary = {}
    for setup, by_backend in runs.items():
        summary[setup] = {}
        for backend, rs in by_backend.items():
            accs = [r["test_acc"] for r in rs]
            row = {
                "mean_test_acc": statistics.mean(accs),
                "stdev": statistics.stdev(accs) if seeds > 1 else 0,
                "train_time_s": sum(r["train_time"] for r in rs),
                "sparse_layers": sorted(k for k, v in rs[0]["layer_backend"].items() if v == "sparse"),
            }
            summary[setup][backend] = row
            print(
                f"{setup} {backend}: test acc {row['mean_test_acc']:.2f} +- {row['stdev']:.2f} "
                f"({', '.join(f'{a:.2f}' for a in accs)}), {row['train_time_s']:.0f} s training, "
                f"sparse: {', '.join(row['sparse_layers']) or 'none'}"
            )
    print(f"wrote {write_result('backend_accuracy', {'seeds': seeds, 'summary': summary, 'runs': runs})}")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 5)

"""Same accuracy from the sparse execution backend: MLP 784-1024-512-10 on Fashion-MNIST at
density 0.05 (ERK; magnitude pruning, gradient growth, an update every 100 steps), SGD lr 0.05
cosine, batch 128, 2 epochs, one thread, for several seeds with `backend=auto` (fc1, fc2 sparse)
and `backend=masked`. Not part of `run_all` (minutes of CPU):

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


def run(backend: str, seed: int) -> dict:
    cfg = RunConfig()
    cfg.model.name, cfg.data.name = "mlp_fashion_mnist", "fashion_mnist"
    cfg.train.epochs, cfg.train.threads, cfg.train.progress, cfg.train.seed = 2, 1, False, seed
    cfg.optim.lr, cfg.optim.lr_schedule = 0.05, "cosine"
    cfg.sparsity = SparsityConfig(density=0.05, criterion="magnitude", growth="gradient", update_frequency=100,
                                  backend=backend)
    with tempfile.TemporaryDirectory() as tmp:
        result = train(cfg, Path(tmp))
    return {"test_acc": result["final"]["test_acc"], "train_time": result["train_time"],
            "layer_backend": result["layer_backend"]}


def main(seeds: int = 5) -> None:
    runs = {b: [run(b, s) for s in range(seeds)] for b in ("auto", "masked")}
    summary = {}
    for backend, rs in runs.items():
        accs = [r["test_acc"] for r in rs]
        summary[backend] = {"mean_test_acc": statistics.mean(accs), "stdev": statistics.stdev(accs) if seeds > 1 else 0,
                            "train_time_s": sum(r["train_time"] for r in rs)}
        print(f"{backend}: test acc {summary[backend]['mean_test_acc']:.2f} +- {summary[backend]['stdev']:.2f} "
              f"({', '.join(f'{a:.2f}' for a in accs)}), {summary[backend]['train_time_s']:.0f} s training")
    print(f"wrote {write_result('backend_accuracy', {'seeds': seeds, 'summary': summary, 'runs': runs})}")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 5)

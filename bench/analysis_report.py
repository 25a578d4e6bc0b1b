"""The analysis report at 10,000 runs: `python -m analysis report` from the run records,
first (no cache) and cached, on a synthetic paper-scale sweep written in the real format
(`src.rundir.RunRecorder`: config.json, metrics.jsonl, result.json; only the numbers are
made up). Target: the cached report (load + every table and figure) in ≤ 5 s.

    python -m bench.analysis_report [--runs 10000]   # -> bench/results/analysis_report.json
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from src.config import RunConfig
from src.rundir import RunRecorder, config_hash, run_identity

from .common import write_result

SETUPS = (
    ("lenet5", "fashion_mnist"),
    ("mlp_cifar10", "cifar10"),
    ("conv_cifar10", "cifar10"),
    ("resnet56", "cifar10"),
    ("vgg16", "cifar100"),
)
CRITERIA = (
    "magnitude",
    "set",
    "mest",
    "snip",
    "sensitivity",
    "reciprocal_sensitivity",
    "random",
    "grad_step",
    "taylor_fo",
    "snip_plus",
)
GROWTHS = ("random", "gradient", "momentum")
DENSITIES = (0.01, 0.02, 0.03, 0.05, 0.07, 0.1, 0.2, 0.3, 0.5, 0.7, 0.9)
EPOCHS, STEPS_PER_EPOCH, UPDATE_FREQUENCY = 10, 400, 800


def _config(
    model: str,
    data: str,
    mode: str,
    seed: int,
    density: float = 1.0,
    criterion: str = "magnitude",
    growth: str = "random",
) -> dict:
    cfg = RunConfig().to_dict()
    cfg["model"]["name"], cfg["data"]["name"] = model, data
    cfg["train"].update(epochs=EPOCHS, seed=seed)
    cfg["sparsity"].update(
        mode=mode, density=density, criterion=criterion, growth=growth, update_frequency=UPDATE_FREQUENCY
    )
    return cfg


def _write(run_dir: Path, cfg: dict, accuracy: float, rng: np.random.Generator) -> None:
    recorder = RunRecorder(run_dir, cfg)
    curve = accuracy - 20 * np.exp(-np.arange(1, EPOCHS + 1) / 2) + rng.normal(0, 0.2, EPOCHS)
    for epoch, acc in enumerate(curve, 1):
        recorder.log(
            "epoch",
            epoch=epoch,
            step=STEPS_PER_EPOCH * epoch,
            lr=0.1,
            train_loss=0.4,
            train_acc=acc,
            val_loss=0.4,
            val_acc=acc,
            test_loss=0.4,
            test_acc=acc,
            prune_rate=0.3,
            density=cfg["sparsity"]["density"],
            layer_density={"fc.weight": cfg["sparsity"]["density"]},
            epoch_time=1.0,
            train_time=0.9,
        )
    if cfg["sparsity"]["mode"] == "dst":
        for step in range(UPDATE_FREQUENCY, EPOCHS * STEPS_PER_EPOCH + 1, UPDATE_FREQUENCY):
            recorder.log(
                "update",
                epoch=step // STEPS_PER_EPOCH,
                step=step,
                prune_rate=0.3,
                removed=10,
                regrown=10,
                regrown_just_pruned_share=0.1,
                layers=[],
            )
    best = int(np.argmax(curve))
    final = {
        "epoch": EPOCHS,
        "train_loss": 0.4,
        "train_acc": curve[-1],
        "val_loss": 0.4,
        "val_acc": curve[-1],
        "test_loss": 0.4,
        "test_acc": curve[-1],
    }
    recorder.write_result(
        {
            "status": "completed",
            "config": cfg,
            "config_hash": config_hash(run_identity(cfg)),
            "code_version": "bench",
            "seed": cfg["train"]["seed"],
            "epochs_completed": EPOCHS,
            "steps": EPOCHS * STEPS_PER_EPOCH,
            "total_steps": EPOCHS * STEPS_PER_EPOCH,
            "final": final,
            "best_val": {
                "epoch": best + 1,
                "val_loss": 0.4,
                "val_acc": curve[best],
                "test_loss": 0.4,
                "test_acc": curve[best],
            },
            "achieved_density": cfg["sparsity"]["density"],
            "achieved_layer_density": {"fc.weight": cfg["sparsity"]["density"]},
            "wall_time": 100.0,
            "train_time": 90.0,
            "steps_per_s": 40.0,
            "diverged": None,
        }
    )


def write_sweep(root: Path, runs: int) -> int:
    """The paper's grid over SETUPS with dense and static baselines, seeds added until
    about ``runs`` runs; returns how many were written."""
    per_seed = len(SETUPS) * (1 + len(DENSITIES) + len(CRITERIA) * len(GROWTHS) * len(DENSITIES))
    seeds = max(1, round(runs / per_seed))
    rng = np.random.default_rng(0)
    written = 0
    for model, data in SETUPS:
        for seed in range(seeds):
            _write(root / model / "dense" / f"s{seed}", _config(model, data, "dense", seed), 92.0, rng)
            written += 1
            for density in DENSITIES:
                base = 92.0 - 3 * np.log10(1 / density)
                _write(
                    root / model / "static" / f"d{density}" / f"s{seed}",
                    _config(model, data, "static", seed, density),
                    base - 2 + rng.normal(0, 0.3),
                    rng,
                )
                written += 1
                for i, criterion in enumerate(CRITERIA):
                    for growth in GROWTHS:
                        _write(
                            root / model / "dst" / criterion / growth / f"d{density}" / f"s{seed}",
                            _config(model, data, "dst", seed, density, criterion, growth),
                            base - 0.1 * i + rng.normal(0, 0.3),
                            rng,
                        )
                        written += 1
    return written


def _report(root: Path, out: Path, cache: bool = True) -> tuple[float, float]:
    """Wall and CPU (user + system) seconds of ``python -m analysis report`` as a user runs
    it: a fresh process, imports included."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    subprocess.run(
        [
            sys.executable,
            "-W",
            "ignore",
            "-m",
            "analysis",
            "report",
            str(root),
            "--out",
            str(out),
            *([] if cache else ["--no-cache"]),
        ],
        check=True,
        stdout=subprocess.DEVNULL,
    )
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def _parts(root: Path) -> dict[str, float]:
    """CPU seconds of the report's slowest parts on the cached runs table."""
    import analysis
    from analysis import cells, claims, grid

    runs = analysis.load_runs(root)
    timings = {}

    def timed(name, fn):
        t0 = time.process_time()
        value = fn()
        timings[name] = round(time.process_time() - t0, 3)
        return value

    mains = timed(
        "density_grids", lambda: [g[0] for g in (grid.density_grids(runs, s) for s in grid.setups(runs)) if g]
    )
    timed("claims", lambda: claims.check_claims(mains))
    table = timed("cell_table", lambda: cells.cell_table(runs))
    timed("axis_tests", lambda: cells.axis_tests(table))
    timed("completeness", lambda: analysis.completeness(runs))
    return timings


def main(runs: int = 10_000) -> dict:
    root = Path(tempfile.mkdtemp(prefix="bench-analysis-"))
    try:
        t0 = time.perf_counter()
        written = write_sweep(root / "sweep", runs)
        write_s = time.perf_counter() - t0
        first_wall, first_cpu = _report(root / "sweep", root / "report")  # builds the cache and the figures
        cached = [_report(root / "sweep", root / "report") for _ in range(3)]
        result = {
            "runs": written,
            "write_records_s": round(write_s, 2),
            "report_first_s": round(first_wall, 2),
            "report_first_cpu_s": round(first_cpu, 2),
            "report_cached_s": round(float(np.median([w for w, _ in cached])), 2),
            "report_cached_cpu_s": round(float(np.median([c for _, c in cached])), 2),
            "report_cached_all_s": [round(w, 2) for w, _ in cached],
            "target_cached_s": 5.0,
            "load_average": os.getloadavg()[0],  # wall > CPU on a busy machine: compare the CPU figures
            "parts_cached_cpu_s": _parts(root / "sweep"),
        }
    finally:
        shutil.rmtree(root, ignore_errors=True)
    path = write_result("analysis_report", result)
    print(
        f"analysis report at {written} runs: first {result['report_first_s']} s, cached "
        f"{result['report_cached_s']} s wall / {result['report_cached_cpu_s']} s CPU (target ≤ 5 s); "
        f"parts (CPU s) {result['parts_cached_cpu_s']} -> {path}"
    )
    return result


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--runs", type=int, default=10_000)
    main(p.parse_args().runs)

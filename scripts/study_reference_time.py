"""A study's runs timed against the reference implementation, side by side, and the reference's
projected time for the whole grid:

    python scripts/study_reference_time.py results/fmnist_fig1 [--threads 1]

For a few cells of `+sweeps=fmnist_fig1` (dense, static and DST at two densities, seed 1), the
project's run (`python -m src.launch`, a fresh process, start to exit) and the reference's
`main.main` with the same settings (`scripts/fidelity_stats.py one`) run *at the same time*, one
per core, each with `--threads` threads: both see the same machine and the same load, as the
study's runs did (two one-thread runs at a time). Writes `<results>/reference_time.json`, and
projects the reference's time for every run of `<results>/runs.csv` by the ratio of its mode.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
import fidelity_stats  # noqa: E402

from src.sparse.kernels import cpu_info  # noqa: E402

EPOCHS, UPDATE_FREQUENCY, SEED = 10, 400, 1  # sweeps/fmnist_fig1.yaml
CELLS = {  # label -> the reference's settings (the project's run takes the same from the sweep file)
    "dense": {"mode": "dense"},
    "static d0.05": {"mode": "static", "density": 0.05},
    "dst d0.05 magnitude random": {"mode": "dst", "density": 0.05, "criterion": "magnitude", "growth": "random"},
    "dst d0.2 snip gradient": {"mode": "dst", "density": 0.2, "criterion": "snip", "growth": "gradient"},
}


def ours_overrides(cell: dict) -> list[str]:
    sweep = {"dense": "fmnist_fig1_dense", "static": "fmnist_fig1_static", "dst": "fmnist_fig1"}[cell["mode"]]
    fixed = [f"+sweeps={sweep}", f"seed={SEED}"]
    if "density" in cell:
        fixed.append(f"sparsity.density={cell['density']}")
    if cell["mode"] == "dst":
        fixed += [f"criterion={cell['criterion']}", f"growth={cell['growth']}"]
    return fixed


def run_ours(cell: dict, threads: int) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        subprocess.run(
            [
                sys.executable,
                "-m",
                "src.launch",
                *ours_overrides(cell),
                f"runs_root={tmp}",
                f"train.threads={threads}",
                "train.progress=false",
            ],
            check=True,
            capture_output=True,
            cwd=ROOT,
            env=env,
        )
        wall = time.perf_counter() - start
        (result,) = Path(tmp).glob("*/*/result.json")
        final = json.loads(result.read_text())["final"]["test_acc"]
    return {"wall_s": wall, "final_test_acc": final}


def run_reference(cell: dict, threads: int, code: Path, env: dict) -> dict:
    settings = {**cell, "update_frequency": UPDATE_FREQUENCY}
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        subprocess.run(
            [
                sys.executable,
                str(fidelity_stats.__file__),
                "one",
                "--impl",
                "reference",
                "--settings",
                json.dumps(settings),
                "--seed",
                str(SEED),
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
            env={**env, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)},
        )
        wall = time.perf_counter() - start
        final = json.loads((Path(tmp) / "result.json").read_text())["final_test_acc"]
    return {"wall_s": wall, "final_test_acc": final}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("results", type=Path, help="the study's record (with runs.csv)")
    parser.add_argument("--threads", type=int, default=1, help="threads per run (default 1, as the study)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as cache:
        code, env = fidelity_stats.prepare_reference(Path(cache))
        env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
        pairs = {}
        with ThreadPoolExecutor(2) as pool:
            for label, cell in CELLS.items():
                ours = pool.submit(run_ours, cell, args.threads)
                reference = pool.submit(run_reference, cell, args.threads, code, env)
                pairs[label] = {"mode": cell["mode"], "ours": ours.result(), "reference": reference.result()}
                pairs[label]["reference_over_ours"] = (
                    pairs[label]["reference"]["wall_s"] / pairs[label]["ours"]["wall_s"]
                )
                print(
                    f"{label}: ours {pairs[label]['ours']['wall_s']:.0f} s, reference "
                    f"{pairs[label]['reference']['wall_s']:.0f} s (x{pairs[label]['reference_over_ours']:.2f})",
                    flush=True,
                )
    by_mode = {
        mode: statistics.median(p["reference_over_ours"] for p in pairs.values() if p["mode"] == mode)
        for mode in ("dense", "static", "dst")
    }
    runs = pd.read_csv(args.results / "runs.csv")
    ours_total = float(runs["wall_time_s"].sum())
    reference_total = float(
        sum(runs.loc[runs["mode"] == mode, "wall_time_s"].sum() * ratio for mode, ratio in by_mode.items())
    )
    summary = {
        "epochs": EPOCHS,
        "update_frequency": UPDATE_FREQUENCY,
        "threads_per_run": args.threads,
        "runs_at_a_time": 2,
        "cpu_model": cpu_info()["model"],
        "load_after": os.getloadavg()[0],
        "reference_over_ours_by_mode": by_mode,
        "study_runs": len(runs),
        "study_run_hours_ours": ours_total / 3600,
        "study_run_hours_reference_projected": reference_total / 3600,
    }
    out = args.results / "reference_time.json"
    from src.rundir import atomic_write_text

    atomic_write_text(out, json.dumps({"summary": summary, "pairs": pairs}, indent=1))
    print(
        f"the study's {len(runs)} runs: {ours_total / 3600:.1f} run-hours here; the reference, projected: "
        f"{reference_total / 3600:.1f} run-hours; wrote {out}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())

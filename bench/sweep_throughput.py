"""Runs per hour of a local sweep: each run forked from the launcher (which imported torch once)
against a fresh interpreter per run (`make bench`, or `python -m bench.sweep_throughput` ->
bench/results/sweep_throughput.json).

Two workloads, each a slice small enough for a few minutes on 2 cores:
* demo: `+sweeps=fmnist_quick` (LeNet-5, Fashion-MNIST, 2 epochs), one seed, two densities, two criteria;
* study: `+sweeps=fmnist_fig1` (the study, `make study`) at 1 epoch, two criteria at one
  density and seed.

forked: `python -m src.launch -m <slice>`, as a user launches it (planning, one torch import,
the runs forked). per-run interpreter: the same launch as it was before, by hand: the plan
(`python -m src.launch -m <slice> --dry-run`, timed), then for each run the command the
launcher used to start, `python -m src.launch --run-config <config.json> --run-dir <run dir>`,
as many at once as the launcher runs (CPUs // 1 thread). The two alternate, each in a fresh
runs root, so that both see the same machine load; the median of `repeats` of each.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from .common import write_result

REPO = Path(__file__).resolve().parent.parent
WORKLOADS = {
    "demo": ["+sweeps=fmnist_quick", "seed=1", "sparsity.density=0.05,0.1", "criterion=magnitude,snip"],
    "study": [
        "+sweeps=fmnist_fig1",
        "seed=1",
        "sparsity.density=0.1",
        "criterion=magnitude,snip",
        "growth=random",
        "train.epochs=1",
    ],
}
THREADS = 1  # per run, as `hydra.launcher.threads_per_job` (its default)


def _run(cmd: list[str], log: Path, env: dict | None = None) -> None:
    with open(log, "a") as out:
        code = subprocess.run(cmd, cwd=REPO, stdout=out, stderr=subprocess.STDOUT, env=env).returncode
    if code != 0:
        raise SystemExit(f"{' '.join(cmd)} exited with {code}; see {log}")


def forked(slice_: list[str], root: Path) -> float:
    start = time.perf_counter()
    _run(
        [
            sys.executable,
            "-m",
            "src.launch",
            "-m",
            *slice_,
            f"runs_root={root}",
            f"hydra.launcher.threads_per_job={THREADS}",
        ],
        root / "launch.log",
    )
    return time.perf_counter() - start


def per_run_interpreter(slice_: list[str], root: Path) -> float:
    from src.execute.environment import available_cpus
    from src.plan import expand

    start = time.perf_counter()
    _run([sys.executable, "-m", "src.launch", "-m", *slice_, f"runs_root={root}", "--dry-run"], root / "launch.log")
    jobs = expand([*slice_, f"runs_root={root}"], check_data=False)  # the same plan, in this process: not timed
    planned = time.perf_counter()
    commands = []
    for i, job in enumerate(jobs):
        config = job.config.to_dict()
        config["train"].update(threads=THREADS, progress=False)
        job_dir = root / "jobs" / str(i)
        job_dir.mkdir(parents=True)
        (job_dir / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True))
        commands.append(
            (
                [
                    sys.executable,
                    "-m",
                    "src.launch",
                    "--run-config",
                    str(job_dir / "config.json"),
                    "--run-dir",
                    str(job.run_dir),
                ],
                job_dir / "job.log",
            )
        )
    env = {**os.environ, "OMP_NUM_THREADS": str(THREADS), "MKL_NUM_THREADS": str(THREADS)}  # as the launcher set
    resumed = time.perf_counter()
    with ThreadPoolExecutor(max(1, available_cpus() // THREADS)) as pool:
        list(pool.map(lambda c: _run(*c, env=env), commands))
    return (planned - start) + (time.perf_counter() - resumed)


def measure(name: str, slice_: list[str], repeats: int) -> dict:
    from src.plan import expand
    from src.rundir import read_result

    runs = len(expand([*slice_, "runs_root=/nonexistent"], check_data=False))
    times: dict[str, list[float]] = {"per_run_interpreter": [], "forked": []}
    in_run: dict[str, list[float]] = {"per_run_interpreter": [], "forked": []}
    for r in range(repeats):  # alternated: both see the same load
        for variant, fn in (("per_run_interpreter", per_run_interpreter), ("forked", forked)):
            with tempfile.TemporaryDirectory(prefix=f"bench-sweep-{name}-") as tmp:
                times[variant].append(fn(slice_, Path(tmp)))
                # the runs' own wall time (set-up and training, from their records): what the
                # load did to the training itself, apart from the start-up the variants differ by
                results = [read_result(d) for d in Path(tmp).glob("*/*") if (d / "result.json").exists()]
                assert len(results) == runs and all(x["status"] == "completed" for x in results)
                in_run[variant].append(statistics.mean(x["wall_time"] for x in results))
            print(
                f"{name} #{r} {variant}: {times[variant][-1]:.1f} s for {runs} runs "
                f"(each run's own time: {in_run[variant][-1]:.1f} s)",
                flush=True,
            )
    wall = {v: statistics.median(t) for v, t in times.items()}
    per_hour = {v: runs * 3600 / w for v, w in wall.items()}
    return {
        "overrides": slice_,
        "runs": runs,
        "wall_s": wall,
        "all_wall_s": times,
        "runs_per_hour": per_hour,
        "mean_run_own_wall_s": in_run,
        "ratio": per_hour["forked"] / per_hour["per_run_interpreter"],
    }


def main(repeats: int = 2) -> dict:
    payload = {
        "threads_per_run": THREADS,
        "repeats": repeats,
        "load_avg_at_start": os.getloadavg(),
        **{name: measure(name, slice_, repeats) for name, slice_ in WORKLOADS.items()},
    }
    payload["load_avg_at_end"] = os.getloadavg()
    payload["target_demo_ratio"] = 1.5
    payload["met"] = payload["demo"]["ratio"] >= 1.5
    path = write_result("sweep_throughput", payload)
    for name in WORKLOADS:
        w = payload[name]
        print(
            f"{name}: {w['runs']} runs; runs/hour per-run interpreter {w['runs_per_hour']['per_run_interpreter']:.0f}, "
            f"forked {w['runs_per_hour']['forked']:.0f}: x{w['ratio']:.2f}"
        )
    print(f"-> {path}")
    return payload


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 2)

"""Planning and `status` at the scale of the paper's sweeps (`make bench`, or
`python -m bench.lifecycle` -> bench/results/lifecycle.json).

* dry run: `python -m src.launch -m ... --dry-run` of a 2,000-job sweep and of a 1-job one,
  alternated, the median of each (target: the 2,000-job one <= 2x the 1-job one);
* planning: `src.plan.expand` of a 10,000-job sweep in this process (target <= 10 s);
* status: `python -m src.launch status <sweep dir>` of a 10,000-run sweep from its saved plan,
  wall time and peak memory of that process (targets <= 3 s, <= 300 MB), and one `--watch`
  refresh (the records stat'ed, the changed ones read). The sweep's records are written here:
  60 % completed (result.json with the run's config), 20 % killed (a heartbeat only), 20 % never
  started.
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

from .common import write_result

REPO = Path(__file__).resolve().parent.parent
AXES = ["setup=smoke", "criterion=magnitude,snip,mest,set,random", "sparsity.density=0.05,0.1,0.2,0.5"]


def sweep(seeds: int, root: Path) -> list[str]:
    """5 criteria x 4 densities x `seeds` seeds."""
    return [*AXES, f"seed=range(0,{seeds})", f"runs_root={root}", "name=bench"]


def timed(cmd: list[str]) -> float:
    """Wall seconds of one process."""
    start = time.perf_counter()
    out = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    if out.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{out.stdout[-2000:]}\n{out.stderr[-2000:]}")
    return time.perf_counter() - start


def dry_runs(root: Path, repeats: int = 3) -> dict:
    launch = [sys.executable, "-m", "src.launch", "-m"]
    one, many = [], []
    for _ in range(repeats):  # alternated, so that both see the same load
        one.append(timed([*launch, "setup=smoke", f"runs_root={root}", "--dry-run"]))
        many.append(timed([*launch, *sweep(100, root), "--dry-run"]))
    ratio = statistics.median(many) / statistics.median(one)
    return {
        "one_job_s": statistics.median(one),
        "jobs_2000_s": statistics.median(many),
        "ratio": ratio,
        "target_ratio": 2.0,
        "met": ratio <= 2.0,
    }


def write_sweep(root: Path) -> tuple[float, Path]:
    """Plan the 10,000-job sweep (timed), save its plan and write its records; in this process
    (the parent of the `status` process stays small, so that its memory is status' own)."""
    from src.plan import expand, write_plan

    start = time.perf_counter()
    jobs = expand(sweep(500, root), check_data=False)
    plan_s = time.perf_counter() - start
    sweep_dir = root / ".hydra" / "bench" / "planned"
    write_plan(sweep_dir, jobs, sweep(500, root))
    now = time.time()
    for i, job in enumerate(jobs):  # the records a sweep of 10,000 runs leaves
        if i % 5 in (0, 1, 2):
            job.run_dir.mkdir(parents=True)
            (job.run_dir / "result.json").write_text(
                json.dumps({"status": "completed", "config": job.config_dict(), "final": {"test_acc": 80.0 + i % 7}})
            )
        elif i % 5 == 3:
            job.run_dir.mkdir(parents=True)
            (job.run_dir / "heartbeat.json").write_text(
                json.dumps({"host": "node1", "pid": 1000 + i, "step": 10, "epoch": 1, "time": now - 7200})
            )
    return plan_s, sweep_dir


def refresh(sweep_dir: Path) -> dict:
    """A `--watch` refresh: the second `status` of the sweep with the same reader."""
    from src.status import Reader, Sweep, status

    reader, planned = Reader(), Sweep.of(sweep_dir)
    first = status(sweep_dir, reader=reader, sweep=planned)
    start = time.perf_counter()
    again = status(sweep_dir, reader=reader, sweep=planned)
    took = time.perf_counter() - start
    assert list(first.state) == list(again.state)
    return {"watch_refresh_s": took, "states": first.state.value_counts().to_dict()}


def plan_and_status(root: Path) -> dict:
    code = (
        "import json, sys; from pathlib import Path; from bench.lifecycle import write_sweep; "
        f"t, d = write_sweep(Path({str(root)!r})); print(json.dumps([t, str(d)]))"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True)
    if out.returncode != 0:
        raise SystemExit(out.stdout[-2000:] + out.stderr[-2000:])
    plan_s, sweep_dir = json.loads(out.stdout.strip().splitlines()[-1])
    # its peak memory as the kernel counts it for that process alone (VmHWM, after its exec)
    code = (
        "import atexit, re, sys; from pathlib import Path; from src.launch import main; "
        "atexit.register(lambda: print('VmHWM', re.search(r'VmHWM:\\s+(\\d+)', "
        "Path('/proc/self/status').read_text()).group(1), file=sys.stderr)); sys.exit(main(sys.argv[1:]))"
    )
    start = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", code, "status", sweep_dir], cwd=REPO, capture_output=True, text=True)
    status_s = time.perf_counter() - start
    if out.returncode != 0:
        raise SystemExit(out.stdout[-2000:] + out.stderr[-2000:])
    status_mb = int(out.stderr.split("VmHWM")[-1].split()[0]) / 1024
    return {
        "jobs": 10_000,
        "plan_s": plan_s,
        "plan_target_s": 10.0,
        "plan_met": plan_s <= 10.0,
        "status_s": status_s,
        "status_peak_mb": status_mb,
        "status_targets": {"s": 3.0, "mb": 300.0},
        "status_met": status_s <= 3.0 and status_mb <= 300.0,
        **refresh(Path(sweep_dir)),
    }


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        dry = dry_runs(Path(tmp) / "dry")
        print(
            f"dry run: 2,000 jobs {dry['jobs_2000_s']:.1f} s, 1 job {dry['one_job_s']:.1f} s: "
            f"{dry['ratio']:.2f}x (target <= 2x)",
            flush=True,
        )
        scale = plan_and_status(Path(tmp) / "scale")
    print(
        f"planning 10,000 jobs: {scale['plan_s']:.1f} s (target <= 10 s); status from the saved plan: "
        f"{scale['status_s']:.1f} s, {scale['status_peak_mb']:.0f} MB (targets <= 3 s, <= 300 MB); "
        f"a --watch refresh {scale['watch_refresh_s']:.2f} s",
        flush=True,
    )
    path = write_result("lifecycle", {"dry_run": dry, "scale": scale, "cpu_load_1min": os.getloadavg()[0]})
    print(path)


if __name__ == "__main__":
    main()

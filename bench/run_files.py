"""Load on the file system: files, bytes written and metadata operations of one run, per run
and per run-hour, for LeNet-5 (Fashion-MNIST shapes) and the MLP on CIFAR-10 shapes, with the
code before this project's run-file work (BASE, from git) and now, projected to a 10,000-run
sweep of the paper's 100-epoch runs.

    python -m bench.run_files            # -> bench/results/run_files.json (needs strace, git)

Each run is `python -m src.train` under `strace -f -y`: every system call on a path below the
runs root is counted. Metadata operations are the calls a parallel file system's metadata
server serves: open, stat, rename, unlink, mkdir, truncate, fsync. Each file's calls are split
into events (a checkpoint written, a heartbeat, a metrics line) to give the cost of one event;
the per-hour and 100-epoch figures multiply those costs by the events each version makes, from
the measured step time and the paper's epoch sizes (60,000 and 50,000 training images, batch
128, an update every 800 steps). The data is generated (`synthetic`, with the real shapes and a
smaller epoch, scaled up), so no dataset is needed.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from .common import write_result

REPO = Path(__file__).resolve().parent.parent
BASE = "79601d0"  # the last commit before the run-file work
EPOCHS, BENCH_TRAIN, BATCH, UPDATE_EVERY, PAPER_EPOCHS, SWEEP_RUNS, CONCURRENT = 3, 2560, 128, 800, 100, 10_000, 1_000
# The load depends on the step time (the old heartbeat and checkpoint rules count steps and
# epochs): besides the measured one, the projection at these step times, for faster machines.
WHAT_IF_STEP_S = (0.01, 0.003)
MODELS = {  # name: (overrides, the paper's training-set size)
    "lenet5_fmnist": (["model.name=lenet5", "data.kwargs.input_shape=[1,28,28]"], 60_000),
    "mlp_cifar10": (["model.name=mlp_cifar10", "data.kwargs.input_shape=[3,32,32]"], 50_000),
}
METADATA = {
    "openat",
    "open",
    "creat",
    "newfstatat",
    "stat",
    "lstat",
    "statx",
    "access",
    "faccessat2",
    "rename",
    "renameat",
    "renameat2",
    "unlink",
    "unlinkat",
    "mkdir",
    "mkdirat",
    "rmdir",
    "ftruncate",
    "truncate",
    "fsync",
    "fdatasync",
    "readlink",
    "readlinkat",
    "symlink",
    "chmod",
    "fchmod",
    "fchmodat",
}
WRITES = {"write", "pwrite64", "writev", "pwritev", "pwritev2"}
CALL = re.compile(r"^\d+\s+(\w+)\((.*)\)\s+=\s+(-?\d+)")


def category(name: str) -> str:
    """The run file a path belongs to (temporary files count as their target's)."""
    name = re.sub(r"^\.(.+)\.tmp-.*$", r"\1", name)
    for key in (
        "checkpoint.pt",
        "heartbeat.json",
        "metrics.jsonl",
        "train.log",
        "result.json",
        "config.json",
        "model_final.pt",
        ".lock",
    ):
        if name.startswith(key):
            return key
    return "other"


def trace_run(code: Path, run_dir: Path, overrides: list[str]) -> dict:
    """Run one training run under strace; per run file: its metadata calls, bytes written and
    the times it was replaced by a rename (a checkpoint or heartbeat written)."""
    log = run_dir.parent / f"{run_dir.name}.strace"
    log.parent.mkdir(parents=True, exist_ok=True)
    # --seccomp-bpf: only the traced calls stop the process, so the step time stays close to an untraced run's
    cmd = [
        "strace",
        "-f",
        "-qq",
        "-y",
        "--seccomp-bpf",
        "-o",
        str(log),
        "-e",
        "trace=" + ",".join(sorted(METADATA | WRITES)),
        sys.executable,
        "-m",
        "src.train",
        *overrides,
        "--run-dir",
        str(run_dir),
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "2", "PYTHONPATH": str(code)}
    done = subprocess.run(cmd, cwd=code, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd[-20:])} exited with {done.returncode}:\n{done.stderr[-3000:]}")
    root = str(run_dir)
    per: dict[str, dict] = {}
    for line in log.read_text(errors="replace").splitlines():
        match = CALL.match(line)
        if not match or root not in match.group(2):
            continue
        call, arguments, ret = match.groups()
        where = re.search(re.escape(root) + r"/?([^\">,]*)", arguments).group(1)
        kind = category(where.split("/")[0])
        if kind == "metrics.jsonl" and call in ("fsync", "fdatasync"):
            kind = "checkpoint.pt"  # the metrics are flushed as part of each checkpoint
        entry = per.setdefault(kind, {"metadata_ops": 0, "bytes_written": 0, "renames": 0})
        if call in METADATA:
            entry["metadata_ops"] += 1
            entry["renames"] += call.startswith("rename")
        elif call in WRITES and int(ret) > 0:
            entry["bytes_written"] += int(ret)
    log.unlink()
    result = json.loads((run_dir / "result.json").read_text())
    return {
        "files": {p.name: p.stat().st_size for p in run_dir.iterdir()},
        "per_file": per,
        "steps": result["steps"],
        "train_time_s": result["train_time"],
        "metrics_lines": len((run_dir / "metrics.jsonl").read_text().splitlines()),
    }


def step_time(run_dir: Path, overrides: list[str]) -> float:
    """Seconds per training step of the run without strace (which slows every traced call)."""
    env = {**os.environ, "OMP_NUM_THREADS": "2", "PYTHONPATH": str(REPO)}
    subprocess.run(
        [sys.executable, "-m", "src.train", *overrides, "--run-dir", str(run_dir)],
        cwd=REPO,
        env=env,
        check=True,
        capture_output=True,
    )
    result = json.loads((run_dir / "result.json").read_text())
    return result["train_time"] / result["steps"]


EVENTS = ("checkpoint.pt", "heartbeat.json", "metrics.jsonl")


def per_event_cost(run: dict) -> tuple[dict, dict]:
    """The measured load of one checkpoint, one heartbeat and one metrics line, and of the
    rest of the run (config, result, lock, log, final model: once per run)."""
    cost, once = {}, {"metadata_ops": 0, "bytes_written": 0}
    for key, measured in run["per_file"].items():
        if key in EVENTS:
            n = run["metrics_lines"] if key == "metrics.jsonl" else measured["renames"]
            cost[key] = {k: measured[k] / max(n, 1) for k in ("metadata_ops", "bytes_written")}
        else:
            for k in once:
                once[k] += measured[k]
    return cost, once


def project(version: str, run: dict, real_train: int, step_s: float) -> dict:
    """Events and their load per run-hour and per 100-epoch paper run, from the measured
    per-event costs and step time (``step_s``: the same for both versions, so that only their
    rules for when to write differ), with each version's rule for when it writes."""
    from src.config import TrainConfig  # the defaults now; `log_every` (200) was the old heartbeat

    defaults = TrainConfig()
    cost, once = per_event_cost(run)
    steps_per_epoch = -(-int(real_train * 0.9) // BATCH)  # 10 % held out for validation
    epoch_s = step_s * steps_per_epoch
    run_s = epoch_s * PAPER_EPOCHS
    hour = {"metrics.jsonl": 3600 / epoch_s + 3600 / step_s / UPDATE_EVERY}
    if version == "before":  # a checkpoint each epoch; a heartbeat every `log_every` steps and each epoch
        hour["checkpoint.pt"] = 3600 / epoch_s
        hour["heartbeat.json"] = 3600 / step_s / defaults.log_every + 3600 / epoch_s
    else:
        hour["checkpoint.pt"] = min(3600 / epoch_s, 60 / defaults.checkpoint_interval_min)
        hour["heartbeat.json"] = 3600 / defaults.heartbeat_every_s
    load = lambda counts, k: sum(cost.get(e, {}).get(k, 0) * n for e, n in counts.items())  # noqa: E731
    per_hour = {k: load(hour, k) for k in ("metadata_ops", "bytes_written")}
    per_hour["metadata_ops_per_s_at_1000_concurrent_runs"] = per_hour["metadata_ops"] / 3600 * CONCURRENT
    whole = {e: n * run_s / 3600 for e, n in hour.items()}
    whole["checkpoint.pt"] = min(whole["checkpoint.pt"], PAPER_EPOCHS)
    per_run = {k: load(whole, k) + once[k] for k in ("metadata_ops", "bytes_written")}
    return {
        "step_s": step_s,
        "epoch_s": epoch_s,
        "run_hours": run_s / 3600,
        "cost_per_event": cost,
        "cost_once_per_run": once,
        "events_per_hour": hour,
        "per_run_hour": per_hour,
        "events_per_100_epoch_run": whole,
        "per_100_epoch_run": per_run,
        f"sweep_of_{SWEEP_RUNS}_runs": {k: v * SWEEP_RUNS for k, v in per_run.items()},
    }


def main() -> dict:
    if shutil.which("strace") is None:
        raise SystemExit("bench.run_files needs strace (apt-get install strace)")
    out = {"base_commit": BASE, "epochs_traced": EPOCHS, "note": "measured on a shared 2-CPU machine"}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        before = tmp / "before"
        before.mkdir()
        archive = subprocess.run(["git", "archive", BASE], cwd=REPO, capture_output=True, check=True).stdout
        subprocess.run(["tar", "-x", "-C", str(before)], input=archive, check=True)
        for model, (overrides, real_train) in MODELS.items():
            common = [
                "data.name=synthetic",
                "data.kwargs.num_classes=10",
                f"data.kwargs.num_train={BENCH_TRAIN}",
                "data.kwargs.num_test=1000",
                f"data.batch_size={BATCH}",
                f"train.epochs={EPOCHS}",
                "train.progress=false",
                "sparsity.density=0.1",
                "sparsity.update_frequency=5",
                *overrides,
            ]
            # Now: a checkpoint every epoch in the traced run too, so that its cost is measured.
            for version, code, extra in (("before", before, []), ("now", REPO, ["train.checkpoint_interval_min=0"])):
                out.setdefault(model, {})[version] = trace_run(code, tmp / model / version, common + extra)
            # The same step time for both versions: the run's without strace.
            step_s = step_time(tmp / model / "untraced", common)
            out[model]["step_s_untraced"] = step_s
            for version in ("before", "now"):
                run = out[model][version]
                run["projection"] = p = project(version, run, real_train, step_s)
                run["what_if_step_s"] = {str(t): project(version, run, real_train, t) for t in WHAT_IF_STEP_S}
                print(
                    f"{model} {version}: {len(run['files'])} files; per run-hour {p['per_run_hour']['metadata_ops']:.0f} "
                    f"metadata ops, {p['per_run_hour']['bytes_written'] / 1e6:.1f} MB; a {SWEEP_RUNS}-run sweep of "
                    f"{PAPER_EPOCHS}-epoch runs: {p[f'sweep_of_{SWEEP_RUNS}_runs']['bytes_written'] / 1e12:.3f} TB, "
                    f"{p[f'sweep_of_{SWEEP_RUNS}_runs']['metadata_ops'] / 1e6:.2f} M metadata ops",
                    flush=True,
                )
    write_result("run_files", out)
    return out


if __name__ == "__main__":
    main()

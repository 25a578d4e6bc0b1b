"""Where a sweep stands, per cell and in total, from its run directories alone.

    python -m src.launch status -m +sweeps=mlp_dst launcher=slurm      # the launch's overrides
    python -m src.launch status runs/.hydra/default/2026-11-29_23-00-00 # a launch's sweep dir
    python -m src.launch status runs/mlp_dst --watch                    # the runs found there

Each run is in exactly one state:

    completed / diverged   result.json says so (finished: never run again)
    running                a heartbeat fresher than --stale-after (host, pid, job, step, epoch)
    queued                 not running, but its SLURM job is in the queue (pending, requeued,
                           or running other runs of a packed job first)
    failed / interrupted   result.json says so, and it is not queued to run again
    stale                  a heartbeat too old, or its process gone: killed without a result
    missing                nothing yet: never launched, or killed before its first heartbeat

The queue is read with one `squeue` call for the whole sweep, for the jobs named in the
submission records (`submission.json`) that SLURM launches write into their sweep dirs.
In a notebook: `from src.status import status; status(["+sweeps=mlp_dst"])` -> DataFrame.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd

from .pack import SUBMISSION
from .records import read_result
from .runinfo import HEARTBEAT, process_alive, read_heartbeat

STATES = ("planned", "completed", "diverged", "failed", "interrupted", "running", "stale", "queued", "missing")
IN_QUEUE = {"PENDING", "RUNNING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED", "CONFIGURING", "COMPLETING",
            "SUSPENDED", "RESIZING", "SIGNALING", "STAGE_OUT"}
DEFAULT_STALE_AFTER_S = 900.0  # a heartbeat comes every `train.log_every` steps and each epoch


# ---------------------------------------------------------------------------- what is planned
def _planned(target: list[str] | str | Path) -> tuple[list[tuple[Path, str]], list[Path]]:
    """The sweep's runs as (run_dir, cell) and the submission records that may name them.

    `target`: the launch's overrides, a launch's sweep dir (with submission.json), or a
    directory of run directories."""
    if isinstance(target, (str, Path)) or (len(target) == 1 and Path(target[0]).is_dir()):
        path = Path(target if isinstance(target, (str, Path)) else target[0])
        if (path / SUBMISSION).exists():
            record = json.loads((path / SUBMISSION).read_text())
            return _from_overrides(record["overrides"])[0], [path / SUBMISSION]
        runs = sorted(p for p in path.iterdir() if (p / "config.json").exists() or (p / HEARTBEAT).exists())
        records = sorted((path.parent / ".hydra" / path.name).glob(f"*/{SUBMISSION}"))
        return [(r, _slug_cell(r.name)) for r in runs], records
    return _from_overrides(list(target))


def _from_overrides(overrides: list[str]) -> tuple[list[tuple[Path, str]], list[Path]]:
    from .launch import expand  # the launch's own expansion: status plans exactly what launch runs

    jobs = expand([o for o in overrides if not o.startswith("-")], check_data=False)
    values: dict[str, set] = {}
    for job in jobs:
        for line in job.overrides:
            key, _, value = line.partition("=")
            values.setdefault(key, set()).add(value)
    varying = [k for k, v in values.items() if len(v) > 1 and k.lstrip("+~") not in ("seed", "train.seed")]
    runs = []
    for job in jobs:
        cell = " ".join(line for line in job.overrides if line.partition("=")[0] in varying)
        runs.append((job.run_dir, cell or "all"))
    roots = {job.run_dir.parent for job in jobs}
    records = sorted(r for root in roots for r in (root.parent / ".hydra" / root.name).glob(f"*/{SUBMISSION}"))
    return runs, records


def _slug_cell(slug: str) -> str:
    """`lenet5-dst-d0.1-snip-gradient-s3-<hash>` -> `lenet5-dst-d0.1-snip-gradient`."""
    return re.sub(r"-s\d+-[0-9a-f]{10}$", "", slug)


# ---------------------------------------------------------------------------- SLURM queue
def _submitted_jobs(records: list[Path]) -> dict[str, str]:
    """run_dir -> SLURM job id (`<array job>_<task>`), the latest submission winning."""
    jobs: dict[str, str] = {}
    for path in sorted(records, key=lambda p: json.loads(p.read_text()).get("time", 0)):
        for job in json.loads(path.read_text()).get("jobs", []):
            for run in job["runs"]:
                jobs[str(Path(run).resolve())] = job["job_id"]
    return jobs


def queue_states(job_ids: set[str]) -> dict[str, str]:
    """`squeue` state of each queued job / array task among `job_ids` (one call for all)."""
    if not job_ids:
        return {}
    arrays = sorted({j.split("_")[0] for j in job_ids})
    try:
        out = subprocess.run(["squeue", "-h", "-r", "-o", "%i|%T", "-j", ",".join(arrays)],
                             capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return {}  # no SLURM here: nothing is queued
    states = {}
    for line in out.stdout.splitlines():  # squeue exits 1 when every job has left the queue
        job, _, state = line.strip().partition("|")
        states[job] = state
    return states


# ---------------------------------------------------------------------------- the table
def status(target, *, stale_after: float = DEFAULT_STALE_AFTER_S, now: float | None = None) -> pd.DataFrame:
    """One row per planned run: run_dir, cell, state, detail, and where it runs (host, pid,
    job, step, epoch, heartbeat_age_s) and its test accuracy when finished."""
    runs, records = _planned(target)
    submitted = _submitted_jobs(records)
    queued = queue_states({submitted[k] for k in (str(r.resolve()) for r, _ in runs) if k in submitted})
    now = time.time() if now is None else now
    rows = []
    for run_dir, cell in runs:
        rows.append({"run_dir": str(run_dir), "run": run_dir.name, "cell": cell,
                     **_state(run_dir, submitted.get(str(run_dir.resolve())), queued, stale_after, now)})
    return pd.DataFrame(rows, columns=["run_dir", "run", "cell", "state", "detail", "host", "pid", "job",
                                       "step", "epoch", "heartbeat_age_s", "test_acc"])


def _state(run_dir: Path, job: str | None, queued: dict[str, str], stale_after: float, now: float) -> dict:
    try:
        result = read_result(run_dir)
    except ValueError:  # a torn result.json: as good as none
        result = None
    beat = read_heartbeat(run_dir)
    row = {"detail": "", "host": None, "pid": None, "job": job, "step": None, "epoch": None,
           "heartbeat_age_s": None, "test_acc": None}
    if beat:
        row.update(host=beat.get("host"), pid=beat.get("pid"), job=beat.get("slurm_job_id") or job,
                   step=beat.get("step"), epoch=beat.get("epoch"), heartbeat_age_s=round(now - beat["time"], 1))
    status = (result or {}).get("status")
    if status in ("completed", "diverged"):
        acc = (result.get("final") or {}).get("test_acc")
        return {**row, "state": status, "test_acc": acc, "detail": f"test {acc:.2f} %" if acc is not None else ""}
    result_time = (run_dir / "result.json").stat().st_mtime if result else 0.0
    beating = beat is not None and beat["time"] > result_time  # a new attempt after the last result
    if beating and now - beat["time"] <= stale_after and process_alive(beat.get("host"), beat.get("pid")) is not False:
        where = f"{beat.get('host')} pid {beat.get('pid')}" + (f" job {row['job']}" if row["job"] else "")
        return {**row, "state": "running", "detail": f"{where} step {beat.get('step')} epoch {beat.get('epoch')}"}
    if job is not None and queued.get(job) in IN_QUEUE:
        return {**row, "state": "queued", "detail": f"in job {job} ({queued[job].lower()})"}
    if status in ("failed", "interrupted"):
        first = (result.get("error") or "").strip().splitlines()
        return {**row, "state": status, "detail": first[0] if first else f"at step {result.get('steps')}"}
    if beat is not None:
        age = now - beat["time"]
        return {**row, "state": "stale", "detail": f"last heartbeat {_duration(age)} ago on {beat.get('host')} "
                                                   f"pid {beat.get('pid')}, step {beat.get('step')}: killed?"}
    return {**row, "state": "missing"}


def counts(table: pd.DataFrame) -> pd.DataFrame:
    """Runs per cell and state, with a `total` row; columns in STATES order."""
    grid = pd.crosstab(table["cell"], table["state"]) if len(table) else pd.DataFrame()
    grid = grid.reindex(columns=STATES[1:], fill_value=0)
    grid.columns.name, grid.index.name = None, "cell"
    grid.insert(0, "planned", grid.sum(axis=1))
    grid.loc["total"] = grid.sum()
    return grid.astype(int)


def render(table: pd.DataFrame, *, details: int = 20) -> str:
    grid = counts(table)
    lines = [grid.loc[:, (grid != 0).any() | (grid.columns == "planned")].to_string()]
    for state in ("running", "failed", "interrupted", "stale", "queued"):
        rows = table[table["state"] == state]
        if len(rows):
            lines.append(f"\n{state}:")
            lines += [f"  {r.run}  {r.detail}" for r in rows.head(details).itertuples()]
            if len(rows) > details:
                lines.append(f"  ... and {len(rows) - details} more")
    return "\n".join(lines)


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    if seconds < 90:
        return f"{seconds} s"
    if seconds < 5400:
        return f"{round(seconds / 60)} min"
    return f"{seconds // 3600} h {round(seconds % 3600 / 60)} min"


def main(argv: list[str]) -> int:
    import argparse

    p = argparse.ArgumentParser(prog="python -m src.launch status", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("target", nargs="*", help="the launch's overrides, or a sweep / runs directory")
    p.add_argument("--watch", nargs="?", const=10.0, type=float, metavar="SECONDS",
                   help="refresh every SECONDS (default 10) until nothing is running or queued")
    p.add_argument("--stale-after", type=float, default=DEFAULT_STALE_AFTER_S, metavar="SECONDS",
                   help=f"a heartbeat older than this means killed (default {DEFAULT_STALE_AFTER_S:g})")
    args, extra = p.parse_known_args([a for a in argv if a not in ("-m", "--multirun", "--detach", "--dry-run")])
    target = args.target + extra
    if not target:
        target = []  # the default config: one run
    while True:
        try:
            table = status(target, stale_after=args.stale_after)
        except (ValueError, FileNotFoundError) as error:
            print(f"error: {error}", file=sys.stderr)
            return 2
        text = render(table)
        if args.watch is None:
            print(text)
            return 0
        print(f"\033[2J\033[H{time.strftime('%H:%M:%S')}  (every {args.watch:g} s; Ctrl-C to stop)\n{text}", flush=True)
        if not table["state"].isin(["running", "queued"]).any():
            return 0
        try:
            time.sleep(args.watch)
        except KeyboardInterrupt:
            return 0


# ---------------------------------------------------------------------------- a local sweep, live
class SweepProgress:
    """The line a local sweep prints as each run ends, and its closing summary:

        [12/550] completed lenet5-dst-d0.1-snip-gradient-s1-<hash> test 86.1 % (41 s) — 6 running, ETA 1 h 20 min

    Thread-safe: the launcher's workers call `started` / `finished` / `skipped`."""

    def __init__(self, total: int, workers: int, out=None):
        import threading

        self.total, self.workers, self.out = total, workers, out
        self.done = self.running = 0
        self.durations: list[float] = []
        self.outcomes: dict[str, int] = {}
        self.start = time.monotonic()
        self._lock = threading.Lock()

    def skipped(self) -> None:
        with self._lock:
            self.done += 1
            self.outcomes["skipped"] = self.outcomes.get("skipped", 0) + 1

    def started(self) -> float:
        with self._lock:
            self.running += 1
        return time.monotonic()

    def finished(self, run_dir: Path, started: float) -> str:
        took = time.monotonic() - started
        try:
            result = read_result(run_dir) or {}
        except ValueError:
            result = {}
        state = result.get("status") or "missing"
        acc = (result.get("final") or {}).get("test_acc")
        with self._lock:
            self.running -= 1
            self.done += 1
            self.durations.append(took)
            self.outcomes[state] = self.outcomes.get(state, 0) + 1
            left = self.total - self.done
            # the runs still to start, at the mean duration so far, `workers` at a time
            eta = sum(self.durations) / len(self.durations) * left / max(1, min(self.workers, left)) if left else 0
            line = (f"[{self.done}/{self.total}] {state} {Path(run_dir).name}"
                    f"{f' test {acc:.1f} %' if acc is not None else ''} ({_duration(took)})"
                    f" — {self.running} running, ETA {_duration(eta) if left else '0 s'}")
            if state == "failed" and result.get("error"):
                line += f"\n    {result['error'].strip().splitlines()[0]}"
            print(line, file=self.out or sys.stdout, flush=True)
        return state

    def summary(self) -> str:
        parts = ", ".join(f"{n} {k}" for k, n in sorted(self.outcomes.items()))
        return f"{self.done}/{self.total} runs done in {_duration(time.monotonic() - self.start)}: {parts}"

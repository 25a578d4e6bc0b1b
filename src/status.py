"""Where a sweep stands, per cell and in total: its saved plan, and each run's state.

    python -m src.launch status -m +sweeps=mlp_dst launcher=slurm      # the launch's overrides
    python -m src.launch status runs/.hydra/default/2026-11-29_23-00-00 # a launch's sweep dir
    python -m src.launch status runs/mlp_dst --watch                    # the runs found there

A sweep's runs are the ones its launch planned: the plan it saved in its sweep dir
(`plan.json`), found again for the same overrides (the latest such launch), never planned
anew when there is one. Each run is in exactly one state of `src.rundir.state` (planned, queued,
starting, running, completed, diverged, failed, interrupted, stale, missing, damaged); a
held run lock means alive, whatever the heartbeat says. The queue is read with one `squeue`
call for the whole sweep, for the jobs named in the submission records (`submission.json`)
of the SLURM launches of the sweep. `--watch` re-reads only the record files that changed.
In a notebook: `from src.status import status; status(["+sweeps=mlp_dst"])` -> DataFrame.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

from .execute.slurm_queue import SUBMISSION, QueueUnknown, queue_states, submitted_jobs
from .planfile import PLAN, PlanDamaged, read_plan, read_plan_configs
from .rundir import (
    ACTIVE,
    HEARTBEAT,
    RESULT,
    STATES,
    cells_of_directories,
    classify,
    lock_probe,
    recorded_config,
    refused_link,
)
from .rundir.heartbeat import eta_s, read_heartbeat, same_process
from .rundir.identity import identity_hash
from .rundir.state import DEFAULT_STALE_AFTER_S, QUEUE_UNKNOWN, duration, read_json, state

COLUMNS = [
    "run_dir",
    "run",
    "cell",
    "state",
    "detail",
    "host",
    "pid",
    "job",
    "step",
    "epoch",
    "heartbeat_age_s",
    "test_acc",
]


# ---------------------------------------------------------------------------- what is planned
# (overrides, whether a saved plan of the same launch may answer) -> the sweep: `src.plan.sweep_of`
Planner = Callable[[list[str], bool], "Sweep"]


class Sweep:
    """The runs of a sweep (run_dir, cell), the submission records that may name them, and
    whether a launch that planned them is still alive."""

    def __init__(
        self, runs: list[tuple[str, str]], records: list[Path], plans: list[Path], plan_dir: Path | None = None
    ):
        self.runs, self.records, self.plans, self.plan_dir = runs, records, plans, plan_dir
        self._configs: list[dict] | None = None

    def config(self, i: int) -> dict | None:
        """The planned config of run `i` (read on first need: only to explain damaged records);
        None when the plan's configs are damaged (said once, naming the file)."""
        if self.plan_dir is None:
            return None
        if self._configs is None:
            try:
                self._configs = read_plan_configs(self.plan_dir, read_plan(self.plan_dir))
            except PlanDamaged as error:
                print(f"warning: {error}; damaged records are reported without the differing fields", file=sys.stderr)
                self._configs = []
        return self._configs[i] if i < len(self._configs) else None

    def job_log(self, i: int) -> str | None:
        """Where run `i`'s launcher writes its output (`<sweep dir>/<job number>/job.log`), when known."""
        return None if self.plan_dir is None else os.path.join(self.plan_dir, str(i), "job.log")

    @classmethod
    def of(cls, target: list[str] | str | Path, planner: Planner | None = None) -> Sweep:
        """`target`: the launch's overrides, a launch's sweep dir, or a directory of run directories.
        Overrides (and a launch that saved no plan) are composed into runs by `planner`
        (`src.plan.sweep_of`, given by `python -m src.launch status`): this module reads run
        directories and plans, the planner composes configs."""
        if isinstance(target, (str, Path)) or (len(target) == 1 and Path(target[0]).is_dir()):
            path = Path(target if isinstance(target, (str, Path)) else target[0])
            if (path / PLAN).exists():
                return cls.from_plans([path / PLAN])
            if (path / "multirun.yaml").exists() or (path / SUBMISSION).exists():  # a launch before plans
                return _planned(planner, _launch_overrides(path), saved=False)
            runs = sorted(
                p
                for p in path.iterdir()
                if p.is_dir()
                and not p.name.startswith(".")
                and ((p / "config.json").exists() or (p / HEARTBEAT).exists() or (p / ".lock").exists())
            )
            logs = path.parent / ".hydra" / path.name
            cells = cells_of_directories({str(r.resolve()): recorded_config(r) for r in runs})
            return cls(
                list(cells.items()),
                sorted(logs.glob(f"*/{SUBMISSION}")),
                sorted(logs.glob(f"*/{PLAN}")),
            )
        return _planned(planner, [o for o in target if not o.startswith("-")])

    @classmethod
    def from_plans(cls, plans: list[Path]) -> Sweep:
        latest = read_plan(plans[-1].parent)  # (damaged: `PlanDamaged`, one line naming it)
        runs = [(r["run_dir"], r["cell"]) for r in latest["runs"]]
        records = sorted(p.parent / SUBMISSION for p in plans if (p.parent / SUBMISSION).exists())
        return cls(runs, records, plans, plans[-1].parent)


def _planned(planner: Planner | None, overrides: list[str], saved: bool = True) -> Sweep:
    if planner is None:
        raise ValueError(
            "the status of a launch's overrides needs the planner to compose them: "
            "`python -m src.launch status <overrides>`, or `status(overrides, planner=src.plan.sweep_of)`"
        )
    return planner(overrides, saved)


def _launch_overrides(sweep_dir: Path) -> list[str]:
    """The overrides of a launch that saved no plan: its submission record's, or Hydra's."""
    if (sweep_dir / SUBMISSION).exists():
        return json.loads((sweep_dir / SUBMISSION).read_text())["overrides"]
    from omegaconf import OmegaConf  # only for a launch that saved no plan

    return list(OmegaConf.load(sweep_dir / "multirun.yaml").hydra.overrides.task)


def intact_plans(paths: list[Path]) -> list[tuple[Path, dict]]:
    """The plans among `paths` that can be read, with their records; each damaged one is
    named in one warning line and left out: it never blocks the status of other launches."""
    intact = []
    for path in paths:
        try:
            intact.append((path, read_plan(path.parent)))
        except PlanDamaged as error:
            print(f"warning: {error}; that launch is left out", file=sys.stderr)
    return intact


def _planned_by_live_launches(plans: list[Path]) -> set[str]:
    """The runs in the plans of launches still alive (on this host: the recorded pid, and its
    start time, so that a reused pid is not taken for the launch): they will still be started."""
    live: set[str] = set()
    for path in plans:
        try:
            record = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if same_process(record.get("host"), record.get("pid"), record.get("started")):
            live.update(r["run_dir"] for r in record["runs"])
    return live


# ---------------------------------------------------------------------------- the table
class Reader:
    """Reads a run's records, again only when a file changed (its size, time or inode): a
    `--watch` refresh of 10,000 runs stats their files and probes their locks, and reads the
    few files that changed."""

    def __init__(self):
        self._cache: dict[str, tuple] = {}

    def read(self, path: str):
        try:
            st = os.stat(path)
        except FileNotFoundError:
            self._cache.pop(path, None)
            return None, 0.0
        except OSError as error:
            return f"{type(error).__name__}: {error}", 0.0
        key = (st.st_mtime_ns, st.st_size, st.st_ino)
        cached = self._cache.get(path)
        if cached is None or cached[0] != key:
            cached = (key, read_json(path), st.st_mtime, None)
            self._cache[path] = cached
        return cached[1], cached[2]

    def recorded_hash(self, path: str) -> str | None:
        """The identity hash of the config a record read by `read` holds (result.json's), once
        per version of the file: a refresh re-hashes only the results that changed."""
        cached = self._cache.get(path)
        if cached is None or not isinstance(cached[1], dict) or not isinstance(cached[1].get("config"), dict):
            return None
        if cached[3] is None:
            cached = self._cache[path] = (*cached[:3], identity_hash(cached[1]["config"]))
        return cached[3]


def rows(
    sweep: Sweep,
    *,
    stale_after: float = DEFAULT_STALE_AFTER_S,
    now: float | None = None,
    reader: Reader | None = None,
) -> list[tuple]:
    """One tuple per planned run, in `COLUMNS` order (plain data: the command line needs no pandas)."""
    reader = reader or Reader()
    submitted = submitted_jobs(sweep.records)
    unknown = None  # why the queue is unknown (squeue did not answer)
    try:
        queued = queue_states({submitted[r] for r, _ in sweep.runs if r in submitted})
    except QueueUnknown as error:
        queued, unknown = {}, str(error)
    live = _planned_by_live_launches(sweep.plans)
    now = time.time() if now is None else now
    directories: dict[str, bool] = {}  # (the sweep directory is checked once, not once per run)
    out = []
    for i, (run_dir, cell) in enumerate(sweep.runs):
        beat, _ = reader.read(os.path.join(run_dir, HEARTBEAT))  # (strings, not Paths: 10,000 runs)
        result_path = os.path.join(run_dir, RESULT)
        result, result_time = reader.read(result_path)
        job = submitted.get(run_dir)
        row = state(
            run_dir,
            lock=lock_probe(run_dir),
            heartbeat=beat if isinstance(beat, dict) and isinstance(beat.get("time"), (int, float)) else None,
            result=result,
            result_time=result_time,
            launcher_alive=run_dir in live,
            queue=(QUEUE_UNKNOWN if unknown else queued.get(job)) if job else None,
            job=job,
            now=now,
            stale_after=stale_after,
            link=refused_link(run_dir, sweep.job_log(i), directories=directories),
            result_hash=reader.recorded_hash(result_path),
        )
        if row.state == "unknown":
            row.detail = f"queue unknown: job {row.job}: {unknown}"
        if row.state == "damaged" and "another experiment" in row.detail and sweep.plan_dir is not None:
            row.detail = state(run_dir, result=result, expected=sweep.config(i)).detail  # the differing fields
        out.append(
            (
                run_dir,
                os.path.basename(run_dir),
                cell,
                row.state,
                row.detail,
                row.host,
                row.pid,
                row.job,
                row.step,
                row.epoch,
                row.heartbeat_age_s,
                row.test_acc,
            )
        )
    return out


def status(
    target,
    *,
    stale_after: float = DEFAULT_STALE_AFTER_S,
    now: float | None = None,
    reader: Reader | None = None,
    sweep: Sweep | None = None,
    planner: Planner | None = None,
):
    """One row per planned run (a DataFrame): run_dir, cell, state, detail, and where it runs
    (host, pid, job, step, epoch, heartbeat_age_s) and its test accuracy when finished.
    `target` as in `Sweep.of` (overrides need `planner=src.plan.sweep_of`)."""
    import pandas as pd  # the table for a notebook; the command line needs no pandas

    return pd.DataFrame(
        rows(sweep or Sweep.of(target, planner), stale_after=stale_after, now=now, reader=reader), columns=COLUMNS
    )


def counts(table):
    """Runs per cell and state (a DataFrame), with a `total` row; columns `runs`, then STATES."""
    import pandas as pd  # (as `status`)

    grid = _grid(list(zip(table["cell"], table["state"])))
    return pd.DataFrame.from_dict(grid, orient="index", columns=["runs", *STATES]).rename_axis("cell")


def _grid(cells_states: list[tuple[str, str]]) -> dict[str, list[int]]:
    """cell -> [runs, then the count of each of STATES], and a `total` row."""
    index = {name: i + 1 for i, name in enumerate(STATES)}
    grid: dict[str, list[int]] = {}
    for cell, name in cells_states:
        counts_ = grid.setdefault(cell, [0] * (len(STATES) + 1))
        counts_[0] += 1
        counts_[index[name]] += 1
    grid = dict(sorted(grid.items()))
    grid["total"] = [sum(column) for column in zip(*grid.values())] or [0] * (len(STATES) + 1)
    return grid


def render(table: list[tuple], *, details: int = 20) -> str:
    """The per-cell counts (the states that occur), then the runs that need a look."""
    grid = _grid([(r[2], r[3]) for r in table])
    shown = [0] + [i + 1 for i in range(len(STATES)) if grid["total"][i + 1]]
    header = ["cell", *(["runs", *STATES][i] for i in shown)]
    body = [[cell, *(str(values[i]) for i in shown)] for cell, values in grid.items()]
    widths = [max(len(r[c]) for r in [header, *body]) for c in range(len(header))]
    lines = [
        "  ".join(v.ljust(w) if c == 0 else v.rjust(w) for c, (v, w) in enumerate(zip(r, widths)))
        for r in [header, *body]
    ]
    for name in ("starting", "running", "failed", "interrupted", "stale", "damaged", "queued", "unknown"):
        these = [r for r in table if r[3] == name]
        if these:
            lines.append(f"\n{name}:")
            lines += [f"  {r[1]}  {r[4]}" for r in these[:details]]
            if len(these) > details:
                lines.append(f"  ... and {len(these) - details} more")
    return "\n".join(lines)


def main(argv: list[str], planner: Planner | None = None) -> int:

    p = argparse.ArgumentParser(
        prog="python -m src.launch status",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("target", nargs="*", help="the launch's overrides, or a sweep / runs directory")
    p.add_argument(
        "--watch",
        nargs="?",
        const=10.0,
        type=float,
        metavar="SECONDS",
        help="refresh every SECONDS (default 10) until nothing is running or queued",
    )
    p.add_argument(
        "--stale-after",
        type=float,
        default=DEFAULT_STALE_AFTER_S,
        metavar="SECONDS",
        help=f"a heartbeat older than this means killed (default {DEFAULT_STALE_AFTER_S:g})",
    )
    args, extra = p.parse_known_args([a for a in argv if a not in ("-m", "--multirun", "--detach", "--dry-run")])
    target = args.target + extra
    paths = [t for t in target if "=" not in t and not t.startswith("~")]  # (every override has a '=')
    if paths and not all(Path(t).is_dir() for t in paths):
        missing = next(t for t in paths if not Path(t).is_dir())
        what = "is not a directory" if Path(missing).exists() else "does not exist"
        print(
            f"error: {missing} {what}: status takes a sweep's directory (runs_root/<name>, or a launch's "
            f"sweep dir under runs_root/.hydra/) or the launch's overrides (key=value ...)",
            file=sys.stderr,
        )
        return 2
    reader, sweep = Reader(), None
    while True:
        try:
            sweep = sweep or Sweep.of(target, planner)  # planned once; each refresh reads what changed
            table = rows(sweep, stale_after=args.stale_after, reader=reader)
        except (ValueError, FileNotFoundError) as error:
            print(f"error: {error}", file=sys.stderr)
            return 2
        text = render(table)
        if args.watch is None:
            print(text)
            return 0
        print(f"\033[2J\033[H{time.strftime('%H:%M:%S')}  (every {args.watch:g} s; Ctrl-C to stop)\n{text}", flush=True)
        if not any(r[3] in ACTIVE for r in table):
            return 0
        try:
            time.sleep(args.watch)
        except KeyboardInterrupt:
            return 0


# ---------------------------------------------------------------------------- a local sweep, live
class SweepProgress:
    """The lines a local sweep prints: one as each running run finishes an epoch, one as each
    run ends, and its closing summary:

        epoch 3/10 lenet5-dst-d0.1-snip-gradient-s1-<hash> val 85.9 % test 85.1 % — run ETA 4 min, sweep ETA 1 h 22 min
        [12/550] completed lenet5-dst-d0.1-snip-gradient-s1-<hash> test 86.1 % (41 s) — 6 running, ETA 1 h 20 min

    The sweep's ETA follows the runs in flight: each running run's own ETA from its heartbeat
    (its pace so far), the runs still to start at the mean duration of the finished ones (or,
    before any finished, of the running ones' projected durations), `workers` at a time.
    Thread-safe: the launcher calls `started` / `poll` / `finished` / `skipped`."""

    def __init__(self, total: int, workers: int, out=None):

        self.total, self.workers, self.out = total, workers, out
        self.done = self.running = 0
        self.durations: list[float] = []
        self.outcomes: dict[str, int] = {}
        self.start = time.monotonic()
        self.in_flight: dict[str, tuple[float, int]] = {}  # run dir -> (started, epoch last shown)
        self._lock = threading.Lock()

    def skipped(self) -> None:
        with self._lock:
            self.done += 1
            self.outcomes["skipped"] = self.outcomes.get("skipped", 0) + 1

    def started(self, run_dir: Path | str | None = None) -> float:
        now = time.monotonic()
        with self._lock:
            self.running += 1
            if run_dir is not None:
                self.in_flight[str(run_dir)] = (now, 0)
        return now

    def _eta(self, beats: dict[str, dict | None]) -> float:
        """Seconds until the sweep ends (see the class)."""
        now, left = time.monotonic(), []
        projected = []  # running runs' whole durations, from their pace
        for run_dir, (started, _) in self.in_flight.items():
            beat = beats.get(run_dir)
            eta = eta_s(beat) if beat else None
            if eta is None and self.durations:
                eta = max(0.0, sum(self.durations) / len(self.durations) - (now - started))
            if eta is not None:
                left.append(eta)
                projected.append(now - started + eta)
        mean = sum(self.durations) / len(self.durations) if self.durations else None
        mean = mean if mean is not None else (sum(projected) / len(projected) if projected else 0.0)
        waiting = self.total - self.done - len(self.in_flight)
        return (sum(left) + waiting * mean) / max(1, min(self.workers, waiting + len(self.in_flight)))

    def _beats(self) -> dict[str, dict | None]:
        return {run_dir: read_heartbeat(Path(run_dir)) for run_dir in self.in_flight}

    def poll(self) -> None:
        """A line for each running run that finished an epoch since the last poll."""
        beats = self._beats()
        with self._lock:
            for run_dir, beat in beats.items():
                started, shown = self.in_flight.get(run_dir, (0.0, 0))
                epoch = (beat or {}).get("epoch") or 0
                if not beat or epoch <= shown or "test_acc" not in beat:
                    continue
                self.in_flight[run_dir] = (started, epoch)
                accuracies = " ".join(
                    f"{name} {beat[key]:.1f} %"
                    for key, name in (("val_acc", "val"), ("test_acc", "test"))
                    if key in beat
                )
                eta = eta_s(beat)
                print(
                    f"epoch {epoch}/{beat.get('epochs', '?')} {Path(run_dir).name} {accuracies}"
                    f" — run ETA {duration(eta) if eta is not None else '?'}, sweep ETA {duration(self._eta(beats))}",
                    file=self.out or sys.stdout,
                    flush=True,
                )

    def finished(self, run_dir: Path, started: float) -> str:
        took = time.monotonic() - started
        row = classify(run_dir)
        state, acc = row.state, row.test_acc
        beats = self._beats()
        with self._lock:
            self.running -= 1
            self.done += 1
            self.durations.append(took)
            self.in_flight.pop(str(run_dir), None)
            beats.pop(str(run_dir), None)
            self.outcomes[state] = self.outcomes.get(state, 0) + 1
            left = self.total - self.done
            eta = self._eta(beats) if left else 0
            line = (
                f"[{self.done}/{self.total}] {state} {Path(run_dir).name}"
                f"{f' test {acc:.1f} %' if acc is not None else ''} ({duration(took)})"
                f" — {self.running} running, ETA {duration(eta) if left else '0 s'}"
            )
            if state in ("failed", "damaged", "stale") and row.detail:
                line += f"\n    {row.detail}"
            print(line, file=self.out or sys.stdout, flush=True)
        return state

    def summary(self) -> str:
        parts = ", ".join(f"{n} {k}" for k, n in sorted(self.outcomes.items()))
        return f"{self.done}/{self.total} runs done in {duration(time.monotonic() - self.start)}: {parts}"

"""What state a run is in: the one classifier, its vocabulary and its exit-code rule.

Every place that reports on runs (the launch's summary, `status`, the local and SLURM
launchers, packs, the analysis' completeness table) asks `state`; none decides on its own.

    planned      in a launch's plan, nothing on disk yet, and the launch is still alive
    queued       its SLURM job is in the queue (pending, requeued, or running other runs first)
    unknown      submitted to SLURM, nothing on disk says more, and squeue did not answer
                 (the controller down or hung): "queue unknown", never guessed
    starting     a process holds the run's lock but has written no heartbeat yet
    running      a process holds the run's lock (whatever its heartbeat's age) and beats
    completed    result.json says so                   } finished: never run again
    diverged     result.json says so                   }
    failed       result.json says so, or the run died by a signal, or could not record its result
    interrupted  result.json says so (checkpointed; a launch resumes it)
    stale        no lock holder and no result of this attempt: killed (or its node died)
    missing      nothing on disk, and nothing will run it (no launch alive, not queued)
    damaged      records that are not this run's or cannot be used: an unreadable result.json,
                 one of a newer record format or that lacks what its status promises (a
                 completed run without its final metrics), the records of another experiment
                 (its config hash is not the directory's identity), or a symbolic link where
                 its directory, a file of it or its job log should be

Liveness comes from the lock first (`lock.lock_probe`, a shared probe that writes
nothing): a held lock is a live process, however old its heartbeat (a SIGSTOPped run, a busy
node). A heartbeat from the future is reported as clock skew and not trusted. Where the file
system has no working flock, the heartbeat is all there is: fresh means running.
"""

from __future__ import annotations

import errno
import json
import os
import re
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from .files import (
    CHECKPOINT,
    CONFIG,
    FINISHED,
    HEARTBEAT,
    LOCK,
    LOG,
    METRICS,
    MODEL_FINAL,
    RESULT,
    RESULT_FORMAT,
    LinkRefused,
    atomic_write_text,
    read_result,
    recorded_configs,
    remove_stale_temp_files,
    run_dir_link,
    unusable_result,
)
from .heartbeat import duration, process_alive, progress_text  # noqa: F401  (duration: part of this API)
from .identity import hash_of_name, identity_diff, identity_hash, run_identity
from .lock import NO_FLOCK, RunLock, RunLocked, lock_probe

STATES = (
    "planned",
    "queued",
    "unknown",
    "starting",
    "running",
    "completed",
    "diverged",
    "failed",
    "interrupted",
    "stale",
    "missing",
    "damaged",
)
# something will still change (or may: a queue that did not answer): `status --watch` waits
ACTIVE = ("planned", "queued", "unknown", "starting", "running")
OK = (*FINISHED, "queued", "starting", "running")  # no reason for a non-zero exit (active: another launcher's)
QUEUE_UNKNOWN = "UNKNOWN"  # `state`'s queue when squeue did not answer (`execute.slurm_queue.QueueUnknown`)
IN_QUEUE = {
    "PENDING",
    "RUNNING",
    "REQUEUED",
    "REQUEUE_HOLD",
    "REQUEUE_FED",
    "CONFIGURING",
    "COMPLETING",
    "SUSPENDED",
    "RESIZING",
    "SIGNALING",
    "STAGE_OUT",
}
DEFAULT_STALE_AFTER_S = 900.0  # a heartbeat comes every `train.heartbeat_every_s` (60 s) and at each epoch
SKEW_TOLERANCE_S = 60.0  # a heartbeat further ahead of this clock than this is clock skew
# a run stopped by these checkpointed first (`execute.stop.STOP_SIGNALS`: every run handles them)
PREEMPTION_SIGNALS = ("SIGTERM", "SIGINT", "SIGUSR1", "SIGUSR2", "SIGHUP", "SIGXCPU")


def exit_code(states) -> int:
    """The one rule, for a single run as for a sweep, a pack or a launch: 0 when every run
    finished (completed or diverged: a diverged run is a result) or is in another launcher's
    hands (queued, starting, running); 1 when any failed, was interrupted, went stale, is
    missing or damaged."""
    return 0 if all(s in OK for s in states) else 1


@dataclass
class RunState:
    state: str
    detail: str = ""
    host: str | None = None
    pid: int | None = None
    job: str | None = None
    step: int | None = None
    epoch: int | None = None
    heartbeat_age_s: float | None = None
    test_acc: float | None = None


def foreign_records(
    run_dir: str | Path, recorded: dict | None, expected: dict | None = None, *, recorded_hash: str | None = None
) -> str | None:
    """Why the records in `run_dir` are not this run's, or None when they are (or say nothing):
    their config's identity hash (`recorded_hash` when already known) is not the directory's
    (or not that of `expected`, the run's planned config), with both hashes and, when
    `expected` is known, the differing fields."""
    if not isinstance(recorded, dict) or not recorded:
        return None
    theirs = recorded_hash or identity_hash(recorded)
    ours: str | None
    if expected is not None:
        ours = identity_hash(expected)
        if theirs == ours:
            return None
    else:
        ours = hash_of_name(run_dir)
        if ours is None or theirs.startswith(ours):
            return None
    detail = f"records of another experiment (config hash {theirs}, this directory's is {ours})"
    if expected is not None:
        detail += "; differing fields: " + ", ".join(identity_diff(recorded, expected))
    return detail + "; not counted as finished"


class RunDirConflict(ValueError):
    """The run directory holds the records of another experiment."""


def run_dir_conflict(run_dir: Path, config: dict) -> str | None:
    """Why ``run_dir`` cannot take the run of ``config``, or None: it is a symbolic link
    (`files.run_dir_link`), or one of its records is another experiment's: config.json, or
    the config result.json was written for (a result copied from another run), with both
    hashes and the differing fields. Reads only: a refused directory is left as it was."""
    link = run_dir_link(run_dir)
    if link:
        return link
    for name, existing in recorded_configs(run_dir):
        if run_identity(existing) == run_identity(config):
            continue
        return (
            f"{Path(run_dir) / name} holds the records of another experiment (config hash "
            f"{identity_hash(existing)}, this run's is {identity_hash(config)}); differing fields:\n  "
            + "\n  ".join(identity_diff(existing, config))
            + "\n(use another run directory, or --force to delete those records and start over)"
        )
    return None


def claim_run_dir(run_dir: Path, config: dict, *, force: bool = False) -> None:
    """Make sure ``run_dir`` belongs to the experiment of ``config`` before anything in it is
    written: records of another experiment raise `RunDirConflict` (`run_dir_conflict`),
    unless ``force``, which deletes them and starts over. Also removes the temporary files of
    a killed run. (Call with the run's lock held.)"""
    run_dir = Path(run_dir)
    link = run_dir_link(run_dir)
    if link:  # never deleted through, --force or not
        raise LinkRefused(errno.ELOOP, link)
    conflict = run_dir_conflict(run_dir, config)
    if conflict and not force:
        raise RunDirConflict(conflict)
    if conflict:
        for name in (CONFIG, METRICS, CHECKPOINT, RESULT, MODEL_FINAL):
            (run_dir / name).unlink(missing_ok=True)
    for path in remove_stale_temp_files(run_dir):
        print(f"removed a stale temporary file: {path}", file=sys.stderr, flush=True)


def read_json(path: str | Path):
    """A record file's content, `None` when absent, or the error (a string) when unreadable
    (a file that holds JSON's `null` too: that is no record, and no absent file either)."""
    try:
        with open(path, "rb") as f:
            content = json.loads(f.read())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as error:
        return f"{type(error).__name__}: {error}"
    return "it holds `null`, not a record" if content is None else content


def finished_status(run_dir: Path, config: dict | None = None) -> str | None:
    """ "completed" / "diverged" when the run finished and its records are this run's (the
    skip decision, wherever a run is skipped: a launch's plan, a pack's start); else None.
    Another experiment's finished result is refused with both hashes and the differing fields
    (printed), never counted: the run is then started, and `train` refuses the directory."""
    result = read_result(run_dir)  # (a damaged one is reported on stderr, and the run done again)
    if result is None or result.get("status") not in FINISHED:
        return None
    foreign = foreign_records(run_dir, result.get("config"), config)
    if foreign:
        print(f"warning: {run_dir}: {foreign}", file=sys.stderr, flush=True)
        return None
    return result["status"]


RUN_FILES = frozenset((LOCK, LOG, CONFIG, METRICS, RESULT, HEARTBEAT, CHECKPOINT, MODEL_FINAL))


def refused_link(run_dir, job_log=None, *, directories: dict[str, bool] | None = None) -> str | None:
    """What a run refuses to write through, and where, or None: its directory or the sweep
    directory above it (`runs_root/name`) is a symbolic link, or one of its files is
    (`RUN_FILES`), or its launcher's output file `job_log` is. Such a run cannot start (or
    its records cannot be trusted) until the link is removed. (lstat and one directory
    listing: no file is opened; `directories`: whether each directory is a link, as found for
    other runs of the same sweep in this pass.)"""
    run_dir = os.fspath(run_dir)

    def refused(path: str, what: str) -> str:
        try:
            target = os.readlink(path)
        except OSError:
            target = "?"
        return (
            f"refused a symbolic link: {what} {path} -> {target} (the run writes only its own files: remove the link)"
        )

    if os.path.islink(run_dir):
        return refused(run_dir, "its run directory")
    sweep = os.path.dirname(run_dir)
    known = {} if directories is None else directories
    if sweep not in known:
        known[sweep] = os.path.islink(sweep)
    if known[sweep]:
        return refused(sweep, "its sweep directory")
    try:
        with os.scandir(run_dir) as entries:
            links = sorted(e.name for e in entries if e.name in RUN_FILES and e.is_symlink())
    except OSError:
        links = []
    if links:
        return refused(os.path.join(run_dir, links[0]), "its file")
    if job_log is not None and os.path.islink(os.path.dirname(job_log)):
        return refused(os.path.dirname(job_log), "its job's directory")
    if job_log is not None and os.path.islink(job_log):
        return refused(os.fspath(job_log), "its job log")
    return None


def heartbeat_of(run_dir: Path) -> dict | None:
    beat = read_json(Path(run_dir) / HEARTBEAT)
    return beat if isinstance(beat, dict) and isinstance(beat.get("time"), (int, float)) else None


def state(
    run_dir: str | Path,
    *,
    lock: str | None = "",
    heartbeat: dict | None = None,
    result=None,
    result_time: float = 0.0,
    launcher_alive: bool = False,
    queue: str | None = None,
    job: str | None = None,
    now: float | None = None,
    stale_after: float = DEFAULT_STALE_AFTER_S,
    expected: dict | None = None,
    link: str | None = None,
    result_hash: str | None = None,
) -> RunState:
    """The state of one run from what is known of it: `link` (`refused_link`), `lock` (`lock.lock_probe`: holder,
    FREE or NO_FLOCK), its `heartbeat` and `result` (as `read_json` gives them; `result_time`: when
    result.json was written), whether the
    launch that planned it is still alive, its SLURM job's `queue` state, the clock `now`, and
    the run's planned config (`expected`) when known (`result_hash`: the identity hash of the
    result's config, when already known). Use `classify` to read them from disk."""
    now = time.time() if now is None else now
    row = _where(RunState("missing", job=job), heartbeat, now)
    beat_pid = row.pid
    beat_time: float = heartbeat["time"] if heartbeat else 0.0
    skew = heartbeat is not None and now - beat_time < -SKEW_TOLERANCE_S
    skew_note = (
        f" (its heartbeat is {duration(beat_time - now)} in the future: clock skew between hosts?)" if skew else ""
    )
    if link and not lock:  # what it refused to write through, and where
        return _with(row, "damaged", link)
    damage = _damage(result)
    if damage and not lock:
        return _with(row, "damaged", damage)
    result = None if damage else result
    status = (result or {}).get("status")
    recorded = (result or {}).get("config")
    foreign = foreign_records(run_dir, recorded, expected, recorded_hash=result_hash) if result else None

    if lock:  # a live process holds the run: whatever its heartbeat or an earlier result say
        row.pid = row.pid if beat_pid is not None else _pid_of(lock)
        job_note = f" job {row.job}" if row.job else ""
        if heartbeat and _pid_of(lock) in (None, beat_pid):
            return _with(row, "running", _at(row, heartbeat, now, job_note) + skew_note)
        return _with(row, "starting", f"{lock}{job_note}, no heartbeat yet")
    if foreign:
        return _with(row, "damaged", foreign)
    if status in FINISHED:
        acc = (result.get("final") or {}).get("test_acc")
        row.test_acc = acc
        return _with(row, status, f"test {acc:.2f} %" if acc is not None else "")
    failure = (heartbeat or {}).get("unrecorded_failure")
    if isinstance(failure, dict) and (failure.get("time") or 0) > result_time:
        return _with(row, "failed", f"could not record the result (disk full?): {failure.get('error')}")
    # a new attempt since the result (a skewed heartbeat's time cannot say: the result stands)
    this_attempt = heartbeat is not None and (result is None or (not skew and beat_time > result_time))
    alive = process_alive(row.host, beat_pid) if this_attempt else None
    fresh = this_attempt and not skew and now - beat_time <= stale_after
    if lock is NO_FLOCK and fresh and alive is not False:  # no lock to ask: the heartbeat says
        return _with(row, "running", _at(row, heartbeat, now) + " (no working flock here: from its heartbeat)")
    if queue in IN_QUEUE:
        return _with(row, "queued", f"in job {row.job or job} ({queue.lower()})" + skew_note)
    if queue == QUEUE_UNKNOWN:
        return _with(row, "unknown", f"queue unknown: job {row.job or job}, squeue did not answer" + skew_note)
    if this_attempt and fresh and alive is None and lock is not NO_FLOCK:
        # a fresh heartbeat from another host, and no lock holder visible from here: the lock
        # may not reach across hosts on this file system; trust the heartbeat
        return _with(row, "running", _at(row, heartbeat, now) + " (lock not visible from this host)")
    if status in ("failed", "interrupted") and not this_attempt:
        first = (result.get("error") or "").strip().splitlines()
        return _with(row, status, (first[0] if first else f"at step {result.get('steps')}") + skew_note)
    if heartbeat is not None:
        how = "no process holds its lock" if lock is not NO_FLOCK else "heartbeat too old (no working flock here)"
        return _with(
            row,
            "stale",
            f"{how}; last heartbeat {duration(max(0.0, now - heartbeat['time']))} ago on "
            f"{row.host} pid {beat_pid}, step {heartbeat.get('step')}: killed?" + skew_note,
        )
    if launcher_alive:
        return _with(row, "planned", "waiting for its launch to start it")
    if os.path.exists(os.path.join(run_dir, CONFIG)) or os.path.exists(os.path.join(run_dir, LOCK)):
        return _with(row, "stale", "started, but killed before its first heartbeat")
    return row


def classify(
    run_dir: Path,
    *,
    queue: str | None = None,
    job: str | None = None,
    launcher_alive: bool = False,
    now: float | None = None,
    stale_after: float = DEFAULT_STALE_AFTER_S,
    expected: dict | None = None,
    job_log: Path | None = None,
) -> RunState:
    """`state` from the run directory's files, its lock probed (read-only); `job_log`: its
    launcher's output file, when known."""
    run_dir = Path(run_dir)
    try:
        result_time = (run_dir / RESULT).stat().st_mtime
    except OSError:
        result_time = 0.0
    return state(
        run_dir,
        lock=lock_probe(run_dir),
        heartbeat=heartbeat_of(run_dir),
        result=read_json(run_dir / RESULT),
        result_time=result_time,
        launcher_alive=launcher_alive,
        queue=queue,
        job=job,
        now=now,
        stale_after=stale_after,
        expected=expected,
        link=refused_link(run_dir, job_log),
    )


def died(code: int) -> str | None:
    """`failed`'s detail for a run process that exited with `code` (a Popen / multiprocessing
    exit code; negative: killed by that signal), unless a preemption signal stopped it."""
    if code >= 0:
        return None
    try:
        name = signal.Signals(-code).name
    except ValueError:
        name = f"signal {-code}"
    return None if name in PREEMPTION_SIGNALS else f"killed by {name}"


def record_death(run_dir: Path, config: dict, code: int, started: float) -> str | None:
    """After a run's process (started at `started`) died by a signal other than a preemption
    one (a segfault, an OOM kill) without a result of its own: write its result.json as failed,
    naming the signal, so that every reader says `failed` and a launch retries it. Returns the
    detail, or None when it did not so die. (Under the run's lock: free, its holder is dead.)"""
    detail = died(code)
    if detail is None:
        return None
    try:
        with RunLock(run_dir):
            if (Path(run_dir) / RESULT).exists() and (Path(run_dir) / RESULT).stat().st_mtime >= started:
                return None  # it recorded its end itself
            atomic_write_text(
                Path(run_dir) / RESULT,
                json.dumps(
                    {
                        "format": RESULT_FORMAT,
                        "status": "failed",
                        "error": f"{detail} (no result of its own)",
                        "config": config,
                        "time": time.time(),
                    },
                    indent=2,
                    sort_keys=True,
                ),
            )
    except (RunLocked, OSError):
        pass
    return detail


def _damage(result) -> str | None:
    """What is wrong with a result.json as read (`read_json`), or None."""
    if isinstance(result, str):  # result.json that is not JSON
        return f"unreadable result.json: {result}"
    problem = unusable_result(result) if result is not None else None
    return f"result.json cannot be used: {problem}" if problem else None


def _where(row: RunState, heartbeat: dict | None, now: float) -> RunState:
    """The row with where and how far the run is, from its heartbeat."""
    if heartbeat:
        row.host, row.pid = heartbeat.get("host"), heartbeat.get("pid")
        row.step, row.epoch = heartbeat.get("step"), heartbeat.get("epoch")
        row.job = heartbeat.get("slurm_job_id") or row.job
        row.heartbeat_age_s = round(now - heartbeat["time"], 1)
    return row


def _at(row: RunState, heartbeat: dict | None, now: float, job_note: str = "") -> str:
    """`host pid P[ job J] epoch 3/10 step 1266/4220 val 85.1 % test 84.9 % ETA 2 min`: where a
    running run is and how far it has come, from its heartbeat."""
    return f"{row.host} pid {row.pid}{job_note} {progress_text(heartbeat or {}, now)}"


def _with(row: RunState, state_: str, detail: str) -> RunState:
    row.state, row.detail = state_, detail
    return row


def _pid_of(holder: str) -> int | None:
    match = re.search(r"pid (\d+)", holder or "")
    return int(match.group(1)) if match else None

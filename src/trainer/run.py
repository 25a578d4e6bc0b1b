"""One run in its run directory: the lock held throughout, a directory of another experiment
refused, the heartbeat from the start, and a failure recorded in result.json (or, on a full
disk, in the heartbeat) before it is raised."""

from __future__ import annotations

import sys
import traceback
from collections.abc import Callable
from pathlib import Path

from ..config import RunConfig
from ..rundir import Heartbeat, RunDirConflict, RunLock, RunRecorder, claim_run_dir, run_dir_conflict
from .distributed import is_main_process
from .loop import fit
from .provenance import provenance


def train(
    cfg: RunConfig, run_dir: str | Path, *, should_stop: Callable[[], bool] | None = None, force: bool = False
) -> dict:
    """Run (or resume) one training run in ``run_dir`` and return its result dict.

    ``cfg`` is a validated config (`RunConfig.validate`: the entry points validate it once).
    ``should_stop`` is polled between steps; when it returns True the run checkpoints and
    returns with status "interrupted" (a signal, SLURM preemption / time limits). An exception
    is recorded as a "failed" result (with the traceback) and re-raised; the last epoch
    checkpoint stays, so running again resumes from it.

    The run holds ``run_dir``'s lock throughout (`RunLocked` if another process runs it), and
    a directory holding another experiment's records is refused (`RunDirConflict`) unless
    ``force``, which starts it over.
    """
    run_dir = Path(run_dir)
    main_rank = is_main_process()
    if main_rank and not force:  # refused before anything in it is written (its lock included)
        conflict = run_dir_conflict(run_dir, cfg.to_dict())
        if conflict:
            raise RunDirConflict(conflict)
    with RunLock(run_dir, enabled=main_rank):
        if main_rank:
            claim_run_dir(run_dir, cfg.to_dict(), force=force)
        # From the start, so that a failure that cannot be recorded can still be marked in it.
        heartbeat = Heartbeat(run_dir, every_s=cfg.train.heartbeat_every_s, enabled=main_rank)
        try:
            heartbeat.beat(0, 0)
            return fit(cfg, run_dir, should_stop, heartbeat)
        except Exception as error:  # (another experiment's checkpoint too: recorded, so `status` says why)
            if main_rank:
                record_failure(cfg, run_dir, error, heartbeat)
            raise


def record_failure(cfg: RunConfig, run_dir: Path, error: Exception, heartbeat: Heartbeat) -> None:
    """result.json says "failed", with the traceback; where it cannot be written (a full disk)
    the error is printed and marked in the heartbeat, where `status` and the launcher look."""
    failed = {
        "status": "failed",
        "error": f"{type(error).__name__}: {error}",
        "traceback": traceback.format_exc(),
        **provenance(cfg.to_dict(), run_dir),
    }
    try:
        RunRecorder(run_dir, cfg.to_dict()).write_result(failed)
    except OSError as record_error:  # a full disk: the error must still be seen
        print(
            f"could not record the failure in {run_dir}: {record_error}\n{failed['traceback']}",
            file=sys.stderr,
            flush=True,
        )
        try:
            heartbeat.record_unrecorded_failure(failed["error"])
        except OSError as mark_error:
            print(f"could not mark the failure in {heartbeat.path} either: {mark_error}", file=sys.stderr, flush=True)

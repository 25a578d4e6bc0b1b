"""A run's process: the one child entry point (`run_in_child`, forked by the pool of the local
launcher and of a SLURM pack), and `run_one`, which every way of running a run goes through:
in its directory, with its output teed to its train.log, stopped at a step boundary by any
stop signal (checkpointed, recorded interrupted), handed back to SLURM on a time-limit or
preemption warning, and never outliving the launcher or pack that started it. `train` is the
run in its directory around the training loop (`trainer.loop.fit`): the run's lock held
throughout, a directory of another experiment refused, the heartbeat from the start, and a
failure recorded before it is raised.

    python -m src.launch --run-config <config.json> --run-dir <run dir>   # a local job, by hand
"""

from __future__ import annotations

import json
import os
import signal
import sys
import traceback
from collections.abc import Callable
from pathlib import Path

# Imported here, so that a process that forks runs (a SLURM pack, the local launcher) has
# imported them once, by importing this entry, and no forked run pays for them again:
# `torch._dynamo`, which torch imports lazily when a run builds its first optimizer (~1.5 s on
# a 2-core machine, as long again as the interpreter's start-up), and `torch.utils.serialization`
# (the first checkpoint's `torch.save`). Neither starts a thread nor initialises CUDA, so the
# process still forks safely.
import torch._dynamo  # noqa: F401
import torch.utils.serialization  # noqa: F401

from ..checks import validated
from ..config import RunConfig
from ..rundir import (
    LOG,
    Heartbeat,
    RunDirConflict,
    RunLock,
    RunLocked,
    RunRecorder,
    claim_run_dir,
    exit_code,
    open_in_directory,
    run_dir_conflict,
    tee_output,
)
from ..trainer.distributed import is_main_process
from ..trainer.loop import fit
from ..trainer.provenance import provenance
from .environment import export_distributed, set_threads
from .pool import PackedRun
from .stop import STOP_SIGNALS, StopRequest, die_with_parent


def run_one(run_cfg: RunConfig, run_dir: Path, stop: StopRequest | None = None) -> dict:
    """Run or resume one (validated) run in its directory; never raises for a failing run. Its
    output also goes to `<run_dir>/train.log`. Whether to skip it was decided by the plan
    (`rundir.finished_status`); the trainer only makes sure, under the run's lock, that no
    other launcher finished it meanwhile. Without `stop`: a request of its own for every stop
    signal (`execute.stop`), in a submitit job one that requeues on a time-limit warning."""
    export_distributed()  # several SLURM tasks: torchrun's variables, before the rank is asked
    main_rank = int(os.environ.get("RANK", "0")) == 0
    # Refused before the log is opened, so that the directory is left byte-identical: a link,
    # or records (config.json, result.json) of another experiment.
    refused = run_dir_conflict(run_dir, run_cfg.to_dict()) if main_rank else None
    if refused:
        print(f"error: {refused}", file=sys.stderr, flush=True)
        return {"status": "damaged", "run_dir": str(run_dir), "error": refused}
    set_threads(run_cfg)
    if stop is None:
        on_slurm = os.environ.get("SUBMITIT_EXECUTOR") == "slurm"
        stop = StopRequest.preemption() if on_slurm else StopRequest.on_signals().install()
    with tee_output(run_dir / LOG, enabled=main_rank):
        try:
            result = train(run_cfg, run_dir, should_stop=stop)
        except RunLocked as error:  # another launcher runs it: not this one's to count
            print(f"skipped ({error})", flush=True)
            return {"status": "running", "run_dir": str(run_dir)}
        except Exception as error:  # recorded in result.json by train(); the sweep goes on
            traceback.print_exc()
            print(f"failed: {run_dir}: {type(error).__name__}: {error}", file=sys.stderr, flush=True)
            return {"status": "failed", "run_dir": str(run_dir), "error": str(error)}
        finally:
            stop.restore()
        if result["status"] == "interrupted":
            print(f"interrupted at step {result['steps']}, checkpointed: {run_dir}", flush=True)
            stop.hand_over()  # in a submitit job: it requeues the job, which then resumes
        print(f"{result['status']}: {run_dir}", flush=True)
    return {"status": result["status"], "run_dir": str(run_dir)}


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


def run_in_child(
    run: PackedRun, sweep_dir: str, threads: int | None, launcher: int | None = None, parent: int | None = None
) -> None:
    """One run, in a process forked from a pool (a SLURM pack's, or the local launcher's:
    `launcher` is then its pid; `parent`: the forking process's pid): output to
    `<sweep dir>/<idx>/job.log` (and the run's train.log), its stop request (every stop signal)
    installed before the signals the pool blocked while forking are let in, and SIGTERM -- a
    stop request -- when its parent dies, so that it never trains on as an orphan, outside its
    launch or its allocation (`die_with_parent`). A local run also takes its own session (a
    Ctrl-C at the terminal reaches the launcher only, which passes it on); every run its thread
    count before any parallel op. (A packed run does not requeue: its pack does, once all its
    runs stopped.)"""
    for sig in STOP_SIGNALS:  # not the pool's forwarding handlers, which the fork copied
        signal.signal(sig, signal.SIG_DFL)
    stop = StopRequest.on_signals().install()
    if launcher is not None:
        os.setsid()
        os.environ["DST_LAUNCHER_PID"] = str(launcher)
    watched = launcher if launcher is not None else parent
    if watched is not None:
        die_with_parent(watched)
    signal.pthread_sigmask(signal.SIG_SETMASK, set())  # the pool blocks them while it forks
    if threads is not None:
        os.environ["OMP_NUM_THREADS"] = os.environ["MKL_NUM_THREADS"] = str(threads)
    job_dir = Path(sweep_dir) / str(run.idx)
    job_dir.mkdir(parents=True, exist_ok=True)
    # (the job's directory opened without following a link, the log inside it never through one)
    log = open_in_directory(job_dir / "job.log", os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    os.dup2(log, 1)
    os.dup2(log, 2)
    cfg = RunConfig.from_dict(run.config)
    cfg.train.progress = False
    if threads is not None:
        cfg.train.threads = threads
    result = run_one(cfg, Path(run.run_dir), stop)
    sys.stdout.flush()
    sys.stderr.flush()
    sys.exit(exit_code([result["status"]]))


def run_config_file(config_file: Path, run_dir: Path) -> int:
    """`python -m src.launch --run-config FILE --run-dir DIR`: run a resolved run config (a
    local launcher's job, by hand), validated here; its exit status by `rundir.exit_code`."""
    cfg = validated(RunConfig.from_dict(json.loads(Path(config_file).read_text())))
    result = run_one(cfg, Path(run_dir))
    return 2 if "error" in result and result["status"] == "damaged" else exit_code([result["status"]])

"""Running one run: in its directory, with its output teed to its train.log, stopped at a step
boundary by any stop signal (`execute.stop`: checkpointed, recorded interrupted), handed back
to SLURM on a time-limit or preemption warning, and never outliving the launcher or pack that
started it.

    python -m src.launch --run-config <config.json> --run-dir <run dir>   # a local job (`run_config_file`)
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from .config import RunConfig
from .execute.stop import StopRequest, die_with_parent
from .rundir import LOG, RunLocked, exit_code, tee_output


def run_one(run_cfg: RunConfig, run_dir: Path, stop: StopRequest | None = None) -> dict:
    """Run or resume one run in its directory; never raises for a failing run. Its output
    also goes to `<run_dir>/train.log`. Whether to skip it was decided by the plan
    (`rundir.finished_status`); `train` only makes sure, under the run's lock, that no other
    launcher finished it meanwhile. `stop`: the run's stop request (installed by the process
    that forked it, before it unblocked signals); by default one of its own."""
    with tee_output(run_dir / LOG, enabled=int(os.environ.get("RANK", "0")) == 0):
        return _run(run_cfg, run_dir, stop)


def _run(run_cfg: RunConfig, run_dir: Path, stop: StopRequest | None) -> dict:
    from .train import train

    if stop is None:  # a run of its own (not forked by a launcher or a pack): requeued by submitit on SLURM
        stop = StopRequest(requeue=True)
    try:
        with stop:
            result = train(run_cfg, run_dir, should_stop=stop)
    except RunLocked as error:  # another launcher runs it: not this one's to count
        print(f"skipped ({error})", flush=True)
        return {"status": "running", "run_dir": str(run_dir)}
    except Exception as error:  # recorded in result.json by train(); the sweep goes on
        import traceback

        traceback.print_exc()
        print(f"failed: {run_dir}: {type(error).__name__}: {error}", file=sys.stderr, flush=True)
        return {"status": "failed", "run_dir": str(run_dir), "error": str(error)}
    if result["status"] == "interrupted":
        print(f"interrupted at step {result['steps']}, checkpointed: {run_dir}", flush=True)
        stop.hand_over()  # a time-limit / preemption warning: submitit requeues the job, which resumes
    print(f"{result['status']}: {run_dir}", flush=True)
    return {"status": result["status"], "run_dir": str(run_dir)}


def run_config_file(config_file: Path, run_dir: Path) -> int:
    """`python -m src.launch --run-config FILE --run-dir DIR`: run a resolved run config (a
    local launcher's job); its exit status by `rundir.exit_code`."""
    result = run_one(RunConfig.from_dict(json.loads(Path(config_file).read_text())), Path(run_dir))
    return exit_code([result["status"]])


def preload() -> None:
    """What every run imports, imported once by a process that forks runs (a SLURM pack, the
    local launcher) so that no forked run pays for it again: the trainer; `torch._dynamo`,
    which torch imports lazily when a run builds its first optimizer (~1.5 s on a 2-core
    machine, as long again as the interpreter's start-up); and `torch.utils.serialization`
    (the first checkpoint's `torch.save`). None of it starts a thread or initialises CUDA, so
    the process still forks safely."""
    import torch._dynamo  # noqa: F401
    import torch.utils.serialization  # noqa: F401

    from . import train  # noqa: F401


def die_with_launcher() -> None:
    """In a job started by the local launcher as a process of its own (`DST_LAUNCHER_PID`):
    get SIGTERM when the launcher dies (`execute.stop.die_with_parent`)."""
    launcher = os.environ.get("DST_LAUNCHER_PID")
    if launcher:
        die_with_parent(int(launcher))

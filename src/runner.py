"""Running one run: in its directory, with its output teed to its train.log, stopped at a step
boundary by a signal (checkpointed, recorded interrupted), handed back to SLURM on preemption,
and never outliving the local launcher that started it.

    python -m src.launch --run-config <config.json> --run-dir <run dir>   # a local job (`run_config_file`)
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sys
from pathlib import Path

from .config import RunConfig
from .rundir import LOG, RunLocked, exit_code, tee_output


def run_one(run_cfg: RunConfig, run_dir: Path, stop: PreemptionFlag | None = None) -> dict:
    """Run or resume one run in its directory; never raises for a failing run. Its output
    also goes to `<run_dir>/train.log`. Whether to skip it was decided by the plan
    (`rundir.finished_status`); `train` only makes sure, under the run's lock, that no other
    launcher finished it meanwhile."""
    with tee_output(run_dir / LOG, enabled=int(os.environ.get("RANK", "0")) == 0):
        return _run(run_cfg, run_dir, stop)


def _run(run_cfg: RunConfig, run_dir: Path, stop: PreemptionFlag | None) -> dict:
    from .train import StopOnSignal, train

    # On SLURM, submitit's preemption signal (or the pack's); elsewhere SIGTERM / SIGINT / SIGUSR2.
    on_slurm = os.environ.get("SUBMITIT_EXECUTOR") == "slurm"
    if stop is None:
        stop = PreemptionFlag() if on_slurm else StopOnSignal()
    try:
        with contextlib.nullcontext() if isinstance(stop, PreemptionFlag) else stop:
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
        if isinstance(stop, PreemptionFlag):
            stop.hand_over()  # submitit requeues the job, which then resumes
    print(f"{result['status']}: {run_dir}", flush=True)
    return {"status": result["status"], "run_dir": str(run_dir)}


class PreemptionFlag:
    """Turns the SLURM time-limit / preemption signal into a request to stop at the next
    step boundary; the run then checkpoints and `hand_over` lets submitit requeue the job.

    Outside a submitit job this is a flag that is never set. With `requeue=False` (a run of a
    packed job) `hand_over` does nothing: the pack requeues the job once all its runs stopped.
    """

    def __init__(self, requeue: bool = True):
        self.requested = False
        self._submitit_handler = None
        self._signal = None
        if os.environ.get("SUBMITIT_EXECUTOR") == "slurm":
            sig = getattr(signal, "SIG" + os.environ.get("SUBMITIT_PREEMPT_SIGNAL", "USR2"))
            self._signal = sig
            handler = signal.getsignal(sig)
            self._submitit_handler = handler if requeue else None
            signal.signal(sig, self._request)

    def _request(self, signum, frame):
        self.requested = True

    def __call__(self) -> bool:
        return self.requested

    def hand_over(self) -> None:
        if self._submitit_handler is not None and callable(self._submitit_handler):
            self._submitit_handler(self._signal, None)


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
    """In a job started by the local launcher: get SIGTERM (checkpoint, record, exit) when the
    launcher dies, even by SIGKILL, so that no job trains on as an orphan (Linux only)."""
    launcher = os.environ.get("DST_LAUNCHER_PID")
    if not launcher or not sys.platform.startswith("linux"):
        return
    import ctypes

    PR_SET_PDEATHSIG = 1
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() != int(launcher):  # it died before the request took effect
        os.kill(os.getpid(), signal.SIGTERM)

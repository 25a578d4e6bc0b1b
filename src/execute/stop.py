"""The one stop-request mechanism: every signal a scheduler or a user may send to a run, to the
local launcher or to a SLURM pack asks it to stop at the next step boundary with a checkpoint.

    TERM  scancel, a preemption, the end of a session, `kill`
    INT   Ctrl-C (a second one aborts a run at once)
    USR1  what many sites send before a time limit (`--signal=USR1@...`)
    USR2  submitit's time-limit / preemption warning
    HUP   a closed terminal or ssh session
    XCPU  a CPU-time limit reached

None of them kills a process that runs training unhandled: a run checkpoints and records itself
interrupted, a launcher or a pack passes the signal on to its running runs, starts no more, and
ends with its summary once they stopped. A SLURM pack stopped by a time-limit or preemption
warning (`REQUEUE_SIGNALS`) then hands over to submitit, which requeues the job (the requeued job
resumes the runs); stopped by another signal it ends, and a relaunch resumes the runs.
"""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Callable

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1, signal.SIGUSR2, signal.SIGHUP, signal.SIGXCPU)
REQUEUE_SIGNALS = (signal.SIGUSR1, signal.SIGUSR2, signal.SIGXCPU)  # a time limit or a preemption is coming


class StopRequest:
    """Set by any of `STOP_SIGNALS`; polled between steps (`train`'s ``should_stop``) or by a
    launcher's loop. Handlers are installed by `install` (or ``with``), in the main thread only
    (Python delivers signals there), and put back by `restore`.

    forward: called with each signal received (a launcher passes it on to its running runs).
    abort_on_second_interrupt: a second SIGINT raises KeyboardInterrupt (a run: Ctrl-C twice).
    requeue: in a submitit job, keep submitit's requeue handler for `hand_over`.
    """

    def __init__(
        self,
        forward: Callable[[int], None] | None = None,
        *,
        abort_on_second_interrupt: bool = True,
        requeue: bool = False,
    ):
        self.received: int | None = None
        self.forward = forward
        self.abort_on_second_interrupt = abort_on_second_interrupt
        self.requeue = requeue
        self._previous: dict = {}
        self._submitit_handler = None
        self.installed = self._installed_here = False

    def install(self) -> StopRequest:
        if self.installed or threading.current_thread() is not threading.main_thread():
            return self
        if self.requeue and os.environ.get("SUBMITIT_EXECUTOR") == "slurm":
            preempt = getattr(signal, "SIG" + os.environ.get("SUBMITIT_PREEMPT_SIGNAL", "USR2"))
            handler = signal.getsignal(preempt)
            self._submitit_handler = handler if callable(handler) else None
        self._previous = {sig: signal.signal(sig, self._handle) for sig in STOP_SIGNALS}
        self.installed = True
        return self

    def restore(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler if handler is not None else signal.SIG_DFL)
        self._previous, self.installed = {}, False

    def __enter__(self) -> StopRequest:
        self._installed_here = not self.installed
        return self.install()

    def __exit__(self, *exc) -> None:
        if self._installed_here:  # (one installed before, by the process that forked the run, stays)
            self.restore()

    def _handle(self, signum, frame) -> None:
        if self.received is not None and signum == signal.SIGINT and self.abort_on_second_interrupt:
            raise KeyboardInterrupt
        if self.received is None:
            try:  # os.write: print is not safe inside a signal handler
                os.write(
                    2,
                    f"received {signal.Signals(signum).name}: stopping at the next step with a checkpoint"
                    f"{' (Ctrl-C again to abort at once)' if self.abort_on_second_interrupt else ''}\n".encode(),
                )
            except OSError:
                pass
            self.received = signum
        if self.forward is not None:
            self.forward(signum)

    def __call__(self) -> bool:
        return self.received is not None

    @property
    def name(self) -> str | None:
        return signal.Signals(self.received).name if self.received is not None else None

    @property
    def requeues(self) -> bool:
        """Stopped by a time-limit / preemption warning in a submitit job: `hand_over` requeues it."""
        return self._submitit_handler is not None and self.received in REQUEUE_SIGNALS

    def hand_over(self) -> None:
        """Let submitit checkpoint and requeue the job (it exits); a no-op unless `requeues`."""
        if self.requeues:
            self._submitit_handler(self.received, None)


def die_with_parent(parent: int) -> None:
    """Get SIGTERM (a stop request: checkpoint, record, exit) when process `parent` (the local
    launcher, a SLURM pack) dies, even by SIGKILL, so that no run trains on as an orphan, outside
    its launch or its allocation (Linux only)."""
    import sys

    if not sys.platform.startswith("linux"):
        return
    import ctypes

    PR_SET_PDEATHSIG = 1
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() != parent:  # it died before the request took effect
        os.kill(os.getpid(), signal.SIGTERM)

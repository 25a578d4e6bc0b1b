"""The one stop-request mechanism: a signal asks every run to stop at its next step boundary
(the trainer polls the request as `should_stop`; the run then checkpoints and records itself
interrupted). Every signal a scheduler or a user may send (`STOP_SIGNALS`) is such a request,
to a run, to the local launcher and to a SLURM pack alike; none kills a process that runs
training unhandled:

    TERM  scancel, a preemption, `kill`         USR2  submitit's time-limit / preemption warning
    INT   Ctrl-C (a second one aborts a run)    HUP   a closed terminal or ssh session
    USR1  many sites' time-limit warning        XCPU  a CPU-time limit reached

    StopRequest.on_signals()        a run (at a terminal, in a local launch, in a pack)
    StopRequest.preemption(requeue) a run or pack in a submitit SLURM job: after a time-limit /
                                    preemption warning (`REQUEUE_SIGNALS`) `hand_over()` lets
                                    submitit requeue the job; after another signal it does not
    StopRequest(signals, forward=f) a launcher (local pool, SLURM pack): the request is also
                                    passed on to the running runs (`f(signum)`)
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys
import threading
from collections.abc import Callable

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1, signal.SIGUSR2, signal.SIGHUP, signal.SIGXCPU)
REQUEUE_SIGNALS = (signal.SIGUSR1, signal.SIGUSR2, signal.SIGXCPU)  # a time limit or a preemption is coming


class StopRequest:
    """Set by one of `signals` once its handlers are installed (`install`, or `with`; only in the
    main thread, where Python delivers signals). Call it to ask whether a stop was requested."""

    def __init__(
        self,
        signals: tuple[int, ...] = (),
        *,
        forward: Callable[[int], None] | None = None,
        announce: bool = False,
        abort_on_second_sigint: bool = False,
    ):
        self.signals, self.forward = tuple(signals), forward
        self.announce, self.abort_on_second_sigint = announce, abort_on_second_sigint
        self.received: int | None = None
        self._previous: dict = {}
        self._hand_over: Callable | None = None  # submitit's handler of the preemption signal

    @classmethod
    def on_signals(cls) -> StopRequest:
        return cls(STOP_SIGNALS, announce=True, abort_on_second_sigint=True)

    @classmethod
    def preemption(cls, *, requeue: bool = True, forward: Callable[[int], None] | None = None) -> StopRequest:
        """Installed at once, for every stop signal (submitit's own handler of its preemption
        signal kept for `hand_over`). Outside a submitit SLURM job a request that is never made.
        With `requeue=False` `hand_over` does nothing."""
        if os.environ.get("SUBMITIT_EXECUTOR") != "slurm":
            return cls(forward=forward)
        preempt = getattr(signal, "SIG" + os.environ.get("SUBMITIT_PREEMPT_SIGNAL", "USR2"))
        submitit_handler = signal.getsignal(preempt)
        request = cls(STOP_SIGNALS, forward=forward).install()
        request._hand_over = submitit_handler if requeue and callable(submitit_handler) else None
        return request

    def __call__(self) -> bool:
        return self.received is not None

    def install(self) -> StopRequest:
        if threading.current_thread() is threading.main_thread():
            self._previous = {sig: signal.signal(sig, self._handle) for sig in self.signals}
        return self

    def restore(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous = {}

    def __enter__(self) -> StopRequest:
        return self.install()

    def __exit__(self, *exc) -> None:
        self.restore()

    @property
    def name(self) -> str | None:
        return signal.Signals(self.received).name if self.received is not None else None

    @property
    def requeues(self) -> bool:
        """Stopped by a time-limit / preemption warning in a submitit job: `hand_over` requeues it."""
        return self._hand_over is not None and self.received in REQUEUE_SIGNALS

    def hand_over(self) -> None:
        """After the runs checkpointed on a time-limit / preemption warning: submitit's handler
        requeues the job (and exits). Nothing after another stop signal."""
        if self.requeues and self._hand_over is not None:
            self._hand_over(self.received, None)

    def _handle(self, signum, frame) -> None:
        if self.abort_on_second_sigint and self.received is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        if self.announce and self.received is None:
            try:  # os.write: print is not safe inside a signal handler
                os.write(
                    2,
                    f"received {signal.Signals(signum).name}: stopping at the next step with a "
                    f"checkpoint (Ctrl-C again to abort at once)\n".encode(),
                )
            except OSError:
                pass
        self.received = signum
        if self.forward is not None:
            self.forward(signum)


def send(pid: int, sig: int) -> None:
    """`os.kill`, where a process that has just exited is no error."""
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass


def die_with_launcher() -> None:
    """In a job started by the local launcher as a process of its own (`DST_LAUNCHER_PID`):
    SIGTERM when the launcher dies (`die_with_parent`)."""
    launcher = os.environ.get("DST_LAUNCHER_PID")
    if launcher:
        die_with_parent(int(launcher))


def die_with_parent(parent: int) -> None:
    """Get SIGTERM (a stop request: checkpoint, record, exit) when process `parent` (the local
    launcher, a SLURM pack) dies, even by SIGKILL, so that no run trains on as an orphan (Linux
    only)."""
    if not sys.platform.startswith("linux"):
        return
    PR_SET_PDEATHSIG = 1
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() != parent:  # it died before the request took effect
        os.kill(os.getpid(), signal.SIGTERM)

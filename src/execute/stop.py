"""The one stop-request mechanism: a signal asks every run to stop at its next step boundary
(the trainer polls the request as `should_stop`; the run then checkpoints and records itself
interrupted). Where the signal comes from decides which to listen for:

    StopRequest.on_signals()        a run at a terminal or in a local launch: SIGTERM, SIGINT
                                    (Ctrl-C; a second one aborts at once) and SIGUSR2
    StopRequest.preemption(requeue) a run or pack in a submitit SLURM job: its time-limit /
                                    preemption signal; `hand_over()` then lets submitit requeue
    StopRequest(signals, forward=f) a launcher (local pool, SLURM pack): the request is also
                                    passed on to the running runs (`f(signum)`)
"""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Callable


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
        return cls((signal.SIGTERM, signal.SIGINT, signal.SIGUSR2), announce=True, abort_on_second_sigint=True)

    @classmethod
    def preemption(cls, *, requeue: bool = True, forward: Callable[[int], None] | None = None) -> StopRequest:
        """Installed at once. Outside a submitit SLURM job a request that is never made. With
        `requeue=False` (a run of a pack) `hand_over` does nothing: the pack requeues the job
        once all its runs stopped."""
        if os.environ.get("SUBMITIT_EXECUTOR") != "slurm":
            return cls(forward=forward)
        sig = getattr(signal, "SIG" + os.environ.get("SUBMITIT_PREEMPT_SIGNAL", "USR2"))
        request = cls((sig,), forward=forward)
        submitit_handler = signal.getsignal(sig)
        request.install()
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

    def hand_over(self) -> None:
        """After the runs checkpointed on preemption: submitit's handler requeues the job."""
        if self._hand_over is not None:
            self._hand_over(self.signals[0], None)

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

"""The one process pool, shared by the local launcher and SLURM packs: at most `concurrent`
runs at a time, each forked (from this single-threaded loop) into the child entry it is given
(`child.run_in_child`: importing that module imports what every run needs, so no forked run
pays for it again), and reaped as it exits. A stop request (`stop`) is passed on to the
running runs and starts no more."""

from __future__ import annotations

import multiprocessing
import os
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .stop import STOP_SIGNALS, StopRequest, send

# the child entry: (run, sweep dir, threads, the local launcher's pid, the forking process's pid)
ChildEntry = Callable[["PackedRun", str, "int | None", "int | None", "int | None"], None]


@dataclass
class PackedRun:
    """A run as a pool starts it."""

    idx: int  # the run's job number in the Hydra sweep (its `<sweep dir>/<idx>/job.log`)
    overrides: list[str]
    run_dir: str
    config: dict  # the run's resolved RunConfig, composed and validated at planning


class Pool:
    def __init__(
        self,
        child: ChildEntry,
        sweep_dir: str,
        concurrent: int,
        threads: int | None,
        *,
        launcher: int | None,
        poll_s: float = 0.05,
    ):
        self.child = child  # (given by the launcher: the pool itself imports no trainer)
        self.sweep_dir, self.concurrent, self.threads = sweep_dir, concurrent, threads
        self.launcher = launcher  # the local launcher's pid (its runs die with it); None in a pack
        self.poll_s = poll_s
        self.stop = StopRequest()
        self.running: dict[Any, tuple[PackedRun, float, float]] = {}  # process -> (run, started: wall, monotonic)

    def forward(self, signum: int) -> None:
        """Pass a stop signal on to the running runs (no waitpid here: the loop reaps them)."""
        for proc in list(self.running):
            send(proc.pid, signum)

    def run(
        self,
        items: list,
        prepare: Callable[[Any], PackedRun | None],
        on_exit: Callable[[PackedRun, int, float, float], None],
        on_wait: Callable[[], None] | None = None,
    ) -> list:
        """Start `prepare(item)`'s run for each item (None: nothing to start), `concurrent` at a
        time; `on_exit(run, exit code, started_at, started)` as each exits, `on_wait()` at each
        poll while runs are running. Returns the items not started because a stop was requested."""
        fork = multiprocessing.get_context("fork")
        todo = list(items)
        while todo or self.running:
            while todo and len(self.running) < self.concurrent and not self.stop():
                run = prepare(todo.pop(0))
                if run is not None:
                    self._start(fork, run)
            for proc in [p for p in self.running if p.exitcode is not None]:
                run, started_at, started = self.running.pop(proc)
                proc.join()
                on_exit(run, proc.exitcode, started_at, started)
            if self.stop() and not self.running:
                break
            if self.running:
                if on_wait is not None:
                    on_wait()
                time.sleep(self.poll_s)
        return todo

    def _start(self, fork, run: PackedRun) -> None:
        proc = fork.Process(
            target=self.child, args=(run, self.sweep_dir, self.threads, self.launcher, os.getpid()), daemon=False
        )
        sys.stdout.flush()
        sys.stderr.flush()
        # blocked while it forks: a stop signal that comes meanwhile reaches this run too, once
        mask = signal.pthread_sigmask(signal.SIG_BLOCK, set(STOP_SIGNALS))
        try:
            proc.start()
            self.running[proc] = (run, time.time(), time.monotonic())
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, mask)

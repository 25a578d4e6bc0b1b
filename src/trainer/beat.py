"""The run's heartbeat (`<run_dir>/heartbeat.json`, `src.rundir.heartbeat`), rewritten at most
every `train.heartbeat_every_s` seconds as the run steps, and at each epoch."""

from __future__ import annotations

from ..rundir import Heartbeat
from .listeners import Listener


class HeartbeatListener(Listener):
    def __init__(self, heartbeat: Heartbeat):
        self.heartbeat = heartbeat

    def on_start(self, run) -> None:
        self.heartbeat.beat(run.progress.step, run.progress.epoch)

    def on_step(self, run) -> None:
        self.heartbeat.maybe_beat(run.progress.step, run.progress.epoch)

    def on_epoch(self, run, record: dict) -> None:
        self.heartbeat.maybe_beat(run.progress.step, run.progress.epoch)

"""The run's heartbeat (`<run_dir>/heartbeat.json`, `src.rundir.heartbeat`): written when
training starts, after its first step and its first epoch (a new run shows its pace and first
accuracies at once), then at most every `train.heartbeat_every_s` seconds as the run steps,
carrying the latest epoch's accuracies and what the ETA needs."""

from __future__ import annotations

from ..rundir.heartbeat import Heartbeat
from .listeners import Listener


class HeartbeatListener(Listener):
    def __init__(self, heartbeat: Heartbeat):
        self.heartbeat = heartbeat

    def on_start(self, run) -> None:
        progress, tc = run.progress, run.cfg.train
        latest = {f"{k}_acc": progress.last[f"{k}_acc"] for k in ("val", "test") if f"{k}_acc" in progress.last}
        self.heartbeat.beat(progress.step, progress.epoch, **latest)
        total_steps = min(run.total_steps, tc.max_steps or run.total_steps)
        self.heartbeat.training(epochs=tc.epochs, total_steps=total_steps, start_step=progress.step)

    def on_step(self, run) -> None:
        self.heartbeat.maybe_beat(run.progress.step, run.progress.epoch)

    def on_epoch(self, run, record: dict) -> None:
        accuracies = {k: record[k] for k in ("val_acc", "test_acc") if k in record}
        self.heartbeat.epoch_end(run.progress.step, run.progress.epoch, **accuracies)

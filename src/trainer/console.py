"""What the run prints: a progress bar on a terminal (`train.progress`), plain lines every
`train.log_every` steps otherwise, and one line per epoch (main rank only)."""

from __future__ import annotations

import sys

from .listeners import Listener


class Console(Listener):
    def __init__(self, train_cfg, steps_per_epoch: int):
        self.cfg, self.steps_per_epoch, self.bar = train_cfg, steps_per_epoch, None

    def on_start(self, run) -> None:
        enabled = sys.stderr.isatty() if self.cfg.progress is None else self.cfg.progress
        if enabled:
            from tqdm import tqdm  # only on a terminal

            self.bar = tqdm(total=self.steps_per_epoch, leave=False, dynamic_ncols=True, unit="step")

    def on_epoch_start(self, run) -> None:
        if self.bar is not None:
            self.bar.reset(total=self.steps_per_epoch)
            self.bar.n = run.loaders.train.state_dict().get("position", 0)

    def on_step(self, run) -> None:
        if self.bar is not None:
            self.bar.update(1)
        elif run.progress.step % self.cfg.log_every == 0:
            print(
                f"epoch {run.progress.epoch + 1} step {run.progress.step}/{run.total_steps} lr {run.lr:.4g}", flush=True
            )

    def on_epoch(self, run, record: dict) -> None:
        r = record
        print(
            f"epoch {r['epoch']}/{self.cfg.epochs}  train {r['train_loss']:.4f} / {r['train_acc']:.2f}%  "
            f"val {r['val_loss']:.4f} / {r['val_acc']:.2f}%  test {r['test_acc']:.2f}%  "
            f"density {r['density']:.4f}  {r['epoch_time']:.1f}s",
            flush=True,
        )

    def on_end(self, run, result: dict) -> None:
        if self.bar is not None:
            self.bar.close()

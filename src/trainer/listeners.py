"""What is attached to the training loop: a listener hears of the run's start, each step, each
topology update, each epoch and the end, and does its one thing (records, heartbeat,
checkpoints, console, W&B; each in its own file). The loop calls them in the order given."""

from __future__ import annotations


class Listener:
    """Every hook does nothing unless overridden. `run` is the loop's `Training` state."""

    def on_start(self, run) -> None:
        """After set-up and any resume, before the first step."""

    def on_epoch_start(self, run) -> None:
        """Before each epoch's first step."""

    def on_update(self, run, update: dict) -> None:
        """A topology update's record (`sparsifier.step()` pruned and regrew)."""

    def on_step(self, run) -> None:
        """After each optimizer step."""

    def on_epoch(self, run, record: dict) -> None:
        """After each epoch's evaluation, with its record."""

    def on_stop(self, run) -> None:
        """The run was asked to stop (a signal, preemption): before its result is written."""

    def on_end(self, run, result: dict) -> None:
        """When the run ends or stops, with its result (already written to result.json)."""

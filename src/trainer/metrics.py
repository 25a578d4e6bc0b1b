"""The run's records as it trains: one metrics.jsonl line per topology update and per epoch."""

from __future__ import annotations

from .listeners import Listener


def update_record(record) -> dict:
    """A topology update (`sparsifier.step()`'s record) as a metrics line: per layer, and summed."""
    layers = [layer.__dict__ for layer in record.layers]
    regrown = sum(layer["regrown"] for layer in layers)
    just = sum(layer["regrown_just_pruned"] for layer in layers)
    out = {
        "step": record.step,
        "prune_rate": record.prune_rate,
        "layers": layers,
        "removed": sum(layer["removed"] for layer in layers),
        "regrown": regrown,
        "regrown_just_pruned_share": just / regrown if regrown else 0.0,
    }
    if record.overlap is not None:
        out["overlap"] = record.overlap
    return out


class MetricsLog(Listener):
    """Appends to `<run_dir>/metrics.jsonl` (through the run's recorder, main rank only)."""

    def on_update(self, run, update: dict) -> None:
        run.recorder.log("update", epoch=run.progress.epoch + 1, **update)

    def on_epoch(self, run, record: dict) -> None:
        run.recorder.log("epoch", **record)

    def on_end(self, run, result: dict) -> None:
        run.recorder.close()

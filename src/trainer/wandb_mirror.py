"""The run's optional W&B mirror (`logging.wandb`): epoch and topology-update records logged as
`kind/<key>` at the optimizer step, and the result as the summary. The run's own records
(metrics.jsonl, result.json) are the source of truth; W&B only mirrors them."""

from __future__ import annotations

import hashlib
from pathlib import Path

from ..rundir.files import read_metrics
from ..rundir.identity import cell_hash, cell_of_name, identity_hash, sweep_of
from .listeners import Listener
from .provenance import code_version


class WandbMirror(Listener):
    def __init__(self, cfg, run_dir: Path):
        self.cfg, self.run_dir, self.run = cfg, Path(run_dir), None

    def on_start(self, run) -> None:
        self.run = start_wandb(self.cfg, run.config, self.run_dir)
        self._replay()

    def on_update(self, run, update: dict) -> None:
        self._log("update", update, run.progress.step)

    def on_epoch(self, run, record: dict) -> None:
        self._log("epoch", record, run.progress.step)

    def on_end(self, run, result: dict) -> None:
        if self.run is not None:
            self.run.summary.update({k: v for k, v in result.items() if isinstance(v, (int, float, str))})
            self.run.finish()

    def _replay(self) -> None:
        """Log the records this attempt starts from (those its checkpoint covers), from
        metrics.jsonl, at the steps W&B has not seen: an online run resumed by id has seen the
        steps before its `step`; an offline one starts empty (each attempt writes its own
        file), so its file then holds every record exactly once."""
        if self.run is None:
            return
        seen = self.run.step
        for row in read_metrics(self.run_dir):
            if row.get("step", -1) >= seen and row.get("kind") in ("epoch", "update"):
                self._log(row["kind"], {k: v for k, v in row.items() if k != "kind"}, row["step"])

    def _log(self, kind: str, record: dict, step: int) -> None:
        if self.run is not None:
            self.run.log({f"{kind}/{k}": v for k, v in record.items() if isinstance(v, (int, float))}, step=step)


def start_wandb(cfg, config: dict, run_dir: Path):
    """The run's W&B run, or None. Its id is derived from the run directory's path and the
    experiment (unique per sweep and run, the same across requeues, so a resumed run continues
    its W&B run and a replication under another sweep name gets its own); it is grouped by
    sweep (`group`) and cell (`job_type`) and tagged with the paper's axes. W&B's local files
    go to `logging.wandb_dir` (default `<sweep dir>/.wandb`), not the run dir."""
    if cfg.logging.wandb == "off":
        return None
    import wandb  # only when mirroring: wandb takes seconds to import

    where = run_dir.resolve()
    sweep, s = sweep_of(where), cfg.sparsity
    cell = cell_hash(config)[:8]
    axes = {
        "sweep": sweep,
        "cell": cell,
        "criterion": s.criterion if s.mode == "dst" else None,
        "growth": s.growth if s.mode == "dst" else None,
        "density": 1.0 if s.mode == "dense" else s.density,
        "seed": cfg.train.seed,
    }
    tags = [
        *cfg.logging.tags,
        *(f"{k}:{v:g}" if isinstance(v, float) else f"{k}:{v}" for k, v in axes.items() if v is not None),
        f"code:{code_version()}",
    ]
    local = Path(cfg.logging.wandb_dir or where.parent / ".wandb")
    local.mkdir(parents=True, exist_ok=True)
    run_id = hashlib.sha256(f"{where}\0{identity_hash(config)}".encode()).hexdigest()[:20]
    return wandb.init(
        project=cfg.logging.wandb_project,
        entity=cfg.logging.wandb_entity,
        config={**config, "dst": axes},
        group=sweep,
        job_type=f"{cell_of_name(run_dir)}-{cell}"[-64:],
        name=run_dir.name,
        tags=[t[:64] for t in tags],
        dir=str(local),
        mode=cfg.logging.wandb,
        id=run_id,
        resume="allow",
    )

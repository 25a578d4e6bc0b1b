"""The trainer: one run's training loop (`loop`), run in its directory (`run.train`), with
what happens around it attached as listeners (`metrics`, `beat`, `checkpoints`, `console`,
`wandb_mirror`). It reads nothing of the launcher's environment (SLURM, submitit): the launch
side (`src.execute`) sets that up."""

from .run import train

__all__ = ["train"]

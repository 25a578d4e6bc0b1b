"""The trainer: one run's training loop (`loop.fit`), with what happens around it attached as
listeners (`metrics`, `beat`, `checkpoints`, `console`, `wandb_mirror`). It reads nothing of
the launcher's environment (SLURM, submitit) and holds no lock: a run's process
(`src.execute.child.train`) runs it in its directory, and the launch side sets up the rest."""

"""Train one model, dense or sparse, and write its run records: the command line.

    python -m src.train model.name=lenet5 sparsity.mode=dst sparsity.density=0.05 \
        train.epochs=4 --run-dir runs/lenet5-dst

The training loop is `src/trainer/loop.py`, run in its directory by `src.execute.child.train`; this reads the command line, validates the config
once, and runs it in its directory with its output teed to train.log, stopped at a step
boundary by SIGTERM / SIGINT / SIGUSR2 (checkpointed, recorded interrupted).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import cast

from .config import RunConfig
from .execute.environment import set_threads
from .execute.stop import StopRequest
from .rundir import LOG, LinkRefused, RunDirConflict, RunLocked, exit_code, run_dir_conflict, run_dir_link, tee_output


def __getattr__(name: str):
    """`from src.train import train`: the trainer's entry, imported on first use (so that
    `--help` answers without torch)."""
    if name == "train":
        return _trainer_entry()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _trainer_entry():
    from .execute.child import train  # torch: not on the --help path

    return train


USAGE = """usage: python -m src.train [key=value ...] [--run-dir DIR] [--force]

Train one model and write its records to DIR (default runs/train): config.json, metrics.jsonl,
checkpoint.pt while running, result.json at the end, heartbeat.json, train.log. Running the
same command again resumes from the checkpoint; --force starts over in a directory that holds
another experiment's records. Keys are the fields of src/config.py RunConfig:
  model.name  data.name data.root data.batch_size  optim.name optim.lr optim.weight_decay
  sparsity.mode (dense|static|dst) sparsity.density sparsity.criterion sparsity.growth
  sparsity.update_frequency sparsity.prune_rate  train.epochs train.seed train.threads
  train.device  logging.wandb (off|offline|online)
No Hydra here (no config groups, no sweeps): for those use python -m src.launch.

example: python -m src.train model.name=lenet5 sparsity.mode=dst sparsity.density=0.05 \\
             sparsity.criterion=snip train.epochs=4 --run-dir runs/lenet5-snip"""


def main(argv: list[str] | None = None) -> int:
    """`python -m src.train [key=value ...] [--run-dir DIR] [--force]`: one run, no Hydra
    needed. ``--force`` starts over in a run directory that holds another experiment."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--help" in argv or "-h" in argv:
        print(USAGE)
        return 0
    from omegaconf import OmegaConf  # after --help: the help answers without it
    from omegaconf.errors import ConfigKeyError, OmegaConfBaseException  # (as above)

    from .checks import unknown_field_message, validated  # (hints: the launch's close matches)

    train = _trainer_entry()

    run_dir = "runs/train"
    if "--run-dir" in argv:
        i = argv.index("--run-dir")
        if i + 1 >= len(argv):
            print("error: --run-dir needs a directory", file=sys.stderr)
            return 2
        run_dir = argv[i + 1]
        del argv[i : i + 2]
    force = "--force" in argv
    argv = [a for a in argv if a != "--force"]
    try:
        unknown = [a for a in argv if a.startswith("-") or "=" not in a]
        if unknown:
            raise ValueError(f"{unknown[0]}: not a key=value override (see --help)")
        base = OmegaConf.structured(RunConfig)
        merged = OmegaConf.merge(base, OmegaConf.from_dotlist(argv))
        cfg = RunConfig.from_dict(cast(dict, OmegaConf.to_container(merged, resolve=True)))
        validated(cfg)
    except (ValueError, OmegaConfBaseException) as error:
        key = getattr(error, "full_key", None)  # OmegaConf's errors name the field apart
        # (a section's field only: the top level of a run config is not the launch's)
        hint = unknown_field_message(key) if key and "." in key and isinstance(error, ConfigKeyError) else None
        print(f"error: {hint or (key + ': ' if key else '') + str(error).strip().splitlines()[0]}", file=sys.stderr)
        return 2
    # (a link is refused even with --force: nothing is written or deleted through it)
    conflict = run_dir_link(Path(run_dir)) or (None if force else run_dir_conflict(Path(run_dir), cfg.to_dict()))
    if conflict:  # before the log is opened: a refused directory is left byte-identical
        print(f"error: {conflict}", file=sys.stderr)
        return 2
    try:
        set_threads(cfg)
        with tee_output(Path(run_dir) / LOG), StopRequest.on_signals() as stop:
            result = train(cfg, run_dir, should_stop=stop, force=force)
    except (RunDirConflict, RunLocked, LinkRefused) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(
        f"{result['status']}: final test acc {result['final']['test_acc']}, "
        f"best-val test acc {result['best_val']['test_acc']}, records in {run_dir}"
    )
    return exit_code([result["status"]])


if __name__ == "__main__":
    sys.exit(main())

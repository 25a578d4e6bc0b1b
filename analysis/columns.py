"""Column names of the runs table and how they are shown.

`load_runs` flattens each run's config with dotted names (``sparsity.density``) and adds
the derived columns below; everything else in the package refers to columns by these names.
"""

from __future__ import annotations

# Config columns the analyses group by.
MODEL, DATA = "model.name", "data.name"
MODE, CRITERION, GROWTH = "sparsity.mode", "sparsity.criterion", "sparsity.growth"
DENSITY, SEED = "sparsity.density", "train.seed"
UPDATE_FREQUENCY, GAMMA, GLOBAL = "sparsity.update_frequency", "sparsity.gamma", "sparsity.global_pruning"

# Derived columns (see analysis.load).
RUN_DIR = "run_dir"
STATUS = "status"
SETUP = "setup"  # "<model.name>/<data.name>"
KIND = "kind"  # dense | static | dst | overlap_init
IDENTITY = "identity"  # JSON of the config fields that define the experiment, seed excluded
CELL = "cell"  # short hash of IDENTITY: runs of one cell differ only in their seed
VARIANT = "variant"  # the identity fields besides the standard axes that vary within (setup, kind)
RESULT_MTIME = "result_mtime"
TOPOLOGY_UPDATES = "topology_updates"  # DST updates the run's schedule made in the steps it ran
STEPS_PER_EPOCH = "steps_per_epoch"

# A run's status is one of the states of `src.rundir.state.STATES`, the words `status` uses
# (see analysis.load). These two are the ones the analyses single out:
COMPLETED = "completed"  # its result is used
DAMAGED = "damaged"  # records that cannot be used (the `damage` and `error` columns say why)
RUNS = "runs"  # column (`completeness.cell_accounting`): a cell's planned seeds, whatever became of them
DETAIL = "detail"  # column: what its state says of a run without a finished result (empty for finished runs)
DAMAGE = "damage"  # column: what is wrong with a run's records (also when the run could be recovered)

DEFAULT_METRIC = "final.test_acc"

METRIC_LABELS = {
    "final.test_acc": "test accuracy (%)",
    "best_val.test_acc": "test accuracy at best validation (%)",
    "final.val_acc": "validation accuracy (%)",
    "best_val.val_acc": "best validation accuracy (%)",
    "final.train_acc": "training accuracy (%)",
    "final.test_loss": "test loss",
}


def metric_label(metric: str) -> str:
    return METRIC_LABELS.get(metric, metric)

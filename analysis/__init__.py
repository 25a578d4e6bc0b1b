"""Analysis of run records: tables, statistics and the paper's figures.

    runs = load_runs("runs/my_sweep")          # one row per run (cached as parquet)
    print(completeness(runs).summary())        # what failed, what is missing
    main = main_grid(runs, "lenet5/fashion_mnist")
    accuracy_vs_density(main)                  # Fig. 1 as a matplotlib Figure
    rank_criteria(main.runs)                   # which criterion wins at each density

    table = cell_table(runs)                   # any sweep: the metric per cell
    axis_tests(table)                          # Welch's tests along each of its axes

``python -m analysis report <sweep dirs> --out <dir>`` writes everything at once;
``python -m analysis notebook <sweep dirs> --out <dir>`` executes a copy of notebooks/aggregate.ipynb
on them (relative paths from the working directory; the packaged notebook is only read).
Needs only the run directories (config.json, metrics.jsonl, result.json); never W&B.
"""

import importlib

from . import style
from .cells import axis_tests, cell_table, sweep_axes, topology_warnings, verdict_readiness
from .claims import check_claims
from .completeness import Completeness, cell_accounting, completeness
from .grid import (
    Selection,
    completed,
    density_grids,
    density_one_grids,
    gamma_grids,
    global_pruning_grids,
    main_grid,
    sensitivity_grids,
    setups,
    split_variants,
    update_frequency_grids,
)
from .load import find_run_dirs, load_metrics, load_runs
from .overlap import jaccard_matrix, jaccard_pairs, overlap_at_init, overlap_trajectories, random_expectation
from .report import Options, build_report
from .stats import compare_to_best, holm, rank_criteria, rank_summary, summarize, welch_pvalue
from .tables import Table, accuracy_table, ranking_tables

# The figures (matplotlib) are imported on first use: reading and tabulating runs does not need them.
_FIGURES = (
    "accuracy_vs_density",
    "accuracy_vs_flops",
    "learning_curves",
    "topology_update_curves",
    "accuracy_vs_gamma",
    "accuracy_vs_update_frequency",
    "axis_figure",
    "density_one",
    "global_vs_layerwise",
    "overlap_heatmaps",
    "overlap_trajectory_curves",
    "save_figure",
)


def __getattr__(name: str):
    if name == "figures" or name in _FIGURES:
        figures = importlib.import_module(".figures", __name__)  # (not "from . import": it would come back here)
        return figures if name == "figures" else getattr(figures, name)
    raise AttributeError(f"module 'analysis' has no attribute {name!r}")


__all__ = [
    "Completeness",
    "Options",
    "Selection",
    "Table",
    "accuracy_table",
    "accuracy_vs_density",
    "accuracy_vs_flops",
    "accuracy_vs_gamma",
    "accuracy_vs_update_frequency",
    "axis_figure",
    "axis_tests",
    "build_report",
    "cell_accounting",
    "cell_table",
    "check_claims",
    "compare_to_best",
    "completed",
    "completeness",
    "density_grids",
    "density_one",
    "density_one_grids",
    "find_run_dirs",
    "gamma_grids",
    "global_pruning_grids",
    "global_vs_layerwise",
    "holm",
    "jaccard_matrix",
    "jaccard_pairs",
    "learning_curves",
    "load_metrics",
    "load_runs",
    "main_grid",
    "overlap_at_init",
    "overlap_heatmaps",
    "overlap_trajectories",
    "overlap_trajectory_curves",
    "random_expectation",
    "rank_criteria",
    "rank_summary",
    "ranking_tables",
    "save_figure",
    "sensitivity_grids",
    "setups",
    "split_variants",
    "style",
    "summarize",
    "topology_update_curves",
    "sweep_axes",
    "topology_warnings",
    "update_frequency_grids",
    "verdict_readiness",
    "welch_pvalue",
]

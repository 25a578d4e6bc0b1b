"""Analysis of run records: tables, statistics and the paper's figures.

    runs = load_runs("runs/my_sweep")          # one row per run (cached as parquet)
    print(completeness(runs).summary())        # what failed, what is missing
    main = main_grid(runs, "lenet5/fashion_mnist")
    accuracy_vs_density(main)                  # Fig. 1 as a matplotlib Figure
    rank_criteria(main.runs)                   # which criterion wins at each density

    table = cell_table(runs)                   # any sweep: the metric per cell
    axis_tests(table)                          # Welch's tests along each of its axes

``python -m analysis report <sweep dirs> --out <dir>`` writes everything at once;
``python -m analysis notebook <sweep dirs>`` executes notebooks/aggregate.ipynb on them.
Needs only the run directories (config.json, metrics.jsonl, result.json); never W&B.
"""

import importlib
import sys
import types

# Every name is imported from its module on first use (PEP 562): `import analysis` and
# `python -m analysis --help` stay light, and the launch reads the verdict rule
# (`analysis.verdict`) without pandas.
_HOMES = {
    "style": (),
    "cells": ("axis_tests", "cell_table", "sweep_axes", "topology_warnings"),
    "verdict": ("verdict_readiness",),
    "claims": ("check_claims",),
    "completeness": ("Completeness",),  # (and the function `completeness`: `_Package`)
    "grid": (
        "Selection",
        "completed",
        "density_grids",
        "density_one_grids",
        "gamma_grids",
        "global_pruning_grids",
        "main_grid",
        "sensitivity_grids",
        "setups",
        "split_variants",
        "update_frequency_grids",
    ),
    "load": ("find_run_dirs", "load_metrics", "load_runs"),
    "overlap": ("jaccard_matrix", "jaccard_pairs", "overlap_at_init", "overlap_trajectories", "random_expectation"),
    "report": ("Options", "build_report"),
    "stats": ("compare_to_best", "holm", "rank_criteria", "rank_summary", "summarize", "welch_pvalue"),
    "tables": ("Table", "accuracy_table", "ranking_tables"),
    "figures": (  # (matplotlib: only for these)
        "accuracy_vs_density",
        "accuracy_vs_gamma",
        "accuracy_vs_update_frequency",
        "axis_figure",
        "density_one",
        "global_vs_layerwise",
        "overlap_heatmaps",
        "overlap_trajectory_curves",
        "save_figure",
    ),
}
_HOME_OF = {name: module for module, names in _HOMES.items() for name in names}


class _Package(types.ModuleType):
    """`analysis.completeness` is the function, as it always was, not its submodule: also once
    the submodule is imported (the import system then sets the attribute, ignored here)."""

    @property
    def completeness(self):
        from .completeness import completeness  # pandas: on first use, as every name here

        return completeness

    @completeness.setter
    def completeness(self, module) -> None:
        pass


sys.modules[__name__].__class__ = _Package


def __getattr__(name: str):
    if name in _HOMES:  # a submodule
        return importlib.import_module(f".{name}", __name__)
    if name in _HOME_OF:
        value = getattr(importlib.import_module(f".{_HOME_OF[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'analysis' has no attribute {name!r}")


__all__ = [
    "Completeness",
    "Options",
    "Selection",
    "Table",
    "accuracy_table",
    "accuracy_vs_density",
    "accuracy_vs_gamma",
    "accuracy_vs_update_frequency",
    "axis_figure",
    "axis_tests",
    "build_report",
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
    "sweep_axes",
    "topology_warnings",
    "update_frequency_grids",
    "verdict_readiness",
    "welch_pvalue",
]

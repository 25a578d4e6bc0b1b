"""The report's tables: tidy numbers for CSV, a readable layout for markdown and LaTeX.

Every builder returns a `Table` (or None when the runs hold nothing for it). ``data`` has
one row per observation and exact numbers; ``display`` is the same content laid out for
reading (cells such as ``91.23 ± 0.41 (5)``: mean ± std over seeds, and the seed count).
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from . import columns as C
from .completeness import Completeness
from .grid import Selection
from .stats import rank_criteria, rank_summary, summarize
from .style import display_names

# The dense model's density, so that it sits in the density-1 column of accuracy tables.
DENSE_DENSITY = 1.0
_NOT_APPLICABLE = "—"


@dataclass
class Table:
    name: str
    caption: str
    data: pd.DataFrame
    display: pd.DataFrame | None = None
    _shown: pd.DataFrame | None = field(default=None, init=False, repr=False, compare=False)

    def shown(self) -> pd.DataFrame:
        """What the markdown, LaTeX and HTML show: ids by their display names (the CSV keeps the ids)."""
        if self._shown is None:
            self._shown = display_names(self.data if self.display is None else self.display)
        return self._shown

    def write(self, directory: str | Path) -> dict[str, Path]:
        """``<name>.csv`` (data), ``<name>.md`` and ``<name>.tex`` (display)."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        paths = {fmt: directory / f"{self.name}.{fmt}" for fmt in ("md", "csv", "tex")}
        self.data.to_csv(paths["csv"], index=False)
        paths["md"].write_text(f"{self.caption}\n\n{to_markdown(self.shown())}")
        paths["tex"].write_text(to_latex(self.shown(), self.caption, label=f"tab:{self.name}"))
        return paths


# ------------------------------------------------------------------------ writers
def _text(value) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    return f"{value:g}" if isinstance(value, float) else str(value)


def _cells(df: pd.DataFrame) -> list[list[str]]:
    """Every cell as text, column by column (a 10,000-row table is written in well under a second)."""
    columns = [df.iloc[:, i].map(_text).tolist() for i in range(df.shape[1])]  # (names may repeat)
    return [list(row) for row in zip(*columns)] if columns else [[] for _ in range(len(df))]


def to_markdown(df: pd.DataFrame) -> str:
    """A GitHub-flavoured markdown table."""

    def row(cells) -> str:
        return "| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |"

    lines = [row(map(_text, df.columns)), "|" + "|".join("---" for _ in df.columns) + "|"]
    lines += [row(r) for r in _cells(df)]
    return "\n".join(lines) + "\n"


_LATEX_SPECIAL = re.compile(r"([&%$#_{}~^\\])")
_LATEX_REPLACEMENTS = {"\\": r"\textbackslash{}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}"}


def latex_escape(text: str) -> str:
    escaped = _LATEX_SPECIAL.sub(lambda m: _LATEX_REPLACEMENTS.get(m.group(1), "\\" + m.group(1)), text)
    return escaped.replace("±", r"$\pm$").replace("—", "--")


def to_latex(df: pd.DataFrame, caption: str, label: str) -> str:
    """A booktabs table environment."""

    def row(cells) -> str:
        return " & ".join(latex_escape(c) for c in cells) + r" \\"

    return "\n".join(
        [
            r"\begin{table}",
            r"\centering",
            rf"\caption{{{latex_escape(caption)}}}",
            rf"\label{{{label}}}",
            rf"\begin{{tabular}}{{{'l' * len(df.columns)}}}",
            r"\toprule",
            row(map(_text, df.columns)),
            r"\midrule",
            *(row(r) for r in _cells(df)),
            r"\bottomrule",
            r"\end{tabular}",
            r"\end{table}",
            "",
        ]
    )


# ------------------------------------------------------------------------ layout helpers
def mean_std_n(mean: float, std: float, n: int) -> str:
    """``91.23 ± 0.41 (5)``; without the ± part for a single seed."""
    spread = "" if pd.isna(std) else f" ± {std:.2f}"
    return f"{mean:.2f}{spread} ({n})"


def pivot(data: pd.DataFrame, index: Sequence[str], columns: str, cell) -> pd.DataFrame:
    """``data`` laid out with one row per ``index`` and one column per ``columns`` value;
    ``cell(row)`` gives the text of a cell."""
    index = list(index)
    laid = data.assign(_cell=data.apply(cell, axis=1) if len(data) else "")
    wide = laid.pivot_table(index=index, columns=columns, values="_cell", aggfunc="first", sort=True)
    wide.columns = [_text(c) for c in wide.columns]
    return wide.reset_index().fillna("").rename(columns=_short_names)


def _short_names(name: str) -> str:
    return name.rsplit(".", 1)[-1] if name.startswith(("sparsity.", "train.")) else name


def _with_selection(selection: Selection, frame: pd.DataFrame) -> pd.DataFrame:
    return frame.assign(**{C.SETUP: selection.setup, C.VARIANT: selection.label})


def _stack(frames: list[pd.DataFrame]) -> pd.DataFrame | None:
    frames = [f for f in frames if len(f)]
    return pd.concat(frames, ignore_index=True) if frames else None


# ------------------------------------------------------------------------ accuracy
def accuracy_table(grids: Sequence[Selection], metric: str = C.DEFAULT_METRIC) -> Table | None:
    """Mean ± std over seeds per (setup, growth, criterion, density) of the main grids,
    with the static and dense baselines (dense in the density-1 column)."""
    parts = []
    for grid in grids:
        dst = summarize(grid.runs, [C.GROWTH, C.CRITERION, C.DENSITY], metric).rename(columns={C.CRITERION: "method"})
        parts.append(_with_selection(grid, dst))
        for kind, baseline in grid.baselines.items():
            runs = baseline.runs if kind == "static" else baseline.runs.assign(**{C.DENSITY: DENSE_DENSITY})
            stats = summarize(runs, [C.DENSITY], metric)
            parts.append(
                _with_selection(
                    grid, stats.assign(method=kind, **{C.GROWTH: _NOT_APPLICABLE}, baseline_differs=baseline.note())
                )
            )
    data = _stack(parts)
    if data is None:
        return None
    data = data[
        [
            C.SETUP,
            C.VARIANT,
            C.GROWTH,
            "method",
            C.DENSITY,
            "n",
            "mean",
            "std",
            "sem",
            "seeds",
            *(["baseline_differs"] if "baseline_differs" in data else []),
        ]
    ]
    display = pivot(data, [C.SETUP, C.GROWTH, "method"], C.DENSITY, lambda r: mean_std_n(r["mean"], r["std"], r["n"]))
    return Table(
        "accuracy",
        f"{C.metric_label(metric)} by density: mean ± std over seeds (number of seeds). Dense model in the 1.0 column.",
        data,
        display,
    )


def ranking_tables(
    grids: Sequence[Selection],
    *,
    metric: str = C.DEFAULT_METRIC,
    alpha: float = 0.05,
    alternative: str = "greater",
    low_density: float = 0.1,
) -> tuple[Table, Table] | None:
    """Criteria ranked by mean accuracy at each density, with the best group marked, and
    the average-rank summary over all, low and high densities."""
    ranked = _stack(
        [
            _with_selection(
                g, rank_criteria(g.runs, metric=metric, alpha=alpha, alternative=alternative, by=(C.GROWTH, C.DENSITY))
            )
            for g in grids
        ]
    )
    if ranked is None:
        return None
    ranked = ranked[[C.SETUP, C.VARIANT, *(c for c in ranked.columns if c not in (C.SETUP, C.VARIANT))]]
    test = "one-sided" if alternative == "greater" else "two-sided"
    display = pivot(
        ranked, [C.SETUP, C.GROWTH, C.CRITERION], C.DENSITY, lambda r: f"{r['rank']:g}{'*' if r['best_group'] else ''}"
    )
    summary = rank_summary(ranked, low_density=low_density, by=(C.SETUP, C.VARIANT, C.GROWTH))
    display["avg rank"] = display.merge(
        summary, how="left", left_on=[C.SETUP, "growth", "criterion"], right_on=[C.SETUP, C.GROWTH, C.CRITERION]
    )["avg_rank"].map("{:.2f}".format)
    ranking = Table(
        "ranking",
        f"Rank of each criterion by mean {C.metric_label(metric)} at each density (1 = best). "
        f"* = best or not significantly worse than the best (Welch's t-test, {test}, Holm-corrected "
        f"over the comparisons at that density, alpha = {alpha:g}).",
        ranked,
        display,
    )
    summary_display = summary.drop(columns=C.VARIANT).rename(columns=_short_names)  # one main grid per setup
    for name in summary_display.columns[summary_display.columns.str.startswith("avg_rank")]:
        summary_display[name] = summary_display[name].map(lambda x: "" if pd.isna(x) else f"{x:.2f}")
    summary_table = Table(
        "ranking_summary",
        f"Average rank over densities, times ranked first and times in the best "
        f"group; _low: density <= {low_density:g}, _high: above.",
        summary,
        summary_display,
    )
    return ranking, summary_table


def study_table(
    name: str, caption: str, grids: Sequence[Selection], by: Sequence[str], columns: str, metric: str = C.DEFAULT_METRIC
) -> Table | None:
    """Mean ± std (n) of ``metric`` per ``by`` + ``columns`` in each selection, laid out with
    one column per value of ``columns``."""
    data = _stack([_with_selection(g, summarize(g.runs, [*by, columns], metric)) for g in grids])
    if data is None:
        return None
    data = data[[C.SETUP, C.VARIANT, *(c for c in data.columns if c not in (C.SETUP, C.VARIANT))]]
    display = pivot(data, [C.SETUP, C.VARIANT, *by], columns, lambda r: mean_std_n(r["mean"], r["std"], r["n"]))
    return Table(name, f"{caption} {C.metric_label(metric)}: mean ± std over seeds (number of seeds).", data, display)


def baselines_table(
    name: str, caption: str, grids: Sequence[Selection], by: Sequence[str], metric: str = C.DEFAULT_METRIC
) -> Table | None:
    """One row per ``by`` group of each selection's runs and one per baseline, with mean,
    std and n of ``metric`` (e.g. DST at density 1 per criterion vs dense vs dropout)."""
    parts = []
    for grid in grids:
        dst = summarize(grid.runs, by, metric)
        parts.append(_with_selection(grid, dst.assign(method=dst[list(by)].astype(str).agg(" / ".join, axis=1))))
        for kind, baseline in grid.baselines.items():
            stats = summarize(baseline.runs.assign(method=kind), ["method"], metric)
            parts.append(_with_selection(grid, stats.assign(baseline_differs=baseline.note())))
    data = _stack(parts)
    if data is None:
        return None
    data = data[
        [
            C.SETUP,
            C.VARIANT,
            "method",
            "n",
            "mean",
            "std",
            "sem",
            "seeds",
            *(["baseline_differs"] if "baseline_differs" in data else []),
        ]
    ]
    display = data[[C.SETUP, C.VARIANT, "method"]].assign(
        **{C.metric_label(metric): [mean_std_n(m, s, n) for m, s, n in zip(data["mean"], data["std"], data["n"])]}
    )
    return Table(name, f"{caption} Mean ± std over seeds (number of seeds).", data, display)


# ------------------------------------------------------------------------ overlap
def overlap_init_table(at_init: pd.DataFrame) -> Table | None:
    if at_init.empty:
        return None
    display = pivot(at_init, [C.SETUP, C.DENSITY, "prune_rate", "a"], "b", lambda r: f"{r['mean']:.2f}")
    return Table(
        "overlap_init",
        "Jaccard similarity of the sets pruned by each pair of criteria at "
        "initialisation, mean over seeds (random pruning expects r/(2-r)).",
        at_init,
        display,
    )


def overlap_trajectory_table(trajectories: pd.DataFrame, max_steps_shown: int = 12) -> Table | None:
    """The CSV has every update; the display shows at most ``max_steps_shown`` steps,
    evenly spaced, first and last included."""
    if trajectories.empty:
        return None
    steps = sorted(trajectories["step"].unique())
    if len(steps) > max_steps_shown:
        last = len(steps) - 1
        steps = [steps[round(i * last / (max_steps_shown - 1))] for i in range(max_steps_shown)]
    shown = trajectories[trajectories["step"].isin(steps)]
    display = pivot(
        shown, [C.SETUP, C.VARIANT, C.DENSITY, C.CRITERION, "reference"], "step", lambda r: f"{r['mean']:.2f}"
    )
    return Table(
        "overlap_trajectory",
        "Jaccard similarity of the run's pruned set with each reference criterion's, "
        "by update step (columns), mean over seeds.",
        trajectories,
        display,
    )


# ------------------------------------------------------------------------ completeness
def completeness_tables(report: Completeness) -> list[Table]:
    tables = [
        Table("runs_by_status", "Runs by setup, kind and status.", report.status),
        Table(
            "cells",
            "Every cell (experiment without the seed): its runs by status, completed seeds and "
            "the seeds other cells of the setup have and it lacks.",
            report.cells,
        ),
    ]
    if len(report.short):
        tables.append(Table("short_cells", "Cells with fewer completed seeds than expected.", report.short))
    if len(report.problems):
        tables.append(
            Table("not_completed", "Runs that did not complete (not used by any table or figure).", report.problems)
        )
    if len(report.duplicates):
        tables.append(
            Table("duplicates", "(cell, seed) pairs completed more than once; the latest is used.", report.duplicates)
        )
    return tables

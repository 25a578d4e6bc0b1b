"""The report's tables: tidy numbers for CSV, a readable layout for markdown and LaTeX.

Every builder returns a `Table` (or None when the runs hold nothing for it). ``data`` has
one row per observation and exact numbers; ``display`` is the same content laid out for
reading (cells such as ``91.23 ± 0.41 (5)``: mean ± std over seeds, and the seed count).
"""

from __future__ import annotations

import html
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from . import columns as C
from .cells import accounted
from .claims import CLAIMS
from .completeness import ORDER, Completeness, cell_accounting
from .grid import AXES, Selection, common_identity, describe, identity
from .stats import best_of_moments, rank_criteria, rank_summary, summarize
from .style import display_names, field_label

# The dense model's density, so that it sits in the density-1 column of accuracy tables.
DENSE_DENSITY = 1.0
_NOT_APPLICABLE = "—"


@dataclass
class Table:
    name: str
    caption: str
    data: pd.DataFrame
    display: pd.DataFrame | None = None
    # Per display cell: "best" (bold), "tied" (not significantly worse than the best: *) or "".
    marks: pd.DataFrame | None = None
    notes: str = ""  # what the marks mean, below the table (and in the LaTeX caption)
    title: str = ""  # the heading in the report (default: from the name)
    _shown: pd.DataFrame | None = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        self.caption = self.caption[:1].upper() + self.caption[1:]  # a sentence

    @property
    def heading(self) -> str:
        return self.title or self.name.replace("_", " ").capitalize()

    def shown(self) -> pd.DataFrame:
        """What the markdown, LaTeX and HTML show: ids by their display names, columns by
        readable names, no cell hashes (the CSV keeps them all)."""
        if self._shown is None:
            frame = self.data if self.display is None else self.display
            frame = display_names(frame.drop(columns=[c for c in _HIDDEN if c in frame.columns]))
            self._shown = frame.rename(columns=column_label)
        return self._shown

    def shown_marks(self) -> pd.DataFrame | None:
        return None if self.marks is None else self.marks.rename(columns=column_label)

    def write(self, directory: str | Path) -> dict[str, Path]:
        """``<name>.csv`` (data), ``<name>.md`` and ``<name>.tex`` (display)."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        paths = {fmt: directory / f"{self.name}.{fmt}" for fmt in ("md", "csv", "tex")}
        self.data.to_csv(paths["csv"], index=False)
        notes = f"\n{self.notes}\n" if self.notes else ""
        paths["md"].write_text(f"{self.caption}\n\n{to_markdown(self.shown(), self.shown_marks())}{notes}")
        caption = f"{self.caption} {self.notes}".strip()
        paths["tex"].write_text(to_latex(self.shown(), caption, label=f"tab:{self.name}", marks=self.shown_marks()))
        return paths

    def html(self) -> str:
        """The table as HTML: ids by display names, marked cells bold / starred."""
        shown = self.shown()
        marks = self.shown_marks()
        if marks is not None:
            shown = shown.copy()
            for column in marks.columns:
                if column in shown:
                    shown[column] = [_html_mark(_text(v), m) for v, m in zip(shown[column], marks[column].fillna(""))]
        body = shown.to_html(index=False, na_rep="", border=0, escape=self.marks is None)
        return body + (f"<p class='tnote'>{html.escape(self.notes)}</p>" if self.notes else "")


_HIDDEN = (C.CELL, C.IDENTITY, "kind_")  # ids for machines: in the CSV only
_COLUMN_LABELS = {
    "n_seeds": "completed seeds",
    "missing_seeds": "missing seeds",
    "expected": "expected seeds",
    "short": "short of seeds",
    "run_dir": "run directory",
    "n": "seeds",
    "diverged.reason": "why it diverged",
    "state_detail": "state now (detail)",
    "state": "state now",
    "baseline_differs": "baseline differs in",
    "p_holm": "p (Holm)",
    "p_value": "p",
}


def column_label(name) -> str:
    """A table column's name for readers: ``sparsity.criterion`` -> ``criterion``,
    ``n_seeds`` -> ``completed seeds``, ``avg_rank_low`` -> ``avg rank low``."""
    if not isinstance(name, str):
        return name
    if name in _COLUMN_LABELS:
        return _COLUMN_LABELS[name]
    if "." in name and not name.replace(".", "").isdigit():
        return field_label(name)
    return name.replace("_", " ")


# ------------------------------------------------------------------------ writers
def _text(value) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    return f"{value:g}" if isinstance(value, float) else str(value)


def _cells(df: pd.DataFrame) -> list[list[str]]:
    """Every cell as text, column by column (a 10,000-row table is written in well under a second)."""
    columns = [df.iloc[:, i].map(_text).tolist() for i in range(df.shape[1])]  # (names may repeat)
    return [list(row) for row in zip(*columns)] if columns else [[] for _ in range(len(df))]


def _mark(text: str, mark: str, bold: tuple[str, str], star: str = "*") -> str:
    if not text or not mark:
        return text
    if mark == "best":
        return f"{bold[0]}{text}{bold[1]}" + star
    return text + star


def _html_mark(text: str, mark: str) -> str:
    return _mark(html.escape(text), mark, ("<b>", "</b>"))


def to_markdown(df: pd.DataFrame, marks: pd.DataFrame | None = None) -> str:
    """A GitHub-flavoured markdown table; ``marks`` (same shape) bolds the best cells and
    stars them and the not-significantly-worse ones."""

    def row(cells) -> str:
        return "| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |"

    cells = _cells(df)
    if marks is not None:
        cells = _marked(df, cells, marks, ("**", "**"), star="\\*")
    lines = [row(map(_text, df.columns)), "|" + "|".join(_align(df[c]) for c in df.columns) + "|"]
    lines += [row(r) for r in cells]
    return "\n".join(lines) + "\n"


def _marked(
    df: pd.DataFrame, cells: list[list[str]], marks: pd.DataFrame, bold: tuple[str, str], star: str = "*"
) -> list[list[str]]:
    positions = {c: i for i, c in enumerate(df.columns)}
    for column in marks.columns:
        if column not in positions:
            continue
        j = positions[column]
        for i, mark in enumerate(marks[column].fillna("")):
            cells[i][j] = _mark(cells[i][j], mark, bold, star)
    return cells


_NUMBER = re.compile(r"^(?:[-+−]?\d[\d.,]*(?:e[-+]?\d+)?(?:\s*±\s*[\d.]+)?|—)(?:\s?%)?\*?(?:\s*\(.*\))?$")


def is_numeric_column(values: pd.Series) -> bool:
    """A column of numbers (or ``mean ± std`` texts): right-aligned, so that decimals align."""
    if values.dtype.kind in "fiu":
        return True
    texts = [_text(v).strip("*") for v in values if _text(v) not in ("",)]
    return bool(texts) and all(_NUMBER.match(t) for t in texts) and any(t != "—" for t in texts)


def _align(values: pd.Series) -> str:
    return "---:" if is_numeric_column(values) else "---"


_LATEX_SPECIAL = re.compile(r"([&%$#_{}~^\\])")
_LATEX_REPLACEMENTS = {"\\": r"\textbackslash{}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}"}


_LATEX_SYMBOLS = {
    "±": r"$\pm$",
    "—": "--",
    "–": "--",
    "−": "$-$",
    "≥": r"$\geq$",
    "≤": r"$\leq$",
    "×": r"$\times$",
    "γ": r"$\gamma$",
    "½": r"$\frac{1}{2}$",
}


def latex_escape(text: str) -> str:
    escaped = _LATEX_SPECIAL.sub(lambda m: _LATEX_REPLACEMENTS.get(m.group(1), "\\" + m.group(1)), text)
    for text, tex in _LATEX_SYMBOLS.items():
        escaped = escaped.replace(text, tex)
    return escaped


def to_latex(df: pd.DataFrame, caption: str, label: str, marks: pd.DataFrame | None = None) -> str:
    """A booktabs table by `pandas.io.formats.style.Styler.to_latex`: text columns left,
    number columns right-aligned (their decimals align: every number has the same digits
    after the point), columns that hold one value on every row moved to the caption, the
    best cells (``marks``) bold and starred with the not-significantly-worse ones."""
    df = df.reset_index(drop=True)
    caption = caption[:1].upper() + caption[1:]  # a sentence
    constant = [c for c in df.columns if len(df) > 1 and df[c].map(_text).nunique() == 1 and _text(df[c].iloc[0])]
    if constant and len(constant) < len(df.columns):
        shared = "; ".join(f"{_text(c)}: {_text(df[c].iloc[0])}" for c in constant)
        caption = f"{caption.rstrip()} {shared[0].upper()}{shared[1:]}."
        df = df.drop(columns=constant)
        marks = None if marks is None else marks.drop(columns=[c for c in constant if c in marks])
    cells = _cells(df)
    texts = [[latex_escape(c) for c in row] for row in cells]
    if marks is not None:
        texts = _marked(df, texts, marks, (r"\textbf{", "}"))
    shown = pd.DataFrame(texts, columns=[latex_escape(_text(c)) for c in df.columns])
    align = "".join("r" if is_numeric_column(df[c]) else "l" for c in df.columns)
    return shown.style.hide(axis="index").to_latex(
        column_format=align,
        hrules=True,
        caption=latex_escape(caption),
        label=label,
        position_float="centering",
        environment="table",
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
_STATE_COLUMNS = tuple(s for s in ORDER if s != C.COMPLETED)  # (`cell_accounting`'s, besides `runs`)


def accuracy_table(
    grids: Sequence[Selection],
    metric: str = C.DEFAULT_METRIC,
    *,
    runs: pd.DataFrame | None = None,
    expected_seeds: int | None = None,
    alpha: float = 0.05,
    alternative: str = "greater",
    min_seeds: int = 2,
) -> Table | None:
    """Mean ± std over seeds per (setup, variant, growth, criterion, density) of the main
    grids, with the static and dense baselines (dense in the density-1 column).

    With ``runs`` (the whole runs table), every run is accounted for: each row says how many
    of its cell's planned seeds its mean is over and what became of the others
    (``runs``, ``completed`` and one column per state, see
    `completeness.cell_accounting`), and the cells of the setup none of whose runs completed
    (all diverged, say) are rows too, told apart by the fields in which they differ from the
    grid (``variant``). The best mean of each column of a block is ``best`` and the others
    are tested against it (``not_worse``), as in the ranking."""
    parts = []
    for grid in grids:
        dst = summarize(grid.runs, [C.GROWTH, C.CRITERION, C.DENSITY, C.CELL], metric)
        parts.append(_with_selection(grid, dst.rename(columns={C.CRITERION: "method"})).assign(kind="dst"))
        for kind, baseline in grid.baselines.items():
            base = baseline.runs if kind == "static" else baseline.runs.assign(**{C.DENSITY: DENSE_DENSITY})
            stats = summarize(base, [C.DENSITY, C.CELL], metric)
            parts.append(
                _with_selection(
                    grid,
                    stats.assign(
                        method=kind, kind=kind, **{C.GROWTH: _NOT_APPLICABLE}, baseline_differs=baseline.note()
                    ),
                )
            )
        if runs is not None:
            unfinished, fields = _unfinished_cells(runs, grid, {c for p in parts for c in p[C.CELL]})
            if fields:  # the grid's own value of each field that tells an unfinished cell apart
                reference = common_identity(grid.runs)
                label = describe({k: reference.get(k) for k in fields})
                for part in parts:
                    if len(part) and (part[C.SETUP] == grid.setup).all() and (part[C.VARIANT] == grid.label).all():
                        part[C.VARIANT] = ", ".join(x for x in (grid.label, label) if x)
            parts.append(unfinished)
    data = _stack(parts)
    if data is None:
        return None
    if "baseline_differs" not in data:
        data["baseline_differs"] = ""
    data["baseline_differs"] = data["baseline_differs"].fillna("")
    if runs is not None:
        accounting = cell_accounting(runs, expected_seeds)
        data = data.join(accounting.drop(columns=[C.COMPLETED]), on=C.CELL)
    data = _mark_best(data, [C.SETUP, C.VARIANT, C.GROWTH, C.DENSITY], alpha, alternative, min_seeds)
    columns = [C.SETUP, C.VARIANT, C.GROWTH, "method", C.DENSITY, "n", "mean", "std", "sem", "seeds"]
    columns += ["best", "not_worse", "baseline_differs"]
    columns += [c for c in (C.RUNS, *_occurring(data, _STATE_COLUMNS)) if c in data]
    data = data[columns + [C.CELL]]
    return Table(
        "accuracy",
        f"{C.metric_label(metric)} by density: mean ± standard deviation over seeds"
        + _seeds_note(data)
        + ". The dense model is in the density-1 column.",
        data,
        _accuracy_display(data),
        marks=_marks(data, [C.SETUP, C.VARIANT, C.GROWTH, "method"], C.DENSITY),
        notes=_best_note(alpha, alternative, min_seeds),
    )


def _unfinished_cells(runs: pd.DataFrame, grid: Selection, shown: set) -> tuple[pd.DataFrame, set]:
    """The setup's cells of the grid's kinds (DST below density 1, static, dense) that have
    no completed run at all, labelled by the fields in which they differ from the grid;
    and those fields."""
    reference = common_identity(grid.runs)
    of_setup = runs[(runs[C.SETUP] == grid.setup) & runs[C.CELL].notna() & ~runs[C.CELL].isin(shown)]
    kinds = of_setup[C.KIND]
    candidates = of_setup[
        ((kinds == "dst") & (of_setup[C.DENSITY] < 1)) | kinds.isin([k for k in grid.baselines if k != "layer-wise"])
    ]
    done = set(candidates.loc[candidates[C.STATUS] == C.COMPLETED, C.CELL])
    rows, fields = [], set()
    for cell, of_cell in candidates[~candidates[C.CELL].isin(done)].groupby(C.CELL, sort=True):
        first = of_cell.iloc[0]
        kind = first[C.KIND]
        differences = {
            k: v
            for k, v in identity(first[C.IDENTITY]).items()
            if k not in (*AXES, C.MODE) and reference.get(k, _NOT_APPLICABLE) != v
        }
        fields |= set(differences)
        rows.append(
            {
                C.SETUP: grid.setup,
                C.VARIANT: describe(differences) or grid.label,
                C.GROWTH: first[C.GROWTH] if kind == "dst" else _NOT_APPLICABLE,
                "method": first[C.CRITERION] if kind == "dst" else kind,
                C.DENSITY: DENSE_DENSITY if kind == "dense" else first[C.DENSITY],
                C.CELL: cell,
                "n": 0,
                "kind": kind,
            }
        )
    return pd.DataFrame(rows), fields


def _seeds_note(data: pd.DataFrame) -> str:
    """`` over 3 seeds`` when every complete row has the same number of seeds (the cells then
    say only what is short of it), else the count goes into every cell."""
    counts = set(data.loc[_complete(data), "n"].astype(int))
    return f" ({counts.pop()} seeds per cell unless the cell says otherwise)" if len(counts) == 1 else ""


def _complete(data: pd.DataFrame) -> pd.Series:
    return data["n"] >= data[C.RUNS] if C.RUNS in data else pd.Series(True, index=data.index)


def _accuracy_cell(row: pd.Series, with_n: bool) -> str:
    if not row["n"]:
        text = _NOT_APPLICABLE
    else:
        text = f"{row['mean']:.2f}" + ("" if pd.isna(row["std"]) else f" ± {row['std']:.2f}")
    note = ""
    if C.RUNS in row and not pd.isna(row[C.RUNS]):
        note = accounted(row["n"], row[C.RUNS], {s: row[s] for s in _STATE_COLUMNS if s in row})
    if note:
        return f"{text} ({note})"
    return f"{text} ({int(row['n'])})" if with_n else text


def _accuracy_display(data: pd.DataFrame) -> pd.DataFrame:
    with_n = not _seeds_note(data)
    index = [C.SETUP, C.VARIANT, C.GROWTH, "method"]
    display = pivot(data, index, C.DENSITY, lambda r: _accuracy_cell(r, with_n))
    if (display[C.VARIANT] == "").all():
        display = display.drop(columns=[C.VARIANT])
    return display


def _capitalised(text: str) -> str:
    return text[:1].upper() + text[1:]


def _mark_best(data: pd.DataFrame, by: Sequence[str], alpha: float, alternative: str, min_seeds: int) -> pd.DataFrame:
    """``best`` and ``not_worse`` per row: among the DST rows of each ``by`` group (one
    column of one block of a table), as in the ranking (`stats.best_of_moments`)."""
    data = data.reset_index(drop=True)
    data["best"], data["not_worse"] = False, False
    dst = data[(data["kind"] == "dst") & (data["n"] > 0)] if "kind" in data else data[data["n"] > 0]
    if len(dst):
        group = dst[list(by)].astype(str).agg("\0".join, axis=1)
        sizes = group.map(group.value_counts())
        dst, group = dst[sizes > 1], group[sizes > 1]  # a row alone in its column is best of nothing
        if len(dst):
            marks = best_of_moments(dst, group, alpha=alpha, alternative=alternative, min_seeds=min_seeds)
            data.loc[dst.index, "best"] = marks["best"]
            data.loc[dst.index, "not_worse"] = marks["not_worse"]
    return data


def _marks(data: pd.DataFrame, index: Sequence[str], columns: str) -> pd.DataFrame:
    """The display's marks ("best", "tied", ""), laid out like `pivot` lays out the cells."""
    marks = pivot(data, index, columns, lambda r: "best" if r["best"] else "tied" if r["not_worse"] else "")
    names = {*index, *(_short_names(i) for i in index), "growth", "variant"}
    return marks.drop(columns=[c for c in marks.columns if c in names])


def _best_note(alpha: float, alternative: str, min_seeds: int) -> str:
    side = "one" if alternative == "greater" else "two"
    return (
        f"Bold: the highest DST mean of its column (per growth rule); *: best or not significantly worse than "
        f"it (Welch's t-test, {side}-sided, Holm-corrected within the column, alpha = {alpha:g}; only cells "
        f"with ≥ {min_seeds} seeds are compared, and a column with none compared has no marks)."
    )


def ranking_tables(
    grids: Sequence[Selection],
    *,
    metric: str = C.DEFAULT_METRIC,
    alpha: float = 0.05,
    alternative: str = "greater",
    low_density: float = 0.1,
    min_seeds: int = 2,
) -> tuple[Table, Table] | None:
    """Criteria ranked by mean accuracy at each density, with the best group marked, and
    the average-rank summary over all, low and high densities."""
    ranked = _stack(
        [
            _with_selection(
                g,
                rank_criteria(
                    g.runs,
                    metric=metric,
                    alpha=alpha,
                    alternative=alternative,
                    by=(C.GROWTH, C.DENSITY),
                    min_seeds=min_seeds,
                ),
            )
            for g in grids
        ]
    )
    if ranked is None:
        return None
    ranked = ranked[[C.SETUP, C.VARIANT, *(c for c in ranked.columns if c not in (C.SETUP, C.VARIANT))]]
    test = "one-sided" if alternative == "greater" else "two-sided"
    index = [C.SETUP, C.GROWTH, C.CRITERION]
    display = pivot(ranked, index, C.DENSITY, lambda r: f"{r['rank']:g}")
    # rank 1 bold; * (the best group) on it and on the criteria not significantly worse
    marks = _marks(
        ranked.assign(best=(ranked["rank"] == 1) & ranked["best_group"], not_worse=ranked["best_group"]),
        index,
        C.DENSITY,
    )
    summary = rank_summary(ranked, low_density=low_density, by=(C.SETUP, C.VARIANT, C.GROWTH))
    display["avg rank"] = display.merge(
        summary, how="left", left_on=[C.SETUP, "growth", "criterion"], right_on=[C.SETUP, C.GROWTH, C.CRITERION]
    )["avg_rank"].map("{:.2f}".format)
    ranking = Table(
        "ranking",
        f"Rank of each criterion by mean {C.metric_label(metric)} at each density (1 = best). "
        f"* = best or not significantly worse than the best (Welch's t-test, {test}, Holm-corrected "
        f"over the comparisons at that density, alpha = {alpha:g}); only criteria with ≥ {min_seeds} seeds are "
        f"compared, and a density at which none could be compared has no *. Bold: rank 1 in the best group.",
        ranked,
        display,
        marks=marks,
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
    name: str,
    caption: str,
    grids: Sequence[Selection],
    by: Sequence[str],
    columns: str,
    metric: str = C.DEFAULT_METRIC,
    *,
    alpha: float = 0.05,
    alternative: str = "greater",
    min_seeds: int = 2,
) -> Table | None:
    """Mean ± std of ``metric`` per ``by`` + ``columns`` in each selection, laid out with one
    column per value of ``columns``; the best of each row bold and the ones not significantly
    worse than it starred, as in the ranking; the seed count in the caption when every cell
    has the same, else in every cell."""
    data = _stack([_with_selection(g, summarize(g.runs, [*by, columns], metric)) for g in grids])
    if data is None:
        return None
    data = data[[C.SETUP, C.VARIANT, *(c for c in data.columns if c not in (C.SETUP, C.VARIANT))]]
    index = [C.SETUP, C.VARIANT, *by]
    data = _mark_best(data, index, alpha, alternative, min_seeds)
    usual = int(data["n"].mode().max())  # the seed count most cells have: said once, in the caption
    display = pivot(
        data,
        index,
        columns,
        lambda r: (
            f"{r['mean']:.2f}"
            + ("" if pd.isna(r["std"]) else f" ± {r['std']:.2f}")
            + ("" if r["n"] == usual else f" ({r['n']})")
        ),
    )
    seeds = f" over {usual} seeds per cell unless the cell says otherwise"
    side = "one" if alternative == "greater" else "two"
    return Table(
        name,
        f"{caption} {_capitalised(C.metric_label(metric))}: mean ± standard deviation{seeds}.",
        data,
        display,
        marks=_marks(data, index, columns),
        notes=f"Bold: the highest mean of its row; *: best or not significantly worse than it (Welch's t-test, "
        f"{side}-sided, Holm-corrected within the row, alpha = {alpha:g}; only cells with ≥ {min_seeds} seeds are "
        f"compared).",
    )


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
def _occurring(data: pd.DataFrame, states: Sequence[str]) -> list[str]:
    """The columns of ``states`` in ``data`` that count any run."""
    return [s for s in states if s in data and (data[s].fillna(0) != 0).any()]


def _without_empty_states(data: pd.DataFrame) -> pd.DataFrame:
    """``data`` without the state columns no run is in (completed stays)."""
    return data.drop(columns=[s for s in _STATE_COLUMNS if s in data and s not in _occurring(data, [s])])


def completeness_tables(report: Completeness) -> list[Table]:
    """The runs by status (the states of `src.rundir.state`, as `status` says them), every cell,
    the short cells, the runs that did not complete (with what their state says of them:
    ``detail``) and duplicates. The displays leave out the states no run is in; the CSVs
    have them all."""
    tables = [
        Table(
            "runs_by_status",
            "Runs by setup, kind and status (the states `python -m src.launch status` reports).",
            report.status,
            _without_empty_states(report.status),
        ),
        Table(
            "cells",
            "Every cell (experiment without the seed): its runs by status, completed seeds and "
            "the seeds other cells of the setup have and it lacks.",
            report.cells,
            _without_empty_states(report.cells),
        ),
    ]
    if len(report.short):
        tables.append(
            Table(
                "short_cells",
                "Cells with fewer completed seeds than expected.",
                report.short,
                _without_empty_states(report.short),
            )
        )
    if len(report.problems):
        tables.append(
            Table(
                "not_completed",
                "Runs that did not complete (not used by any table or figure): their state and what it says of them.",
                report.problems,
            )
        )
    if len(report.duplicates):
        tables.append(
            Table("duplicates", "(cell, seed) pairs completed more than once; the latest is used.", report.duplicates)
        )
    return tables


def claims_table(claims: pd.DataFrame) -> Table | None:
    """The claims as a report table (display: the claim in words)."""
    if claims.empty:
        return None
    display = claims.assign(claim=claims["claim"].map(CLAIMS))
    if (display["variant"] == "").all():
        display = display.drop(columns="variant")
    return Table(
        "claims", "The paper's findings on these runs: verdict, the numbers behind it, and the test.", claims, display
    )

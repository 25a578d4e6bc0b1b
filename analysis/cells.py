"""Any sweep, whatever it varied: the metric per cell, and tests along each axis.

A sweep's *axes* are the identity fields (`analysis.grid`) that take two or more values
among the completed runs of one setup: ``criterion=magnitude,mest seed=1,2,3`` has the axis
``sparsity.criterion``; the paper's grid has criterion, growth and density. The kind of
run (dense, static, DST) is an axis when a setup mixes them.

* `cell_table`: per cell, mean ± std (n), min and max of the metric, the epoch of the best
  validation accuracy and the last epoch, and the topology updates its DST runs made.
* `axis_tests`: along each axis, with the other axes held fixed (a *context*), the level
  with the highest mean is the best and every other level is compared with it by Welch's
  t-test, Holm-corrected over the levels of that context (as `stats.compare_to_best`).
  A verdict needs ``min_seeds`` completed seeds on both sides, and DST cells whose runs made
  topology updates; below that the row says so instead of a verdict.
* `topology_warnings`: DST cells whose runs made no or very few topology updates, with the
  setting to change.
* `verdict_readiness`: before launch, whether a planned sweep can reach a verdict at all.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import numpy as np
import pandas as pd

from src.sparse.few_updates import MIN_UPDATES, few_updates_advice, update_fixes

from . import columns as C
from .grid import completed, identity_frame
from .stats import holm_within, welch_from_moments
from .style import field_label, label, setup_label
from .verdict import MIN_SEEDS, verdict_readiness  # noqa: F401  (the rule a launch applies too)

FEW_UPDATES = MIN_UPDATES  # DST runs with fewer topology updates than this are warned about (as at launch)
NOT_ENOUGH_SEEDS = "not enough seeds for a verdict"
# The per-cell table's own columns; every other column of it is an axis of the sweep.
CELL_COLUMNS = (
    C.SETUP,
    C.KIND,
    C.CELL,
    "n",
    "mean",
    "std",
    "min",
    "max",
    "best_epoch",
    "final_epoch",
    C.TOPOLOGY_UPDATES,
    "seeds",
)
BEST, NOT_WORSE, WORSE = "best", "not significantly worse", "worse"
NO_UPDATES = "no verdict: DST runs made no topology updates"

# Identity fields that never separate experiments in a table (the kind says it).
_NOT_AXES = {C.MODE, C.MODEL, C.DATA}


def _not_enough(n: int, min_seeds: int) -> str:
    return f"{NOT_ENOUGH_SEEDS} (n={n}, need ≥ {min_seeds})"


def accounted(completed: int, planned: int, counts: dict) -> str:
    """``3 of 5; 2 diverged`` (``""`` when every planned seed completed): how many of a
    cell's runs its mean is over, and what became of the others (``counts``: state -> runs,
    as `completeness.cell_accounting` gives them)."""
    completed, planned = int(completed), int(planned)
    if completed >= planned:
        return ""
    others = [f"{int(n)} {state}" for state, n in counts.items() if state != C.COMPLETED and n]
    return f"{completed} of {planned}" + (f"; {', '.join(others)}" if others else "")


# ------------------------------------------------------------------------ axes
def sweep_axes(runs: pd.DataFrame) -> dict[str, list[str]]:
    """Per setup, the fields its runs vary (kind first, then in identity order): of every
    run with a readable config, whatever became of it, so that a cell whose runs all
    diverged is still told apart from the others by the field it differs in.

    A field is an axis when it takes two values among the runs of one kind: dense runs'
    configs hold sparsity defaults that mean nothing for them. Overlap-at-initialisation
    probes are not trained and are left out (`analysis.overlap` has them)."""
    done = _trained(runs[runs[C.IDENTITY].notna()])
    out = {}
    for setup, of_setup in done.groupby(C.SETUP, sort=True):
        fields, axes = [], set()
        for _, of_kind in of_setup.groupby(C.KIND):
            frame = identity_frame(of_kind[C.IDENTITY])
            fields += [k for k in frame.columns if k not in fields]
            axes |= set(frame.columns[frame.nunique(dropna=False) > 1])
        ordered = [k for k in fields if k in axes and k not in _NOT_AXES]
        out[setup] = ([C.KIND] if of_setup[C.KIND].nunique() > 1 else []) + ordered
    return out


def _trained(runs: pd.DataFrame) -> pd.DataFrame:
    return runs[runs[C.KIND] != "overlap_init"]


def _axis_values(runs: pd.DataFrame, axes: list[str]) -> pd.DataFrame:
    """The axis values of each run, from its identity (so that fields absent from the runs
    table's columns, or given as lists, work alike); blank where a kind does not use them
    (criterion and growth of dense and static runs, density of dense ones)."""
    fields = [a for a in axes if a != C.KIND]
    frame = identity_frame(runs[C.IDENTITY]).reindex(columns=fields)
    values = frame.reindex(runs[C.IDENTITY].to_numpy()).set_axis(runs.index)
    if C.KIND in axes:
        values.insert(0, C.KIND, runs[C.KIND])
    kind = runs[C.KIND]
    for name in (C.CRITERION, C.GROWTH, C.UPDATE_FREQUENCY, C.GAMMA):
        if name in values:
            values[name] = values[name].where(kind.isin(["dst", "overlap_init"]))
    if C.DENSITY in values:
        values[C.DENSITY] = values[C.DENSITY].where(kind != "dense")
    return values


# ------------------------------------------------------------------------ per cell
def cell_table(runs: pd.DataFrame, metric: str = C.DEFAULT_METRIC, *, unfinished: bool = False) -> pd.DataFrame:
    """One row per cell of the completed runs: setup, kind, the setup's axes, n, mean, std,
    min, max of ``metric``, best_epoch (median epoch of the best validation accuracy),
    final_epoch (median last epoch), topology_updates (fewest of its runs; DST only), seeds.
    With ``unfinished``, also the cells none of whose runs completed (n = 0)."""
    done = _trained(completed(runs)).dropna(subset=[metric])
    if unfinished:
        readable = _trained(runs[runs[C.IDENTITY].notna()])
        rest = readable[~readable[C.CELL].isin(done[C.CELL])].drop_duplicates(C.CELL)
        done = pd.concat([done, rest.assign(**{metric: np.nan})])
    axes_of = sweep_axes(runs)
    parts = []
    for setup, of_setup in done.groupby(C.SETUP, sort=True):
        axes = axes_of.get(setup, [])
        values = _axis_values(of_setup, axes).drop(columns=[C.KIND], errors="ignore")
        frame = pd.concat([of_setup[[C.SETUP, C.KIND, C.CELL, C.SEED, metric]], values], axis=1)
        for name in ("best_val.epoch", "final.epoch", C.TOPOLOGY_UPDATES):
            frame[name] = of_setup[name] if name in of_setup else np.nan
        grouped = frame.groupby(C.CELL, sort=False)
        stats = grouped[metric].agg(n="count", mean="mean", std="std", min="min", max="max")
        stats["seeds"] = frame.dropna(subset=[metric]).groupby(C.CELL)[C.SEED].agg(seed_list)
        stats["best_epoch"] = grouped["best_val.epoch"].median()
        stats["final_epoch"] = grouped["final.epoch"].median()
        stats[C.TOPOLOGY_UPDATES] = grouped[C.TOPOLOGY_UPDATES].min()
        stats["seeds"] = stats["seeds"].fillna("")
        first = grouped[[C.SETUP, C.KIND, *values.columns]].first()
        parts.append(first.join(stats).reset_index())
    columns = list(CELL_COLUMNS)
    if not parts:
        return pd.DataFrame(columns=columns)
    table = pd.concat(parts, ignore_index=True)
    axis_columns = [c for c in table.columns if c not in columns]
    table = table[[C.SETUP, C.KIND, *axis_columns, *columns[3:], C.CELL]]
    return table.sort_values([C.SETUP, C.KIND, *axis_columns], na_position="first", ignore_index=True)


def cell_display(cells: pd.DataFrame, accounting: pd.DataFrame | None = None) -> pd.DataFrame:
    """`cell_table` for reading: display names, ``mean ± std (n)``, ``min–max``; with
    ``accounting`` (`completeness.cell_accounting`), ``(2 of 3; 1 diverged)`` where a cell's
    mean is not over all its planned runs."""
    axis_columns = [c for c in cells.columns if c not in CELL_COLUMNS]
    out = pd.DataFrame(
        {"setup": cells[C.SETUP].map(setup_label), "kind": cells[C.KIND].map(lambda k: label(C.KIND, k))}
    )
    for name in axis_columns:
        out[field_label(name)] = cells[name].map(lambda v, n=name: "" if _blank(v) else label(n, v))
    means = [_mean_std_n(m, s, n) for m, s, n in zip(cells["mean"], cells["std"], cells["n"])]
    if accounting is not None:
        found = accounting.reindex(cells[C.CELL])
        for i, row in enumerate(found.to_dict("records")):
            if pd.isna(row[C.RUNS]):
                continue
            note = accounted(row[C.COMPLETED], row[C.RUNS], {k: v for k, v in row.items() if k != C.RUNS})
            if note:
                head = means[i].rsplit(" (", 1)[0] if cells["n"].iloc[i] else "—"
                means[i] = f"{head} ({note})"
    out["mean ± std (n)"] = means
    out["min–max"] = ["" if _blank(lo) else f"{lo:.2f}–{hi:.2f}" for lo, hi in zip(cells["min"], cells["max"])]
    out["best / final epoch"] = [f"{_num(b)} / {_num(f)}" for b, f in zip(cells["best_epoch"], cells["final_epoch"])]
    out["topology updates"] = cells[C.TOPOLOGY_UPDATES].map(lambda v: "" if _blank(v) else f"{v:g}")
    return out


def seed_list(seeds: Iterable) -> str:
    """``1,2,3``: sorted, integers without a decimal point (the column is float when some
    row has no seed)."""
    return ",".join(f"{s:g}" if isinstance(s, float) else str(s) for s in sorted(seeds))


def _blank(value) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def _num(value) -> str:
    return "" if _blank(value) else f"{value:g}"


def _mean_std_n(mean: float, std: float, n: int) -> str:
    if not n:
        return "—"
    spread = "" if pd.isna(std) else f" ± {std:.2f}"
    return f"{mean:.2f}{spread} ({int(n)})"


# ------------------------------------------------------------------------ along each axis
def axis_tests(
    cells: pd.DataFrame, *, alpha: float = 0.05, alternative: str = "greater", min_seeds: int = MIN_SEEDS
) -> pd.DataFrame:
    """Along each axis of each setup (``cells``: a `cell_table`), every level against the
    best level of its context (module docstring). One row per (setup, axis, context, level):
    n, mean, std, diff (to the best's mean), p_value, p_holm and the verdict."""
    columns = [C.SETUP, "axis", "context", "level", "n", "mean", "std", "diff", "p_value", "p_holm", "verdict"]
    axis_columns = [c for c in cells.columns if c not in CELL_COLUMNS or c == C.KIND]  # (the kind is an axis here)
    parts = []
    cells = cells[cells["n"] > 0]  # (cells none of whose runs completed have nothing to test)
    for setup, of_setup in cells.groupby(C.SETUP, sort=True):
        present = [c for c in axis_columns if c != C.KIND and of_setup[c].notna().any()]
        axes = ([C.KIND] if of_setup[C.KIND].nunique() > 1 else []) + present
        for axis in axes:
            others = [c for c in axes if c != axis]
            rows = of_setup[of_setup[axis].notna()]
            context = _context(rows, others)
            part = rows[["n", "mean", "std", C.KIND, C.TOPOLOGY_UPDATES]].assign(
                **{C.SETUP: setup, "axis": axis, "context": context, "level": rows[axis]}
            )
            parts.append(part[part.groupby("context")["level"].transform("nunique") >= 2])
    if not parts:
        return pd.DataFrame(columns=columns)
    rows = pd.concat(parts, ignore_index=True)
    key = rows[C.SETUP] + "\0" + rows["axis"] + "\0" + rows["context"]
    best_index = rows.groupby(key, sort=False)["mean"].idxmax()
    best = rows.loc[best_index.reindex(key).to_numpy()].reset_index(drop=True)
    rows["diff"] = rows["mean"] - best["mean"].to_numpy()
    is_best = rows.index.isin(best_index.to_numpy())
    p = welch_from_moments(
        best["mean"], best["std"] ** 2, best["n"], rows["mean"], rows["std"] ** 2, rows["n"], alternative=alternative
    )
    no_updates = (rows[C.KIND] == "dst") & (rows[C.TOPOLOGY_UPDATES].fillna(0) < 1)
    best_no_updates = no_updates.to_numpy()[best_index.reindex(key).to_numpy()]
    few = (rows["n"] < min_seeds).to_numpy() | (best["n"] < min_seeds).to_numpy()
    testable = ~is_best & ~few & ~no_updates.to_numpy() & ~best_no_updates
    rows["p_value"] = np.where(testable, p, np.nan)
    rows["p_holm"] = holm_within(rows["p_value"], key)
    verdict = np.where(rows["p_holm"] < alpha, WORSE, NOT_WORSE).astype(object)
    verdict[is_best] = BEST
    smallest = np.minimum(rows["n"].to_numpy(), best["n"].to_numpy()).astype(int)
    verdict[few] = [_not_enough(n, min_seeds) for n in smallest[few]]
    verdict[no_updates.to_numpy() | best_no_updates] = NO_UPDATES
    rows["verdict"] = verdict
    return rows[columns].sort_values(
        [C.SETUP, "axis", "context", "mean"], ascending=[True, True, True, False], ignore_index=True
    )


def _context(rows: pd.DataFrame, others: list[str]) -> pd.Series:
    """The other axes' values of each row as text (``growth=random, density=0.1``)."""
    if not others:
        return pd.Series("", index=rows.index, dtype=object)
    parts = [rows[o].map(lambda v, o=o: "" if _blank(v) else f"{field_label(o)}={label(o, v)}") for o in others]
    joined = parts[0]
    for part in parts[1:]:
        joined = joined.str.cat(part, sep=", ")
    return joined.str.replace(r"(, )+", ", ", regex=True).str.strip(", ")


def axis_tests_display(tests: pd.DataFrame) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "setup": tests[C.SETUP].map(setup_label),
            "axis": tests["axis"].map(field_label),
            "with": tests["context"],
            "level": [label(a, v) for a, v in zip(tests["axis"], tests["level"])],
            "mean ± std (n)": [_mean_std_n(m, s, n) for m, s, n in zip(tests["mean"], tests["std"], tests["n"])],
            "diff to best": tests["diff"].map(lambda d: f"{d:+.2f}"),
            "p (Holm)": tests["p_holm"].map(lambda p: "" if _blank(p) else f"{p:.3g}"),
            "verdict": tests["verdict"],
        }
    )


# ------------------------------------------------------------------------ topology updates
def topology_warnings(runs: pd.DataFrame, few: int = FEW_UPDATES) -> pd.DataFrame:
    """DST cells whose completed runs made fewer than ``few`` topology updates (the fewest
    of their runs), with the steps available and the setting that would give ``few``."""
    done = completed(runs)
    dst = done[(done[C.KIND] == "dst")]
    columns = [
        C.SETUP,
        C.CELL,
        "description",
        C.TOPOLOGY_UPDATES,
        C.UPDATE_FREQUENCY,
        C.STEPS_PER_EPOCH,
        "train.epochs",
        "advice",
        "fix",
    ]
    if dst.empty or C.TOPOLOGY_UPDATES not in dst:
        return pd.DataFrame(columns=columns)
    dst = dst.dropna(subset=[C.TOPOLOGY_UPDATES])
    grouped = dst.groupby(C.CELL, sort=False)
    cells = grouped.agg(
        **{
            C.SETUP: (C.SETUP, "first"),
            C.TOPOLOGY_UPDATES: (C.TOPOLOGY_UPDATES, "min"),
            C.UPDATE_FREQUENCY: (C.UPDATE_FREQUENCY, "first"),
            C.STEPS_PER_EPOCH: (C.STEPS_PER_EPOCH, "first"),
            "train.epochs": ("train.epochs", "first"),
            "end_fraction": ("sparsity.end_fraction", "first"),
        }
    ).reset_index()
    cells = cells[cells[C.TOPOLOGY_UPDATES] < few]
    if cells.empty:
        return pd.DataFrame(columns=columns)
    axes = sweep_axes(runs)
    first = grouped.head(1).set_index(C.CELL)
    cells["description"] = [
        _describe(first.loc[cell], axes.get(setup, [])) for cell, setup in zip(cells[C.CELL], cells[C.SETUP])
    ]
    fixes = [
        _fixes(f, s, e, end)
        for f, s, e, end in zip(
            cells[C.UPDATE_FREQUENCY], cells[C.STEPS_PER_EPOCH], cells["train.epochs"], cells["end_fraction"]
        )
    ]
    cells["advice"] = [
        few_updates_advice(int(u), _context_of(f, s, e), fix)
        for u, f, s, e, fix in zip(
            cells[C.TOPOLOGY_UPDATES], cells[C.UPDATE_FREQUENCY], cells[C.STEPS_PER_EPOCH], cells["train.epochs"], fixes
        )
    ]
    cells["fix"] = [f"for {MIN_UPDATES} updates set {' or '.join(fix)}" if fix else "" for fix in fixes]
    return cells[columns].reset_index(drop=True)


def _describe(run: pd.Series, axes: list[str]) -> str:
    shown = [a for a in axes if a != C.KIND and a in run and not _blank(run[a])]
    return ", ".join(f"{field_label(a)}={label(a, run[a])}" for a in shown) or "all runs"


def _context_of(frequency, steps_per_epoch, epochs) -> str:
    epochs = int(epochs)
    steps = "" if _blank(steps_per_epoch) else f" x {steps_per_epoch:g} steps"
    return f"{epochs} epoch{'s' * (epochs > 1)}{steps}; sparsity.update_frequency={int(frequency)}"


def _fixes(frequency, steps_per_epoch, epochs, end_fraction) -> list[str]:
    if _blank(steps_per_epoch):
        return ["a lower sparsity.update_frequency", "more train.epochs"]
    end_fraction = 1.0 if _blank(end_fraction) else float(end_fraction)
    return update_fixes(int(frequency), float(steps_per_epoch), int(epochs), end_fraction)

"""What a sweep is missing: runs that did not complete and cells short of seeds.

A *cell* is one experiment (identity without the seed). Analyses use only completed runs;
this report says what that leaves out, so that a mean over 3 seeds is never mistaken for
one over 5.
"""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

from src.rundir.files import FINISHED
from src.rundir.state import ACTIVE, STATES

from . import columns as C

# The states of `src.rundir.state`, in the order tables show them, which is also the order in
# which the records of one (cell, seed) speak for it when there are several (a failed run
# retried): a finished one first, then a live one (the furthest along first), then the rest.
ORDER = (*FINISHED, *reversed(ACTIVE), *(s for s in STATES if s not in FINISHED and s not in ACTIVE))
_DESCRIPTION = [C.SETUP, C.KIND, C.CRITERION, C.GROWTH, C.DENSITY, C.VARIANT]


@dataclass
class Completeness:
    status: pd.DataFrame  # runs per (setup, kind) and status (a column per state of `src.rundir.state`)
    cells: pd.DataFrame  # one row per cell: its runs by status, completed seeds, missing seeds
    problems: pd.DataFrame  # every run that did not complete: its status and why (`detail`, `error`, `damage`)
    duplicates: pd.DataFrame  # (cell, seed) completed more than once; the analyses keep one

    @property
    def short(self) -> pd.DataFrame:
        """Cells with fewer completed seeds than expected."""
        return self.cells[self.cells["short"]]

    def summary(self) -> str:
        totals = self.status[list(ORDER)].sum()
        lines = [f"{int(totals.sum())} runs: " + ", ".join(f"{int(totals[s])} {s}" for s in ORDER if totals[s])]
        if len(self.short):
            lines.append(f"{len(self.short)} of {len(self.cells)} cells have fewer completed seeds than expected")
        if len(self.duplicates):
            lines.append(f"{len(self.duplicates)} (cell, seed) pairs completed more than once (one is used)")
        return "\n".join(lines)


def completeness(runs: pd.DataFrame, expected_seeds: int | None = None) -> Completeness:
    """Status counts, per-cell seed counts and the list of runs that did not complete.

    A cell is *short* when it has fewer completed seeds than ``expected_seeds``, or by
    default than the best-covered cell of its *family*: the cells of the same setup, kind
    and variant (one study of one sweep, which is meant to have the same seeds throughout).
    ``missing_seeds`` lists the seeds that runs of the family have and this cell lacks.
    """
    status = (
        runs.groupby([C.SETUP, C.KIND, C.STATUS], dropna=False)
        .size()
        .unstack(C.STATUS, fill_value=0)
        .reindex(columns=list(ORDER), fill_value=0)
        .rename_axis(columns=None)
        .reset_index()
    )
    readable = runs[runs[C.CELL].notna()]
    cells = _cells(readable, expected_seeds)
    problem_columns = [
        C.RUN_DIR,
        *_DESCRIPTION,
        C.SEED,
        C.STATUS,
        C.DETAIL,
        *(c for c in ("epochs_completed", "diverged.reason", "error", C.DAMAGE) if c in runs),
    ]
    not_completed = _described(runs[runs[C.STATUS] != C.COMPLETED])
    problems = not_completed[[c for c in problem_columns if c in not_completed]]
    done = readable[readable[C.STATUS] == C.COMPLETED]
    counts = done.groupby([C.CELL, C.SEED]).size()
    duplicates = counts[counts > 1].rename("runs").reset_index()
    return Completeness(status, cells, problems.reset_index(drop=True), duplicates)


def _described(runs: pd.DataFrame) -> pd.DataFrame:
    """Criterion and growth blanked for dense and static runs, density for dense ones: their
    configs hold defaults that mean nothing for them."""
    updates_topology = runs[C.KIND].isin(["dst", "overlap_init"])
    return runs.assign(
        **{
            C.CRITERION: runs[C.CRITERION].where(updates_topology),
            C.GROWTH: runs[C.GROWTH].where(updates_topology),
            C.DENSITY: runs[C.DENSITY].where(runs[C.KIND] != "dense"),
        }
    )


def _cells(runs: pd.DataFrame, expected_seeds: int | None) -> pd.DataFrame:
    described = _described(runs)
    grouped = described.groupby(C.CELL, sort=False)
    cells = grouped[_DESCRIPTION].first()
    cells = cells.join(
        grouped[C.STATUS].value_counts().unstack(fill_value=0).reindex(columns=list(ORDER), fill_value=0)
    )
    seeds = described[described[C.STATUS] == C.COMPLETED].groupby(C.CELL)[C.SEED].agg(lambda s: sorted(set(s)))
    cells["seeds"] = seeds.reindex(cells.index).map(lambda s: s if isinstance(s, list) else [])
    cells["n_seeds"] = cells["seeds"].map(len)
    family = [C.SETUP, C.KIND, C.VARIANT]
    # (dropna=False and .get: a cell whose kind or variant is unknown is its own family, not a KeyError)
    family_seeds = described.groupby(family, dropna=False)[C.SEED].agg(lambda s: set(s.dropna()))
    cells["missing_seeds"] = [
        sorted(family_seeds.get(tuple(key), set()) - set(seeds))
        for key, seeds in zip(cells[family].itertuples(index=False), cells["seeds"])
    ]
    # (at least the seeds the cell has records of: a cell whose runs all diverged is short of all of them)
    recorded = described.groupby(C.CELL)[C.SEED].nunique().reindex(cells.index).fillna(0)
    cells["expected"] = (
        expected_seeds
        if expected_seeds is not None
        else cells.groupby(family, dropna=False)["n_seeds"].transform("max").combine(recorded, max)
    )
    cells["short"] = cells["n_seeds"] < cells["expected"]
    for name in ("seeds", "missing_seeds"):  # text, so that the table writes to CSV and parquet alike
        cells[name] = cells[name].map(lambda s: ",".join(str(x) for x in s))
    return cells.reset_index().sort_values(
        [C.SETUP, C.KIND, C.VARIANT, C.CRITERION, C.GROWTH, C.DENSITY], na_position="first", ignore_index=True
    )


# ------------------------------------------------------------------------ every run accounted for
def cell_accounting(runs: pd.DataFrame, expected_seeds: int | None = None) -> pd.DataFrame:
    """Per cell (index): ``runs``, its planned seeds (every seed it has a record of, the seeds
    other cells of its family have and it lacks, at least ``expected_seeds``), ``completed``, and
    one column per other state of `src.rundir.state` (`ORDER`: diverged, running, ...,
    failed, stale, damaged), ``missing`` counting the seeds without any record too. A seed
    counts once, by its first record in `ORDER`."""
    readable = runs[runs[C.CELL].notna()]
    if readable.empty:
        return pd.DataFrame(columns=[C.RUNS, *ORDER])
    rank = {s: i for i, s in enumerate(ORDER)}
    frame = readable[[C.CELL, C.SEED, C.SETUP, C.KIND, C.VARIANT, C.STATUS]].assign(
        _rank=readable[C.STATUS].map(lambda s: rank.get(s, len(rank)))
    )
    best = frame.sort_values("_rank", kind="stable").drop_duplicates([C.CELL, C.SEED])
    counts = best.groupby([C.CELL, C.STATUS]).size().unstack(fill_value=0)
    counts = counts.reindex(columns=list(ORDER), fill_value=0)
    family = [C.SETUP, C.KIND, C.VARIANT]
    family_seeds = best.groupby(family, dropna=False)[C.SEED].agg(lambda s: set(s.dropna()))
    cell_family = best.groupby(C.CELL)[family].first()
    cell_seeds = best.groupby(C.CELL)[C.SEED].agg(lambda s: set(s.dropna()))
    unrecorded = pd.Series(
        [
            len(family_seeds.get(tuple(key), set()) - cell_seeds[cell])
            for cell, key in zip(cell_family.index, cell_family.itertuples(index=False))
        ],
        index=cell_family.index,
    )
    out = counts.astype(int)
    out["missing"] += unrecorded.reindex(out.index).fillna(0).astype(int)
    if expected_seeds is not None:
        out["missing"] += (expected_seeds - out[list(ORDER)].sum(axis=1)).clip(lower=0)
    out[C.RUNS] = out[list(ORDER)].sum(axis=1)
    return out[[C.RUNS, *ORDER]]

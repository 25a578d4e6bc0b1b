"""Aggregation over seeds, and which criterion wins where.

Significance (`compare_to_best`): at one (setup, growth, density), the criterion with the
highest mean is the *best*; every other criterion is compared with it by Welch's t-test
(unequal variances) across seeds, by default one-sided (H1: the best's mean is higher;
``alternative="two-sided"`` tests for any difference). The p-values of the k-1 comparisons
at that density are Holm-corrected, so the chance of calling any tied criterion "worse" at
that density is at most alpha. A criterion is in the *best group* when it is the best or not
significantly worse than it. The best is picked from the same data it is tested on, so the
best group is a descriptive summary, not a confirmatory test.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
from numpy.typing import ArrayLike
from scipy import special

from . import columns as C
from .verdict import ALTERNATIVES  # noqa: E402,F401  (the verdict rule's; re-exported)


def summarize(runs: pd.DataFrame, by: Sequence[str], metric: str = C.DEFAULT_METRIC) -> pd.DataFrame:
    """Mean, sample std (ddof 1), standard error, n and the seeds of ``metric`` per group."""
    by = list(by)
    values = runs[[*by, metric, C.SEED]].dropna(subset=[metric])
    grouped = values.groupby(by, dropna=False, sort=True)
    out = grouped[metric].agg(n="count", mean="mean", std="std")
    out["sem"] = out["std"] / np.sqrt(out["n"])
    out["seeds"] = grouped[C.SEED].agg(lambda s: ",".join(str(x) for x in sorted(s)))
    return out.reset_index()


def welch_pvalue(best: ArrayLike, other: ArrayLike, alternative: str = "greater") -> float:
    """p-value of Welch's t-test of ``best`` against ``other``.

    ``greater``: H1 mean(best) > mean(other); ``two-sided``: H1 the means differ. NaN with
    fewer than two values on either side (no variance estimate). When both samples have
    zero variance the test degenerates: p is 1 for equal means and 0 for different ones
    (in the tested direction).
    """
    a, b = np.asarray(best, dtype=float), np.asarray(other, dtype=float)
    moments = [(x.mean() if len(x) else np.nan, x.var(ddof=1) if len(x) > 1 else np.nan, len(x)) for x in (a, b)]
    return float(welch_from_moments(*moments[0], *moments[1], alternative=alternative))


def welch_from_moments(mean_a, var_a, n_a, mean_b, var_b, n_b, alternative: str = "greater") -> np.ndarray:
    """`welch_pvalue` from each side's mean, sample variance (ddof 1) and size, for whole
    arrays of comparisons at once (the report's tests at 10,000 runs are one call)."""
    if alternative not in ALTERNATIVES:
        raise ValueError(f"alternative: {alternative!r} is not one of {ALTERNATIVES}")
    mean_a, var_a, n_a, mean_b, var_b, n_b = (
        np.asarray(x, dtype=float) for x in (mean_a, var_a, n_a, mean_b, var_b, n_b)
    )
    with np.errstate(divide="ignore", invalid="ignore"):
        sa, sb = var_a / n_a, var_b / n_b
        t = (mean_a - mean_b) / np.sqrt(sa + sb)
        df = (sa + sb) ** 2 / (sa**2 / (n_a - 1) + sb**2 / (n_b - 1))
        # Student's t survival function as the plain ufunc (scipy.stats.t.sf costs ~100x more per call)
        p = special.stdtr(df, -t) if alternative == "greater" else 2 * special.stdtr(df, -np.abs(t))
    diff = mean_a - mean_b
    degenerate = (var_a == 0) & (var_b == 0)
    equal_or_wrong_way = (diff == 0) | ((alternative == "greater") & (diff < 0))
    p = np.where(degenerate, np.where(equal_or_wrong_way, 1.0, 0.0), p)
    return np.where((n_a < 2) | (n_b < 2), np.nan, p)


def welch_interval(mean_a, var_a, n_a, mean_b, var_b, n_b, level: float = 0.95) -> tuple[np.ndarray, np.ndarray]:
    """The difference of means a - b and the half-width of its ``level`` confidence interval
    by Welch's approximation (Student's t with Welch-Satterthwaite degrees of freedom); the
    half-width is NaN where either side has fewer than two values."""
    mean_a, var_a, n_a, mean_b, var_b, n_b = (
        np.asarray(x, dtype=float) for x in (mean_a, var_a, n_a, mean_b, var_b, n_b)
    )
    with np.errstate(divide="ignore", invalid="ignore"):
        sa, sb = var_a / n_a, var_b / n_b
        df = (sa + sb) ** 2 / (sa**2 / (n_a - 1) + sb**2 / (n_b - 1))
        df = np.where((sa + sb) == 0, np.inf, df)
        half = special.stdtrit(df, 0.5 + level / 2) * np.sqrt(sa + sb)
    half = np.where((n_a < 2) | (n_b < 2), np.nan, half)
    return mean_a - mean_b, half


def holm(pvalues: Sequence[float]) -> np.ndarray:
    """Holm-Bonferroni adjusted p-values (NaNs are not tests: they stay NaN and do not count).

    Sorted ascending, p_(i) becomes max_{j<=i} min(1, (m - j + 1) p_(j)); rejecting the
    hypotheses with adjusted p < alpha controls the family-wise error rate at alpha.
    """
    p = np.asarray(pvalues, dtype=float)
    adjusted = np.full_like(p, np.nan)
    tested = np.flatnonzero(~np.isnan(p))
    order = tested[np.argsort(p[tested], kind="stable")]
    m = len(order)
    running = 0.0
    for i, index in enumerate(order):
        running = max(running, min(1.0, (m - i) * p[index]))
        adjusted[index] = running
    return adjusted


def holm_within(pvalues: pd.Series, groups: pd.Series) -> pd.Series:
    """`holm` applied within each group at once (one family per group; NaNs stay NaN)."""
    frame = pd.DataFrame({"p": pd.to_numeric(pvalues, errors="coerce"), "g": groups}).dropna(subset=["p"])
    frame = frame.sort_values(["g", "p"], kind="stable")
    grouped = frame.groupby("g", sort=False)["p"]
    m = grouped.transform("size")
    scaled = ((m - grouped.cumcount()) * frame["p"]).clip(upper=1.0)
    adjusted = scaled.groupby(frame["g"], sort=False).cummax()
    return adjusted.reindex(pvalues.index)


def compare_to_best(
    samples: Mapping[str, Sequence[float]], *, alpha: float = 0.05, alternative: str = "greater"
) -> pd.DataFrame:
    """Rank the items of one comparison (e.g. the criteria at one density) and test each
    against the best (module docstring).

    Returns one row per item: n, mean, std, rank (1 = highest mean; ties share the average
    rank), p_value and p_holm (NaN for the best and for items that cannot be tested: fewer
    than 2 values on either side), worse (significantly worse than the best after Holm) and
    best_group (not worse; an item that cannot be tested is not called worse).
    """
    names = sorted(samples)
    values = [np.asarray(samples[n], dtype=float) for n in names]
    table = pd.DataFrame(
        {
            "item": names,
            "n": [len(v) for v in values],
            "mean": [v.mean() if len(v) else np.nan for v in values],
            "std": [v.std(ddof=1) if len(v) > 1 else np.nan for v in values],
        }
    )
    table["rank"] = table["mean"].rank(ascending=False, method="average")
    best = int(table["mean"].idxmax())  # first name among equal means
    table["p_value"] = [
        np.nan if i == best else welch_pvalue(values[best], v, alternative) for i, v in enumerate(values)
    ]
    table["p_holm"] = holm(table["p_value"])
    table["worse"] = table["p_holm"] < alpha
    table["best_group"] = ~table["worse"]
    return table


def rank_criteria(
    runs: pd.DataFrame,
    *,
    metric: str = C.DEFAULT_METRIC,
    alpha: float = 0.05,
    alternative: str = "greater",
    by: Sequence[str] = (C.SETUP, C.GROWTH, C.DENSITY),
    item: str = C.CRITERION,
    min_seeds: int = 2,
) -> pd.DataFrame:
    """`compare_to_best` of the ``item`` values within every ``by`` group of ``runs``
    (one row per run; give completed runs of one variant, e.g. `grid.main_grid(...).runs`),
    all groups at once: the tests from each item's mean, variance and n.

    A comparison needs ``min_seeds`` values on both sides; an item that cannot be compared
    (``tested`` false) is neither worse nor in the best group, and neither is the best of a
    group in which nothing could be compared: ranks are descriptive, the best group is a verdict."""
    by = list(by)
    columns = [*by, item, "n", "mean", "std", "rank", "p_value", "p_holm", "tested", "worse", "best_group"]
    values = runs[list(dict.fromkeys([*by, item, metric]))].dropna(subset=[metric])
    if values.empty:
        return pd.DataFrame(columns=columns)
    table = values.groupby([*by, item], sort=True)[metric].agg(n="count", mean="mean", std="std").reset_index()
    group = table.groupby(by, sort=False).ngroup()
    table["rank"] = table.groupby(group)["mean"].rank(ascending=False, method="average")
    marks = best_of_moments(table, group, alpha=alpha, alternative=alternative, min_seeds=min_seeds)
    table[["p_value", "p_holm", "tested", "worse", "best_group"]] = marks[
        ["p_value", "p_holm", "tested", "worse", "not_worse"]
    ]
    return table[columns]


def best_of_moments(
    table: pd.DataFrame, group, *, alpha: float = 0.05, alternative: str = "greater", min_seeds: int = 2
) -> pd.DataFrame:
    """Within each ``group`` of the rows of ``table`` (columns n, mean, std): ``best`` (the
    highest mean, first among equals), each other row's Welch p-value against it and its
    Holm correction within the group, ``tested`` (both sides have ``min_seeds`` values),
    ``worse`` (tested and significantly worse) and ``not_worse``: the best group, i.e. the
    best when anything in its group could be tested, and the tested rows not worse."""
    group = pd.Series(np.asarray(group), index=table.index)
    valid = table["n"].fillna(0) > 0
    out = pd.DataFrame(index=table.index)
    out["best"] = False
    best_index = table["mean"].where(valid).groupby(group).idxmax().dropna()
    out.loc[best_index.to_numpy(), "best"] = True
    best_row = best_index.reindex(group).to_numpy()
    has_best = ~pd.isna(best_row)
    take = np.where(has_best, best_row, table.index[0])
    best = table.loc[take]
    p = welch_from_moments(
        best["mean"], best["std"] ** 2, best["n"], table["mean"], table["std"] ** 2, table["n"], alternative=alternative
    )
    enough = (table["n"].fillna(0).to_numpy() >= min_seeds) & (best["n"].fillna(0).to_numpy() >= min_seeds)
    tested = enough & has_best & valid.to_numpy() & ~out["best"].to_numpy()
    out["p_value"] = np.where(tested, p, np.nan)
    out["p_holm"] = holm_within(out["p_value"], group)
    out["tested"] = tested
    out["worse"] = tested & (out["p_holm"] < alpha).to_numpy()
    any_tested = pd.Series(tested, index=table.index).groupby(group).transform("any").to_numpy()
    out["not_worse"] = (out["best"].to_numpy() & any_tested) | (tested & ~out["worse"].to_numpy())
    return out


def rank_summary(
    ranking: pd.DataFrame, *, low_density: float = 0.1, by: Sequence[str] = (C.SETUP, C.GROWTH), item: str = C.CRITERION
) -> pd.DataFrame:
    """Per item: average rank over densities, how often it was first and how often in the
    best group, overall and split into low (density <= ``low_density``) and high densities.

    Averages are over the densities at which the item was ranked (``densities``).
    """

    def aggregate(rows: pd.DataFrame, suffix: str) -> pd.DataFrame:
        grouped = rows.groupby([*by, item])
        return pd.DataFrame(
            {
                f"densities{suffix}": grouped["rank"].count(),
                f"avg_rank{suffix}": grouped["rank"].mean(),
                f"first{suffix}": grouped["rank"].agg(lambda r: int((r == 1).sum())),
                f"best_group{suffix}": grouped["best_group"].sum().astype(int),
            }
        )

    low = ranking[C.DENSITY] <= low_density
    parts = [aggregate(ranking, ""), aggregate(ranking[low], "_low"), aggregate(ranking[~low], "_high")]
    out = pd.concat(parts, axis=1).reset_index()
    counts = [c for c in out.columns if c.startswith(("densities", "first", "best_group"))]
    out[counts] = out[counts].fillna(0).astype(int)
    return out.sort_values([*by, "avg_rank", item], ignore_index=True)

"""The paper's three findings, checked on the loaded runs (per setup, variant and growth rule).

1. *Magnitude at low density*: at every density <= ``low_density`` (0.1), magnitude pruning
   is the best criterion or not significantly worse than the best (`stats.compare_to_best`:
   Welch's t-test across seeds against the criterion with the highest mean, Holm-corrected
   per density, the report's alpha and sidedness).
2. *Differences shrink at higher density*: the spread of the criterion means (max - min over
   criteria at one density) averaged over densities >= ``high_density`` (0.3) is smaller than
   averaged over densities <= ``low_density``. Test: seed bootstrap (seeds resampled with
   replacement within every (criterion, density) cell, 2000 times, fixed RNG); one-sided
   p = share of resamples in which the high-density spread is not smaller.
3. *DST beats static sparse training*: at every density with static runs, every criterion's
   DST mean is higher than the static mean (Welch's t-test, one-sided, Holm-corrected over
   the criteria at that density).

Each claim gets a verdict: ``holds``, ``partly (k of n)`` (claims 1 and 3: at k of the n
densities / (criterion, density) cells), ``does not hold``, ``not significant`` (claim 2:
smaller but within noise), ``not enough seeds for a verdict (n=2, need ≥ 3)`` or ``not
enough runs`` (what is missing is said), with the numbers behind it. A cell enters a test
only with ``min_seeds`` (`cells.MIN_SEEDS`) completed seeds, and DST runs only when they
made topology updates.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from . import columns as C
from .cells import MIN_SEEDS, NOT_ENOUGH_SEEDS
from .grid import Selection
from .stats import compare_to_best, holm, welch_pvalue
from .style import setup_label

HOLDS, PARTLY, FAILS, NOT_SIGNIFICANT, NOT_ENOUGH = (
    "holds",
    "partly",
    "does not hold",
    "not significant",
    "not enough runs",
)
CLAIMS = {
    "magnitude_best_at_low_density": "At low density, magnitude is the best criterion or not significantly worse",
    "differences_shrink_at_high_density": "Differences between criteria shrink at higher density",
    "dst_beats_static": "DST beats static sparse training",
}
BOOTSTRAP_RESAMPLES = 2000


def check_claims(
    selections: Sequence[Selection],
    *,
    metric: str = C.DEFAULT_METRIC,
    alpha: float = 0.05,
    alternative: str = "greater",
    low_density: float = 0.1,
    high_density: float = 0.3,
    seed: int = 0,
    min_seeds: int = MIN_SEEDS,
) -> pd.DataFrame:
    """One row per (setup, variant, growth, claim): verdict, evidence (numbers) and test.

    Only cells with ``min_seeds`` completed seeds enter a test, and only DST runs that made
    topology updates (a run that never updated its topology is static training)."""
    rows = []
    for selection in selections:
        static = selection.baselines.get("static")
        static_runs = None if static is None else static.runs.dropna(subset=[metric])
        columns = [
            C.CRITERION,
            C.GROWTH,
            C.DENSITY,
            metric,
            *([C.TOPOLOGY_UPDATES] * (C.TOPOLOGY_UPDATES in selection.runs)),
        ]
        dst = selection.runs[columns].dropna(subset=[metric])  # narrow: the cells below are slices of it
        if C.TOPOLOGY_UPDATES in dst:
            dst = dst[~(dst[C.TOPOLOGY_UPDATES] < 1)]  # unknown (older records) counts as updated
        for growth, runs in dst.groupby(C.GROWTH, sort=True):
            cells = {key: g[metric].to_numpy(float) for key, g in runs.groupby([C.CRITERION, C.DENSITY])}
            found = [
                magnitude_at_low_density(cells, low_density, alpha, alternative, min_seeds),
                differences_shrink(cells, low_density, high_density, alpha, seed, min_seeds),
                dst_beats_static(cells, static_runs, metric, alpha, min_seeds),
            ]
            if static is not None and static.differences:
                verdict, evidence, test = found[2]
                found[2] = (verdict, f"{evidence} (static baseline differs in {static.note()})", test)
            dropped = len(selection.runs[selection.runs[C.GROWTH] == growth]) - len(runs)
            for claim, (verdict, evidence, test) in zip(CLAIMS, found):
                if dropped:
                    evidence += f" ({dropped} DST runs without topology updates left out)"
                rows.append(
                    {
                        C.SETUP: selection.setup,
                        "variant": selection.label,
                        C.GROWTH: growth,
                        "claim": claim,
                        "verdict": verdict,
                        "evidence": evidence,
                        "test": test,
                    }
                )
    return pd.DataFrame(rows, columns=[C.SETUP, "variant", C.GROWTH, "claim", "verdict", "evidence", "test"])


def _verdict(passed: int, total: int) -> str:
    if passed == total:
        return HOLDS
    return FAILS if passed == 0 else f"{PARTLY} ({passed} of {total})"


def _too_few(counts: Sequence[int], min_seeds: int) -> str:
    return f"{NOT_ENOUGH_SEEDS} (n={min(counts)}, need ≥ {min_seeds})"


def _densities(cells: dict) -> list[float]:
    return sorted({d for _, d in cells})


def magnitude_at_low_density(
    cells: dict, low_density: float, alpha: float, alternative: str, min_seeds: int = MIN_SEEDS
):
    test = (
        f"per density <= {low_density:g}: Welch's t-test ({'one' if alternative == 'greater' else 'two'}-sided) "
        f"of magnitude against the best criterion, Holm-corrected over the criteria, alpha {alpha:g}"
    )
    parts, passed, tested = [], 0, 0
    for density in (d for d in _densities(cells) if d <= low_density):
        ran = {c: v for (c, d), v in cells.items() if d == density}
        samples = {c: v for c, v in ran.items() if len(v) >= min_seeds}  # only these can be tested
        if "magnitude" not in ran or len(ran) < 2:
            continue
        if "magnitude" not in samples or len(samples) < 2:
            parts.append(f"d={density:g}: {_too_few([len(v) for v in ran.values()], min_seeds)}")
            continue
        table = compare_to_best(samples, alpha=alpha, alternative=alternative).set_index("item")
        best = table["mean"].idxmax()
        row = table.loc["magnitude"]
        tested += 1
        passed += bool(row["best_group"])
        if best == "magnitude":
            parts.append(f"d={density:g}: magnitude best ({row['mean']:.2f}, {len(samples)} criteria)")
        else:
            parts.append(
                f"d={density:g}: magnitude {row['mean']:.2f} vs best {best} {table.loc[best, 'mean']:.2f}, "
                f"p_holm={row['p_holm']:.3g} ({'worse' if row['worse'] else 'not significantly worse'})"
            )
    if tested == 0:
        why = "; ".join(parts) or f"no density <= {low_density:g} with magnitude and another criterion"
        return _not_enough(why), why, test
    return _verdict(passed, tested), "; ".join(parts), test


def _not_enough(why: str) -> str:
    """The verdict when nothing could be tested: says so when seeds were what was missing."""
    start = why.find(NOT_ENOUGH_SEEDS)
    return why[start : why.index(")", start) + 1] if start >= 0 else NOT_ENOUGH


def _spread(means: dict) -> float:
    return max(means.values()) - min(means.values())


def differences_shrink(
    cells: dict, low_density: float, high_density: float, alpha: float, seed: int, min_seeds: int = MIN_SEEDS
):
    test = (
        f"mean over densities of the spread (max - min) of criterion means, d <= {low_density:g} vs "
        f"d >= {high_density:g}; one-sided seed bootstrap ({BOOTSTRAP_RESAMPLES} resamples), alpha {alpha:g}"
    )
    groups, short = {}, []
    for name, keep in (("low", lambda d: d <= low_density), ("high", lambda d: d >= high_density)):
        by_density = {}
        for density in filter(keep, _densities(cells)):
            ran = {c: v for (c, d), v in cells.items() if d == density}
            samples = {c: v for c, v in ran.items() if len(v) >= min_seeds}
            if len(samples) >= 2:
                by_density[density] = samples
            elif len(ran) >= 2:
                short.append(min(len(v) for v in ran.values()))
        groups[name] = by_density
    missing = [
        f"no density {'<=' if n == 'low' else '>='} {t:g} with two or more criteria of {min_seeds}+ seeds"
        for n, t in (("low", low_density), ("high", high_density))
        if not groups[n]
    ]
    if missing:
        why = "; ".join(missing)
        return (_too_few(short, min_seeds) if short else NOT_ENOUGH), why, test

    rng = np.random.default_rng(seed)

    def spreads(group) -> tuple[float, np.ndarray]:
        """The mean spread of ``group``, and its value in each bootstrap resample: every
        cell's seeds resampled with replacement, all resamples at once."""
        observed, resampled = [], []
        for samples in group.values():
            means = np.stack(
                [v[rng.integers(0, len(v), (BOOTSTRAP_RESAMPLES, len(v)))].mean(axis=1) for v in samples.values()]
            )
            resampled.append(means.max(axis=0) - means.min(axis=0))
            observed.append(_spread({c: v.mean() for c, v in samples.items()}))
        return float(np.mean(observed)), np.mean(resampled, axis=0)

    (low, low_draws), (high, high_draws) = spreads(groups["low"]), spreads(groups["high"])
    not_smaller = int((high_draws >= low_draws).sum())
    p = (not_smaller + 1) / (BOOTSTRAP_RESAMPLES + 1)
    per_density = ", ".join(
        f"d={d:g}: {_spread({c: v.mean() for c, v in s.items()}):.2f}"
        for g in ("low", "high")
        for d, s in groups[g].items()
    )
    evidence = f"mean spread {low:.2f} (low) vs {high:.2f} (high), p={p:.3g} [{per_density}]"
    if high >= low:
        return FAILS, evidence, test
    return (HOLDS if p < alpha else NOT_SIGNIFICANT), evidence, test


def dst_beats_static(cells: dict, static: pd.DataFrame | None, metric: str, alpha: float, min_seeds: int = MIN_SEEDS):
    test = (
        f"per density: Welch's t-test (one-sided) of each criterion against static, Holm over criteria, alpha {alpha:g}"
    )
    if static is None or static.empty:
        return NOT_ENOUGH, "no static runs", test
    static_by_density = {d: g[metric].to_numpy(float) for d, g in static.groupby(C.DENSITY)}
    parts, passed, tested = [], 0, 0
    for density in _densities(cells):
        base = static_by_density.get(density)
        if base is None:
            continue
        criteria = sorted(c for c, d in cells if d == density)
        enough = len(base) >= min_seeds
        pvalues = [
            welch_pvalue(cells[c, density], base) if enough and len(cells[c, density]) >= min_seeds else np.nan
            for c in criteria
        ]
        adjusted = holm(pvalues)
        better = [c for c, p in zip(criteria, adjusted) if p < alpha]
        testable = [c for c, p in zip(criteria, adjusted) if not np.isnan(p)]
        if not testable:
            counts = [len(base), *(len(cells[c, density]) for c in criteria)]
            parts.append(f"d={density:g}: {_too_few(counts, min_seeds)}")
            continue
        tested += len(testable)
        passed += len(better)
        gains = ", ".join(f"{c} {cells[c, density].mean() - base.mean():+.2f}" for c in criteria)
        parts.append(
            f"d={density:g}: static {base.mean():.2f}; DST - static: {gains}; "
            f"significantly better: {len(better)} of {len(testable)}"
        )
    if tested == 0:
        why = "; ".join(parts) or "no static runs at the DST densities"
        return _not_enough(why), why, test
    return _verdict(passed, tested), "; ".join(parts), test


def claims_summary(claims: pd.DataFrame) -> str:
    """One line per (setup, variant, growth, claim), for the report's text."""
    lines = []
    for row in claims.itertuples(index=False):
        where = setup_label(row[0]) + (f" ({row.variant})" if row.variant else "")
        verdict = row.verdict if row.verdict.startswith(NOT_ENOUGH_SEEDS) else row.verdict.upper()  # (keeps "n=2")
        lines.append(f"{where}, {row[2]} growth — {CLAIMS[row.claim]}: {verdict}. {row.evidence}")
    return "\n".join(lines)

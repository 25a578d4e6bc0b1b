"""The verdict rule: how many completed seeds per cell a comparison needs, and whether a planned
sweep can reach a verdict at all. Light (no pandas): the launch applies it before anything runs."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

# Completed seeds per cell (both sides of a test) the analysis needs for a verdict.
MIN_SEEDS = 3
# The alternative hypotheses a comparison may test (`analysis.stats`).
ALTERNATIVES = ("greater", "two-sided")


def verdict_readiness(
    seeds_per_cell: Mapping[str, int] | Iterable[int],
    *,
    min_seeds: int = MIN_SEEDS,
    topology_updates: Iterable[int] | None = None,
) -> str | None:
    """One line saying why a planned sweep cannot reach a verdict, or None when it can.

    ``seeds_per_cell``: the seeds each planned cell gets (a mapping cell -> seeds, or the
    counts); ``topology_updates``: optionally, the updates each planned DST run makes."""
    counts = list(seeds_per_cell.values() if isinstance(seeds_per_cell, Mapping) else seeds_per_cell)
    problems = []
    if counts and min(counts) < min_seeds:
        short = sum(n < min_seeds for n in counts)
        problems.append(
            f"{short} of {len(counts)} cells get fewer than {min_seeds} seeds (as few as {min(counts)}; "
            f"a verdict needs ≥ {min_seeds} per cell)"
        )
    if topology_updates is not None:
        updates = list(topology_updates)
        if updates and min(updates) < 1:
            problems.append(
                "DST runs would make no topology updates (lower sparsity.update_frequency or raise train.epochs)"
            )
    if not problems:
        return None
    return "this sweep cannot reach a verdict: " + "; ".join(problems)

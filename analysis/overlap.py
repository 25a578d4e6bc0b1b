"""Overlap of the criteria's pruned sets (the paper's Fig. 6), from the update lines.

An update line with ``overlap`` holds the Jaccard similarity |A ∩ B| / |A ∪ B| of the pruned
sets of ``criteria`` evaluated on the same state: ``"run"`` is the run's own pruned set, the
others are reference criteria. ``jaccard`` pools all layers; ``jaccard_per_layer`` has one
matrix per layer.

* At initialisation (Fig. 6a): runs of kind ``overlap_init`` make one update on the
  untrained network; their criteria-by-criteria matrix is averaged per (setup, density,
  prune fraction) over seeds.
* Along training (Fig. 6b): the Jaccard of a DST run's pruned set with each reference,
  per update step, averaged over the seeds of each trajectory criterion.

Pruning a random fraction r of the active weights twice gives an expected Jaccard of
r / (2 - r), the reference line of both figures.
"""

from __future__ import annotations

import pandas as pd

from . import columns as C
from .grid import completed
from .load import load_metrics

RUN = "run"
OVERLAP_WITH = "sparsity.overlap_with"  # JSON text of the reference criteria; "[]" without tracking
_PAIR_COLUMNS = [C.RUN_DIR, "step", "prune_rate", "a", "b", "jaccard"]


def random_expectation(prune_rate):
    """Expected Jaccard of two independent uniformly random pruned sets of a fraction r."""
    return prune_rate / (2 - prune_rate)


def jaccard_pairs(updates: pd.DataFrame, layer: str | None = None) -> pd.DataFrame:
    """One row per (update, criterion a, criterion b) from update lines with overlap data
    (``layer``: that layer's matrix instead of the pooled one)."""
    rows = []
    for update in updates.to_dict("records"):
        overlap = update.get("overlap")
        if not isinstance(overlap, dict):  # an update without overlap tracking (NaN in the frame)
            continue
        matrix = overlap["jaccard"] if layer is None else overlap["jaccard_per_layer"].get(layer)
        if matrix is None:
            continue
        names = overlap["criteria"]
        rows += [
            (update[C.RUN_DIR], update["step"], update["prune_rate"], a, b, matrix[i][j])
            for i, a in enumerate(names)
            for j, b in enumerate(names)
        ]
    return pd.DataFrame(rows, columns=_PAIR_COLUMNS)


def _pairs_of(runs: pd.DataFrame, kind: str, updates: pd.DataFrame | None, layer: str | None) -> pd.DataFrame:
    """Jaccard pairs of the completed runs of ``kind``, with the run columns the analyses use."""
    selected = completed(runs)
    selected = selected[selected[C.KIND] == kind]
    if updates is None:  # only runs that tracked overlap have it: the others' metrics are not read
        tracked = selected[OVERLAP_WITH].fillna("[]") != "[]" if OVERLAP_WITH in selected else selected[C.KIND].isna()
        updates = load_metrics(selected[tracked], "update")
    pairs = jaccard_pairs(updates, layer)
    keys = selected[[C.RUN_DIR, C.SETUP, C.VARIANT, C.CRITERION, C.DENSITY, C.SEED]]
    return pairs.merge(keys, on=C.RUN_DIR)


def _mean_std_n(grouped) -> pd.DataFrame:
    return grouped["jaccard"].agg(mean="mean", std="std", n="count").reset_index()


def overlap_at_init(runs: pd.DataFrame, updates: pd.DataFrame | None = None, layer: str | None = None) -> pd.DataFrame:
    """Mean Jaccard of every pair of reference criteria at initialisation, per (setup,
    density, prune_rate): columns a, b, mean, std, n (seeds).

    Runs with the same seed see the same initial state (the paper's design has one run per
    criterion and seed), so they are averaged first and every seed counts once.
    """
    pairs = _pairs_of(runs, "overlap_init", updates, layer)
    pairs = pairs[(pairs["a"] != RUN) & (pairs["b"] != RUN)].assign(prune_rate=pairs["prune_rate"].round(6))
    keys = [C.SETUP, C.DENSITY, "prune_rate", "a", "b"]
    per_seed = pairs.groupby([*keys, C.SEED])["jaccard"].mean().reset_index()
    return _mean_std_n(per_seed.groupby(keys))


def overlap_trajectories(
    runs: pd.DataFrame, updates: pd.DataFrame | None = None, layer: str | None = None
) -> pd.DataFrame:
    """Jaccard of DST runs' pruned sets with each reference criterion along training:
    per (setup, variant, density, trajectory criterion, reference, step) the mean, std and n
    over seeds, and the mean prune fraction at that step."""
    pairs = _pairs_of(runs, "dst", updates, layer)
    pairs = pairs[(pairs["a"] == RUN) & (pairs["b"] != RUN)].rename(columns={"b": "reference"})
    grouped = pairs.groupby([C.SETUP, C.VARIANT, C.DENSITY, C.CRITERION, "reference", "step"])
    out = _mean_std_n(grouped)
    out["prune_rate"] = grouped["prune_rate"].mean().to_numpy()
    return out


def jaccard_matrix(at_init: pd.DataFrame) -> pd.DataFrame:
    """The square criteria-by-criteria matrix of the mean Jaccard of one (setup, density,
    prune_rate) slice of `overlap_at_init`."""
    order = list(dict.fromkeys([*at_init["a"], *at_init["b"]]))
    return at_init.pivot(index="a", columns="b", values="mean").reindex(index=order, columns=order)

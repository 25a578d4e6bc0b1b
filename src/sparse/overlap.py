"""Criteria overlap: which weights several criteria would prune from the same state, and how
similar those pruned sets are (Jaccard |A ∩ B| / |A ∪ B|; the paper's Fig. 6 analysis).

Everything is computed on the tensors' device from references to the live weights and
gradients; the only host transfer is the final matrix.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from .criteria import get_criterion
from .functional import prune_count, prune_tensors


@dataclass
class OverlapResult:
    criteria: list[str]
    names: list[str]
    pruned: dict[str, list[Tensor]]  # criterion -> per-layer boolean mask of pruned positions
    jaccard: list[list[float]]  # pooled over all layers, criteria x criteria
    jaccard_per_layer: dict[str, list[list[float]]]  # layer name -> criteria x criteria

    def as_dict(self) -> dict:
        """The JSON-able part: matrices, not masks."""
        return {"criteria": self.criteria, "jaccard": self.jaccard, "jaccard_per_layer": self.jaccard_per_layer}


def jaccard_matrix(sets: Tensor) -> Tensor:
    """Pairwise Jaccard similarity of the rows of a boolean [C, N] tensor (1 where both empty)."""
    x = sets.float()
    inter = x @ x.T
    sizes = x.sum(dim=1)
    union = sizes[:, None] + sizes[None, :] - inter
    return torch.where(union > 0, inter / union.clamp_min(1), torch.ones_like(inter))


def criteria_overlap(
    criteria: list[str],
    names: list[str],
    weights: list[Tensor],
    grads: list[Tensor | None],
    masks: list[Tensor],
    rate: float,
    *,
    counts: list[int] | None = None,
    given: dict[str, list[Tensor]] | None = None,
    **options,
) -> OverlapResult:
    """Prune every layer with each criterion at ``rate`` (no growth) and compare the pruned sets.

    ``counts`` fixes how many weights each layer loses (default ceil(rate * active));
    ``given`` adds already-known pruned sets (e.g. a run's actual one) to the comparison,
    first in the matrix. ``options`` go to `functional.prune_tensors` (``policy``, ``gamma``,
    ``generator``: pass one of its own, so the analysis draws no random numbers of the run).
    """
    counts = counts or [prune_count(rate, int(m.sum())) for m in masks]
    pruned = dict(given or {})
    for c in criteria:
        kept = prune_tensors(get_criterion(c), weights, grads, masks, counts, **options)
        pruned[c] = [m & ~k for m, k in zip(masks, kept)]
    criteria = list(pruned)
    per_layer = {}
    for i, name in enumerate(names):
        stacked = torch.stack([pruned[c][i].reshape(-1) for c in criteria])
        per_layer[name] = jaccard_matrix(stacked)
    pooled = jaccard_matrix(torch.stack([torch.cat([p.reshape(-1) for p in pruned[c]]) for c in criteria]))
    return OverlapResult(
        criteria=list(criteria),
        names=list(names),
        pruned=pruned,
        jaccard=pooled.tolist(),
        jaccard_per_layer={n: j.tolist() for n, j in per_layer.items()},
    )

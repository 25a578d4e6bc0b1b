"""Exact-count, tie-safe selection: the one routine every prune and grow decision goes through.

Selecting "the k lowest-scoring eligible entries" with a full sort is both slow and, with an
unstable sort, ambiguous when scores tie (the reference implementation can remove more than
k active weights when active scores tie with the zero scores of inactive ones). Here the k-th
value is found with `kthvalue` (linear time), everything strictly below it is taken, and the
remaining places go to the entries tied with it in flat-index order. The result has exactly
k entries, is deterministic, and never leaves the tensor's device.
"""

from __future__ import annotations

import torch


def select_lowest(score: torch.Tensor, eligible: torch.Tensor, k: int) -> torch.Tensor:
    """Boolean mask of exactly ``min(k, eligible.sum())`` eligible entries with the lowest scores.

    Ties at the threshold are broken by flat index (lower index first). NaN scores rank as
    +inf (never preferred). ``score`` and ``eligible`` have the same shape.
    """
    flat = score.detach().reshape(-1)
    ok = eligible.reshape(-1)
    if k <= 0:
        return torch.zeros_like(eligible, dtype=torch.bool)
    n_eligible = int(ok.sum())
    if k >= n_eligible:
        return eligible.clone().to(torch.bool)
    # Ineligible entries get +inf so the k-th smallest over the whole tensor is an eligible
    # value; ties with +inf are excluded again by `& ok` below.
    inf = torch.tensor(float("inf"), dtype=flat.dtype, device=flat.device)
    ranked = torch.where(ok & ~torch.isnan(flat), flat, inf)
    tau = ranked.kthvalue(k).values
    below = ok & (ranked < tau)
    tied = ok & (ranked == tau)
    need = k - below.sum()
    chosen = below | (tied & (tied.cumsum(0) <= need))
    return chosen.view(eligible.shape)


def select_highest(score: torch.Tensor, eligible: torch.Tensor, k: int) -> torch.Tensor:
    """Boolean mask of exactly ``min(k, eligible.sum())`` eligible entries with the highest scores."""
    return select_lowest(-score, eligible, k)


def select_lowest_global(
    scores: list[torch.Tensor], eligible: list[torch.Tensor], k: int
) -> list[torch.Tensor]:
    """`select_lowest` over several tensors ranked together (global pruning).

    The tensors are concatenated once; the returned masks have the input shapes.
    """
    flat = torch.cat([s.detach().reshape(-1).float() for s in scores])
    ok = torch.cat([e.reshape(-1) for e in eligible])
    chosen = select_lowest(flat, ok, k)
    return [c.view(e.shape) for c, e in zip(chosen.split([e.numel() for e in eligible]), eligible)]

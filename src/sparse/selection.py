"""Exact-count, tie-safe selection: the one routine every prune and grow decision goes through.

Selecting "the k lowest-scoring eligible entries" with a full sort is both slow and, with an
unstable sort, ambiguous when scores tie (the reference implementation can remove more than
k active weights when active scores tie with the zero scores of inactive ones). Here the k-th
value is found with `kthvalue` (linear time), everything strictly below it is taken, and the
remaining places go to the entries tied with it in flat-index order. The result has exactly
k entries, is deterministic, and never leaves the tensor's device.
"""

from __future__ import annotations

import math

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
    n_eligible = int(ok.count_nonzero())
    if k >= n_eligible:
        return eligible.clone().to(torch.bool)
    inf = torch.tensor(float("inf"), dtype=flat.dtype, device=flat.device)
    ranked = torch.where(torch.isnan(flat), inf, flat)
    tau = _kth_smallest(ranked, ok, k, n_eligible)
    below = ok & (ranked < tau)
    tied = ok & (ranked == tau)
    n_below, n_tied = torch.stack([below.count_nonzero(), tied.count_nonzero()]).tolist()
    if n_below + n_tied == k:  # the usual case: no tie straddles the threshold
        chosen = below | tied
    else:
        chosen = below | (tied & (tied.cumsum(0) <= k - n_below))
    return chosen.view(eligible.shape)


_SAMPLE = 65536  # entries of the strided sample that pre-filters large selections


def _kth_smallest(ranked: torch.Tensor, ok: torch.Tensor, k: int, n_eligible: int) -> torch.Tensor:
    """The k-th smallest of ``ranked`` over the eligible entries."""
    if n_eligible * 2 <= ranked.numel():  # few eligible (pruning a sparse layer): gather them
        return ranked[ok].kthvalue(k).values
    if k * 8 <= n_eligible and ranked.numel() > 4 * _SAMPLE:
        # Few wanted among many (growing a sparse layer): a threshold read off a strided
        # sample keeps about 4k entries, and the exact k-th is taken among those. If the
        # sample misjudged and fewer than k pass, fall through to the full selection.
        stride = ranked.numel() // _SAMPLE
        sample = ranked[::stride][ok[::stride]]
        if sample.numel():
            rank = min(sample.numel(), -(-4 * k * sample.numel() // n_eligible))
            candidates = ok & (ranked <= sample.kthvalue(rank).values)
            if int(candidates.count_nonzero()) >= k:
                return ranked[candidates].kthvalue(k).values
    # Many eligible: ineligible entries get +inf so the k-th smallest of the whole tensor is an
    # eligible value (k <= n_eligible, so an ineligible +inf is never the k-th unless tied).
    inf = torch.tensor(float("inf"), dtype=ranked.dtype, device=ranked.device)
    return torch.where(ok, ranked, inf).kthvalue(k).values


def select_highest(score: torch.Tensor, eligible: torch.Tensor, k: int) -> torch.Tensor:
    """Boolean mask of exactly ``min(k, eligible.sum())`` eligible entries with the highest scores."""
    return select_lowest(-score, eligible, k)


def flatten(tensors: list[torch.Tensor]) -> torch.Tensor:
    """Several tensors as one flat tensor, to rank them together (global pruning)."""
    return tensors[0].reshape(-1) if len(tensors) == 1 else torch.cat([t.reshape(-1) for t in tensors])


def split_like(flat: torch.Tensor, like: list[torch.Tensor]) -> list[torch.Tensor]:
    """The inverse of `flatten`: views of ``flat`` with the shapes of ``like``."""
    return [part.view(t.shape) for part, t in zip(flat.split([t.numel() for t in like]), like)]


def set_legacy(weight: torch.Tensor, mask: torch.Tensor, q: int) -> torch.Tensor:
    """§2.2a: the layer-wise SET, bit for bit.

    Keeps W > tau+ (tau+ = h-th smallest positive) and W < tau- (tau- = h'-th *most negative*),
    h = min(ceil(q/2), #positives), h' = min(ceil(q/2), #negatives). It therefore removes all
    but h'-1 negative weights whatever the rate. The reference indexes an empty tensor when a
    side has no weights; that is reported as an error here.
    """
    w = weight.detach() * mask
    positives = w[w > 0].sort().values
    negatives = w[w < 0].sort().values  # ascending: most negative first (the reference's slip)
    if positives.numel() == 0 or negatives.numel() == 0:
        raise ValueError(
            "set_legacy: the reference SET fails on a layer with no positive or no negative "
            f"active weight ({positives.numel()} positive, {negatives.numel()} negative)"
        )
    half = math.ceil(q / 2)
    h, h_neg = min(half, positives.numel()), min(half, negatives.numel())
    # h = 0 indexes position -1 in the reference (the extreme value); reproduced.
    tau_pos = positives[h - 1]
    tau_neg = negatives[h_neg - 1]
    return ((w > tau_pos) & (w > 0)) | ((w < tau_neg) & (w < 0))

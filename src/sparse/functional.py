"""One-layer prune / grow, usable on their own and used by the `Sparsifier`.

    new_mask = prune("snip", W, G, M, rate=0.3)        # exactly ceil(0.3 * M.sum()) fewer
    new_mask = grow("gradient", W, G, new_mask, count=n_removed, exclude=M & ~new_mask)

Masks are boolean tensors of the weight's shape; nothing is modified in place.
``compat=True`` selects the reference implementation's exact behaviour (its scores, its
sort-based removal, its SET, its gradient-growth epsilon: `reference.py`) and Bernoulli
random growth.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from .criteria import (
    BOTH_ENDS,
    HIGHEST,
    LOWEST,
    SIGN_SPLIT,
    SIGN_SPLIT_LEGACY,
    Criterion,
    get_criterion,
)
from . import reference
from .growth import GrowthRule, get_growth
from .selection import select_highest, select_lowest
from ..registry import unknown

NORMALIZATIONS = ("none", "layer", "input", "output", "channel")
NORM_REDUCTIONS = ("sum", "max")
RESCALES = ("none", "dim0", "dim1", "total_norm")


def prune_count(rate: float, active: int) -> int:
    """q = ceil(rate * active): how many active weights an update removes."""
    return math.ceil(rate * active)


def _clean_score(crit, w: Tensor, g: Tensor | None, m: Tensor, **options) -> Tensor:
    return crit.score(w, g, m, **options)


def prune(
    criterion: str | Criterion,
    weight: Tensor,
    grad: Tensor | None,
    mask: Tensor,
    rate: float,
    *,
    compat: bool = False,
    count: int | None = None,
    normalization: str = "none",
    norm_reduction: str = "sum",
    **options,
) -> Tensor:
    """Return the mask after removing ceil(rate * active) active weights of one layer.

    ``count`` overrides the number removed. ``options`` go to the criterion (``gamma``,
    ``generator`` for random, ``running`` for running criteria, ``scope``).
    """
    crit = criterion if isinstance(criterion, Criterion) else get_criterion(criterion)
    if crit.needs_grad and grad is None:
        raise ValueError(f"criterion {crit.name!r} needs the weight's gradient; got grad=None")
    mask = mask.to(torch.bool)
    q = prune_count(rate, int(mask.sum())) if count is None else count
    score = (reference.score if compat else _clean_score)(
        crit, weight.detach(), None if grad is None else grad.detach(), mask, **options)
    kind = SIGN_SPLIT_LEGACY if (compat and crit.remove == SIGN_SPLIT) else crit.remove
    if kind in (SIGN_SPLIT, SIGN_SPLIT_LEGACY):
        if normalization != "none":
            raise ValueError(f"normalization: SET ranks signed weights; only 'none' is allowed, got {normalization!r}")
        return reference.set_legacy(weight, mask, q) if kind == SIGN_SPLIT_LEGACY else prune_set(weight, mask, q)
    score = normalize_scores(score, mask, normalization, norm_reduction, compat=compat)
    if compat:
        return reference.removal(crit.name, kind, score, weight, mask, q)
    if kind == LOWEST:
        return mask & ~select_lowest(score, mask, q)
    if kind == HIGHEST:
        return mask & ~select_highest(score, mask, q)
    if kind == BOTH_ENDS:
        low = select_lowest(score, mask, math.ceil(q / 2))
        high = select_highest(score, mask & ~low, q // 2)
        return mask & ~(low | high)
    raise AssertionError(kind)


def grow(
    rule: str | GrowthRule,
    weight: Tensor,
    grad: Tensor | None,
    mask: Tensor,
    count: int,
    *,
    momentum: Tensor | None = None,
    exclude: Tensor | None = None,
    generator: torch.Generator | None = None,
    compat: bool = False,
) -> Tensor:
    """Return ``mask`` with ``count`` inactive positions switched on by the growth ``rule``.

    Positions in ``exclude`` (typically those pruned in this update) are grown only when the
    other candidates run out, so the count stays exact. With ``compat=True``, ``random``
    growth is the reference's Bernoulli draw (the count is right only in expectation).
    """
    gr = rule if isinstance(rule, GrowthRule) else get_growth(rule)
    if compat and gr.name == "random":
        gr = get_growth("random_bernoulli")
    if gr.needs_grad and grad is None:
        raise ValueError(f"growth {gr.name!r} needs the weight's gradient; got grad=None")
    if gr.needs_momentum and momentum is None:
        raise ValueError(f"growth {gr.name!r} needs optimizer momentum; none is available yet")
    mask = mask.to(torch.bool)
    candidates = ~mask
    if count <= 0:
        return mask.clone()
    if compat and gr.name == "gradient":
        score = reference.gradient_growth_score(grad)
    else:
        score = gr.score(weight, grad, momentum, generator=generator)
    if gr.bernoulli:
        p = count / max(int(candidates.sum()), 1)
        return mask | (candidates & (score < p))
    select = reference.neuron_quotas if (compat and gr.name == "momentum_neuron") else gr.select
    if select is not None:
        preferred = candidates if exclude is None else candidates & ~exclude
        chosen = select(score, preferred, count)
        shortfall = 0 if compat else count - int(chosen.sum())
        if shortfall > 0:
            chosen |= select_highest(score, candidates & ~chosen, shortfall)
        return mask | chosen
    if exclude is None or not exclude.any():
        return mask | select_highest(score, candidates, count)
    preferred = candidates & ~exclude
    chosen = select_highest(score, preferred, count)
    shortfall = count - int(chosen.sum())
    if shortfall > 0:
        chosen |= select_highest(score, candidates & ~chosen, shortfall)
    return mask | chosen


def normalize_scores(
    score: Tensor, mask: Tensor, normalization: str, reduction: str = "sum", *, compat: bool = False
) -> Tensor:
    """Divide scores by their sum or max over the layer, or per input / output row or channel.

    ``input``: over dim 1 (each output neuron's incoming scores; 2-D only); ``output``: over
    dim 0 (2-D only); ``channel``: over all but dim 0 (per output filter; falls back to
    ``layer`` for tensors that are not 4-D). Only active entries count towards the divisor;
    a zero divisor leaves the scores unchanged (the reference divides by it).
    """
    if normalization == "none":
        return score
    if normalization not in NORMALIZATIONS:
        raise unknown("normalization", normalization, NORMALIZATIONS)
    if reduction not in NORM_REDUCTIONS:
        raise unknown("norm_reduction", reduction, NORM_REDUCTIONS)
    if normalization in ("input", "output") and score.dim() != 2:
        raise ValueError(f"normalization {normalization!r} needs a 2-D (linear) weight, got shape {tuple(score.shape)}")
    active = score * mask
    if normalization == "channel" and score.dim() == 4:
        dims = (1, 2, 3)
    elif normalization == "input":
        dims = (1,)
    elif normalization == "output":
        dims = (0,)
    else:
        dims = tuple(range(score.dim()))
    if reduction == "sum":
        divisor = active.sum(dim=dims, keepdim=True)
    else:
        divisor = active.amax(dim=dims, keepdim=True)
    if compat:
        return score / divisor
    return score / torch.where(divisor == 0, torch.ones_like(divisor), divisor)


@torch.no_grad()
def rescale_weight(weight: Tensor, old_mask: Tensor, new_mask: Tensor, mode: str, *, compat: bool = False) -> None:
    """Scale ``weight`` in place by rho = ||W * M_old|| / ||W * M_new|| after pruning.

    ``dim0``/``dim1`` reduce the L2 norms over that dim (per input column / output row of a
    linear weight), ``total_norm`` over the whole tensor. Where the new norm is 0 (a whole
    row pruned) rho is 1; the reference instead maps 0/0 to 0 and x/0 to the float maximum.
    """
    if mode == "none":
        return
    if mode not in RESCALES:
        raise unknown("rescale", mode, RESCALES)
    dims = {"dim0": (0,), "dim1": (1,), "total_norm": tuple(range(weight.dim()))}[mode]
    old = (weight * old_mask).norm(dim=dims, keepdim=True)
    new = (weight * new_mask).norm(dim=dims, keepdim=True)
    if compat:
        rho = torch.nan_to_num(old / new, nan=0.0)
    else:
        rho = torch.where(new == 0, torch.ones_like(new), old / new)
    weight.mul_(rho)


def prune_set(weight: Tensor, mask: Tensor, q: int) -> Tensor:
    """Correct SET on any (flattened or not) set of weights: remove the ceil(q/2) smallest
    non-negative and the floor(q/2) negatives closest to zero; return the kept mask."""
    pos = mask & (weight >= 0)
    neg = mask & (weight < 0)
    n_pos, n_neg = int(pos.sum()), int(neg.sum())
    q_pos = min(math.ceil(q / 2), n_pos)
    q_neg = min(q - q_pos, n_neg)
    q_pos = min(q - q_neg, n_pos)  # a shortfall of negatives is taken from the positives
    removed = select_lowest(weight, pos, q_pos) | select_highest(weight, neg, q_neg)
    return mask & ~removed


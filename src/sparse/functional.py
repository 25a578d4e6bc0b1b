"""The pruning and growth pipeline, over one layer or a list of tensors.

    new_mask = prune("snip", W, G, M, rate=0.3)        # exactly ceil(0.3 * M.sum()) fewer
    new_mask = grow("gradient", W, G, new_mask, count=n_removed, exclude=M & ~new_mask)
    new_masks = prune_tensors(criterion, weights, grads, masks, q, scope="global")

Pruning scores every tensor, normalises the scores, and removes the selected active weights:
layer-wise each tensor alone, globally all tensors ranked together. Masks are boolean tensors
of the weight's shape; nothing is modified in place. ``policy`` is the semantics: `CLEAN`
(below), or `reference.REFERENCE`, the paper's code's scores, removal, SET, growth and
divisions by zero, with the same methods.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Protocol

import torch
from torch import Tensor

from ..registry import unknown
from .criteria import BOTH_ENDS, HIGHEST, LOWEST, SIGN_SPLIT, SIGN_SPLIT_LEGACY, Criterion, get_criterion
from .density import sample_mask
from .growth import GrowthRule, get_growth
from .selection import flatten, select_highest, select_lowest, set_legacy, split_like

NORMALIZATIONS = ("none", "layer", "input", "output", "channel")
NORM_REDUCTIONS = ("sum", "max")
RESCALES = ("none", "dim0", "dim1", "total_norm")


def prune_count(rate: float, active: int) -> int:
    """q = ceil(rate * active): how many active weights an update removes."""
    return math.ceil(rate * active)


class Policy(Protocol):
    """The semantics a prune or grow follows: `CLEAN` (below, the default) or
    `reference.REFERENCE` (the paper's code), each answering these the same way."""

    update_on_last_step: bool

    def criterion(self, crit: Criterion) -> Criterion: ...
    def growth(self, rule: GrowthRule) -> GrowthRule: ...
    def init(self, method: str) -> str: ...
    def sample_mask(self, shape, density, *, generator=None, device=None) -> Tensor: ...
    def divide(self, score: Tensor, divisor: Tensor) -> Tensor: ...
    def rescale_factor(self, old: Tensor, new: Tensor) -> Tensor: ...
    def remove(self, crit, scores, weights, masks, eligible, q, scope) -> list[Tensor]: ...


class Clean:
    """The default semantics."""

    update_on_last_step = False  # it would leave the regrown weights untrained

    def criterion(self, crit: Criterion) -> Criterion:
        return crit

    def growth(self, rule: GrowthRule) -> GrowthRule:
        return rule

    def init(self, method: str) -> str:
        """The per-layer density rule that `init` names."""
        return method

    def sample_mask(self, shape, density, *, generator=None, device=None) -> Tensor:
        return sample_mask(shape, density, generator=generator, device=device)

    def divide(self, score: Tensor, divisor: Tensor) -> Tensor:
        """Score normalisation: a zero divisor leaves the scores unchanged."""
        return score / torch.where(divisor == 0, torch.ones_like(divisor), divisor)

    def rescale_factor(self, old: Tensor, new: Tensor) -> Tensor:
        """rho = old / new norm; 1 where the new norm is 0 (a whole row pruned)."""
        return torch.where(new == 0, torch.ones_like(new), old / new)

    def remove(self, crit, scores, weights, masks, eligible, q, scope) -> list[Tensor]:
        """The masks after removing exactly q of the ``eligible`` weights, all tensors ranked
        together (one tensor when layer-wise). SET ranks the signed weights (``scores``)."""
        score, ok = flatten(scores), flatten(eligible)
        if crit.remove == SIGN_SPLIT:
            removed = select_set(score, ok, q)
        elif crit.remove == SIGN_SPLIT_LEGACY:  # the `set_legacy` criterion: the reference's SET
            removed = ok & ~set_legacy(score, ok, q)
        elif crit.remove == LOWEST:
            removed = select_lowest(score, ok, q)
        elif crit.remove == HIGHEST:
            removed = select_highest(score, ok, q)
        elif crit.remove == BOTH_ENDS:
            low = select_lowest(score, ok, math.ceil(q / 2))
            removed = low | select_highest(score, ok & ~low, q // 2)
        else:
            raise AssertionError(crit.remove)
        return [m & ~r for m, r in zip(masks, split_like(removed, masks))]


CLEAN = Clean()


def prune_tensors(
    criterion: Criterion,
    weights: list[Tensor],
    grads: list[Tensor | None],
    masks: list[Tensor],
    counts: list[int] | int,
    *,
    scope: str = "layer",
    eligible: list[Tensor] | None = None,
    normalization: str = "none",
    norm_reduction: str = "sum",
    running: list[Tensor | None] | None = None,
    hg: Sequence[Tensor | None] | None = None,
    policy: Policy = CLEAN,
    **options,
) -> list[Tensor]:
    """The masks after pruning: ``counts[i]`` active weights of each tensor alone (scope
    "layer"), or ``counts`` of all tensors ranked together ("global").

    Only ``eligible`` positions (default: every active one) are removed. ``running`` and
    ``hg`` are per-tensor criterion inputs (running scores, GraSP's Hg); ``options`` go to
    every score (``gamma``, ``generator`` for random).
    """
    crit = policy.criterion(criterion)
    if crit.needs_grad and any(g is None for g in grads):
        raise ValueError(f"criterion {crit.name!r} needs the weight's gradient; got grad=None")
    signed = crit.remove in (SIGN_SPLIT, SIGN_SPLIT_LEGACY)
    if signed and normalization != "none":
        raise ValueError(f"normalization: SET ranks signed weights; only 'none' is allowed, got {normalization!r}")
    n = len(weights)
    masks = [m.to(torch.bool) for m in masks]
    eligible = masks if eligible is None else eligible
    running, hg = running or [None] * n, hg or [None] * n
    scores = []
    for i, (w, g, m) in enumerate(zip(weights, grads, masks)):
        w, g = w.detach(), None if g is None else g.detach()
        if signed:
            scores.append(w)
        else:
            s = crit.score(w, g, m, scope=scope, running=running[i], hg=hg[i], **options)
            scores.append(normalize_scores(s, m, normalization, norm_reduction, policy=policy))
    if scope == "global":
        return policy.remove(crit, scores, weights, masks, eligible, counts, scope)
    if isinstance(counts, int):
        raise ValueError(f"counts: scope 'layer' needs one count per tensor, got {counts}")
    return [
        policy.remove(crit, [s], [w], [m], [e], q, scope)[0]
        for s, w, m, e, q in zip(scores, weights, masks, eligible, counts)
    ]


def prune(
    criterion: str | Criterion,
    weight: Tensor,
    grad: Tensor | None,
    mask: Tensor,
    rate: float,
    *,
    count: int | None = None,
    running: Tensor | None = None,
    hg: Tensor | None = None,
    **options,
) -> Tensor:
    """Return the mask after removing ceil(rate * active) active weights of one layer.

    ``count`` overrides the number removed. ``options`` go to `prune_tensors`
    (``normalization``, ``policy``) and the criterion (``gamma``, ``generator`` for random).
    """
    crit = criterion if isinstance(criterion, Criterion) else get_criterion(criterion)
    q = prune_count(rate, int(mask.sum())) if count is None else count
    return prune_tensors(crit, [weight], [grad], [mask], [q], running=[running], hg=[hg], **options)[0]


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
    policy: Policy = CLEAN,
) -> Tensor:
    """Return ``mask`` with ``count`` inactive positions switched on by the growth ``rule``.

    Positions in ``exclude`` (typically those pruned in this update) are grown only when the
    other candidates run out, so the count stays exact (for rules with ``exact``; a
    Bernoulli rule gets the count right only in expectation).
    """
    gr = policy.growth(rule if isinstance(rule, GrowthRule) else get_growth(rule))
    if gr.needs_grad and grad is None:
        raise ValueError(f"growth {gr.name!r} needs the weight's gradient; got grad=None")
    if gr.needs_momentum and momentum is None:
        raise ValueError(f"growth {gr.name!r} needs optimizer momentum; none is available yet")
    mask = mask.to(torch.bool)
    candidates = ~mask
    if count <= 0:
        return mask.clone()
    score = gr.score(weight, grad, momentum, generator=generator)
    if gr.bernoulli:
        p = count / max(int(candidates.sum()), 1)
        return mask | (candidates & (score < p))
    preferred = candidates if exclude is None else candidates & ~exclude
    chosen = (gr.select or select_highest)(score, preferred, count)
    shortfall = count - int(chosen.sum()) if gr.exact else 0
    if shortfall > 0:
        chosen |= select_highest(score, candidates & ~chosen, shortfall)
    return mask | chosen


def normalize_scores(
    score: Tensor, mask: Tensor, normalization: str, reduction: str = "sum", *, policy: Policy = CLEAN
) -> Tensor:
    """Divide scores by their sum or max over the layer, or per input / output row or channel.

    ``input``: over dim 1 (each output neuron's incoming scores; 2-D only); ``output``: over
    dim 0 (2-D only); ``channel``: over all but dim 0 (per output filter; falls back to
    ``layer`` for tensors that are not 4-D). Only active entries count towards the divisor;
    ``policy.divide`` divides (a zero divisor leaves the scores unchanged).
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
    dims: tuple[int, ...]
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
    return policy.divide(score, divisor)


@torch.no_grad()
def rescale_weight(weight: Tensor, old_mask: Tensor, new_mask: Tensor, mode: str, *, policy: Policy = CLEAN) -> None:
    """Scale ``weight`` in place by rho = ||W * M_old|| / ||W * M_new|| after pruning.

    ``dim0``/``dim1`` reduce the L2 norms over that dim (per input column / output row of a
    linear weight), ``total_norm`` over the whole tensor. Where the new norm is 0 (a whole
    row pruned) rho is 1 (``policy.rescale_factor``).
    """
    if mode == "none":
        return
    if mode not in RESCALES:
        raise unknown("rescale", mode, RESCALES)
    dims = {"dim0": (0,), "dim1": (1,), "total_norm": tuple(range(weight.dim()))}[mode]
    # (vector_norm: Tensor.norm refuses more than two dims, i.e. a conv weight's total norm)
    old = torch.linalg.vector_norm(weight * old_mask, dim=dims, keepdim=True)
    new = torch.linalg.vector_norm(weight * new_mask, dim=dims, keepdim=True)
    weight.mul_(policy.rescale_factor(old, new))


def select_set(weight: Tensor, eligible: Tensor, q: int) -> Tensor:
    """SET's removal on any (flattened or not) set of weights: the ceil(q/2) smallest
    non-negative and the floor(q/2) negatives closest to zero."""
    pos = eligible & (weight >= 0)
    neg = eligible & (weight < 0)
    n_pos, n_neg = int(pos.sum()), int(neg.sum())
    q_pos = min(math.ceil(q / 2), n_pos)
    q_neg = min(q - q_pos, n_neg)
    q_pos = min(q - q_neg, n_pos)  # a shortfall of negatives is taken from the positives
    return select_lowest(weight, pos, q_pos) | select_highest(weight, neg, q_neg)

"""Growth rules: which inactive positions become active after pruning.

A rule gives a score per position; `functional.grow` switches on the highest-scoring
candidates, exactly as many as were removed (or, for a rule with its own `select`, the
positions that picks). `random_bernoulli` is the reference's rule:
each candidate is switched on independently, so only the expected count is right.

Adding a rule is one function plus its `@register_growth(...)` line.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from ..registry import Registry


@dataclass(frozen=True)
class GrowthRule:
    name: str
    score: Callable[..., Tensor]
    needs_grad: bool = False
    needs_momentum: bool = False
    bernoulli: bool = False  # grow each candidate independently instead of exactly `count`
    # select(score, candidates, count) -> positions to grow, for rules that do not
    # simply take the top `count` candidates.
    select: Callable[..., Tensor] | None = None
    exact: bool = True  # top up what `select` picks to exactly `count`


GROWTH_RULES = Registry("growth rule")


def register_growth(name: str, **flags):
    return GROWTH_RULES.register(name, wrap=lambda fn: GrowthRule(name, fn, **flags))


get_growth = GROWTH_RULES.get


@register_growth("random")
def random(weight, grad, momentum, *, generator=None, **_):
    """Uniform: i.i.d. U(0,1) scores, so the top `count` candidates are a uniform sample."""
    return torch.rand(weight.shape, generator=generator, device=weight.device)


@register_growth("random_bernoulli", bernoulli=True)
def random_bernoulli(weight, grad, momentum, *, generator=None, **_):
    """The reference's random growth: each candidate on with p = count / #candidates."""
    return torch.rand(weight.shape, generator=generator, device=weight.device)


@register_growth("gradient", needs_grad=True)
def gradient(weight, grad, momentum, **_):
    """RigL: the candidates with the largest |G| (G the dense minibatch gradient)."""
    return grad.abs()


@register_growth("momentum", needs_momentum=True)
def momentum(weight, grad, momentum, **_):
    """Sparse momentum: the candidates with the largest |optimizer momentum| (SGD buffer,
    or m / (sqrt(v) + 1e-8) for Adam; see `Sparsifier._momentum`)."""
    return momentum.abs()


def _neuron_quotas(score: Tensor, candidates: Tensor, count: int) -> Tensor:
    """Per output neuron (dim 0): the top-|momentum| candidates, ``count`` shared between
    neurons in proportion to their mean |momentum| (over all their weights).

    Quotas floor(count * share), capped by each neuron's free positions, and what is left
    over goes one by one to the largest remainders, so exactly ``count`` grow (when there is
    room). The reference's rule is `reference.neuron_quotas`.
    """
    rows = score.reshape(score.shape[0], -1)
    free = candidates.reshape(rows.shape)
    share = rows.mean(dim=1)
    total = share.sum()
    if total > 0:
        share = share / total
    else:  # no momentum anywhere yet: equal shares
        share = torch.full_like(share, 1 / len(share))
    available = free.sum(dim=1)
    exact = share.double() * count
    quota = torch.minimum(exact.floor().long(), available)
    left = count - int(quota.sum())
    room = (available - quota).tolist()
    # One more each to the largest remainders; then, if neurons were capped, fill the others
    # in order of their share.
    for order in (exact - exact.floor(), share):
        for i in torch.argsort(order, descending=True, stable=True).tolist():
            if left == 0:
                break
            extra = min(left, room[i], 1 if order is not share else left)
            quota[i] += extra
            room[i] -= extra
            left -= extra
    ranked = torch.where(free, rows, torch.full_like(rows, -float("inf")))
    order = ranked.argsort(dim=1, descending=True, stable=True)
    rank = torch.empty_like(order).scatter_(1, order, torch.arange(rows.shape[1], device=rows.device).expand_as(order))
    return (free & (rank < quota.unsqueeze(1))).view(score.shape)


@register_growth("momentum_neuron", needs_momentum=True, select=_neuron_quotas)
def momentum_neuron(weight, grad, momentum, **_):
    """Sparse momentum's neuron-wise growth: each output neuron gets a share of the regrowth
    proportional to its mean |momentum|, filled with its largest-|momentum| candidates."""
    return momentum.abs()

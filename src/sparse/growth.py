"""Growth rules: which inactive positions become active after pruning.

A rule gives a score per position; `functional.grow` switches on the highest-scoring
candidates, exactly as many as were removed. `random_bernoulli` is the reference's rule:
each candidate is switched on independently, so only the expected count is right.

Adding a rule is one function plus its `@register_growth(...)` line.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import Tensor


@dataclass(frozen=True)
class GrowthRule:
    name: str
    score: Callable[..., Tensor]
    needs_grad: bool = False
    needs_momentum: bool = False
    bernoulli: bool = False  # grow each candidate independently instead of exactly `count`


GROWTH_RULES: dict[str, GrowthRule] = {}


def register_growth(name: str, **flags):
    def wrap(fn):
        GROWTH_RULES[name] = GrowthRule(name, fn, **flags)
        return fn

    return wrap


def get_growth(name: str) -> GrowthRule:
    if name not in GROWTH_RULES:
        raise ValueError(f"growth: unknown name {name!r}; choose one of {sorted(GROWTH_RULES)}")
    return GROWTH_RULES[name]


@register_growth("random")
def random(weight, grad, momentum, *, generator=None):
    """Uniform: i.i.d. U(0,1) scores, so the top `count` candidates are a uniform sample."""
    return torch.rand(weight.shape, generator=generator, device=weight.device)


@register_growth("random_bernoulli", bernoulli=True)
def random_bernoulli(weight, grad, momentum, *, generator=None):
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

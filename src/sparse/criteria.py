"""Pruning criteria: a registry of small score functions of (weights W, gradient G, mask M).

Each criterion returns a score per entry and declares which end of the ranking is removed.
Only *active* entries (M = 1) are ever ranked in the default (clean) mode, so the scores
need no masking and no offsets; the exact-count selection lives in `selection.py`.

The reference implementation's score tensors (its epsilons, +1 offsets and masking by M)
are in `reference.py` (its `REFERENCE` policy).

Adding a criterion is one function plus its `@register_criterion(...)` line.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from ..registry import Registry

# Which entries a criterion removes.
LOWEST = "lowest"  # the q lowest scores
HIGHEST = "highest"  # the q highest scores
BOTH_ENDS = "both_ends"  # half from each end of the ranking
SIGN_SPLIT = "sign_split"  # SET: smallest positives and negatives closest to zero
SIGN_SPLIT_LEGACY = "sign_split_legacy"  # the reference's SET (PAPER_SPEC §2.2a)


@dataclass(frozen=True)
class Criterion:
    name: str
    score: Callable[..., Tensor]
    remove: str
    needs_grad: bool
    # Running criteria average `sample(W, G, M)` over the steps between updates.
    sample: Callable[..., Tensor] | None = None
    # Scored on a batch of data (GraSP): the caller passes `hg`, see `grasp.py`.
    needs_batch: bool = False

    @property
    def running(self) -> bool:
        return self.sample is not None


CRITERIA = Registry("criterion")


def register_criterion(name: str, *, remove: str = LOWEST, needs_grad: bool, sample=None, needs_batch=False):
    return CRITERIA.register(name, wrap=lambda fn: Criterion(name, fn, remove, needs_grad, sample, needs_batch))


get_criterion = CRITERIA.get


def _abs_w_abs_g(w: Tensor, g: Tensor, m: Tensor) -> Tensor:
    return w.abs() * g.abs()


def _abs_w(w: Tensor, g: Tensor | None, m: Tensor) -> Tensor:
    return w.abs()


@register_criterion("magnitude", needs_grad=False)
def magnitude(w, g, m, **_):
    """S = |W|; remove the lowest. (Unmasked in the reference too: inactive W is 0.)"""
    return w.abs()


@register_criterion("set", remove=SIGN_SPLIT, needs_grad=False)
def set_(w, g, m, **_):
    """SET: remove the ceil(q/2) smallest non-negative weights and the floor(q/2) negative
    weights closest to zero (a shortfall on one side is taken from the other), so exactly q
    go. The reference policy applies its own rule instead (= `set_legacy`)."""
    return w


@register_criterion("set_legacy", remove=SIGN_SPLIT_LEGACY, needs_grad=False)
def set_legacy(w, g, m, **_):
    """The reference's SET (PAPER_SPEC §2.2a): thresholds tau+ = h-th smallest positive and
    tau- = h-th *most negative* value, h = min(ceil(q/2), side size); keeps W > tau+ and
    W < tau-. It therefore removes all but h-1 negative weights whatever the rate."""
    return w


@register_criterion("mest", needs_grad=True)
def mest(w, g, m, *, gamma=1.0, **_):
    """MEST: S = |W| + gamma * |G|; remove the lowest."""
    return w.abs() + gamma * g.abs()


@register_criterion("snip", needs_grad=True)
def snip(w, g, m, **_):
    """SNIP: S = |W * G|; remove the lowest."""
    return (w * g).abs()


@register_criterion("sensitivity", needs_grad=True)
def sensitivity(w, g, m, **_):
    """Sensitivity: S = |G| / (|W| + 1e-8); remove the lowest."""
    return g.abs() / (w.abs() + 1e-8)


@register_criterion("reciprocal_sensitivity", needs_grad=True)
def reciprocal_sensitivity(w, g, m, **_):
    """Reciprocal sensitivity: S = |W| / (|G| + 1e-8); remove the lowest."""
    return w.abs() / (g.abs() + 1e-8)


@register_criterion("random", needs_grad=False)
def random(w, g, m, *, generator=None, **_):
    """Random: S ~ U(0, 1) i.i.d.; removing the lowest q removes q uniformly drawn active
    weights."""
    return torch.rand(w.shape, generator=generator, device=w.device, dtype=w.dtype)


@register_criterion("grad_step", needs_grad=True)
def grad_step(w, g, m, *, gamma=1.0, **_):
    """Gradient step: S = |W - gamma * G| (the magnitude after a step of size gamma); remove
    the lowest."""
    return (w - gamma * g).abs()


@register_criterion("taylor_fo", needs_grad=True)
def taylor_fo(w, g, m, **_):
    """First-order Taylor: S = (W * G)^2; remove the lowest."""
    return (w * g) ** 2


@register_criterion("running_magnitude", needs_grad=False, sample=_abs_w)
def running_magnitude(w, g, m, *, running=None, **_):
    """Running magnitude: S = EMA_beta of |W| over the steps since the last update
    (S <- beta*S + (1-beta)*|W|, started at the first sample); remove the lowest."""
    return w.abs() if running is None else running


@register_criterion("running_snip", needs_grad=True, sample=_abs_w_abs_g)
def running_snip(w, g, m, *, running=None, **_):
    """Running SNIP: S = EMA_beta of |W| * |G| over the steps since the last update;
    remove the lowest."""
    return _abs_w_abs_g(w, g, m) if running is None else running


@register_criterion("snip_plus", remove=HIGHEST, needs_grad=True)
def snip_plus(w, g, m, **_):
    """SNIP+: S = W * G (signed; a positive value means a gradient step shrinks |W|);
    remove the highest."""
    return w * g


@register_criterion("snip_half", remove=BOTH_ENDS, needs_grad=True)
def snip_half(w, g, m, **_):
    """SNIP-half: S = |W * G|; remove ceil(q/2) lowest and floor(q/2) highest. The reference
    removes floor(q/2) from each end (and the whole layer when floor(q/2) = 0)."""
    return (w * g).abs()


@register_criterion("grasp", remove=HIGHEST, needs_grad=False, needs_batch=True)
def grasp(w, g, m, *, hg=None, **_):
    """GraSP: S = -W * (H g), H g the Hessian-gradient product of the temperature-softened
    loss on one batch (`grasp.hessian_gradient`); remove the highest (the weights whose
    removal least reduces the gradient flow)."""
    if hg is None:
        raise ValueError("criterion 'grasp' needs the Hessian-gradient product hg (see src.sparse.grasp)")
    return -w * hg

"""The paper's reference implementation's semantics (`sparsity.compat=true`), in one place.

`REFERENCE` is a policy with the methods of `functional.Clean`; the `Sparsifier` picks it once
when `compat` is set and hands it to the same pipeline (`functional.prune_tensors`, `grow`,
`normalize_scores`, `rescale_weight`). Each quirk names the PAPER_SPEC section it comes from:
its score tensors (epsilons, +1 offsets, masking by M: the reference ranks whole tensors, so
these decide how inactive entries and ties are ordered), its sort-based removal and global
threshold, its SETs, its growth rules, its divisions by zero, ER as ERK, Bernoulli mask
sampling, and a topology update allowed on the very last step.

The reference's other settings (no exclusion of just-pruned weights, value and optimizer
state kept on regrowth, criterion-dependent update order: `STEP_FIRST`) are plain config
fields, set together by the `compat=reference` preset (conf/compat/reference.yaml, §10).
"""

from __future__ import annotations

import math
from dataclasses import replace

import torch
from torch import Tensor

from ..registry import Registry
from .criteria import BOTH_ENDS, HIGHEST, LOWEST, SIGN_SPLIT, SIGN_SPLIT_LEGACY, Criterion, _abs_w_abs_g
from .growth import GrowthRule, get_growth
from .selection import flatten, set_legacy, split_like

# PAPER_SPEC §1.2: the reference prunes these criteria after the optimizer step and all
# others before it; `update_order: reference` reproduces that.
STEP_FIRST = frozenset({"magnitude", "set", "set_legacy", "random", "running_magnitude"})

# PAPER_SPEC §2 (layer-wise) and §2.6 (global): the reference's score tensors, where they
# differ from the clean ones. scope: "layer" | "global".
SCORES = Registry("reference score")


class Reference:
    """The paper's code's semantics, method for method in place of `functional.Clean`'s."""

    update_on_last_step = True  # §5.1: an update whenever step % frequency == 0, the last step too

    def criterion(self, crit: Criterion) -> Criterion:
        """§2: the reference's score tensor for ``crit`` (the clean one where they agree)."""
        return replace(crit, score=SCORES[crit.name]) if crit.name in SCORES else crit

    def growth(self, rule: GrowthRule) -> GrowthRule:
        """§3: random growth is a Bernoulli draw, gradient growth has an epsilon, and
        neuron-wise momentum growth has its quotas (`neuron_quotas`), not topped up."""
        if rule.name == "random":
            return get_growth("random_bernoulli")
        if rule.name == "gradient":
            return replace(rule, score=gradient_growth_score)
        if rule.name == "momentum_neuron":
            return replace(rule, select=neuron_quotas, exact=False)
        return rule

    def init(self, method: str) -> str:
        """§4.2: the reference's ER is ERK (kernel dims included)."""
        return "erk" if method == "er" else method

    def sample_mask(self, shape, density, *, generator=None, device=None) -> Tensor:
        """§4.2: each position is active independently with probability ``density`` (Bernoulli)."""
        return (torch.rand(math.prod(shape), generator=generator, device=device) < density).view(*shape)

    def divide(self, score: Tensor, divisor: Tensor) -> Tensor:
        """§2.7: scores are divided by their sum or max, zero or not (0/0 is NaN)."""
        return score / divisor

    def rescale_factor(self, old: Tensor, new: Tensor) -> Tensor:
        """§2.8: rho = old / new with 0/0 mapped to 0 and x/0 to the float maximum."""
        return torch.nan_to_num(old / new, nan=0.0)

    def remove(self, crit, scores, weights, masks, eligible, q, scope) -> list[Tensor]:
        """Layer-wise: §1.4 sort-based removal (`removal`) or §2.2a SET (`set_legacy`).
        Globally: §2.6 threshold (`global_removal`) or §2.2c SET (`global_set`). The
        reference knows no eligibility: every tensor is ranked whole."""
        signed = crit.remove in (SIGN_SPLIT, SIGN_SPLIT_LEGACY)
        if scope == "layer":
            (s,), (w,), (m,) = scores, weights, masks
            return [set_legacy(w, m, q) if signed else removal(crit, s, w, m, q)]
        if signed:
            return split_like(global_set(flatten(scores), flatten(masks), q), masks)  # scores: W
        return global_removal([-s if crit.remove == HIGHEST else s for s in scores], masks, q)


REFERENCE = Reference()


@SCORES.register("mest")
def mest(w, g, m, *, gamma=1.0, **_):
    """§2.1: (|W| + gamma |G|) * M."""
    return (w.abs() + gamma * g.abs()) * m


@SCORES.register("snip")
def snip(w, g, m, *, scope="layer", **_):
    """§2.1 / §2.6: (|W G| + 1e-5) * M layer-wise, (|W G| + 1e-8) * M globally."""
    return ((w * g).abs() + (1e-5 if scope == "layer" else 1e-8)) * m


@SCORES.register("sensitivity")
def sensitivity(w, g, m, *, scope="layer", **_):
    """§2.1 / §2.6: (|G| / (|W| + 1e-8) + 1) * M layer-wise; unmasked without the +1
    globally (inactive entries then score |G| * 1e8 and are switched on)."""
    s = g.abs() / (w.abs() + 1e-8)
    return (s + 1) * m if scope == "layer" else s


@SCORES.register("reciprocal_sensitivity")
def reciprocal_sensitivity(w, g, m, *, scope="layer", **_):
    """§2.1 / §2.6: (|W| / (|G| + 1e-8) + 1) * M layer-wise; unmasked without the +1 globally."""
    s = w.abs() / (g.abs() + 1e-8)
    return (s + 1) * m if scope == "layer" else s


@SCORES.register("random")
def random(w, g, m, *, generator=None, **_):
    """§2.1: (randperm(n) + 1) * M, a random rank with inactive entries at 0."""
    perm = torch.randperm(w.numel(), generator=generator, device=w.device)
    return (perm.view(w.shape).to(w.dtype) + 1) * m


@SCORES.register("grad_step")
def grad_step(w, g, m, *, gamma=1.0, scope="layer", **_):
    """§2.1 / §2.6: |W - G| * M layer-wise (gamma ignored), |W - gamma G| * M globally."""
    return (w - (gamma if scope == "global" else 1.0) * g).abs() * m


@SCORES.register("taylor_fo")
def taylor_fo(w, g, m, **_):
    """§2.1: (W G)^2 * M."""
    return (w * g) ** 2 * m


@SCORES.register("running_magnitude")
def running_magnitude(w, g, m, *, running=None, **_):
    """§2.4: the EMA of |W|, times M."""
    return (w.abs() if running is None else running) * m


@SCORES.register("running_snip")
def running_snip(w, g, m, *, running=None, **_):
    """§2.4: the EMA of |W| |G|, times M."""
    return (_abs_w_abs_g(w, g, m) if running is None else running) * m


@SCORES.register("snip_half")
def snip_half(w, g, m, **_):
    """§2.1: |W G| * M."""
    return (w * g).abs() * m


def gradient_growth_score(weight: Tensor, grad: Tensor, momentum: Tensor | None, **_) -> Tensor:
    """§3: RigL ranks |G| + 1e-6, which merges gradients below float resolution at 1e-6."""
    return grad.abs() + 1e-6


def neuron_quotas(score: Tensor, candidates: Tensor, count: int) -> Tensor:
    """§3 (`momentum_neuron_growth`): per output neuron, a quota floor(count * share) by its
    mean |momentum| (capped by its free positions); a neuron whose quota is below 10, or
    whose quota-th largest candidate score is 0, grows nothing, and the others grow the
    candidates strictly above that score (quota - 1 of them, without ties)."""
    rows = score.reshape(score.shape[0], -1)
    free = candidates.reshape(rows.shape)
    share = rows.mean(dim=1)
    share = share / share.sum()
    available = free.sum(dim=1)
    quota = torch.tensor([math.floor(f * count) for f in share.tolist()], device=score.device)
    quota = torch.minimum(quota, available)
    masked = rows * free
    ascending = masked.sort(dim=1).values
    # the reference reads y[-quota], i.e. y[0] when the quota is 0
    threshold = ascending.gather(1, ((rows.shape[1] - quota) % rows.shape[1]).unsqueeze(1))
    grows = (threshold.squeeze(1) != 0) & (quota >= 10)
    return (grows.unsqueeze(1) & (masked > threshold)).view(score.shape)


def removal(crit: Criterion, score: Tensor, weight: Tensor, mask: Tensor, q: int) -> Tensor:
    """§1.4 / §10: the sort-based removal: zero the k = z + q first entries of the whole
    tensor's ranking (z inactive), so ties with inactive entries can remove more than q
    active weights. Ties are ordered by index here (the reference's sort is unstable)."""
    if q == 0 and crit.name in ("magnitude", "running_magnitude"):
        return weight.detach() != 0  # the reference's early exit
    flat = score.reshape(-1)
    z = mask.numel() - int(mask.sum())
    new = mask.clone().reshape(-1)
    kind = crit.remove
    if kind == LOWEST:
        order = torch.sort(flat, stable=True).indices
        new[order[: z + q]] = False
    elif kind == HIGHEST:
        inf = torch.full_like(flat, float("inf"))
        order = torch.sort(torch.where(mask.reshape(-1), flat, inf), descending=True, stable=True).indices
        new[order[: z + q]] = False
    elif kind == BOTH_ENDS:
        order = torch.sort(flat, stable=True).indices
        half = q // 2
        new[order[: z + half]] = False
        new[order[-half:]] = False  # half = 0 selects everything: the reference's slip, kept
    else:
        raise AssertionError(kind)
    return new.view(mask.shape)


def global_removal(scores: list[Tensor], masks: list[Tensor], q: int) -> list[Tensor]:
    """§2.6: global pruning keeps S > tau, tau the K-th smallest of all scores (K = Z + Q)."""
    flat = flatten(scores)
    k = sum(m.numel() for m in masks) - int(sum(m.count_nonzero() for m in masks)) + q
    tau = flat.kthvalue(k).values if k > 0 else flat.min() - 1
    return [s > tau for s in scores]


def global_set(weights: Tensor, flat_mask: Tensor, q: int) -> Tensor:
    """§2.2c: the global SET, correct (descending) on the negative side: h = ceil(Q/2) on each."""
    w = weights * flat_mask
    pos, neg = w[w > 0].sort().values, w[w < 0].sort(descending=True).values
    h = math.ceil(q / 2)
    tau_pos = pos[min(h, pos.numel()) - 1] if pos.numel() else 0.0
    tau_neg = neg[min(h, neg.numel()) - 1] if neg.numel() else 0.0
    return ((w > tau_pos) & (w > 0)) | ((w < tau_neg) & (w < 0))

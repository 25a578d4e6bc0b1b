"""Initial per-layer densities (ERK, ER, uniform) and mask sampling.

ERK (Evci et al. 2020) gives layer l the raw density pi_l = (sum(shape) / prod(shape))^p and
one global factor eps chosen so that sum_l d_l * n_l = d * sum_l n_l; layers whose density
would exceed 1 are made dense and eps is re-solved (PAPER_SPEC §4.2).
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence

import torch
from torch import nn

from ..registry import unknown

INITS = ("erk", "er", "uniform")


def layer_densities(
    shapes: Sequence[Sequence[int]],
    density: float,
    method: str = "erk",
    *,
    power_scale: float = 1.0,
) -> list[float]:
    """Per-layer densities whose parameter-weighted mean is ``density``.

    ``erk`` uses every dim (kernel dims included); ``er`` only the first two (out, in), the
    Erdős–Rényi rule of SET (the reference's ``er`` is ``erk``: `reference.Reference.init`).
    ``uniform`` gives every layer ``density``.
    """
    if method not in INITS:
        raise unknown("init", method, INITS)
    if not 0 < density <= 1:
        raise ValueError(f"density: must be in (0, 1], got {density}")
    if method == "uniform" or density == 1:
        return [float(density)] * len(shapes)
    numels = [math.prod(s) for s in shapes]
    dims = [s if method == "erk" else s[:2] for s in shapes]
    raw = [(sum(d) / math.prod(d)) ** power_scale for d in dims]
    dense: set[int] = set()
    while True:
        budget = sum(density * n for i, n in enumerate(numels) if i not in dense) - sum(
            (1 - density) * n for i, n in enumerate(numels) if i in dense
        )
        weight = sum(raw[i] * n for i, n in enumerate(numels) if i not in dense)
        eps = budget / weight
        largest = max(raw[i] for i in range(len(raw)) if i not in dense)
        if eps * largest <= 1:
            break
        dense |= {i for i in range(len(raw)) if i not in dense and raw[i] == largest}
        if len(dense) == len(raw):  # density so high that every layer is dense
            break
    return [1.0 if i in dense else eps * raw[i] for i in range(len(raw))]


def sample_mask(
    shape: Sequence[int],
    density: float,
    *,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Boolean mask with exactly round(density * n) positions on, uniformly at random (the
    reference's Bernoulli draw is `reference.Reference.sample_mask`)."""
    n = math.prod(shape)
    noise = torch.rand(n, generator=generator, device=device)
    k = round(density * n)
    mask = torch.zeros(n, dtype=torch.bool, device=device)
    if k > 0:
        mask[noise.topk(k).indices] = True
    return mask.view(*shape)


MASKABLE = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)


def masked_parameter_names(model: nn.Module, include=(), exclude=()) -> list[str]:
    """Names of the parameters to mask: Conv/Linear weights, or those matching ``include``."""
    if include:
        names = [n for n, p in model.named_parameters() if any(re.search(r, n) for r in include)]
    else:
        names = [
            f"{m_name}.weight" if m_name else "weight" for m_name, m in model.named_modules() if isinstance(m, MASKABLE)
        ]
    return [n for n in names if not any(re.search(r, n) for r in exclude)]

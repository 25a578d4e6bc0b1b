"""The Hessian-gradient product that GraSP scores with (Wang et al. 2020; PAPER_SPEC §2.5).

    hg = hessian_gradient(model, names, (x, y), temperature=200)   # one tensor per name
    score = -W * hg          # GraSP removes the highest scores

With g = dL/dW of the loss L = CE(f(x) / T, y) on one batch, Hg is the gradient of
z = sum_l <g_l, dL/dW_l> (g held constant). The softened logits (T = 200 by default) make the
loss nearly uniform, so Hg describes how removing a weight changes the gradient flow.
It is computed on a copy of the model, so batch-norm statistics and the weights' `.grad`
of the run are untouched.
"""

from __future__ import annotations

import copy

import torch
from torch import Tensor, nn


def hessian_gradient(
    model: nn.Module, names: list[str], batch: tuple[Tensor, Tensor], temperature: float = 200.0
) -> list[Tensor]:
    """H g for the parameters ``names`` of ``model`` on one ``(inputs, targets)`` batch."""
    net = copy.deepcopy(model)
    params = dict(net.named_parameters())
    weights = [params[n] for n in names]
    inputs, targets = batch
    with torch.enable_grad():
        out = net(inputs)
        if out.dim() != 2 or out.shape[1] < 2:
            raise ValueError(
                "criterion 'grasp': needs a multiclass model (logits of shape [batch, classes >= 2]), "
                f"got output shape {tuple(out.shape)}"
            )
        g = torch.autograd.grad(nn.functional.cross_entropy(out / temperature, targets), weights)
        grad_f = torch.autograd.grad(
            nn.functional.cross_entropy(net(inputs) / temperature, targets), weights, create_graph=True
        )
        z: Tensor | int = 0
        for a, b in zip(g, grad_f):
            z += (a * b).sum()
        assert isinstance(z, Tensor)  # weights is not empty
        hg = torch.autograd.grad(z, weights)
    return [h.detach() for h in hg]

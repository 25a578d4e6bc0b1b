"""The optimizer and its learning-rate schedule."""

from __future__ import annotations

import math

import torch
from torch import nn


def make_optimizer(model: nn.Module, cfg) -> torch.optim.Optimizer:
    """SGD or Adam; with `decay_bias_and_norm=False`, biases and norm parameters (<= 1-D)
    get no weight decay."""
    params = [p for p in model.parameters() if p.requires_grad]
    if cfg.decay_bias_and_norm:
        groups = [{"params": params, "weight_decay": cfg.weight_decay}]
    else:
        groups = [
            {"params": [p for p in params if p.dim() > 1], "weight_decay": cfg.weight_decay},
            {"params": [p for p in params if p.dim() <= 1], "weight_decay": 0.0},
        ]
    if cfg.name == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov)
    return torch.optim.Adam(groups, lr=cfg.lr)


def learning_rate(cfg, epoch: int, step: int, epochs: int, steps_per_epoch: int) -> float:
    """LR at optimizer step ``step`` (0-based, global) of epoch ``epoch`` (0-based).

    Warm-up: lr * (e + 1) / (w + 1) for the first w epochs. ``multistep``: x lr_decay at each
    milestone epoch floor(m * epochs) (the paper's 50 % / 75 %); ``cosine``: per step to 0.
    """
    if epoch < cfg.warmup_epochs:
        return cfg.lr * (epoch + 1) / (cfg.warmup_epochs + 1)
    if cfg.lr_schedule == "multistep":
        boundaries = [math.floor(m * epochs) for m in cfg.milestones]
        passed = sum(0 < b <= epoch for b in boundaries)  # a milestone at epoch 0 would skip the base lr
        return cfg.lr * cfg.lr_decay**passed
    if cfg.lr_schedule == "cosine":
        start = cfg.warmup_epochs * steps_per_epoch
        progress = (step - start) / max(epochs * steps_per_epoch - start, 1)
        return cfg.lr * 0.5 * (1 + math.cos(math.pi * progress))
    return cfg.lr

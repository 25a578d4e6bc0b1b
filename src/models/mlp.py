"""Fully connected models of spec §6, with PyTorch's default initialisation as in the reference."""

from __future__ import annotations

from collections import OrderedDict

from torch import nn

from .registry import register_model


def _cifar10_mlp(num_classes: int, dropout: float, in_features: int = 3 * 32 * 32) -> nn.Sequential:
    def drop() -> nn.Module:
        # Identity keeps the plain MLP free of no-op layers.
        return nn.Dropout(dropout) if dropout > 0 else nn.Identity()

    return nn.Sequential(
        OrderedDict(
            flatten=nn.Flatten(),
            drop0=drop(),
            fc1=nn.Linear(in_features, 1024),
            relu1=nn.ReLU(),
            drop1=drop(),
            fc2=nn.Linear(1024, 512),
            relu2=nn.ReLU(),
            drop2=drop(),
            fc3=nn.Linear(512, num_classes),
        )
    )


@register_model("mlp_cifar10", input_shape=(3, 32, 32), default_num_classes=10, is_conv=False)
def mlp_cifar10(num_classes: int) -> nn.Module:
    """MLP 3072 -> 1024 -> 512 -> classes with ReLU (3 676 682 parameters for 10 classes)."""
    return _cifar10_mlp(num_classes, dropout=0.0)


@register_model("mlp_cifar10_dropout", input_shape=(3, 32, 32), default_num_classes=10, is_conv=False)
def mlp_cifar10_dropout(num_classes: int, dropout: float = 0.05) -> nn.Module:
    """``mlp_cifar10`` with ``Dropout(dropout)`` on the input and after each hidden ReLU.

    The reference tied the drop probability to the sparsity (p = 1 - density); here it is
    an explicit argument so the caller decides.
    """
    return _cifar10_mlp(num_classes, dropout)


@register_model("mlp_fashion_mnist", input_shape=(1, 28, 28), default_num_classes=10, is_conv=False)
def mlp_fashion_mnist(num_classes: int) -> nn.Module:
    """The CIFAR-10 MLP's hidden layers on 28x28 images: 784 -> 1024 -> 512 -> classes
    (1 333 770 parameters for 10 classes); a fully connected Fashion-MNIST model."""
    return _cifar10_mlp(num_classes, dropout=0.0, in_features=28 * 28)


@register_model("mlp_higgs", input_shape=(24,), default_num_classes=1, is_conv=False)
def mlp_higgs(num_classes: int) -> nn.Module:
    """MLP 24 -> 256 -> 256 -> 1 with ReLU for the binary Higgs task (72 449 parameters).

    Returns one logit per sample with shape ``[B]``, ready for ``BCEWithLogitsLoss`` against
    float 0/1 targets of shape ``[B]``. The last layer is named ``fc4`` as in the reference.
    """
    if num_classes != 1:
        raise ValueError(f"mlp_higgs has a single logit: num_classes must be 1, not {num_classes}")
    return nn.Sequential(
        OrderedDict(
            fc1=nn.Linear(24, 256),
            relu1=nn.ReLU(),
            fc2=nn.Linear(256, 256),
            relu2=nn.ReLU(),
            fc4=nn.Linear(256, 1),
            squeeze=nn.Flatten(0),  # [B, 1] -> [B]
        )
    )

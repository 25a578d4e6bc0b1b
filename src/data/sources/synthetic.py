"""A small generated classification dataset for tests and smoke runs.

Each class ``c`` has a fixed random mean ``mu_c``; a sample of class ``c`` is
``mu_c + N(0, I)``. Means are scaled so two classes lie about ``class_separation`` noise
standard deviations apart whatever the input shape, so a linear model beats chance within a
few dozen SGD steps. The content depends only on ``data_seed`` (not on the split seed).
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Sequence
from pathlib import Path

import torch

from ..registry import DatasetInfo, DatasetSource, register_dataset
from ..splits import DataSplits, TensorSplit, ValidationPolicy


def gaussian_classes(
    num_samples: int, means: torch.Tensor, input_shape: tuple[int, ...], generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """``num_samples`` draws of ``(mean of a uniformly drawn class + unit noise, class)``."""
    labels = torch.randint(len(means), (num_samples,), generator=generator)
    inputs = means[labels] + torch.randn(num_samples, means.shape[1], generator=generator)
    return inputs.view(num_samples, *input_shape), labels


@register_dataset("synthetic")
class Synthetic(DatasetSource):
    """Gaussian class clusters held in memory as float32 (no files, no normalisation)."""

    def describe(self, **options) -> DatasetInfo:
        given = {
            k: p.default for k, p in inspect.signature(self.load).parameters.items() if p.default is not p.empty
        } | options
        return DatasetInfo(
            tuple(given["input_shape"]), 1 if given["binary"] else given["num_classes"], given["num_train"]
        )

    def load(
        self,
        location: Path | None,
        policy: ValidationPolicy,
        *,
        num_train: int = 1024,
        num_test: int = 256,
        num_classes: int = 4,
        input_shape: Sequence[int] = (1, 8, 8),
        class_separation: float = 4.0,
        binary: bool = False,
        data_seed: int = 0,
    ) -> DataSplits:
        """``binary=True`` needs ``num_classes=2`` and gives float 0/1 targets (one logit)."""
        if binary and num_classes != 2:
            raise ValueError(f"a binary synthetic dataset has 2 classes, got num_classes={num_classes}")
        input_shape = tuple(input_shape)
        generator = torch.Generator().manual_seed(data_seed)
        dim = math.prod(input_shape)
        # Entries of N(0, s^2 / (2 dim)) put two means about s apart.
        means = torch.randn(num_classes, dim, generator=generator) * class_separation / math.sqrt(2 * dim)

        def split(num_samples: int) -> TensorSplit:
            inputs, labels = gaussian_classes(num_samples, means, input_shape, generator)
            return TensorSplit(inputs, labels.float() if binary else labels)

        train, val, test = policy.carve(split(num_train), split(num_test))
        return DataSplits(
            name=self.name,
            train=train,
            val=val,
            test=test,
            num_classes=1 if binary else num_classes,
            input_shape=input_shape,
            task="binary" if binary else "multiclass",
        )

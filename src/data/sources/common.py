"""Helpers shared by the dataset sources."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ..splits import BatchAugment, DataSplits, Normalize, TensorSplit, ValidationPolicy


def in_memory_image_splits(
    name: str,
    location: Path,
    train: tuple[np.ndarray, np.ndarray],
    test: tuple[np.ndarray, np.ndarray],
    policy: ValidationPolicy,
    *,
    num_classes: int,
    normalize: Normalize,
    augment: BatchAugment | None = None,
) -> DataSplits:
    """:class:`DataSplits` of an image classification dataset held in memory.

    ``train`` / ``test`` are ``(uint8 images (N, C, H, W), integer labels (N,))``; the
    validation split is carved out of ``train`` by ``policy``.
    """

    def as_split(images: np.ndarray, labels: np.ndarray) -> TensorSplit:
        return TensorSplit(
            torch.from_numpy(np.ascontiguousarray(images, dtype=np.uint8)),
            torch.from_numpy(np.asarray(labels, dtype=np.int64)),
            normalize,
        )

    train_split, val_split, test_split = policy.carve(as_split(*train), as_split(*test))
    return DataSplits(
        name=name,
        train=train_split,
        val=val_split,
        test=test_split,
        num_classes=num_classes,
        input_shape=tuple(train[0].shape[1:]),
        train_augment=augment,
        location=location,
    )

"""CIFAR-10 and CIFAR-100 from the "python version" pickles (torchvision's on-disk format).

Each pickle holds a dict with ``b"data"`` -- a ``(N, 3072)`` uint8 array of row-major
3x32x32 images -- and the labels (``b"labels"`` for CIFAR-10, ``b"fine_labels"`` for
CIFAR-100). The files are unpickled as the official distribution requires; only load
copies obtained from a trusted source.
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import ClassVar

import numpy as np

from ..locate import FileLayout
from ..registry import DatasetInfo, DatasetSource, register_dataset
from ..splits import BatchAugment, DataSplits, Holdout, Normalize, ValidationPolicy
from .common import in_memory_image_splits

_OFFICIAL_SITE = "https://www.cs.toronto.edu/~kriz/cifar.html"


def read_cifar_files(paths: list[Path], label_key: bytes) -> tuple[np.ndarray, np.ndarray]:
    """Concatenated ``(images (N, 3, 32, 32) uint8, labels (N,) int64)`` of CIFAR pickles."""
    images, labels = [], []
    for path in paths:
        with open(path, "rb") as f:
            entry = pickle.load(f, encoding="bytes")
        images.append(np.asarray(entry[b"data"], dtype=np.uint8).reshape(-1, 3, 32, 32))
        labels.append(np.asarray(entry[label_key], dtype=np.int64))
    return np.concatenate(images), np.concatenate(labels)


class _CIFAR(DatasetSource):
    """Shared loading; subclasses set the file names, label key and preprocessing."""

    train_files: ClassVar[tuple[str, ...]]
    test_files: ClassVar[tuple[str, ...]]
    label_key: ClassVar[bytes]
    normalize: ClassVar[Normalize]
    augment: ClassVar[BatchAugment]

    def load(self, location: Path | None, policy: ValidationPolicy) -> DataSplits:
        assert location is not None  # locate() found the files: this source has a layout
        return in_memory_image_splits(
            self.name,
            location,
            read_cifar_files([location / name for name in self.train_files], self.label_key),
            read_cifar_files([location / name for name in self.test_files], self.label_key),
            policy,
            num_classes=self.info.num_classes,
            normalize=self.normalize,
            augment=self.augment,
        )


def _cifar_layout(title: str, archive: str, folder: str, files: tuple[str, ...], env_var: str) -> FileLayout:
    """``<base>/<folder>/`` (torchvision's layout) or ``<base>`` itself, for ``root`` then ``$env_var``."""
    return FileLayout(
        required=files,
        env_var=env_var,
        subdirs=(folder, ""),
        how_to_get=(
            f"download the {title} Python version ({archive}) from {_OFFICIAL_SITE} and extract "
            f"it into DIR (giving DIR/{folder}/), then pass data.root=DIR or set ${env_var}; "
            "or add data.download=true with data.root=DIR (needs network)."
        ),
    )


@register_dataset("cifar10")
class CIFAR10(_CIFAR):
    """CIFAR-10: 50 000 train / 10 000 test, 10 classes; reflect-pad-4 crop + flip."""

    train_files = tuple(f"data_batch_{i}" for i in range(1, 6))
    test_files = ("test_batch",)
    layout = _cifar_layout(
        "CIFAR-10", "cifar-10-python.tar.gz", "cifar-10-batches-py", train_files + test_files, "CIFAR10_PYTORCH"
    )
    label_key = b"labels"
    info = DatasetInfo(input_shape=(3, 32, 32), num_classes=10, train_samples=50_000)
    normalize = Normalize(mean=(0.4914, 0.4822, 0.4465), std=(0.2023, 0.1994, 0.2010))
    augment = BatchAugment(padding=4, pad_mode="reflect", hflip=True)
    reference_holdout = Holdout.TAIL
    torchvision_name = "CIFAR10"


@register_dataset("cifar100")
class CIFAR100(_CIFAR):
    """CIFAR-100: 50 000 train / 10 000 test, 100 fine classes; zero-pad-4 crop + flip."""

    train_files = ("train",)
    test_files = ("test",)
    layout = _cifar_layout(
        "CIFAR-100", "cifar-100-python.tar.gz", "cifar-100-python", train_files + test_files, "CIFAR100_PYTORCH"
    )
    label_key = b"fine_labels"
    info = DatasetInfo(input_shape=(3, 32, 32), num_classes=100, train_samples=50_000)
    normalize = Normalize(mean=(0.50708, 0.48655, 0.44092), std=(0.26733, 0.25644, 0.27615))
    augment = BatchAugment(padding=4, pad_mode="constant", hflip=True)
    reference_holdout = Holdout.TEST
    torchvision_name = "CIFAR100"

"""Fashion-MNIST (the project's default dataset), read straight from the IDX files.

Search order: the ``root`` argument, ``$FASHION_MNIST_PYTORCH``, each also in torchvision's
layout ``<dir>/FashionMNIST/raw/``, then Debian's ``/usr/share/datasets/fashion-mnist/``
(package ``dataset-fashion-mnist``). Files may be gzip-compressed or not. Parsing the IDX
format with numpy takes a fraction of a second for the whole dataset.
"""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np

from ..locate import FileLayout
from ..registry import DatasetInfo, DatasetSource, register_dataset
from ..splits import DataSplits, Holdout, Normalize, ValidationPolicy
from .common import in_memory_image_splits

FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
_UNSIGNED_BYTE = 0x08  # IDX element type code


def read_idx(path: Path) -> np.ndarray:
    """Decode an IDX file of unsigned bytes (``.gz`` or raw) into an array of its shape."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        data = bytearray(f.read())  # writable, so torch can share it without a warning
    if len(data) < 4 or data[0:2] != b"\x00\x00" or data[2] != _UNSIGNED_BYTE:
        raise ValueError(f"{path}: not an IDX file of unsigned bytes")
    ndim = data[3]
    shape = struct.unpack(f">{ndim}I", data[4 : 4 + 4 * ndim])
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(shape)


def _idx_path(directory: Path, stem: str) -> Path:
    """The raw file if present (no decompression), else the ``.gz`` one."""
    raw = directory / stem
    return raw if raw.exists() else directory / f"{stem}.gz"


def _read_part(directory: Path, part: str) -> tuple[np.ndarray, np.ndarray]:
    images_stem, labels_stem = FILES[part]
    images = read_idx(_idx_path(directory, images_stem))
    labels = read_idx(_idx_path(directory, labels_stem))
    if len(images) != len(labels):
        raise ValueError(f"{directory}: {len(images)} {part} images but {len(labels)} labels")
    return images[:, None], labels  # add the channel axis: (N, 1, 28, 28)


@register_dataset("fashion_mnist")
class FashionMNIST(DatasetSource):
    """Fashion-MNIST: 60 000 train / 10 000 test 28x28 grey images, 10 classes, no augmentation."""

    layout = FileLayout(
        required=tuple((stem, f"{stem}.gz") for stems in FILES.values() for stem in stems),
        env_var="FASHION_MNIST_PYTORCH",
        subdirs=("", "FashionMNIST/raw"),
        system_dirs=("/usr/share/datasets/fashion-mnist",),
        how_to_get=(
            "`apt-get install dataset-fashion-mnist` (Debian/Ubuntu; installs into "
            "/usr/share/datasets/fashion-mnist), or put the four IDX files from "
            "https://github.com/zalandoresearch/fashion-mnist in a directory DIR and pass "
            "data.root=DIR or set $FASHION_MNIST_PYTORCH; or add data.download=true with data.root=DIR "
            "(needs network)."
        ),
    )
    info = DatasetInfo(input_shape=(1, 28, 28), num_classes=10, train_samples=60_000)
    reference_holdout = Holdout.TAIL
    torchvision_name = "FashionMNIST"

    def load(self, location: Path | None, policy: ValidationPolicy) -> DataSplits:
        assert location is not None  # locate() found the files: this source has a layout
        return in_memory_image_splits(
            self.name,
            location,
            _read_part(location, "train"),
            _read_part(location, "test"),
            policy,
            num_classes=self.info.num_classes,
            normalize=Normalize(mean=(0.5,), std=(0.5,)),
        )

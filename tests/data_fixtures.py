"""Writers of tiny datasets in the real on-disk formats, for the data-layer tests.

Every writer returns the arrays it wrote so tests can compare what the loaders read back.
Sample ``i`` of a CIFAR or Fashion-MNIST fixture carries its index in its first pixels
(see :func:`sample_ids`), so tests can tell which samples ended up in which split.
"""

from __future__ import annotations

import gzip
import pickle
import struct
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

# Solid colours, one per class, far enough apart to survive JPEG compression.
CLASS_COLOURS = [(220, 30, 30), (30, 200, 40), (40, 60, 230), (230, 220, 30)]


def _images_with_ids(rng: np.random.Generator, shape: tuple[int, ...], first_id: int) -> np.ndarray:
    """Random uint8 images whose first two values encode ``first_id + i`` (big endian)."""
    images = rng.integers(0, 256, size=shape, dtype=np.uint8)
    ids = np.arange(first_id, first_id + shape[0])
    flat = images.reshape(shape[0], -1)
    flat[:, 0], flat[:, 1] = ids // 256, ids % 256
    return images


def sample_ids(images: np.ndarray) -> np.ndarray:
    """The ids written by the fixtures into uint8 images of shape ``(N, ...)``."""
    flat = np.asarray(images).reshape(len(images), -1).astype(np.int64)
    return flat[:, 0] * 256 + flat[:, 1]


def write_idx(path: Path, array: np.ndarray) -> None:
    """Write ``array`` (uint8) as an IDX file, gzip-compressed if ``path`` ends in ``.gz``."""
    header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    payload = header + np.ascontiguousarray(array, dtype=np.uint8).tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(gzip.compress(payload) if path.suffix == ".gz" else payload)


def write_fashion_mnist(directory: Path, n_train: int = 100, n_test: int = 30, compressed: bool = True, seed: int = 0):
    """The four Fashion-MNIST IDX files in ``directory``; returns ``{part: (images, labels)}``."""
    rng = np.random.default_rng(seed)
    suffix = ".gz" if compressed else ""
    written = {}
    for part, prefix, n in (("train", "train", n_train), ("test", "t10k", n_test)):
        images = _images_with_ids(rng, (n, 28, 28), first_id=0)
        labels = rng.integers(0, 10, size=n, dtype=np.uint8)
        write_idx(directory / f"{prefix}-images-idx3-ubyte{suffix}", images)
        write_idx(directory / f"{prefix}-labels-idx1-ubyte{suffix}", labels)
        written[part] = (images, labels)
    return written


def _write_cifar_pickle(path: Path, images: np.ndarray, label_key: bytes, labels: np.ndarray) -> None:
    # Real files are Python 2 pickles: bytes keys, a (N, 3072) uint8 array, a list of ints.
    entry = {b"batch_label": b"fixture", b"data": images.reshape(len(images), -1), label_key: labels.tolist()}
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        pickle.dump(entry, f, protocol=2)


def write_cifar10(root: Path, per_batch: int = 20, n_test: int = 20, seed: int = 0):
    """``root/cifar-10-batches-py/{data_batch_1..5,test_batch}``; returns ``{part: (images, labels)}``."""
    rng = np.random.default_rng(seed)
    folder = root / "cifar-10-batches-py"
    train_images, train_labels = [], []
    for batch in range(5):
        images = _images_with_ids(rng, (per_batch, 3, 32, 32), first_id=batch * per_batch)
        labels = rng.integers(0, 10, size=per_batch)
        _write_cifar_pickle(folder / f"data_batch_{batch + 1}", images, b"labels", labels)
        train_images.append(images)
        train_labels.append(labels)
    test_images = _images_with_ids(rng, (n_test, 3, 32, 32), first_id=0)
    test_labels = rng.integers(0, 10, size=n_test)
    _write_cifar_pickle(folder / "test_batch", test_images, b"labels", test_labels)
    return {
        "train": (np.concatenate(train_images), np.concatenate(train_labels)),
        "test": (test_images, test_labels),
    }


def write_cifar100(root: Path, n_train: int = 60, n_test: int = 20, seed: int = 0):
    """``root/cifar-100-python/{train,test}`` with ``fine_labels``; returns ``{part: (images, labels)}``."""
    rng = np.random.default_rng(seed)
    written = {}
    for part, n in (("train", n_train), ("test", n_test)):
        images = _images_with_ids(rng, (n, 3, 32, 32), first_id=0)
        labels = rng.integers(0, 100, size=n)
        _write_cifar_pickle(root / "cifar-100-python" / part, images, b"fine_labels", labels)
        written[part] = (images, labels)
    return written


def write_jpeg(path: Path, colour: tuple[int, int, int], size: tuple[int, int]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, colour).save(path, format="JPEG", quality=95)


def write_image_folder(directory: Path, classes: list[str], per_class: int, size: tuple[int, int]) -> None:
    """ImageFolder layout ``directory/<class>/<class>_<i>.JPEG``, solid colour per class."""
    for label, name in enumerate(classes):
        for i in range(per_class):
            write_jpeg(directory / name / f"{name}_{i}.JPEG", CLASS_COLOURS[label], size)


def write_tiny_imagenet(
    root: Path, classes: list[str], per_class: int = 6, val_per_class: int = 2, official_val: bool = True
) -> Path:
    """A ``root/tiny-imagenet-200`` tree as in the official archive (or with val/ in class folders)."""
    base = root / "tiny-imagenet-200"
    for label, wnid in enumerate(classes):
        for i in range(per_class):
            write_jpeg(base / "train" / wnid / "images" / f"{wnid}_{i}.JPEG", CLASS_COLOURS[label], (64, 64))
        (base / "train" / wnid / f"{wnid}_boxes.txt").write_text("")
    if official_val:
        lines = []
        for label, wnid in enumerate(classes):
            for i in range(val_per_class):
                name = f"val_{label * val_per_class + i}.JPEG"
                write_jpeg(base / "val" / "images" / name, CLASS_COLOURS[label], (64, 64))
                lines.append(f"{name}\t{wnid}\t0\t0\t63\t63")
        # Interleave classes so file order does not follow the labels.
        (base / "val" / "val_annotations.txt").write_text("\n".join(lines[::2] + lines[1::2]) + "\n")
    else:
        write_image_folder(base / "val", classes, val_per_class, (64, 64))
    write_jpeg(base / "test" / "images" / "test_0.JPEG", (0, 0, 0), (64, 64))  # unlabelled, unused
    return base


def higgs_table(n: int = 1000, n_features: int = 5, positive_share: float = 0.3, seed: int = 0) -> pd.DataFrame:
    """A Higgs-like table: float features ``f0..`` and a 0/1 ``target`` column (last)."""
    rng = np.random.default_rng(seed)
    table = pd.DataFrame(rng.normal(size=(n, n_features)) * 3 + 5, columns=[f"f{i}" for i in range(n_features)])
    table["target"] = (np.arange(n) < round(n * positive_share)).astype(np.int64)[rng.permutation(n)]
    return table


def write_openml_cache(cache_dir: Path, table: pd.DataFrame, task_id: int, dataset_id: int, target: str) -> None:
    """openml-python's cache layout for one task and its dataset (parquet)."""
    www = cache_dir / "org" / "openml" / "www"
    task_dir = www / "tasks" / str(task_id)
    task_dir.mkdir(parents=True)
    (task_dir / "task.xml").write_text(
        '<oml:task xmlns:oml="http://openml.org/openml">\n'
        f"  <oml:task_id>{task_id}</oml:task_id>\n"
        "  <oml:task_type>Supervised Classification</oml:task_type>\n"
        '  <oml:input name="source_data">\n'
        "    <oml:data_set>\n"
        f"      <oml:data_set_id>{dataset_id}</oml:data_set_id>\n"
        f"      <oml:target_feature>{target}</oml:target_feature>\n"
        "    </oml:data_set>\n"
        "  </oml:input>\n"
        "</oml:task>\n"
    )
    dataset_dir = www / "datasets" / str(dataset_id)
    dataset_dir.mkdir(parents=True)
    table.to_parquet(dataset_dir / f"dataset_{dataset_id}.pq")

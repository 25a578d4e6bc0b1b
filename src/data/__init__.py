"""Datasets, splits and loaders.

Typical use::

    splits = build_dataset("fashion_mnist", seed=0, device=device)
    loaders = make_loaders(splits, batch_size=128, seed=0, memory_format=torch.channels_last)
    for inputs, targets in loaders.train: ...
    evaluate(model, loaders["val"])  # model selection; "test" only reports

``check_dataset(name, root)`` validates that a dataset exists without loading it.
"""

from .loaders import InMemoryLoader, Loader, Loaders, StreamLoader, make_loader, make_loaders
from .locate import DatasetNotFoundError, FileLayout
from .registry import DATASETS, DatasetSource, build_dataset, check_dataset, register_dataset
from .sources import cifar, fashion_mnist, higgs, image_folders, synthetic  # noqa: F401  (they register the datasets)
from .splits import BatchAugment, DataSplits, Holdout, Normalize, Split, StreamedSplit, TensorSplit, ValidationPolicy

__all__ = [
    "DATASETS",
    "BatchAugment",
    "DataSplits",
    "DatasetNotFoundError",
    "DatasetSource",
    "FileLayout",
    "Holdout",
    "InMemoryLoader",
    "Loader",
    "Loaders",
    "Normalize",
    "Split",
    "StreamLoader",
    "StreamedSplit",
    "TensorSplit",
    "ValidationPolicy",
    "build_dataset",
    "check_dataset",
    "make_loader",
    "make_loaders",
    "register_dataset",
]

"""Name -> dataset registry, and the two entry points ``build_dataset`` / ``check_dataset``.

A dataset is added by subclassing :class:`DatasetSource` and decorating the class::

    @register_dataset("cifar10")
    class CIFAR10(DatasetSource):
        layout = FileLayout(required=(...), env_var="CIFAR10_PYTORCH", ...)

        def load(self, location, policy, **options) -> DataSplits: ...

``locate`` (cheap: existence checks only) and ``load`` are kept apart so a launcher can
validate every config of a sweep before starting any job.
"""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

import torch

from ..registry import Registry
from .locate import DatasetNotFoundError, FileLayout, search_bases
from .splits import DataSplits, Holdout, ValidationPolicy

PathLike = str | os.PathLike


class DatasetSource(ABC):
    """How one dataset is found on disk and turned into :class:`DataSplits`.

    Class attributes a subclass sets:

    layout: where the files live (None: nothing on disk, e.g. generated data).
    default_val_fraction: held-out share used when ``build_dataset`` gets none.
    reference_holdout: how the reference implementation drew its validation split,
        used with ``reference_splits=True``.
    torchvision_name: torchvision dataset class able to download the files (None: no
        automatic download).
    """

    name: ClassVar[str]
    layout: ClassVar[FileLayout | None] = None
    default_val_fraction: ClassVar[float] = 0.1
    reference_holdout: ClassVar[Holdout] = Holdout.RANDOM
    torchvision_name: ClassVar[str | None] = None

    def locate(self, root: PathLike | None) -> Path | None:
        """Where the dataset's files are; raises :class:`DatasetNotFoundError`. Touches no data."""
        return None if self.layout is None else self.layout.find(self.name, root)

    @abstractmethod
    def load(self, location: Path | None, policy: ValidationPolicy, **options: Any) -> DataSplits:
        """Read the files at ``location`` (from :meth:`locate`) into CPU splits."""

    def download(self, root: PathLike | None) -> None:
        """Fetch the files with torchvision into ``root`` (or the environment variable's directory)."""
        if self.torchvision_name is None:
            raise DatasetNotFoundError(f"{self.name}: automatic download is not available")
        bases, _ = search_bases(root, self.layout.env_var)
        if not bases:
            raise ValueError(f"{self.name}: download=True needs a root argument or ${self.layout.env_var}")
        import torchvision.datasets  # only needed here; slow to import

        getattr(torchvision.datasets, self.torchvision_name)(str(bases[0][0]), download=True)


DATASETS = Registry("dataset")  # name -> DatasetSource instance


def register_dataset(name: str) -> Callable[[type[DatasetSource]], type[DatasetSource]]:
    """Class decorator registering a :class:`DatasetSource` subclass under ``name``."""

    def decorator(cls: type[DatasetSource]) -> type[DatasetSource]:
        cls.name = name
        DATASETS.register(name, cls())
        return cls

    return decorator


def check_dataset(name: str, root: PathLike | None = None) -> Path | None:
    """Verify that dataset ``name`` exists on disk without reading it.

    Returns where it was found (None for generated datasets); raises ``ValueError`` for an
    unknown name and :class:`DatasetNotFoundError` for missing files.
    """
    return DATASETS.get(name).locate(root)


def build_dataset(
    name: str,
    root: PathLike | None = None,
    *,
    val_fraction: float | None = None,
    seed: int = 0,
    device: str | torch.device = "cpu",
    reference_splits: bool = False,
    download: bool = False,
    **options: Any,
) -> DataSplits:
    """Load dataset ``name`` into train / val / test splits.

    root: where to look first (see each dataset's search order; environment variables
        and system locations follow).
    val_fraction: share held out from the training set for validation (model selection);
        None means the dataset's default (0.1; Higgs: 0.15 of all rows).
    seed: seed of the held-out draw; the same seed always gives the same split.
    device: where in-memory datasets are placed (streamed datasets stay on disk).
    reference_splits: reproduce the reference implementation's splits instead:
        cifar10 / fashion_mnist validate on the *last* ``val_fraction`` of the training set
        (file order); cifar100 / tiny_imagenet / imagenet validate on the test set (so
        ``val is test`` and model selection sees test data, as in the reference); other
        datasets are unaffected. Validation always uses evaluation transforms (the reference
        augmented its CIFAR-10 validation set; that is not reproduced).
    download: if the files are missing, fetch them with torchvision (fashion_mnist,
        cifar10, cifar100; needs network access).
    options: dataset-specific keywords (an unknown keyword raises ``TypeError``).
    """
    source = DATASETS.get(name)
    try:
        location = source.locate(root)
    except DatasetNotFoundError:
        if not download:
            raise
        source.download(root)
        location = source.locate(root)
    holdout = source.reference_holdout if reference_splits else Holdout.RANDOM
    fraction = source.default_val_fraction if val_fraction is None else val_fraction
    splits = source.load(location, ValidationPolicy(holdout, fraction, seed), **options)
    return splits.to(device)

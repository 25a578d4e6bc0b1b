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
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch

from ..registry import Registry
from .locate import DatasetNotFoundError, FileLayout, search_bases
from .splits import DataSplits, Holdout, ValidationPolicy

PathLike = str | os.PathLike


@dataclass(frozen=True)
class DatasetInfo:
    """What a launch knows about a dataset before reading it: enough to check that a model
    fits it and to count a run's steps.

    input_shape: per-sample model input, ``(C, H, W)`` or ``(features,)``.
    num_classes: output width a model needs (1: a binary task, one logit).
    train_samples: the training set, before the validation split is held out of it.
    """

    input_shape: tuple[int, ...]
    num_classes: int
    train_samples: int


class DatasetSource(ABC):
    """How one dataset is found on disk and turned into :class:`DataSplits`.

    Class attributes a subclass sets:

    info: its shapes and size (:class:`DatasetInfo`; ``describe`` when options change them).
    layout: where the files live (None: nothing on disk, e.g. generated data).
    default_val_fraction: held-out share used when ``build_dataset`` gets none.
    reference_holdout: how the reference implementation drew its validation split,
        used with ``reference_splits=True``.
    torchvision_name: torchvision dataset class able to download the files (None: no
        automatic download).
    """

    name: ClassVar[str]
    info: ClassVar[DatasetInfo]
    layout: ClassVar[FileLayout | None] = None
    default_val_fraction: ClassVar[float] = 0.1
    reference_holdout: ClassVar[Holdout] = Holdout.RANDOM
    torchvision_name: ClassVar[str | None] = None

    def locate(self, root: PathLike | None) -> Path | None:
        """Where the dataset's files are; raises :class:`DatasetNotFoundError`. Touches no data."""
        return None if self.layout is None else self.layout.find(self.name, root)

    @abstractmethod
    def load(self, location: Path | None, policy: ValidationPolicy, *args: Any, **options: Any) -> DataSplits:
        """Read the files at ``location`` (from :meth:`locate`) into CPU splits."""
        # ``*args, **options``: each source declares its own keyword options (an unknown one is a
        # TypeError), which a type checker accepts as an override of "any further parameters".

    def describe(self, **options: Any) -> DatasetInfo:
        """Its :class:`DatasetInfo` with these ``load`` options (``data.kwargs``)."""
        return self.info

    def train_split_size(self, policy: ValidationPolicy, **options: Any) -> int:
        """Samples in the training split under ``policy``: what one epoch iterates."""
        return policy.train_size(self.describe(**options).train_samples)

    @property
    def downloadable(self) -> bool:
        return self.torchvision_name is not None

    def no_download_message(self) -> str:
        return (
            f"data.download: automatic download is not available for {self.name!r}; datasets that "
            f"have it: {DATASETS.list(where=lambda source: source.downloadable)}"
        )

    def download(self, root: PathLike | None) -> None:
        """Fetch the files with torchvision into ``root`` (or the environment variable's directory)."""
        if not self.downloadable:
            raise DatasetNotFoundError(self.no_download_message())
        layout, torchvision_name = self.layout, self.torchvision_name
        # A downloadable source names a torchvision class and has files on disk.
        assert layout is not None and torchvision_name is not None
        bases, _ = search_bases(root, layout.env_var)
        if not bases:
            raise ValueError(
                f"data.download: {self.name} needs a directory to download into: "
                f"data.root=DIR (root= in Python) or ${layout.env_var}"
            )
        import torchvision.datasets  # only needed here; slow to import

        try:
            getattr(torchvision.datasets, torchvision_name)(str(bases[0][0]), download=True)
        except (OSError, RuntimeError) as error:  # no network, a read-only or full directory ...
            raise DatasetNotFoundError(
                f"data.download: {self.name} could not be downloaded into {bases[0][0]}: {error}. {layout.how_to_get}"
            ) from error


DATASETS = Registry("dataset")  # name -> DatasetSource instance


def register_dataset(name: str) -> Callable[[type[DatasetSource]], type[DatasetSource]]:
    """Class decorator registering a :class:`DatasetSource` subclass under ``name``."""

    def decorator(cls: type[DatasetSource]) -> type[DatasetSource]:
        cls.name = name
        DATASETS.register(name, cls())
        return cls

    return decorator


def check_dataset(name: str, root: PathLike | None = None, download: bool = False) -> Path | None:
    """Verify that dataset ``name`` exists on disk without reading it; with ``download``,
    fetch missing files first (once, in the launch, before its jobs start).

    Returns where it was found (None for generated datasets); raises ``ValueError`` for an
    unknown name and :class:`DatasetNotFoundError` for missing files.
    """
    source = DATASETS.get(name)
    try:
        return source.locate(root)
    except DatasetNotFoundError:
        if not download:
            raise
    source.download(root)
    return source.locate(root)


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
    location = check_dataset(name, root, download)
    holdout = source.reference_holdout if reference_splits else Holdout.RANDOM
    fraction = source.default_val_fraction if val_fraction is None else val_fraction
    splits = source.load(location, ValidationPolicy(holdout, fraction, seed), **options)
    return splits.to(device)

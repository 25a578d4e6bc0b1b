"""Dataset splits: what a split holds, how validation data is carved out, and ``DataSplits``.

Two kinds of split exist:

* :class:`TensorSplit` -- the whole split as tensors (images ``uint8`` NCHW, tabular
  features ``float32``), batched by :class:`~src.data.loaders.InMemoryLoader`;
* :class:`StreamedSplit` -- a ``torch.utils.data.Dataset`` decoding files sample by sample
  (ImageNet, Tiny-ImageNet), batched by :class:`~src.data.loaders.StreamLoader`.

Both carry a batch ``transform`` (normalisation) the loader applies on the target device.

The transforms (:class:`Normalize`, :class:`BatchAugment`) are batched and device-side:
they work on a whole ``(N, C, H, W)`` (or ``(N, F)``) batch at once, on whatever device it
lives on, so no per-sample Python runs in the training loop. Images stay ``uint8`` until
:class:`Normalize`: augmenting before normalising is exactly what the reference's per-sample
pipelines compute (zero padding is a black pixel, as with PIL).
"""

from __future__ import annotations

import enum
from collections.abc import Sequence, Sized
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Literal, TypeVar, cast

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import Dataset, Subset


@dataclass(frozen=True)
class Normalize:
    """``(x * scale - mean) / std`` per channel (dim 1), returning float32.

    With ``scale = 1/255`` this equals torchvision's ``ToTensor`` followed by ``Normalize``.
    For tabular features (``scale = 1``) it standardises each feature column.
    """

    mean: tuple[float, ...]
    std: tuple[float, ...]
    scale: float = 1 / 255
    # Per-device (multiplier, offset) tensors, so a GPU run does not re-upload them per batch.
    _constants: dict = field(default_factory=dict, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if len(self.mean) != len(self.std):
            raise ValueError(f"mean has {len(self.mean)} entries but std has {len(self.std)}")

    def __call__(self, x: Tensor) -> Tensor:
        multiplier, offset = self._affine(x.device)
        shape = (1, -1) + (1,) * (x.dim() - 2)
        # x * (scale/std) - mean/std, in place on the fresh float copy (fused ops like
        # addcmul are several times slower on the CPU for broadcast operands).
        return x.to(torch.float32).mul_(multiplier.view(shape)).add_(offset.view(shape))

    def _affine(self, device: torch.device) -> tuple[Tensor, Tensor]:
        if device not in self._constants:
            mean = torch.tensor(self.mean, dtype=torch.float64)
            std = torch.tensor(self.std, dtype=torch.float64)
            self._constants[device] = (
                (self.scale / std).to(device, torch.float32),
                (-mean / std).to(device, torch.float32),
            )
        return self._constants[device]


@dataclass(frozen=True)
class BatchAugment:
    """Random crop after padding, then random horizontal flip, for a whole NCHW batch.

    padding: pixels added on every side before cropping back to the input size (0 = no crop).
    pad_mode: ``"reflect"`` (reference CIFAR-10 pipeline) or ``"constant"`` (zero padding,
        torchvision ``RandomCrop(padding=...)``, reference CIFAR-100 pipeline).
    hflip: mirror each image left-right with probability 1/2.

    All randomness comes from the ``generator`` argument, drawn on the CPU in a fixed order
    (row offsets, column offsets, flip coins), so results are reproducible and identical on
    every device.
    """

    padding: int = 0
    pad_mode: Literal["reflect", "constant"] = "constant"
    hflip: bool = False

    def __post_init__(self) -> None:
        if self.padding < 0:
            raise ValueError(f"padding must be >= 0, got {self.padding}")
        if self.pad_mode not in ("reflect", "constant"):
            raise ValueError(f"pad_mode must be 'reflect' or 'constant', got {self.pad_mode!r}")

    def __call__(self, x: Tensor, generator: torch.Generator) -> Tensor:
        n = x.shape[0]
        if self.padding:
            span = 2 * self.padding + 1
            dy = torch.randint(0, span, (n,), generator=generator)
            dx = torch.randint(0, span, (n,), generator=generator)
            x = crop_windows(F.pad(x, (self.padding,) * 4, mode=self.pad_mode), dy, dx, (x.shape[-2], x.shape[-1]))
        if self.hflip:
            x = flip_some(x, torch.rand(n, generator=generator) < 0.5)
        return x


def crop_windows(x: Tensor, dy: Tensor, dx: Tensor, size: tuple[int, int]) -> Tensor:
    """``out[i] = x[i, :, dy[i]:dy[i]+h, dx[i]:dx[i]+w]`` for every image of an NCHW batch."""
    height, width = size
    # A strided view of every (dy, dx) window -- (N, dy, dx, C, h, w), no copy -- from
    # which one advanced-indexing gather picks each image's window.
    windows = x.unfold(2, height, 1).unfold(3, width, 1).permute(0, 2, 3, 1, 4, 5)
    device = x.device
    return windows[torch.arange(len(x), device=device), dy.to(device), dx.to(device)]


def flip_some(x: Tensor, mask: Tensor) -> Tensor:
    """Mirror left-right the images of an NCHW batch selected by the boolean ``mask``."""
    x = x.clone()
    mask = mask.to(x.device)
    x[mask] = x[mask].flip(-1)
    return x


@dataclass(frozen=True)
class TensorSplit:
    """A split held in memory.

    inputs: ``(N, C, H, W)`` uint8 images or ``(N, F)`` float32 features.
    targets: ``(N,)`` int64 class indices, or float32 0/1 for a binary task.
    transform: batch transform turning stored inputs into model inputs (None: use as is).
    """

    inputs: Tensor
    targets: Tensor
    transform: Normalize | None = None

    def __post_init__(self) -> None:
        if len(self.inputs) != len(self.targets):
            raise ValueError(f"{len(self.inputs)} inputs but {len(self.targets)} targets")

    def __len__(self) -> int:
        return len(self.targets)

    @property
    def device(self) -> torch.device:
        return self.inputs.device

    def subset(self, indices: Tensor) -> TensorSplit:
        indices = indices.to(self.device)
        return replace(self, inputs=self.inputs[indices], targets=self.targets[indices])

    def to(self, device: str | torch.device) -> TensorSplit:
        return replace(self, inputs=self.inputs.to(device), targets=self.targets.to(device))


@dataclass(frozen=True)
class StreamedSplit:
    """A split read from disk by DataLoader workers.

    dataset: yields ``(uint8 CHW tensor, int label)`` samples, already resized to the
        model's input size by its per-sample transforms.
    transform: batch transform applied on the target device (normalisation).
    """

    dataset: Dataset
    transform: Normalize | None = None

    def __len__(self) -> int:
        # A map-style dataset (an image folder or a Subset of one) has a length; torch's
        # Dataset type leaves __len__ out.
        return len(cast(Sized, self.dataset))

    @property
    def device(self) -> torch.device:
        return torch.device("cpu")

    def subset(self, indices: Tensor) -> StreamedSplit:
        return replace(self, dataset=Subset(self.dataset, indices.tolist()))

    def to(self, device: str | torch.device) -> StreamedSplit:
        """Files stay on disk; the loader moves each batch to the device instead."""
        return self


Split = TensorSplit | StreamedSplit
S = TypeVar("S", TensorSplit, StreamedSplit)
SPLIT_NAMES = ("train", "val", "test")


class Holdout(enum.Enum):
    """Where the validation split comes from."""

    RANDOM = "random"  # a seeded random subset of the training set (the default)
    TAIL = "tail"  # the last part of the training set in file order (reference: CIFAR-10, Fashion-MNIST)
    TEST = "test"  # no held-out data: validation *is* the test set (reference: CIFAR-100, Tiny-ImageNet)


@dataclass(frozen=True)
class ValidationPolicy:
    """How to carve the validation split out of the training set.

    fraction: share of the training set held out (RANDOM and TAIL).
    seed: seed of the RANDOM draw; the same seed always gives the same split.
    """

    holdout: Holdout = Holdout.RANDOM
    fraction: float = 0.1
    seed: int = 0

    def __post_init__(self) -> None:
        if not 0 < self.fraction < 1:
            raise ValueError(f"val_fraction must be in (0, 1), got {self.fraction}")

    def train_size(self, n: int) -> int:
        """Samples left for training out of a training set of ``n``."""
        return n if self.holdout is Holdout.TEST else n - holdout_size(n, self.fraction)

    def indices(self, n: int) -> tuple[Tensor, Tensor] | None:
        """Sorted ``(train, val)`` indices into a training set of size ``n``; None for TEST."""
        if self.holdout is Holdout.TEST:
            return None
        n_train = self.train_size(n)
        if self.holdout is Holdout.RANDOM:
            order = torch.randperm(n, generator=torch.Generator().manual_seed(self.seed))
        else:
            order = torch.arange(n)
        return order[:n_train].sort().values, order[n_train:].sort().values

    def carve(self, train: S, test: S, eval_view: S | None = None) -> tuple[S, S, S]:
        """Return ``(train, val, test)`` splits.

        ``eval_view`` is the training data under evaluation transforms, for datasets whose
        per-sample transforms augment (ImageNet): validation samples must come from it so
        they are evaluated exactly like test samples. Defaults to ``train``.
        """
        indices = self.indices(len(train))
        if indices is None:
            return train, test, test
        train_idx, val_idx = indices
        val_source = train if eval_view is None else eval_view
        return train.subset(train_idx), val_source.subset(val_idx), test


def holdout_size(n: int, fraction: float) -> int:
    """Number of samples in a ``fraction`` share of ``n``; at least one, never all."""
    size = round(n * fraction)
    if not 0 < size < n:
        raise ValueError(f"a {fraction} share of {n} samples leaves an empty split")
    return size


def stratified_indices(labels: Tensor, fractions: Sequence[float], seed: int) -> list[Tensor]:
    """Split ``range(len(labels))`` into ``len(fractions) + 1`` parts with the class ratios kept.

    Part ``k`` (for ``k < len(fractions)``) holds ``round(fractions[k] * n_c)`` samples of
    every class ``c``; the last part holds the rest. Parts are sorted and seeded.
    """
    if not (all(f > 0 for f in fractions) and sum(fractions) < 1):
        raise ValueError(f"split fractions {list(fractions)} must be positive and sum to less than 1")
    generator = torch.Generator().manual_seed(seed)
    parts: list[list[Tensor]] = [[] for _ in range(len(fractions) + 1)]
    for label in labels.unique():
        members = torch.nonzero(labels == label).flatten()
        members = members[torch.randperm(len(members), generator=generator)]
        sizes = [round(len(members) * f) for f in fractions]
        chunks = members.split(sizes + [len(members) - sum(sizes)])
        for part, chunk in zip(parts, chunks):
            part.append(chunk)
    return [torch.cat(part).sort().values for part in parts]


@dataclass(frozen=True)
class DataSplits:
    """Everything the trainer needs to know about one dataset.

    train, val, test: the splits. ``val`` is held out from the training data and is what
        model selection looks at; ``test`` is only for final reporting. (With
        ``reference_splits`` on CIFAR-100 / Tiny-ImageNet / ImageNet, ``val is test``.)
    num_classes: output width of the model (1 for a binary task: one logit).
    input_shape: per-sample model input shape, ``(C, H, W)`` or ``(F,)``.
    task: ``"multiclass"`` (cross-entropy, int64 targets) or ``"binary"`` (BCE on one
        logit, float32 0/1 targets).
    train_augment: batched augmentation for the training loader (never for val/test).
    location: where the files were read from (None for generated data).
    """

    name: str
    train: Split
    val: Split
    test: Split
    num_classes: int
    input_shape: tuple[int, ...]
    task: Literal["multiclass", "binary"] = "multiclass"
    train_augment: BatchAugment | None = None
    location: Path | None = None

    def __post_init__(self) -> None:
        if self.task not in ("multiclass", "binary"):
            raise ValueError(f"task must be 'multiclass' or 'binary', got {self.task!r}")
        if (self.task == "binary") != (self.num_classes == 1):
            raise ValueError(f"a {self.task} task cannot have num_classes={self.num_classes}")

    def __getitem__(self, split_name: str) -> Split:
        if split_name not in SPLIT_NAMES:
            raise KeyError(f"unknown split {split_name!r}; valid names: {', '.join(SPLIT_NAMES)}")
        return getattr(self, split_name)

    def to(self, device: str | torch.device) -> DataSplits:
        """The same splits with in-memory tensors on ``device`` (a shared val/test moves once)."""
        test = self.test.to(device)
        val = test if self.val is self.test else self.val.to(device)
        return replace(self, train=self.train.to(device), val=val, test=test)

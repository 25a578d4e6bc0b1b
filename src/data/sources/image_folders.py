"""Tiny-ImageNet and ImageNet: JPEG folders decoded per sample by DataLoader workers.

Both read the training set as an ImageFolder (``train/<class>/.../*.JPEG``, classes sorted
by name) and yield ``uint8`` tensors; normalisation with the ImageNet statistics runs per
batch on the device. The official validation set is the test split; the validation split
is held out of ``train/`` (or, with ``reference_splits``, is the test split too).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

from PIL import Image
from torch import Tensor
from torch.utils.data import Dataset

from ..locate import FileLayout
from ..registry import DatasetInfo, DatasetSource, register_dataset
from ..splits import BatchAugment, DataSplits, Holdout, Normalize, StreamedSplit, ValidationPolicy

IMAGENET_NORMALIZE = Normalize(mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))
Sample = tuple[str, int]


class ImageFileDataset(Dataset):
    """``(transform(RGB image), label)`` for a list of ``(path, label)`` samples."""

    def __init__(self, samples: Sequence[Sample], transform: Callable[[Image.Image], Tensor]) -> None:
        self.samples = list(samples)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[Tensor, int]:
        path, label = self.samples[index]
        with Image.open(path) as image:
            return self.transform(image.convert("RGB")), label


def _transforms():
    """torchvision's transforms, imported only by the datasets that use them: importing
    torchvision costs ~1 s of every run's start-up (it loads torch._dynamo)."""
    from torchvision import transforms  # torchvision: only for image folders

    return transforms


def folder_samples(directory: Path, class_to_idx: dict[str, int]) -> list[Sample]:
    """Images under ``directory/<class>/`` (any depth), labelled through ``class_to_idx``."""
    from torchvision.datasets.folder import IMG_EXTENSIONS, make_dataset  # lazy: see _transforms

    return make_dataset(str(directory), class_to_idx, extensions=IMG_EXTENSIONS)


def _streamed_splits(
    name: str,
    location: Path,
    policy: ValidationPolicy,
    *,
    test_samples: Callable[[Path, dict[str, int]], list[Sample]],
    train_transform: Callable,
    eval_transform: Callable,
    input_shape: tuple[int, ...],
    train_augment: BatchAugment | None = None,
) -> DataSplits:
    from torchvision.datasets.folder import find_classes  # (as above)

    classes, class_to_idx = find_classes(str(location / "train"))
    train = folder_samples(location / "train", class_to_idx)

    def split(samples: list[Sample], transform: Callable) -> StreamedSplit:
        return StreamedSplit(ImageFileDataset(samples, transform), IMAGENET_NORMALIZE)

    train_split, val_split, test_split = policy.carve(
        split(train, train_transform),
        split(test_samples(location / "val", class_to_idx), eval_transform),
        eval_view=split(train, eval_transform),
    )
    return DataSplits(
        name=name,
        train=train_split,
        val=val_split,
        test=test_split,
        num_classes=len(classes),
        input_shape=input_shape,
        train_augment=train_augment,
        location=location,
    )


def tiny_imagenet_val_samples(val_dir: Path, class_to_idx: dict[str, int]) -> list[Sample]:
    """Tiny-ImageNet's validation set, in the official layout or in class sub-folders.

    The official archive has ``val/images/*.JPEG`` plus ``val/val_annotations.txt`` with
    tab-separated ``file, class, box...`` lines.
    """
    annotations = val_dir / "val_annotations.txt"
    if not annotations.is_file():
        return folder_samples(val_dir, class_to_idx)
    samples = []
    for line in annotations.read_text().splitlines():
        if not line.strip():
            continue
        file_name, wnid = line.split("\t")[:2]
        if wnid not in class_to_idx:
            raise ValueError(f"{annotations}: class {wnid!r} of {file_name} has no folder in train/")
        samples.append((str(val_dir / "images" / file_name), class_to_idx[wnid]))
    return samples


@register_dataset("tiny_imagenet")
class TinyImageNet(DatasetSource):
    """Tiny-ImageNet: 100 000 train / 10 000 val 64x64 images, 200 classes; h-flip only.

    The flip is batched (and so resumable bit for bit); workers only decode JPEGs.
    """

    layout = FileLayout(
        required=("train/", "val/"),
        env_var="TINY_IMAGENET",
        subdirs=("", "tiny-imagenet-200"),
        how_to_get=(
            "download http://cs231n.stanford.edu/tiny-imagenet-200.zip and unzip it into <root> "
            "(giving <root>/tiny-imagenet-200/{train,val}); then pass data.root=<root> or set $TINY_IMAGENET. "
            "The official val/ layout (images/ + val_annotations.txt) is read as is."
        ),
    )
    info = DatasetInfo(input_shape=(3, 64, 64), num_classes=200, train_samples=100_000)
    reference_holdout = Holdout.TEST

    def load(self, location: Path | None, policy: ValidationPolicy) -> DataSplits:
        assert location is not None  # locate() found the files: this source has a layout
        decode = _transforms().PILToTensor()
        return _streamed_splits(
            self.name,
            location,
            policy,
            test_samples=tiny_imagenet_val_samples,
            train_transform=decode,
            eval_transform=decode,
            input_shape=self.info.input_shape,
            train_augment=BatchAugment(hflip=True),
        )


@register_dataset("imagenet")
class ImageNet(DatasetSource):
    """ImageNet-1k: RandomResizedCrop 224 + h-flip for training, Resize 256 + CenterCrop 224
    for evaluation. ``val/`` must be in class sub-folders (the usual preparation)."""

    layout = FileLayout(
        required=("train/", "val/"),
        env_var="IMAGENET_PYTORCH",
        how_to_get=(
            "obtain ILSVRC2012 from https://image-net.org (registration required), extract the "
            "train and val sets into <root>/train/<wnid>/ and <root>/val/<wnid>/, then pass "
            "data.root=<root> or set $IMAGENET_PYTORCH."
        ),
    )
    info = DatasetInfo(input_shape=(3, 224, 224), num_classes=1000, train_samples=1_281_167)
    reference_holdout = Holdout.TEST

    def load(self, location: Path | None, policy: ValidationPolicy) -> DataSplits:
        assert location is not None  # locate() found the files: this source has a layout
        T = _transforms()
        return _streamed_splits(
            self.name,
            location,
            policy,
            test_samples=folder_samples,
            train_transform=T.Compose([T.RandomResizedCrop(224), T.RandomHorizontalFlip(), T.PILToTensor()]),
            eval_transform=T.Compose([T.Resize(256), T.CenterCrop(224), T.PILToTensor()]),
            input_shape=self.info.input_shape,
        )

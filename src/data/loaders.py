"""Batch loaders with one interface for in-memory and on-disk datasets.

Every loader

* yields ``(inputs, targets)`` batches on the target device, augmented (training loader
  only), normalised, and in the requested ``memory_format``;
* has ``len(loader)`` = batches per epoch;
* is a cursor over a stream of epochs: iterating it yields the *rest of the current
  epoch* (all of it, from a fresh state) and then advances to the next epoch. Breaking out
  of a loop and iterating again therefore continues where it stopped. One pass at a time;
* saves and restores its position with ``state_dict()`` / ``load_state_dict()``.

:class:`InMemoryLoader` batches a :class:`TensorSplit` by tensor indexing: no DataLoader,
no per-sample Python. A resumed loader yields bit-identical batches: the state holds the
epoch, the batches consumed, and the generator state both at the start of the epoch (to
redraw its permutation) and now (for the augmentation draws still to come).

Both loaders can shard each epoch over the ranks of a distributed run (``num_replicas``,
``rank``) the way ``DistributedSampler`` does: one shared permutation, padded by repeating
its first samples to a multiple of the world size, rank ``r`` taking every
``num_replicas``-th sample from position ``r``.

:class:`StreamLoader` wraps a ``torch.utils.data.DataLoader`` for a
:class:`StreamedSplit`. Its sample order is a function of ``(seed, epoch)``, so a
resumed loader replays the epoch's order and skips the batches already consumed (without
reading them). Batched augmentation is bit-identical after a resume; random per-sample
transforms in workers (ImageNet's RandomResizedCrop) are reproducible per epoch for a fixed
``num_workers`` but are redrawn differently for the remainder of a resumed epoch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor
from torch.utils.data import DataLoader, DistributedSampler

from .splits import SPLIT_NAMES, BatchAugment, DataSplits, Normalize, Split, StreamedSplit, TensorSplit


@dataclass(frozen=True)
class _BatchFinisher:
    """Device transfer, augmentation, normalisation and layout of a raw batch."""

    device: torch.device
    transform: Normalize | None
    augment: BatchAugment | None
    memory_format: torch.memory_format

    def __call__(self, inputs: Tensor, targets: Tensor, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        inputs = inputs.to(self.device, non_blocking=True)
        targets = targets.to(self.device, non_blocking=True)
        if self.augment is not None:
            inputs = self.augment(inputs, generator)
        if self.transform is not None:
            inputs = self.transform(inputs)
        if inputs.dim() == 4:
            inputs = inputs.contiguous(memory_format=self.memory_format)
        return inputs, targets


class _EpochCursor:
    """Bookkeeping shared by the loaders: batch size, epoch, batches consumed."""

    def __init__(
        self,
        split: Split,
        batch_size: int,
        *,
        augment: BatchAugment | None,
        drop_last: bool,
        device: str | torch.device | None,
        memory_format: torch.memory_format,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.split = split
        self.batch_size = batch_size
        self.drop_last = drop_last
        device = split.device if device is None else torch.device(device)
        self._finish = _BatchFinisher(device, split.transform, augment, memory_format)
        self._epoch = 0
        self._position = 0

    @property
    def epoch(self) -> int:
        """Index of the epoch being (or about to be) iterated."""
        return self._epoch

    @property
    def position(self) -> int:
        """Batches of the current epoch already yielded."""
        return self._position

    def _samples_per_epoch(self) -> int:
        return len(self.split)

    def __len__(self) -> int:
        n = self._samples_per_epoch()
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def _end_epoch(self) -> None:
        self._epoch += 1
        self._position = 0


class InMemoryLoader(_EpochCursor):
    """Batches of a :class:`TensorSplit` by tensor indexing over a per-epoch permutation.

    generator: CPU ``torch.Generator`` driving the permutations and augmentation; if None,
        a new one seeded with ``seed``. In a distributed run every rank must use the same
        seed, so that all draw the same permutation.
    augment: batched augmentation (training loader only).
    device: where batches are produced; defaults to the split's device (a CPU split with a
        CUDA device is indexed on the CPU and copied per batch).
    memory_format: layout of 4-D batches, e.g. ``torch.channels_last``.
    num_replicas, rank: shard every epoch over ``num_replicas`` ranks (see the module doc).
    """

    def __init__(
        self,
        split: TensorSplit,
        batch_size: int,
        *,
        shuffle: bool = False,
        seed: int = 0,
        generator: torch.Generator | None = None,
        augment: BatchAugment | None = None,
        drop_last: bool = False,
        device: str | torch.device | None = None,
        memory_format: torch.memory_format = torch.contiguous_format,
        num_replicas: int = 1,
        rank: int = 0,
    ) -> None:
        super().__init__(
            split, batch_size, augment=augment, drop_last=drop_last, device=device, memory_format=memory_format
        )
        if not 0 <= rank < num_replicas:
            raise ValueError(f"rank must be in [0, {num_replicas}), got {rank}")
        self.shuffle = shuffle
        self.num_replicas, self.rank = num_replicas, rank
        self._generator = generator if generator is not None else torch.Generator().manual_seed(seed)
        self._order: Tensor | None = None  # sample order of the current epoch, once drawn
        self._epoch_rng_state: Tensor | None = None

    def _samples_per_epoch(self) -> int:
        return -(-len(self.split) // self.num_replicas)

    def __iter__(self):
        if self._order is None:
            self._order = self._draw_order()
        while self._position < len(self):
            index = self._order[self._position * self.batch_size : (self._position + 1) * self.batch_size]
            batch = self._finish(self.split.inputs[index], self.split.targets[index], self._generator)
            self._position += 1
            yield batch
        self._order = None
        self._end_epoch()

    def _draw_order(self) -> Tensor:
        self._epoch_rng_state = self._generator.get_state()
        n = len(self.split)
        order = torch.randperm(n, generator=self._generator) if self.shuffle else torch.arange(n)
        if self.num_replicas > 1:
            padded = torch.arange(self._samples_per_epoch() * self.num_replicas) % n  # wraps around
            order = order[padded][self.rank :: self.num_replicas]
        return order.to(self.split.device)

    def state_dict(self) -> dict[str, Any]:
        return {
            "epoch": self._epoch,
            "position": self._position,
            "epoch_rng_state": self._epoch_rng_state,
            "rng_state": self._generator.get_state(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._epoch, self._position = state["epoch"], state["position"]
        self._order = None
        if self._position > 0:
            # Mid-epoch: redraw this epoch's permutation from the state it was drawn from.
            self._generator.set_state(state["epoch_rng_state"])
            self._order = self._draw_order()
        self._generator.set_state(state["rng_state"])


class StreamLoader(_EpochCursor):
    """Batches of a :class:`StreamedSplit` decoded by DataLoader workers.

    The order comes from a ``DistributedSampler`` seeded with ``seed`` and re-shuffled per
    epoch (with ``num_replicas=1`` it is a plain seeded shuffle; no process group needed).
    Batched ``augment`` draws from a generator seeded by ``(seed, rank)``; worker RNGs are
    seeded by ``(seed, epoch, rank)``.
    """

    def __init__(
        self,
        split: StreamedSplit,
        batch_size: int,
        *,
        shuffle: bool = False,
        seed: int = 0,
        augment: BatchAugment | None = None,
        drop_last: bool = False,
        device: str | torch.device | None = None,
        memory_format: torch.memory_format = torch.contiguous_format,
        num_workers: int = 0,
        num_replicas: int = 1,
        rank: int = 0,
    ) -> None:
        super().__init__(
            split, batch_size, augment=augment, drop_last=drop_last, device=device, memory_format=memory_format
        )
        self.num_workers = num_workers
        self._seed, self._rank = seed, rank
        self._sampler: DistributedSampler[int] = DistributedSampler(
            split.dataset, num_replicas=num_replicas, rank=rank, shuffle=shuffle, seed=seed
        )
        self._generator = torch.Generator().manual_seed(_derived_seed(seed, rank))

    def _samples_per_epoch(self) -> int:
        return len(self._sampler)

    def __iter__(self):
        self._sampler.set_epoch(self._epoch)
        remaining = list(self._sampler)[self._position * self.batch_size :]
        batches = DataLoader(
            self.split.dataset,
            batch_size=self.batch_size,
            sampler=remaining,
            drop_last=self.drop_last,
            num_workers=self.num_workers,
            pin_memory=self._finish.device.type == "cuda",
            generator=torch.Generator().manual_seed(_derived_seed(self._seed, self._epoch, self._rank)),
        )
        for inputs, targets in batches:
            batch = self._finish(inputs, targets, self._generator)
            self._position += 1
            yield batch
        self._end_epoch()

    def state_dict(self) -> dict[str, Any]:
        return {"epoch": self._epoch, "position": self._position, "rng_state": self._generator.get_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._epoch, self._position = state["epoch"], state["position"]
        self._generator.set_state(state["rng_state"])


def _derived_seed(*keys: int) -> int:
    """A well-mixed 32-bit seed from several integers (unlike ``seed + epoch``, no collisions
    between e.g. seed 1 / epoch 0 and seed 0 / epoch 1)."""
    return int(np.random.SeedSequence(keys).generate_state(1)[0])


Loader = InMemoryLoader | StreamLoader


def make_loader(
    split: Split,
    batch_size: int,
    *,
    shuffle: bool = False,
    seed: int = 0,
    augment: BatchAugment | None = None,
    drop_last: bool = False,
    device: str | torch.device | None = None,
    memory_format: torch.memory_format = torch.contiguous_format,
    num_workers: int = 0,
    distributed: bool = False,
) -> Loader:
    """The right loader for ``split``.

    num_workers: DataLoader workers (streamed splits only).
    distributed: shard the samples over the ranks of the initialised process group.
    """
    num_replicas, rank = _process_group() if distributed else (1, 0)
    common: dict[str, Any] = dict(
        shuffle=shuffle,
        seed=seed,
        augment=augment,
        drop_last=drop_last,
        device=device,
        memory_format=memory_format,
        num_replicas=num_replicas,
        rank=rank,
    )
    if isinstance(split, TensorSplit):
        return InMemoryLoader(split, batch_size, **common)
    return StreamLoader(split, batch_size, num_workers=num_workers, **common)


def _process_group() -> tuple[int, int]:
    """``(world size, rank)`` of the current torch.distributed process group."""
    if not dist.is_available() or not dist.is_initialized():
        raise RuntimeError("distributed=True needs an initialised torch.distributed process group")
    return dist.get_world_size(), dist.get_rank()


@dataclass(frozen=True)
class Loaders:
    """The train / val / test loaders of one run; ``loaders["val"]`` also works."""

    train: Loader
    val: Loader
    test: Loader

    def __getitem__(self, split_name: str) -> Loader:
        if split_name not in SPLIT_NAMES:
            raise KeyError(f"unknown split {split_name!r}; valid names: {', '.join(SPLIT_NAMES)}")
        return getattr(self, split_name)


def make_loaders(
    splits: DataSplits,
    batch_size: int,
    eval_batch_size: int | None = None,
    *,
    seed: int = 0,
    device: str | torch.device | None = None,
    drop_last: bool = False,
    memory_format: torch.memory_format = torch.contiguous_format,
    num_workers: int = 4,
    distributed: bool = False,
) -> Loaders:
    """Train / val / test loaders for ``splits``.

    The training loader shuffles (seeded by ``seed``), applies ``splits.train_augment``,
    honours ``drop_last`` and, with ``distributed``, shards over the process group. The
    evaluation loaders keep file order, never augment, keep every sample, and use
    ``eval_batch_size`` (default ``batch_size``); under ``distributed`` every rank
    evaluates the whole split.
    """
    eval_batch_size = eval_batch_size or batch_size
    common: dict[str, Any] = dict(device=device, memory_format=memory_format, num_workers=num_workers)
    train = make_loader(
        splits.train,
        batch_size,
        shuffle=True,
        seed=seed,
        augment=splits.train_augment,
        drop_last=drop_last,
        distributed=distributed,
        **common,
    )
    return Loaders(
        train=train,
        val=make_loader(splits.val, eval_batch_size, **common),
        test=make_loader(splits.test, eval_batch_size, **common),
    )

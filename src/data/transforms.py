"""Batched, device-side preprocessing: normalisation and random crop / horizontal flip.

Everything here works on a whole ``(N, C, H, W)`` (or ``(N, F)``) batch at once, on whatever
device the batch lives on, so no per-sample Python runs in the training loop. Images stay
``uint8`` until :class:`Normalize`: augmenting before normalising is exactly what the
reference's per-sample pipelines compute (zero padding is a black pixel, as with PIL).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor


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

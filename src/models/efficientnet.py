"""EfficientNet-B0 for TinyImageNet (spec §6)."""

from __future__ import annotations

from torch import nn

from .registry import register_model


@register_model("efficientnet_b0", input_shape=(3, 64, 64), default_num_classes=200, is_conv=True)
def efficientnet_b0(num_classes: int) -> nn.Module:
    """torchvision EfficientNet-B0 trained from scratch on 64x64 inputs (no resizing).

    Never loads pretrained weights; torchvision's init (conv Kaiming-normal fan_out, BN (1, 0),
    Linear U(+-1/sqrt(out))), stochastic depth 0.2 and classifier dropout 0.2 are kept.
    About 4.26 M parameters for 200 classes; the depthwise and squeeze-excitation convs are
    ordinary ``Conv2d`` modules, so they are masked like every other conv.
    """
    import torchvision  # lazy: ~1 s of start-up for the runs that never use it

    return torchvision.models.efficientnet_b0(weights=None, num_classes=num_classes)

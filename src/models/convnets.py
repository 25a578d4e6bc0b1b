"""Plain convolutional models of spec §6: the small CIFAR-10 ConvNet, LeNet-5 and VGG-16."""

from __future__ import annotations

from collections import OrderedDict

from torch import nn

from .registry import register_model

# _POOL_FIRST: max-pooling and ReLU commute exactly (ReLU is monotone), in the output and in
# the gradient (the same window maximum is selected), so pooling first gives the same network
# with the ReLU and its backward on a 4x smaller tensor (~6 % of a LeNet-5 training step).


@register_model("conv_cifar10", input_shape=(3, 32, 32), default_num_classes=10, is_conv=True)
def conv_cifar10(num_classes: int) -> nn.Module:
    """Small CIFAR-10 ConvNet (94 538 parameters for 10 classes), PyTorch default init.

    Three unpadded 3x3 convs (32, 64, 128 filters) with ReLU, max-pooling after the first two,
    so a 32x32 image leaves a 4x4 map that is average-pooled before the linear classifier.
    """
    return nn.Sequential(
        OrderedDict(
            conv1=nn.Conv2d(3, 32, 3),
            pool1=nn.MaxPool2d(2),  # pool before ReLU: see _POOL_FIRST
            relu1=nn.ReLU(),
            conv2=nn.Conv2d(32, 64, 3),
            pool2=nn.MaxPool2d(2),
            relu2=nn.ReLU(),
            conv3=nn.Conv2d(64, 128, 3),
            relu3=nn.ReLU(),
            avgpool=nn.AdaptiveAvgPool2d(1),
            flatten=nn.Flatten(),
            fc1=nn.Linear(128, num_classes),
        )
    )


@register_model("lenet5", input_shape=(1, 28, 28), default_num_classes=10, is_conv=True)
def lenet5(num_classes: int) -> nn.Module:
    """Caffe LeNet-5 as used by the paper for Fashion-MNIST (431 080 parameters), default init.

    The reference registers it as ``mlp_fmnist`` although it is a CNN; layer names follow it.
    """
    return nn.Sequential(
        OrderedDict(
            conv1=nn.Conv2d(1, 20, 5),
            pool1=nn.MaxPool2d(2),  # pool before ReLU: see _POOL_FIRST
            relu1=nn.ReLU(),
            conv2=nn.Conv2d(20, 50, 5),
            pool2=nn.MaxPool2d(2),
            relu2=nn.ReLU(),
            flatten=nn.Flatten(),  # 50 x 4 x 4 = 800 features
            fc3=nn.Linear(800, 500),
            relu3=nn.ReLU(),
            fc4=nn.Linear(500, num_classes),
        )
    )


# Filters per 3x3 conv, "M" = 2x2 max-pool. Only four pools: the fifth block is followed by
# the average pool instead.
_VGG16_CFG = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512)


@register_model("vgg16", input_shape=(3, 32, 32), default_num_classes=100, is_conv=True)
def vgg16(num_classes: int, input_size: int = 32) -> nn.Module:
    """VGG-16 with BatchNorm (14 770 212 parameters for CIFAR-100).

    Each conv is 3x3, padding 1, bias-free, followed by BN and ReLU. The four max-pools reduce
    ``input_size`` by 16, and an average pool over the remaining map (2x2 for 32x32 CIFAR,
    4x4 for 64x64 TinyImageNet) feeds a single Linear 512 -> classes.
    Init: conv Kaiming-normal (fan_out, ReLU); Linear N(0, 0.01) with zero bias; BN (1, 0).
    """
    if input_size not in (32, 64):
        raise ValueError(f"vgg16: input_size must be 32 or 64, got {input_size}")
    layers: list[tuple[str, nn.Module]] = []
    in_channels, n_conv, n_pool = 3, 0, 0
    for v in _VGG16_CFG:
        if v == "M":
            n_pool += 1
            layers.append((f"pool{n_pool}", nn.MaxPool2d(2)))
        else:
            assert isinstance(v, int)  # the table holds channel widths and "M"
            n_conv += 1
            layers += [
                (f"conv{n_conv}", nn.Conv2d(in_channels, v, 3, padding=1, bias=False)),
                (f"bn{n_conv}", nn.BatchNorm2d(v)),
                (f"relu{n_conv}", nn.ReLU()),
            ]
            in_channels = v
    layers += [
        ("avgpool", nn.AvgPool2d(input_size // 16)),
        ("flatten", nn.Flatten()),
        ("classifier", nn.Linear(512, num_classes)),
    ]
    model = nn.Sequential(OrderedDict(layers))

    # BatchNorm already starts at (1, 0); only convs and the classifier differ from defaults.
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, 0.0, 0.01)
            nn.init.zeros_(m.bias)
    return model

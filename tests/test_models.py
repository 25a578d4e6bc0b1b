"""Model registry: spec §6 / Appendix A parameter counts, output shapes, inits, channels_last."""

import math

import pytest
import torch
from torch import nn

from src.models import MODELS, ModelInfo, build_model, model_info, register_model

SPEC_MODELS = {
    "mlp_cifar10",
    "mlp_cifar10_dropout",
    "mlp_fashion_mnist",
    "mlp_higgs",
    "conv_cifar10",
    "lenet5",
    "resnet56",
    "vgg16",
    "efficientnet_b0",
    "resnet50",
}
CONV_MODELS = sorted(name for name in SPEC_MODELS if model_info(name).is_conv)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def masked_weights(model: nn.Module) -> dict[str, int]:
    """Sizes of the Conv2d/Linear weights, the tensors the sparse core masks, by name."""
    return {
        f"{name}.weight": m.weight.numel() for name, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))
    }


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def weights_of(model: nn.Module, *types: type[nn.Module]) -> dict[str, torch.Tensor]:
    return {name: m.weight for name, m in model.named_modules() if isinstance(m, types)}


# ---------------------------------------------------------------- registry


def test_registry_holds_exactly_the_spec_models():
    assert set(MODELS) == SPEC_MODELS
    assert all(isinstance(model_info(name), ModelInfo) for name in MODELS)


@pytest.mark.parametrize("lookup", [build_model, model_info])
def test_unknown_name_lists_the_valid_names(lookup):
    with pytest.raises(ValueError, match="model") as err:
        lookup("resnet57")
    assert str(sorted(MODELS)) in str(err.value)


def test_duplicate_registration_is_rejected():
    original = MODELS["lenet5"]
    with pytest.raises(ValueError, match="already registered"):
        register_model("lenet5", input_shape=(1, 28, 28), default_num_classes=10, is_conv=True)(
            lambda num_classes: nn.Identity()
        )
    assert MODELS["lenet5"] is original


def test_unexpected_keyword_is_a_type_error():
    with pytest.raises(TypeError):
        build_model("lenet5", dropout=0.1)


@pytest.mark.parametrize("name", sorted(SPEC_MODELS))
def test_is_conv_matches_the_architecture(name):
    model = build_model(name)
    has_conv = any(isinstance(m, nn.Conv2d) for m in model.modules())
    assert model_info(name).is_conv == has_conv


# ---------------------------------------------------------------- parameter counts (§6, App. A)


@pytest.mark.parametrize(
    ("name", "kwargs", "total", "masked"),
    [
        ("mlp_cifar10", {}, 3_676_682, 3_675_136),
        ("mlp_cifar10_dropout", {}, 3_676_682, 3_675_136),
        ("mlp_fashion_mnist", {}, 1_333_770, 1_332_224),
        ("mlp_higgs", {}, 72_449, 71_936),
        ("conv_cifar10", {}, 94_538, 94_304),
        ("lenet5", {}, 431_080, 430_500),
        ("resnet56", {}, 855_770, 851_504),
        ("resnet56", {"num_classes": 100}, 861_620, 857_264),
        ("vgg16", {}, 14_770_212, 14_761_664),
        # The spec gives only approximate sizes (~4.3 M, ~25.6 M); these are torchvision's.
        ("efficientnet_b0", {}, 4_263_748, 4_212_192),
        ("resnet50", {}, 25_557_032, 25_502_912),
    ],
)
def test_parameter_counts(name, kwargs, total, masked):
    model = build_model(name, **kwargs)
    assert n_params(model) == total
    assert sum(masked_weights(model).values()) == masked


@pytest.mark.parametrize("name", sorted(SPEC_MODELS))
def test_type_based_masking_matches_the_reference_name_rule(name):
    # The reference masks every parameter except BatchNorm weights and names containing
    # "bias"; selecting Conv2d/Linear weights by module type must pick the same tensors.
    model = build_model(name)
    bn_weights = {f"{n}.weight" for n, m in model.named_modules() if isinstance(m, nn.BatchNorm2d)}
    by_name = {n for n, _ in model.named_parameters() if "bias" not in n and n not in bn_weights}
    assert by_name == set(masked_weights(model))


@pytest.mark.parametrize(
    ("name", "layers"),
    [
        ("mlp_cifar10", {"fc1.weight": 3_145_728, "fc2.weight": 524_288, "fc3.weight": 5_120}),
        ("mlp_higgs", {"fc1.weight": 6_144, "fc2.weight": 65_536, "fc4.weight": 256}),
        (
            "conv_cifar10",
            {"conv1.weight": 864, "conv2.weight": 18_432, "conv3.weight": 73_728, "fc1.weight": 1_280},
        ),
        (
            "lenet5",
            {"conv1.weight": 500, "conv2.weight": 25_000, "fc3.weight": 400_000, "fc4.weight": 5_000},
        ),
    ],
)
def test_per_layer_masked_counts(name, layers):
    assert masked_weights(build_model(name)) == layers


def test_resnet56_masked_tensors():
    layers = masked_weights(build_model("resnet56"))
    assert len(layers) == 58
    assert layers["conv.weight"] == 432
    assert layers["blocks.9.shortcut.conv.weight"] == 512
    assert layers["blocks.18.shortcut.conv.weight"] == 2_048
    assert layers["fc.weight"] == 640
    block_convs = [n for n in layers if n.startswith("blocks.") and ".shortcut." not in n]
    assert len(block_convs) == 54


def test_vgg16_masked_tensors():
    layers = masked_weights(build_model("vgg16"))
    convs = {n: c for n, c in layers.items() if n.startswith("conv")}
    assert list(convs) == [f"conv{i}.weight" for i in range(1, 14)]
    assert sum(convs.values()) == 14_710_464
    assert layers["classifier.weight"] == 51_200


# ---------------------------------------------------------------- forward passes


@pytest.mark.parametrize(
    ("name", "kwargs", "input_shape", "output_shape"),
    [
        ("mlp_cifar10", {}, (2, 3, 32, 32), (2, 10)),
        ("mlp_cifar10_dropout", {}, (2, 3, 32, 32), (2, 10)),
        ("mlp_higgs", {}, (2, 24), (2,)),
        ("conv_cifar10", {}, (2, 3, 32, 32), (2, 10)),
        ("lenet5", {}, (2, 1, 28, 28), (2, 10)),
        ("resnet56", {}, (2, 3, 32, 32), (2, 10)),
        ("resnet56", {"num_classes": 100}, (2, 3, 32, 32), (2, 100)),
        ("vgg16", {}, (2, 3, 32, 32), (2, 100)),
        ("vgg16", {"num_classes": 200, "input_size": 64}, (2, 3, 64, 64), (2, 200)),
        ("efficientnet_b0", {}, (2, 3, 64, 64), (2, 200)),
        ("resnet50", {}, (2, 3, 64, 64), (2, 1000)),  # small input keeps the test fast
    ],
)
def test_forward_shape(name, kwargs, input_shape, output_shape):
    model = build_model(name, **kwargs)
    out = model(torch.randn(input_shape))
    assert out.shape == output_shape
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("name", sorted(SPEC_MODELS))
def test_default_input_shape_and_classes(name):
    info = model_info(name)
    with torch.no_grad():
        out = build_model(name).eval()(torch.randn(1, *info.input_shape))
    assert out.shape == ((1,) if info.default_num_classes == 1 else (1, info.default_num_classes))


def test_higgs_logit_feeds_bce_with_logits():
    model = build_model("mlp_higgs")
    targets = torch.tensor([0.0, 1.0, 1.0, 0.0])
    loss = nn.BCEWithLogitsLoss()(model(torch.randn(4, 24)), targets)
    loss.backward()
    assert model.fc4.weight.grad is not None
    with pytest.raises(ValueError, match="single logit"):
        build_model("mlp_higgs", num_classes=2)


@pytest.mark.parametrize("name", CONV_MODELS)
def test_channels_last_matches_contiguous(name):
    shape = (3, 64, 64) if name == "resnet50" else model_info(name).input_shape
    model = build_model(name)  # train mode, as the trainer uses it: BN on batch statistics
    x = torch.randn(2, *shape)
    torch.manual_seed(1)  # the same dropout / stochastic-depth draws in both passes
    expected = model(x)
    model.to(memory_format=torch.channels_last)
    torch.manual_seed(1)
    actual = model(x.to(memory_format=torch.channels_last))
    # A layout bug (e.g. flattening NHWC memory) gives O(1) errors; 1e-3 absorbs the float32
    # reordering of the conv kernels accumulated over ResNet-50's depth.
    torch.testing.assert_close(actual, expected, rtol=1e-3, atol=1e-3)


@pytest.mark.parametrize("name", ["lenet5", "conv_cifar10"])
def test_pooling_before_relu_is_the_same_network(name):
    """These models pool before the ReLU (cheaper); outputs and every gradient must equal those
    of the textbook conv -> ReLU -> pool order exactly, ties and all-negative windows included."""
    model = build_model(name)
    order = [n for n, _ in model.named_children()]
    assert order.index("pool1") < order.index("relu1") and order.index("pool2") < order.index("relu2")
    textbook = nn.Sequential()
    for n, m in model.named_children():
        if n.startswith("pool") and n[-1] in "12":  # move each of the first two pools after its ReLU
            continue
        textbook.add_module(n, m)
        if n in ("relu1", "relu2"):
            textbook.add_module("pool" + n[-1], getattr(model, "pool" + n[-1]))
    x = torch.randn(8, *model_info(name).input_shape)
    x[0] = 0.0  # all-zero input: windows of exact ties
    x[1] = -x[1].abs()
    grads = []
    for net in (model, textbook):
        net.zero_grad()
        out = net(x)
        out.square().sum().backward()
        grads.append((out.detach(), [p.grad.clone() for p in net.parameters()]))
    assert torch.equal(grads[0][0], grads[1][0])
    for a, b in zip(grads[0][1], grads[1][1]):
        assert torch.equal(a, b)


# ---------------------------------------------------------------- dropout and inits


def test_dropout_variant():
    plain = build_model("mlp_cifar10")
    assert not any(isinstance(m, nn.Dropout) for m in plain.modules())
    dropped = build_model("mlp_cifar10_dropout")
    assert [m.p for m in dropped.modules() if isinstance(m, nn.Dropout)] == [0.05] * 3
    custom = build_model("mlp_cifar10_dropout", dropout=0.3)
    assert [m.p for m in custom.modules() if isinstance(m, nn.Dropout)] == [0.3] * 3
    assert plain.state_dict().keys() == dropped.state_dict().keys()


def test_resnet56_kaiming_fan_in_init():
    model = build_model("resnet56")
    for name, w in weights_of(model, nn.Conv2d, nn.Linear).items():
        assert w.std().item() == pytest.approx(math.sqrt(2 / w[0].numel()), rel=0.1), name
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            assert (m.weight == 1).all() and (m.bias == 0).all()


def test_resnet56_scaled_init():
    density = 0.1
    gain = math.sqrt(2 / (1 + 0.01**2))  # calculate_gain("leaky_relu"), negative slope 0.01
    model = build_model("resnet56", scaled_density=density)
    for name, w in weights_of(model, nn.Conv2d, nn.Linear).items():
        expected = gain / math.sqrt(w[0].numel() * density)
        assert w.std().item() == pytest.approx(expected, rel=0.1), name
    with pytest.raises(ValueError, match="scaled_density"):
        build_model("resnet56", scaled_density=0.0)


def test_vgg16_init():
    model = build_model("vgg16")
    for name, w in weights_of(model, nn.Conv2d).items():
        fan_out = w.shape[0] * w[0, 0].numel()
        assert w.std().item() == pytest.approx(math.sqrt(2 / fan_out), rel=0.1), name
    assert model.classifier.weight.std().item() == pytest.approx(0.01, rel=0.1)
    assert (model.classifier.bias == 0).all()
    with pytest.raises(ValueError, match="input_size"):
        build_model("vgg16", input_size=48)


def test_resnet50_is_v1_5_with_fan_out_init_and_unit_bn():
    model = build_model("resnet50")
    first_stride2_block = model.layer2[0]
    assert first_stride2_block.conv1.stride == (1, 1)
    assert first_stride2_block.conv2.stride == (2, 2)
    for name, w in weights_of(model, nn.Conv2d).items():
        fan_out = w.shape[0] * w[0, 0].numel()
        assert w.std().item() == pytest.approx(math.sqrt(2 / fan_out), rel=0.1), name
    for name, w in weights_of(model, nn.BatchNorm2d).items():
        assert (w == 1).all(), name  # no zero-init of the last BN gamma

"""Hand-computed expectations for growth rules, initial densities and prune-rate schedules."""

import math

import pytest
import torch

from src.sparse import REFERENCE, grow, layer_densities, prune_rate, sample_mask

T = torch.tensor


def on(mask):
    return mask.nonzero().flatten().tolist()


# ---------------------------------------------------------------- growth
MASK = T([1, 0, 0, 0, 0], dtype=torch.bool)
G = T([9.0, 0.1, 0.5, 0.3, 0.2])
W = torch.zeros(5)


def test_gradient_growth_picks_largest_gradients_among_candidates():
    assert on(grow("gradient", W, G, MASK, 2)) == [0, 2, 3]


def test_gradient_growth_prefers_not_just_pruned_then_fills():
    assert on(grow("gradient", W, G, MASK, 2, exclude=T([0, 0, 1, 0, 0], dtype=torch.bool))) == [0, 3, 4]
    # only two candidates are not excluded: the third comes from the excluded ones
    excl = T([0, 0, 1, 1, 0], dtype=torch.bool)
    assert on(grow("gradient", W, G, MASK, 3, exclude=excl)) == [0, 1, 2, 4]


def test_momentum_growth_uses_momentum_not_gradient():
    mom = T([0.0, 5.0, -4.0, 0.0, 0.1])
    assert on(grow("momentum", W, G, MASK, 2, momentum=mom)) == [0, 1, 2]
    with pytest.raises(ValueError, match="momentum"):
        grow("momentum", W, G, MASK, 2)


def test_random_growth_exact_count_uniform_over_candidates():
    mask = torch.zeros(40, dtype=torch.bool)
    mask[:10] = True
    gen = torch.Generator().manual_seed(0)
    hits = torch.zeros(40)
    for _ in range(300):
        new = grow("random", torch.zeros(40), None, mask, 6, generator=gen)
        assert int(new.sum()) == 16 and new[:10].all()
        hits += (new & ~mask).float()
    freq = hits[10:] / 300
    assert abs(freq.mean().item() - 6 / 30) < 1e-6 and freq.min() > 0.08 and freq.max() < 0.35


def test_random_bernoulli_is_exact_only_in_expectation():
    mask = torch.zeros(1000, dtype=torch.bool)
    gen = torch.Generator().manual_seed(0)
    counts = [int(grow("random_bernoulli", torch.zeros(1000), None, mask, 100, generator=gen).sum()) for _ in range(50)]
    assert len(set(counts)) > 1 and abs(sum(counts) / 50 - 100) < 5
    compat = [
        int(grow("random", torch.zeros(1000), None, mask, 100, generator=gen, policy=REFERENCE).sum())
        for _ in range(20)
    ]
    assert len(set(compat)) > 1
    # p = 1 when every candidate is needed
    assert grow("random_bernoulli", torch.zeros(5), None, MASK, 4, generator=gen).all()


def test_growth_errors_name_the_field():
    with pytest.raises(ValueError, match=r"unknown growth rule 'x'; choose from \[.*gradient"):
        grow("x", W, G, MASK, 1)
    with pytest.raises(ValueError, match="gradient"):
        grow("gradient", W, None, MASK, 1)


# ---------------------------------------------------------------- ERK
# PAPER_SPEC §4.2: per-layer ERK densities, checked to 3 decimals.
SHAPES = {
    "mlp_cifar10": [(1024, 3072), (512, 1024), (10, 512)],
    "mlp_higgs": [(256, 24), (256, 256), (1, 256)],
    "conv_cifar10": [(32, 3, 3, 3), (64, 32, 3, 3), (128, 64, 3, 3), (10, 128)],
    "lenet5": [(20, 1, 5, 5), (50, 20, 5, 5), (500, 800), (10, 500)],
}
TABLE = {
    "mlp_cifar10": {
        0.05: [0.0413, 0.0929, 1],
        0.1: [0.0838, 0.1885, 1],
        0.2: [0.1688, 0.3797, 1],
        0.5: [0.4237, 0.9532, 1],
    },
    "mlp_higgs": {0.05: [0.1922, 0.0330, 1], 0.1: [0.3992, 0.0684, 1], 0.2: [0.8131, 0.1394, 1], 0.5: [1, 0.4512, 1]},
    "conv_cifar10": {
        0.05: [0.4780, 0.0557, 0.0271, 1],
        0.1: [1, 0.1344, 0.0652, 1],
        0.2: [1, 0.3084, 0.1496, 1],
        0.5: [1, 0.8302, 0.4029, 1],
    },
    "lenet5": {
        0.05: [0.7261, 0.0375, 0.0381, 1],
        0.1: [1, 0.0871, 0.0884, 1],
        0.2: [1, 0.1869, 0.1898, 1],
        0.5: [1, 0.4864, 0.4940, 1],
    },
}


@pytest.mark.parametrize("model", sorted(TABLE))
@pytest.mark.parametrize("density", [0.05, 0.1, 0.2, 0.5])
def test_erk_matches_reference_table(model, density):
    got = layer_densities(SHAPES[model], density, "erk")
    assert [round(d, 3) for d in got] == [round(d, 3) for d in TABLE[model][density]]
    numels = [math.prod(s) for s in SHAPES[model]]
    assert sum(d * n for d, n in zip(got, numels)) == pytest.approx(density * sum(numels))


def _resnet56_shapes():
    shapes = {"conv": (16, 3, 3, 3)}
    block, c_in = 0, 16
    for width in (16, 32, 64):
        for _ in range(9):
            shapes[f"blocks.{block}.conv1"] = (width, c_in, 3, 3)
            shapes[f"blocks.{block}.conv2"] = (width, width, 3, 3)
            if c_in != width:
                shapes[f"blocks.{block}.shortcut"] = (width, c_in, 1, 1)
            c_in, block = width, block + 1
    shapes["fc"] = (10, 64)
    return shapes


@pytest.mark.parametrize(
    "density, dense",
    [
        (0.05, {"fc"}),
        (0.1, {"conv", "blocks.9.shortcut", "fc"}),
        (0.2, {"conv", "blocks.9.shortcut", "fc", "blocks.18.shortcut"}),
        (
            0.5,
            {"conv", "blocks.9.shortcut", "fc", "blocks.18.shortcut", "blocks.9.conv1"}
            | {f"blocks.{b}.conv{i}" for b in range(9) for i in (1, 2)},
        ),
    ],
)
def test_erk_dense_layers_resnet56(density, dense):
    shapes = _resnet56_shapes()
    got = layer_densities(list(shapes.values()), density)
    assert {n for n, d in zip(shapes, got) if d == 1.0} == dense


@pytest.mark.parametrize("density, n_dense_convs", [(0.05, 1), (0.1, 1), (0.2, 2), (0.5, 5)])
def test_erk_dense_layers_vgg16(density, n_dense_convs):
    cfg = [64, 64, 128, 128, 256, 256, 256, 512, 512, 512, 512, 512, 512]
    shapes = [(o, i, 3, 3) for i, o in zip([3] + cfg[:-1], cfg)] + [(100, 512)]
    got = layer_densities(shapes, density)
    assert got[-1] == 1.0
    assert [d == 1.0 for d in got[:-1]] == [True] * n_dense_convs + [False] * (13 - n_dense_convs)


def test_er_ignores_kernel_dims_unlike_the_reference():
    shapes = [(20, 1, 5, 5), (50, 20, 5, 5), (500, 800), (10, 500)]
    er = layer_densities(shapes, 0.05, "er")
    assert er != layer_densities(shapes, 0.05, "erk")
    assert layer_densities(shapes, 0.05, REFERENCE.init("er")) == layer_densities(shapes, 0.05, "erk")
    # linear layers: ER and ERK raw densities agree, so their ratio is preserved
    assert er[2] / er[1] == pytest.approx((1300 / 400000) / (70 / 1000))


def test_uniform_and_density_one():
    assert layer_densities([(4, 4), (8, 2)], 0.3, "uniform") == [0.3, 0.3]
    assert layer_densities([(4, 4), (8, 2, 3, 3)], 1.0) == [1.0, 1.0]
    with pytest.raises(ValueError, match="density"):
        layer_densities([(4, 4)], 0.0)
    with pytest.raises(ValueError, match="unknown init .nope.; choose from"):
        layer_densities([(4, 4)], 0.5, "nope")


def test_exact_sampling_count_and_bernoulli_drift():
    gen = torch.Generator().manual_seed(0)
    for d in (0.0371, 0.5, 1.0):
        assert int(sample_mask((50, 20, 5, 5), d, generator=gen).sum()) == round(d * 25000)
    counts = {int(REFERENCE.sample_mask((1000,), 0.1, generator=gen).sum()) for _ in range(10)}
    assert len(counts) > 1


# ---------------------------------------------------------------- schedules
def test_cosine_schedule_values():
    assert prune_rate("cosine", 0, 35200, 0.5) == pytest.approx(0.5)
    assert prune_rate("cosine", 35200, 35200, 0.5) == pytest.approx(0.005)
    assert prune_rate("cosine", 17600, 35200, 0.5) == pytest.approx(0.2525)
    assert prune_rate("cosine", 800, 35200, 0.5) == pytest.approx(0.4994, abs=1e-4)  # spec §5.2


def test_linear_constant_exponential_steps():
    assert prune_rate("linear", 50, 100, 0.5, 0.1) == pytest.approx(0.3)
    assert prune_rate("linear", 100, 100, 0.5, 0.1) == pytest.approx(0.1)
    assert prune_rate("constant", 77, 100, 0.25) == 0.25
    assert prune_rate("exponential_steps", 1199, 10**6, 0.5) == pytest.approx(0.5 * 0.99)
    assert prune_rate("exponential_steps", 1200, 10**6, 0.5) == pytest.approx(0.5 * 0.99**2)
    with pytest.raises(ValueError, match="prune_rate_schedule"):
        prune_rate("nope", 1, 2, 0.5)


# ---------------------------------------------------------------- momentum-neuron growth
def test_momentum_neuron_shares_growth_by_mean_momentum_exactly():
    from src.sparse import grow

    momentum = torch.tensor([[3.0, 3.0, 3.0, 3.0, 3.0, 3.1, 2.9, 3.0], [1.0, 1.0, 1.2, 0.8, 1.0, 1.0, 1.0, 1.0]])
    mask = torch.zeros(2, 8, dtype=torch.bool)
    mask[:, :2] = True  # two active per neuron
    new = grow("momentum_neuron", torch.zeros(2, 8), None, mask, 4, momentum=momentum)
    grown = new & ~mask
    assert int(grown.sum()) == 4
    assert grown[0].sum() == 3 and grown[1].sum() == 1  # shares 3/4 and 1/4
    assert grown[0, 5] and grown[1, 2]  # the largest-momentum candidates of each neuron
    # quotas capped by the room in a neuron; the rest goes to the other neuron
    full = torch.ones(2, 8, dtype=torch.bool)
    full[0, 7] = False
    full[1, :4] = False
    new = grow("momentum_neuron", torch.zeros(2, 8), None, full, 4, momentum=momentum)
    assert int((new & ~full).sum()) == 4 and (new & ~full)[0].sum() == 1


def test_momentum_neuron_compat_skips_small_quotas():
    from src.sparse import grow

    momentum = torch.rand(3, 40, generator=torch.Generator().manual_seed(0)) + 0.1
    momentum[2] *= 0.01  # a neuron whose share of 30 is below 10
    mask = torch.zeros(3, 40, dtype=torch.bool)
    new = grow("momentum_neuron", torch.zeros(3, 40), None, mask, 30, momentum=momentum, policy=REFERENCE)
    per_neuron = (new & ~mask).sum(dim=1).tolist()
    quotas = [int(f * 30) for f in (momentum.mean(1) / momentum.mean(1).sum()).tolist()]
    assert per_neuron == [q - 1 if q >= 10 else 0 for q in quotas]  # strict threshold: quota - 1


def test_momentum_neuron_leftover_goes_to_the_largest_remainders():
    from src.sparse import grow

    # shares 0.6, 0.3, 0.1 of 7: 4.2, 2.1, 0.7 -> floors 4, 2, 0 and the one left to neuron 2
    momentum = torch.tensor([[6.0] * 8, [3.0] * 8, [1.0] * 8])
    mask = torch.zeros(3, 8, dtype=torch.bool)
    grown = grow("momentum_neuron", torch.zeros(3, 8), None, mask, 7, momentum=momentum)
    assert grown.sum(dim=1).tolist() == [4, 2, 1]
    # neuron 0 has room for 2 only: the 2 it cannot take go to the others by share
    mask[0, :6] = True
    grown = grow("momentum_neuron", torch.zeros(3, 8), None, mask, 7, momentum=momentum) & ~mask
    assert grown.sum(dim=1).tolist() == [2, 4, 1]

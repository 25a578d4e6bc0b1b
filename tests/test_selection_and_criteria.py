"""Hand-computed expectations for the selection routine and every pruning criterion."""

import math

import pytest
import torch

from src.sparse import CRITERIA, REFERENCE, prune, select_highest, select_lowest

T = torch.tensor


def removed(mask, new_mask):
    return (mask & ~new_mask).nonzero().flatten().tolist()


# ---------------------------------------------------------------- selection
def test_select_lowest_breaks_ties_by_index():
    score = T([3.0, 1.0, 2.0, 1.0, 5.0])
    everything = torch.ones(5, dtype=torch.bool)
    assert select_lowest(score, everything, 2).nonzero().flatten().tolist() == [1, 3]
    assert select_lowest(score, everything, 1).nonzero().flatten().tolist() == [1]
    assert select_lowest(score, everything, 3).nonzero().flatten().tolist() == [1, 2, 3]


def test_select_lowest_only_eligible_and_exact_with_many_ties():
    score = torch.zeros(10)
    eligible = T([1, 0, 1, 0, 1, 1, 0, 1, 1, 1], dtype=torch.bool)
    chosen = select_lowest(score, eligible, 4)
    assert chosen.sum() == 4 and not (chosen & ~eligible).any()
    assert chosen.nonzero().flatten().tolist() == [0, 2, 4, 5]


def test_select_handles_k_bounds_nan_and_inf():
    score = T([float("nan"), float("inf"), 1.0, -float("inf")])
    eligible = torch.ones(4, dtype=torch.bool)
    assert select_lowest(score, eligible, 0).sum() == 0
    assert select_lowest(score, eligible, 9).sum() == 4
    assert select_lowest(score, eligible, 2).nonzero().flatten().tolist() == [2, 3]
    # NaN ranks as +inf, and ties at +inf go by index
    assert select_lowest(score, eligible, 3).nonzero().flatten().tolist() == [0, 2, 3]
    assert select_highest(T([1.0, 4.0, 4.0, 2.0]), eligible, 1).nonzero().flatten().tolist() == [1]


# ---------------------------------------------------------------- criteria, clean
W = T([1.0, -1.0, 0.5, 0.2])
G = T([0.0, 2.0, 0.1, 1.0])
FULL = torch.ones(4, dtype=torch.bool)


@pytest.mark.parametrize(
    "criterion, options, expected",
    [
        ("magnitude", {}, [2, 3]),  # |W| = 1, 1, .5, .2
        ("mest", {"gamma": 1.0}, [0, 2]),  # |W| + |G| = 1, 3, .6, 1.2
        ("mest", {"gamma": 0.1}, [2, 3]),  # 1, 1.2, .51, .3
        ("snip", {}, [0, 2]),  # |WG| = 0, 2, .05, .2
        ("sensitivity", {}, [0, 2]),  # |G|/|W| = 0, 2, .2, 5
        ("reciprocal_sensitivity", {}, [1, 3]),  # |W|/|G| = 1e8, .5, 5, .2
        ("grad_step", {"gamma": 1.0}, [2, 3]),  # |W - G| = 1, 3, .4, .8
        ("grad_step", {"gamma": 0.5}, [2, 3]),  # 1, 2, .45, .3
        ("taylor_fo", {}, [0, 2]),  # (WG)^2 = 0, 4, .0025, .04
        ("snip_plus", {}, [2, 3]),  # WG = 0, -2, .05, .2 ; highest removed
        ("snip_half", {}, [0, 1]),  # one lowest (0), one highest (2)
        ("running_magnitude", {}, [2, 3]),  # no running state yet: |W|
        ("running_snip", {"running": T([4.0, 3.0, 2.0, 1.0])}, [2, 3]),
    ],
)
def test_criteria_hand_computed(criterion, options, expected):
    new = prune(criterion, W, G, FULL, 0.5, **options)
    assert removed(FULL, new) == expected
    assert new.sum() == 2


def test_snip_half_odd_count_takes_extra_from_the_low_end():
    new = prune("snip_half", W, G, FULL, 0.75)  # q = 3: lowest 0, 2 and highest 1
    assert removed(FULL, new) == [0, 1, 2]


def test_only_active_weights_are_ranked_and_exactly_q_removed():
    w = T([0.0, 0.0, 0.0, 0.9, 0.1, 0.4])
    mask = T([1, 1, 0, 1, 1, 1], dtype=torch.bool)  # two active zeros tie with the inactive one
    new = prune("magnitude", w, None, mask, 0.3)  # q = ceil(1.5) = 2
    assert removed(mask, new) == [0, 1]
    assert not (new & ~mask).any()


def test_set_removes_half_from_each_sign_exactly_q():
    w = T([0.3, -0.05, 0.1, -0.4, 0.2, -0.2, -0.01, 0.5])
    new = prune("set", w, None, torch.ones(8, dtype=torch.bool), 0.5)  # q = 4
    # smallest positives: 0.1, 0.2 ; negatives closest to zero: -0.01, -0.05
    assert removed(torch.ones(8, dtype=torch.bool), new) == [1, 2, 4, 6]


def test_set_takes_shortfall_from_other_sign():
    w = T([0.3, 0.1, 0.2, -0.4, 0.5])
    new = prune("set", w, None, torch.ones(5, dtype=torch.bool), 0.8)  # q = 4, one negative
    assert removed(torch.ones(5, dtype=torch.bool), new) == [0, 1, 2, 3]


def test_set_legacy_reproduces_reference_example():
    # PAPER_SPEC §2.2a: 1000 standard-normal weights, full mask, rate 0.3 -> legacy removes 507
    w = torch.randn(1000, generator=torch.Generator().manual_seed(0))
    full = torch.ones(1000, dtype=torch.bool)
    assert int((w < 0).sum()) == 506
    legacy = prune("set_legacy", w, None, full, 0.3)
    assert int((full & ~legacy).sum()) == 507 == 506 + 1
    assert int((legacy & (w < 0)).sum()) == 149  # h - 1 most negative survive
    assert prune("set", w, None, full, 0.3, policy=REFERENCE).equal(legacy)
    assert int((full & ~prune("set", w, None, full, 0.3)).sum()) == 300


def test_set_legacy_rejects_single_sign_layer():
    with pytest.raises(ValueError, match="no positive or no negative"):
        prune("set_legacy", T([0.1, 0.2]), None, torch.ones(2, dtype=torch.bool), 0.5)


def test_random_removes_exactly_q_uniformly():
    mask = torch.zeros(100, dtype=torch.bool)
    mask[:50] = True
    gen = torch.Generator().manual_seed(1)
    hits = torch.zeros(100)
    for _ in range(400):
        new = prune("random", torch.randn(100), None, mask, 0.2, generator=gen)
        assert int((mask & ~new).sum()) == 10 and not (new & ~mask).any()
        hits += (mask & ~new).float()
    freq = hits[:50] / 400
    assert abs(freq.mean().item() - 0.2) < 1e-6
    assert freq.min() > 0.1 and freq.max() < 0.3  # every active weight gets picked


def test_gradient_criteria_require_grad():
    with pytest.raises(ValueError, match="needs the weight's gradient"):
        prune("snip", W, None, FULL, 0.5)


def test_unknown_criterion_lists_choices():
    with pytest.raises(ValueError, match=r"unknown criterion 'nope'; choose from \[.*magnitude"):
        prune("nope", W, G, FULL, 0.5)


def test_every_criterion_has_a_docstring_formula():
    for c in CRITERIA.values():
        assert c.score.__doc__ and len(c.score.__doc__) > 20, c.name


# ---------------------------------------------------------------- criteria, compat
def test_compat_scores_match_reference_formulas():
    from src.sparse import get_criterion

    def reference_score(crit, *args, **options):
        return REFERENCE.criterion(crit).score(*args, **options)

    m = T([1.0, 0.0, 1.0, 1.0])
    ref = {
        "snip": ((W * G).abs() + 1e-5) * m,
        "reciprocal_sensitivity": (W.abs() / (G.abs() + 1e-8) + 1) * m,
        "sensitivity": (G.abs() / (W.abs() + 1e-8) + 1) * m,
        "mest": (W.abs() + G.abs()) * m,
        "grad_step": (W - G).abs() * m,
        "taylor_fo": (W * G) ** 2 * m,
        "magnitude": W.abs(),
    }
    for name, expected in ref.items():
        got = reference_score(get_criterion(name), W, G, m, gamma=1.0)
        assert torch.allclose(got, expected), name
    # grad_step ignores gamma layer-wise in the reference, honours it globally
    assert torch.allclose(reference_score(get_criterion("grad_step"), W, G, m, gamma=0.5), (W - G).abs() * m)
    assert torch.allclose(
        reference_score(get_criterion("grad_step"), W, G, m, gamma=0.5, scope="global"), (W - 0.5 * G).abs() * m
    )
    assert torch.allclose(reference_score(get_criterion("snip"), W, G, m, scope="global"), ((W * G).abs() + 1e-8) * m)
    assert torch.allclose(
        reference_score(get_criterion("reciprocal_sensitivity"), W, G, m, scope="global"), W.abs() / (G.abs() + 1e-8)
    )


def test_compat_magnitude_removes_more_than_q_on_ties():
    w = T([0.0, 0.0, 0.0, 0.9])
    mask = T([1, 1, 0, 1], dtype=torch.bool)  # a = 3, q = 1, z = 1 -> k = 2 sorted entries zeroed
    assert int((mask & ~prune("magnitude", w, None, mask, 0.3, policy=REFERENCE)).sum()) == 2
    assert int((mask & ~prune("magnitude", w, None, mask, 0.3)).sum()) == 1


def test_compat_magnitude_early_exit_at_q_zero():
    w = T([0.0, 0.3, 0.0])
    mask = T([1, 1, 0], dtype=torch.bool)
    assert prune("magnitude", w, None, mask, 0.0, policy=REFERENCE).tolist() == [False, True, False]


def test_compat_snip_half_zeroes_layer_when_half_q_is_zero():
    new = prune("snip_half", W, G, FULL, 0.25, policy=REFERENCE)  # q = 1 -> floor(q/2) = 0
    assert new.sum() == 0


def test_compat_snip_plus_and_snip_half_remove_expected():
    assert removed(FULL, prune("snip_plus", W, G, FULL, 0.5, policy=REFERENCE)) == [2, 3]
    assert removed(FULL, prune("snip_half", W, G, FULL, 0.5, policy=REFERENCE)) == [0, 1]


def test_compat_random_is_immune_to_ties():
    mask = T([1, 0, 1, 1, 0, 1], dtype=torch.bool)
    gen = torch.Generator().manual_seed(3)
    for _ in range(20):
        assert (
            int((mask & ~prune("random", torch.zeros(6), None, mask, 0.5, policy=REFERENCE, generator=gen)).sum()) == 2
        )


# ---------------------------------------------------------------- normalisation and rescale
def test_normalization_input_changes_ranking_per_row():
    from src.sparse import normalize_scores

    s = T([[1.0, 3.0], [10.0, 30.0]])
    m = torch.ones(2, 2, dtype=torch.bool)
    assert torch.allclose(normalize_scores(s, m, "input"), T([[0.25, 0.75], [0.25, 0.75]]))
    assert torch.allclose(normalize_scores(s, m, "output", "max"), T([[0.1, 0.1], [1.0, 1.0]]))
    assert torch.allclose(normalize_scores(s, m, "layer"), s / 44)
    # zero divisor: clean leaves scores, the reference divides
    z = torch.zeros(2, 2)
    assert torch.equal(normalize_scores(z, m, "layer"), z)
    assert torch.isnan(normalize_scores(z, m, "layer", policy=REFERENCE)).all()
    with pytest.raises(ValueError, match="2-D"):
        normalize_scores(torch.ones(2, 2, 3, 3), torch.ones(2, 2, 3, 3, dtype=torch.bool), "input")


def test_normalization_row_wise_prunes_within_rows():
    w = T([[1.0, 3.0], [10.0, 30.0]])
    m = torch.ones(2, 2, dtype=torch.bool)
    assert removed(m.flatten(), prune("magnitude", w, None, m, 0.5).flatten()) == [0, 1]
    # row-normalised: scores .25 .75 .25 .75 -> tie broken by index: 0 then 2
    assert removed(m.flatten(), prune("magnitude", w, None, m, 0.5, normalization="input").flatten()) == [0, 2]


def test_rescale_total_norm_and_zero_row_guard():
    from src.sparse import rescale_weight

    w = T([[3.0, 4.0], [1.0, 1.0]])
    old = torch.ones(2, 2, dtype=torch.bool)
    new = T([[0, 1], [0, 0]], dtype=torch.bool)
    x = w.clone()
    rescale_weight(x, old, new, "total_norm")
    assert torch.allclose(x, w * math.sqrt(27) / 4)
    x = w.clone()
    rescale_weight(x, old, new, "dim1")  # row 0: 5/4 ; row 1 fully pruned: rho = 1
    assert torch.allclose(x, T([[3.75, 5.0], [1.0, 1.0]]))
    x = w.clone()
    rescale_weight(x, old, new, "dim1", policy=REFERENCE)  # reference: x/0 -> float max
    assert torch.equal(x[1], torch.full((2,), torch.finfo(torch.float32).max))
    # a conv weight (4 dims): the total norm over all of them
    conv = torch.randn(3, 2, 3, 3, generator=torch.Generator().manual_seed(0))
    keep = conv.abs() > 0.5
    x = conv.clone()
    rescale_weight(x, torch.ones_like(keep), keep, "total_norm")
    assert torch.allclose(x, conv * conv.pow(2).sum().sqrt() / (conv * keep).pow(2).sum().sqrt())


def test_large_selections_match_a_full_sort():
    # the gathered and the pre-filtered paths of the k-th value must agree with sorting
    g = torch.Generator().manual_seed(0)
    for n, frac, k in [(300_000, 0.03, 500), (300_000, 0.97, 700), (300_000, 0.97, 100_000), (1000, 0.9, 3)]:
        score = torch.randint(0, 50_000, (n,), generator=g).float()  # ties included
        eligible = torch.rand(n, generator=g) < frac
        chosen = select_lowest(score, eligible, k)
        order = sorted(range(n), key=lambda i: (score[i].item(), i)) if n <= 1000 else None
        assert int(chosen.sum()) == k and not (chosen & ~eligible).any()
        kth = score[eligible].sort().values[k - 1]
        assert (score[chosen] <= kth).all() and (score[eligible & ~chosen] >= kth).all()
        if order is not None:
            expected = [i for i in order if eligible[i]][:k]
            assert chosen.nonzero().flatten().tolist() == sorted(expected)


# ---------------------------------------------------------------- one pipeline, layer-wise and global
@pytest.mark.parametrize("name", ["magnitude", "snip", "set", "snip_plus", "snip_half", "sensitivity"])
def test_global_pruning_is_pruning_the_concatenation_and_layer_wise_each_tensor_alone(name):
    from src.sparse import get_criterion, prune_tensors

    g = torch.Generator().manual_seed(0)
    shapes = [(6, 5), (4, 3, 2, 2), (7,)]
    weights = [torch.randn(s, generator=g) for s in shapes]
    grads = [torch.randn(s, generator=g) for s in shapes]
    masks = [torch.rand(s, generator=g) < 0.6 for s in shapes]
    flat = lambda ts: torch.cat([t.reshape(-1) for t in ts])  # noqa: E731
    crit = get_criterion(name)
    together = prune_tensors(crit, weights, grads, masks, 9, scope="global")
    assert flat(together).equal(prune(name, flat(weights), flat(grads), flat(masks), 0.0, count=9))
    assert int(flat(masks).sum() - flat(together).sum()) == 9
    alone = prune_tensors(crit, weights, grads, masks, [2, 3, 1])
    for new, w, gr, m, q in zip(alone, weights, grads, masks, [2, 3, 1]):
        assert new.equal(prune(name, w, gr, m, 0.0, count=q)) and int(m.sum() - new.sum()) == q
    # an ineligible tensor keeps its mask; the others lose the 9 between them
    kept = prune_tensors(
        crit, weights, grads, masks, 9, scope="global", eligible=[masks[0], torch.zeros_like(masks[1]), masks[2]]
    )
    assert kept[1].equal(masks[1]) and int(flat(masks).sum() - flat(kept).sum()) == 9


# ---------------------------------------------------------------- GraSP
def test_grasp_hessian_gradient_is_the_hessian_times_the_gradient():
    from src.sparse.grasp import hessian_gradient

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Tanh(), torch.nn.Linear(4, 3))
    x, y = torch.randn(5, 3), torch.tensor([0, 1, 2, 1, 0])
    names = ["0.weight", "2.weight"]
    hg = hessian_gradient(model, names, (x, y), temperature=2.0)
    w0 = [dict(model.named_parameters())[n].detach() for n in names]
    sizes = [w.numel() for w in w0]

    def loss(flat):
        a, b = flat.split(sizes)
        h = torch.tanh(torch.nn.functional.linear(x, a.view(4, 3), model[0].bias))
        out = torch.nn.functional.linear(h, b.view(3, 4), model[2].bias)
        return torch.nn.functional.cross_entropy(out / 2.0, y)

    flat = torch.cat([w.reshape(-1) for w in w0])
    g = torch.autograd.functional.jacobian(loss, flat)
    expected = torch.autograd.functional.hessian(loss, flat) @ g
    assert torch.allclose(torch.cat([h.reshape(-1) for h in hg]), expected, atol=1e-6)
    assert all(p.grad is None for p in model.parameters())  # the run's gradients are untouched


def test_grasp_removes_highest_minus_w_hg_and_needs_batches():
    from src.sparse import Sparsifier, SparsityConfig

    w, hg = T([1.0, -2.0, 0.5, 3.0]), T([1.0, 1.0, -4.0, 0.1])  # -W*Hg = -1, 2, 2.0, -0.3
    new = prune("grasp", w, None, T([1, 1, 0, 1], dtype=torch.bool), 0.34, hg=hg)  # q = 2
    assert removed(T([1, 1, 0, 1], dtype=torch.bool), new) == [1, 3]
    model = torch.nn.Linear(4, 3)
    with pytest.raises(ValueError, match="batches"):
        Sparsifier(model, torch.optim.SGD(model.parameters(), lr=0.1), SparsityConfig(criterion="grasp"), 10)
    with pytest.raises(ValueError, match="no compat variant"):
        SparsityConfig.reference(criterion="grasp", global_pruning=True).validate()

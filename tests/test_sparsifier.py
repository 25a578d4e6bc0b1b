"""The Sparsifier on small models: modes, exact counts, ordering, optimizer state, resume."""

import copy
import math

import pytest
import torch
from torch import nn

from src.sparse import CRITERIA, GROWTH_RULES, Sparsifier, SparsityConfig, masked_parameter_names


def tiny_net():
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 16), nn.ReLU(), nn.Linear(16, 3)
    )


def batches(n, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(8, 1, 8, 8, generator=g), torch.randint(0, 3, (8,), generator=g)) for _ in range(n)]


def make(cfg, total=40, lr=0.05, adam=False, seed=0):
    model = tiny_net()
    opt = (
        torch.optim.Adam(model.parameters(), lr=1e-2)
        if adam
        else torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, nesterov=True, weight_decay=5e-4)
    )
    return model, opt, Sparsifier(model, opt, cfg, total, seed=seed, batches=lambda: batches(1, seed=9)[0]).prepare()


def train(model, opt, sp, data):
    records = []
    for x, y in data:
        nn.functional.cross_entropy(model(x), y).backward()
        r = sp.step()
        if r is not None:
            records.append(r)
        opt.zero_grad(set_to_none=True)
    return records


def test_masked_tensors_default_and_patterns():
    model = tiny_net()
    assert masked_parameter_names(model) == ["0.weight", "3.weight", "5.weight"]
    assert masked_parameter_names(model, exclude=[r"^0\."]) == ["3.weight", "5.weight"]
    assert masked_parameter_names(model, include=[r"bias"]) == ["0.bias", "3.bias", "5.bias"]
    with pytest.raises(ValueError, match="include/exclude"):
        Sparsifier(model, torch.optim.SGD(model.parameters(), lr=0.1), SparsityConfig(exclude=["weight"]), 10)


def test_prepare_samples_erk_exactly_and_zeroes_inactive_weights():
    model, opt, sp = make(SparsityConfig(density=0.3))
    numel = sum(m.numel() for m in sp.masks)
    assert abs(sp.overall_density() - 0.3) < 3 / numel
    for p, m in zip(sp.params, sp.masks):
        assert torch.all(p[m == 0] == 0)
    assert sp.densities()["5.weight"] == 1.0  # ERK makes the small classifier dense


def test_dense_mode_is_plain_optimizer_step():
    model, opt, sp = make(SparsityConfig(mode="dense"))
    ref_model = tiny_net()
    ref_opt = torch.optim.SGD(ref_model.parameters(), lr=0.05, momentum=0.9, nesterov=True, weight_decay=5e-4)
    data = batches(5)
    train(model, opt, sp, data)
    for x, y in data:
        nn.functional.cross_entropy(ref_model(x), y).backward()
        ref_opt.step()
        ref_opt.zero_grad(set_to_none=True)
    for a, b in zip(model.parameters(), ref_model.parameters()):
        assert torch.equal(a, b)
    assert sp.names == []


def test_static_mode_never_changes_masks_and_keeps_inactive_zero():
    model, opt, sp = make(SparsityConfig(mode="static", density=0.2, update_frequency=1))
    masks = [m.clone() for m in sp.masks]
    assert train(model, opt, sp, batches(10)) == []
    for m0, m, p in zip(masks, sp.masks, sp.params):
        assert torch.equal(m0, m) and torch.all(p[m == 0] == 0)


@pytest.mark.parametrize("criterion", sorted(c for c in CRITERIA if c != "set_legacy"))
@pytest.mark.parametrize("growth", ["random", "gradient", "momentum", "momentum_neuron"])
def test_every_update_is_exact(criterion, growth):
    cfg = SparsityConfig(density=0.3, criterion=criterion, growth=growth, update_frequency=3, prune_rate=0.4)
    model, opt, sp = make(cfg)
    counts = [int(m.sum()) for m in sp.masks]
    records = train(model, opt, sp, batches(12))
    assert [r.step for r in records] == [3, 6, 9, 12]
    for r in records:
        for layer, mask in zip(r.layers, sp.masks):
            free = mask.numel() - layer.active
            assert layer.removed == min(math.ceil(r.prune_rate * layer.active), free)
            assert layer.regrown == layer.removed and layer.regrown_just_pruned == 0
    assert [int(m.sum()) for m in sp.masks] == counts
    for p, m in zip(sp.params, sp.masks):
        assert torch.all(p[m == 0] == 0)


def test_dense_erk_layer_is_not_touched_by_default_but_is_with_reference_semantics():
    cfg = SparsityConfig(density=0.3, criterion="magnitude", growth="gradient", update_frequency=2)
    model, opt, sp = make(cfg)
    records = train(model, opt, sp, batches(4))
    assert all(r.layers[2].removed == 0 for r in records)  # 5.weight is dense: nowhere to regrow
    ref = SparsityConfig.reference(density=0.3, criterion="magnitude", growth="gradient", update_frequency=2)
    model, opt, sp = make(ref)
    records = train(model, opt, sp, batches(4))
    layer = records[0].layers[2]
    assert layer.removed > 0 and layer.regrown_just_pruned == layer.removed  # pruned, regrown, kept


def test_regrow_init_zero_vs_keep_for_just_pruned_positions():
    # Fully dense layers with just-pruned positions allowed back: growth re-selects exactly
    # the pruned weights, which `keep` leaves as they were and `zero` restarts from 0.
    for init in ("zero", "keep"):
        cfg = SparsityConfig(
            density=1.0,
            criterion="magnitude",
            growth="gradient",
            update_frequency=2,
            exclude_just_pruned=False,
            regrow_init=init,
            update_order="step_then_prune",
        )
        model, opt, sp = make(cfg)
        (record,) = train(model, opt, sp, batches(2))
        layer = record.layers[0]
        assert layer.removed > 0 and layer.regrown_just_pruned == layer.removed
        n_zero = int((sp.params[0] == 0).sum())
        assert n_zero == (layer.removed if init == "zero" else 0), init


def test_optimizer_state_zeroed_at_pruned_and_regrown_positions():
    for policy in ("zero", "keep"):
        cfg = SparsityConfig(density=0.3, growth="gradient", update_frequency=4, optimizer_state=policy)
        model, opt, sp = make(cfg)
        data = batches(4)
        train(model, opt, sp, data[:3])
        old = [m.bool().clone() for m in sp.masks]
        x, y = data[3]
        nn.functional.cross_entropy(model(x), y).backward()
        record = sp.step()
        assert record is not None
        assert sum(layer.removed for layer in record.layers) > 0
        for p, o, m in zip(sp.params, old, sp.masks):
            changed = o ^ m.bool()
            if not changed.any():
                continue
            buf = opt.state[p]["momentum_buffer"]
            # prune_then_step: after the update the step writes buf = 0.9 * buf + grad + wd * W;
            # W is 0 at changed positions, so a zeroed buffer holds exactly the gradient.
            assert torch.allclose(buf[changed], p.grad[changed]) == (policy == "zero")


def test_adam_moments_are_zeroed_too():
    cfg = SparsityConfig(density=0.3, growth="momentum", update_frequency=3, update_order="step_then_prune")
    model, opt, sp = make(cfg, adam=True)
    data = batches(3)
    train(model, opt, sp, data[:2])
    old = [m.bool().clone() for m in sp.masks]
    x, y = data[2]
    nn.functional.cross_entropy(model(x), y).backward()
    assert sp.step() is not None
    for p, o, m in zip(sp.params, old, sp.masks):
        changed = o ^ m.bool()
        for key in ("exp_avg", "exp_avg_sq"):
            assert torch.all(opt.state[p][key][changed] == 0)


def test_update_order_controls_whether_regrown_weights_get_a_step():
    for order, regrown_nonzero in (("prune_then_step", True), ("step_then_prune", False)):
        cfg = SparsityConfig(density=0.3, growth="gradient", update_frequency=2, update_order=order)
        model, opt, sp = make(cfg)
        data = batches(2)
        train(model, opt, sp, data[:1])
        old = [m.bool().clone() for m in sp.masks]
        x, y = data[1]
        nn.functional.cross_entropy(model(x), y).backward()
        sp.step()
        p, o, m = sp.params[1], old[1], sp.masks[1].bool()
        grown = m & ~o
        assert grown.any()
        assert bool((p[grown] != 0).any()) == regrown_nonzero, order


def test_reference_order_depends_on_criterion():
    assert SparsityConfig(update_order="reference", criterion="magnitude").step_first()
    assert SparsityConfig(update_order="reference", criterion="set").step_first()
    assert not SparsityConfig(update_order="reference", criterion="snip").step_first()
    assert not SparsityConfig(update_order="prune_then_step", criterion="magnitude").step_first()


def test_update_steps_end_fraction_and_last_step():
    _, _, sp = make(SparsityConfig(update_frequency=10, end_fraction=0.5), total=100)
    assert [s for s in range(1, 101) if sp.is_update_step(s)] == [10, 20, 30, 40, 50]
    _, _, sp = make(SparsityConfig(update_frequency=10), total=100)
    assert [s for s in range(1, 101) if sp.is_update_step(s)][-1] == 90  # not on the last step
    _, _, sp = make(SparsityConfig.reference(update_frequency=10), total=100)
    assert [s for s in range(1, 101) if sp.is_update_step(s)][-1] == 100


def test_running_criterion_accumulates_ema_between_updates():
    cfg = SparsityConfig(
        density=0.5, criterion="running_magnitude", beta=0.5, update_frequency=4, update_order="step_then_prune"
    )
    model, opt, sp = make(cfg)
    data = batches(3)
    expected = None
    for x, y in data:
        nn.functional.cross_entropy(model(x), y).backward()
        sp.step()
        w = sp.params[0].detach().abs()
        expected = w.clone() if expected is None else 0.5 * expected + 0.5 * w
        opt.zero_grad(set_to_none=True)
    assert torch.allclose(sp._running[0], expected)
    train(model, opt, sp, batches(1, seed=5))
    assert sp._running[0] is None  # cleared by the update


@pytest.mark.parametrize("criterion", ["magnitude", "snip", "set", "reciprocal_sensitivity", "snip_plus"])
def test_global_pruning_removes_q_in_total_and_preserves_layer_counts(criterion):
    cfg = SparsityConfig(
        density=0.3, criterion=criterion, growth="random", global_pruning=True, update_frequency=2, init="uniform"
    )
    model, opt, sp = make(cfg)
    counts = [int(m.sum()) for m in sp.masks]
    records = train(model, opt, sp, batches(4))
    for r in records:
        total = sum(layer.active for layer in r.layers)
        assert sum(layer.removed for layer in r.layers) == math.ceil(r.prune_rate * total)
        assert all(layer.regrown == layer.removed for layer in r.layers)
    assert [int(m.sum()) for m in sp.masks] == counts


@pytest.mark.parametrize("criterion", ["magnitude", "set", "random", "snip_plus"])
def test_global_pruning_leaves_dense_layers_alone(criterion):
    # ERK makes the classifier dense: with exclude_just_pruned it has nowhere else to regrow
    cfg = SparsityConfig(density=0.3, criterion=criterion, growth="random", global_pruning=True, update_frequency=2)
    model, opt, sp = make(cfg)
    assert sp.densities()["5.weight"] == 1.0
    records = train(model, opt, sp, batches(4))
    assert all(r.layers[2].removed == 0 for r in records) and sp.densities()["5.weight"] == 1.0
    assert all(sum(layer.removed for layer in r.layers) > 0 for r in records)


def test_global_compat_sensitivity_switches_inactive_weights_on():
    cfg = SparsityConfig.reference(
        density=0.3, criterion="sensitivity", growth="gradient", global_pruning=True, update_frequency=2, init="uniform"
    )
    model, opt, sp = make(cfg)
    records = train(model, opt, sp, batches(2))
    assert any(layer.removed < 0 for layer in records[0].layers)  # the reference's bug, reproduced


def test_config_validation_names_field_and_choices():
    with pytest.raises(ValueError, match=r"unknown sparsity.criterion 'nope'; choose from \[.*'magnitude'"):
        SparsityConfig(criterion="nope").validate()
    with pytest.raises(ValueError, match=r"sparsity.density: must be in \(0, 1\]"):
        SparsityConfig(density=1.5).validate()
    with pytest.raises(ValueError, match="sparsity.prune_rate"):
        SparsityConfig(prune_rate=-0.1).validate()
    with pytest.raises(ValueError, match="sparsity.update_frequency"):
        SparsityConfig(update_frequency=0).validate()
    with pytest.raises(ValueError, match="no global variant"):
        SparsityConfig(criterion="snip_half", global_pruning=True).validate()
    assert set(GROWTH_RULES) == {"random", "random_bernoulli", "gradient", "momentum", "momentum_neuron"}


@pytest.mark.parametrize(
    "cfg",
    [
        SparsityConfig(density=0.3, criterion="random", growth="random", update_frequency=3),
        SparsityConfig(density=0.3, criterion="running_snip", beta=0.7, growth="gradient", update_frequency=4),
        SparsityConfig.reference(density=0.3, criterion="snip", growth="random", update_frequency=3),
    ],
)
def test_state_dict_resume_is_bit_identical(cfg):
    data = batches(14)
    model, opt, sp = make(cfg)
    train(model, opt, sp, data[:7])
    saved = copy.deepcopy({"model": model.state_dict(), "opt": opt.state_dict(), "sp": sp.state_dict()})
    train(model, opt, sp, data[7:])

    model2, opt2, sp2 = make(cfg, seed=123)  # a different seed: everything must come from the state
    model2.load_state_dict(saved["model"])
    opt2.load_state_dict(saved["opt"])
    sp2.load_state_dict(saved["sp"])
    train(model2, opt2, sp2, data[7:])
    assert sp2.steps == sp.steps == 14
    for a, b in zip(sp.masks, sp2.masks):
        assert torch.equal(a, b)
    for a, b in zip(model.parameters(), model2.parameters()):
        assert torch.equal(a, b)


def test_overlap_of_live_state():
    model, opt, sp = make(SparsityConfig(density=0.5, update_frequency=100))
    data = batches(1)
    nn.functional.cross_entropy(model(data[0][0]), data[0][1]).backward()
    res = sp.overlap(["magnitude", "snip", "mest"], rate=0.3)
    assert res.jaccard[0][0] == res.jaccard[2][2] == 1.0
    assert 0 <= res.jaccard[0][1] <= 1 and res.jaccard[0][1] == res.jaccard[1][0]
    assert set(res.jaccard_per_layer) == set(sp.names)
    for pruned, mask in zip(res.pruned["snip"], sp.masks):
        assert not (pruned & ~mask.bool()).any()


def test_overlap_with_reference_criteria_at_every_update_leaves_the_run_unchanged():
    cfg = SparsityConfig(density=0.4, criterion="random", growth="random", update_frequency=2)
    data = batches(6)
    model, opt, sp = make(cfg)
    plain = train(model, opt, sp, data)
    model2, opt2, sp2 = make(SparsityConfig(**{**cfg.__dict__, "overlap_with": ["magnitude", "random"]}))
    tracked = train(model2, opt2, sp2, data)
    for a, b in zip(sp.masks, sp2.masks):
        assert torch.equal(a, b)  # the analysis draws from its own generator
    assert plain[0].overlap is None
    ov = tracked[0].overlap
    assert ov["criteria"] == ["run", "magnitude", "random"]
    assert ov["jaccard"][0][0] == 1.0 and 0 < ov["jaccard"][0][2] < 1


def test_overlap_references_remove_what_the_run_removed():
    # magnitude tracking itself: identical pruned sets in every layer, dense ERK layers included
    cfg = SparsityConfig(
        density=0.3, criterion="magnitude", growth="gradient", update_frequency=2, overlap_with=["magnitude"]
    )
    model, opt, sp = make(cfg)
    (record, *_) = train(model, opt, sp, batches(2))
    assert record.overlap["jaccard"][0][1] == 1.0
    assert all(m[0][1] == 1.0 for m in record.overlap["jaccard_per_layer"].values())

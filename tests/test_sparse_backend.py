"""The sparse execution backend: same training as the masked backend, computed on active weights."""

import io
import json
from pathlib import Path

import pytest
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from torch import nn

from src.config import RunConfig
from src.models import build_model
from src.sparse import CRITERIA, GROWTH_RULES, Sparsifier, SparsityConfig, kernels
from src.sparse.backend import (
    SparseConv2d,
    SparseLinear,
    choose_backends,
    conv_input_sizes,
    crossover_density,
    load_crossover,
)

CL = torch.channels_last
# The products the sparse layers run on here: the compiled kernels wherever they build (every
# equivalence test below then checks them), torch's under DST_NO_EXT=1 or without a compiler.
OPS = kernels.ops_for(torch.zeros(1)).name


def mlp(dtype=torch.float64):
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(40, 32), nn.ReLU(), nn.Linear(32, 24), nn.ReLU(), nn.Linear(24, 5)).to(
        dtype
    )


def cnn(dtype=torch.float64):
    """Two convolutions (padding; stride and dilation) and a Linear, channels-last as in training."""
    torch.manual_seed(0)
    return (
        nn.Sequential(
            nn.Conv2d(2, 6, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(6, 8, 3, stride=2, padding=1, dilation=2),
            nn.ReLU(),
            nn.Flatten(),
            nn.Linear(72, 5),
        )
        .to(dtype)
        .to(memory_format=CL)
    )


MODELS = {"mlp": (mlp, (40,)), "cnn": (cnn, (2, 7, 7))}


def data(n, seed=1, dtype=torch.float64, shape=(40,), batch=12):
    g = torch.Generator().manual_seed(seed)
    return [
        (torch.randn(batch, *shape, generator=g, dtype=dtype), torch.randint(0, 5, (batch,), generator=g))
        for _ in range(n)
    ]


def make(backend, adam=False, total=40, model="mlp", **sparsity):
    model = MODELS[model][0]()
    opt = (
        torch.optim.Adam(model.parameters(), lr=1e-2, weight_decay=1e-4)
        if adam
        else torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, nesterov=True, weight_decay=5e-4)
    )
    cfg = SparsityConfig(**{"density": 0.3, "update_frequency": 3, "prune_rate": 0.4, **sparsity}, backend=backend)
    return model, opt, Sparsifier(model, opt, cfg, total, seed=0).prepare()


def run_both(steps=8, adam=False, model="mlp", **sparsity):
    """Train the masked and the sparse backend side by side; compare after every step. A batch
    of 70 reaches both paths of the compiled kernels in float64 (64-wide chunks, then the rest)."""
    runs = [make(b, adam, model=model, **sparsity) for b in ("masked", "sparse")]
    assert runs[0][2].backends == ["masked"] * 3 and runs[1][2].backends == ["sparse"] * 3
    assert {layer.ops.name for layer in runs[1][2]._execution.layers.values()} == {OPS}
    updates = 0
    for x, y in data(steps, shape=MODELS[model][1], batch=70):
        losses, grads = [], []
        for model, _opt, sp in runs:
            loss = nn.functional.cross_entropy(model(x), y)
            loss.backward()
            losses.append(loss.item())
            grads.append([_grad(sp, i) for i in range(3)])
        assert losses[0] == pytest.approx(losses[1], rel=1e-9, abs=1e-12)
        for gm, gs, mask in zip(*grads, runs[0][2].masks):
            torch.testing.assert_close(gm * mask, gs, rtol=1e-9, atol=1e-12)
        records = [sp.step() for _, _, sp in runs]
        for _, opt, _ in runs:
            opt.zero_grad(set_to_none=True)
        assert (records[0] is None) == (records[1] is None)
        if records[0] is not None:
            updates += 1
            assert records[0] == records[1]  # exact counts, same layers
        for m_masked, m_sparse in zip(runs[0][2].masks, runs[1][2].masks):
            assert torch.equal(m_masked, m_sparse)
        state = [model.state_dict() for model, _, _ in runs]
        for k in state[0]:
            torch.testing.assert_close(state[0][k], state[1][k], rtol=1e-9, atol=1e-12)
    assert updates == steps // 3
    return runs


def _grad(sp, i):
    if i in sp._execution.layers:
        return sp._execution.layers[i].scatter(sp._execution.layers[i].values.grad)
    return sp.params[i].grad.clone()


@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize("criterion", sorted(c for c, crit in CRITERIA.items() if not crit.needs_batch))
def test_sparse_matches_masked_for_every_criterion(criterion, model):
    run_both(
        criterion=criterion, growth="gradient" if CRITERIA[criterion].needs_grad else "random", beta=0.6, model=model
    )


@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize("growth", sorted(g for g, rule in GROWTH_RULES.items() if not rule.needs_momentum))
def test_sparse_matches_masked_for_every_growth_rule(growth, model):
    run_both(criterion="snip", growth=growth, model=model)


OPTIONS = [
    {"global_pruning": True, "criterion": "mest", "growth": "gradient"},
    {"global_pruning": True, "criterion": "set"},
    {"update_order": "step_then_prune", "regrow_init": "keep", "exclude_just_pruned": False},
    {"overlap_with": ["magnitude", "snip"]},
    {"adam": True, "criterion": "taylor_fo", "growth": "gradient"},
]


@pytest.mark.parametrize(
    "options, model",
    [
        *[(o, m) for o in OPTIONS for m in MODELS],
        ({"normalization": "input", "rescale": "dim1", "criterion": "snip"}, "mlp"),  # defined for 2-D weights
    ],
)
def test_sparse_matches_masked_with_options(options, model):
    options = dict(options)
    run_both(adam=options.pop("adam", False), model=model, **options)


def test_optimizer_state_is_sized_to_active_weights_and_weights_stay_dense_shaped():
    (_, _, masked), (model, opt, sp) = run_both(steps=4)
    for layer, mask in zip(sp._execution.layers.values(), sp.masks):
        buf = opt.state[layer.values]["momentum_buffer"]
        assert buf.shape == layer.values.shape == (int(mask.sum()),)
        assert layer.weight not in opt.state and not layer.weight.requires_grad
    stepped = {id(q) for g in opt.param_groups for q in g["params"]}
    for layer in sp._execution.layers.values():
        assert id(layer.values) in stepped and id(layer.weight) not in stepped
    assert [t.shape for t in model.state_dict().values()] == [t.shape for t in mlp().state_dict().values()]


@settings(max_examples=25, deadline=None)
@given(
    out_f=st.integers(1, 40),
    in_f=st.integers(1, 40),
    batch=st.integers(1, 9),
    density=st.floats(0.0, 1.0),
    seed=st.integers(0, 1000),
)
def test_sparse_linear_matches_dense_masked_linear(out_f, in_f, batch, density, seed):
    g = torch.Generator().manual_seed(seed)
    dense = nn.Linear(in_f, out_f).double()
    mask = torch.rand(out_f, in_f, generator=g) < density
    with torch.no_grad():
        dense.weight.mul_(mask)
    sparse = nn.Linear(in_f, out_f).double()
    sparse.load_state_dict(dense.state_dict())
    layer = SparseLinear(sparse, mask)
    x = torch.randn(batch, in_f, generator=g, dtype=torch.float64)
    xd, xs = x.clone().requires_grad_(), x.clone().requires_grad_()
    grad_out = torch.randn(batch, out_f, generator=g, dtype=torch.float64)
    yd, ys = dense(xd), sparse(xs)
    torch.testing.assert_close(yd, ys)
    yd.backward(grad_out)
    ys.backward(grad_out)
    torch.testing.assert_close(xd.grad, xs.grad)
    torch.testing.assert_close(dense.weight.grad * mask, layer.scatter(layer.values.grad))
    torch.testing.assert_close(dense.bias.grad, sparse.bias.grad)
    torch.testing.assert_close(dense.weight.grad, layer.dense_grad())


@settings(max_examples=40, deadline=None)
@given(
    c_in=st.integers(1, 5),
    c_out=st.integers(1, 6),
    kernel=st.tuples(st.integers(1, 4), st.integers(1, 4)),
    stride=st.tuples(st.integers(1, 3), st.integers(1, 3)),
    padding=st.tuples(st.integers(0, 2), st.integers(0, 2)),
    dilation=st.tuples(st.integers(1, 2), st.integers(1, 2)),
    size=st.tuples(st.integers(4, 9), st.integers(4, 9)),
    batch=st.integers(1, 4),
    density=st.floats(0.0, 1.0),
    bias=st.booleans(),
    channels_last=st.booleans(),
    seed=st.integers(0, 1000),
)
def test_sparse_conv_matches_dense_masked_conv(
    c_in, c_out, kernel, stride, padding, dilation, size, batch, density, bias, channels_last, seed
):
    assume(all(n + 2 * p >= d * (k - 1) + 1 for n, p, d, k in zip(size, padding, dilation, kernel)))
    g = torch.Generator().manual_seed(seed)
    fmt = CL if channels_last else torch.contiguous_format
    dense = nn.Conv2d(c_in, c_out, kernel, stride, padding, dilation, bias=bias).double().to(memory_format=fmt)
    mask = torch.rand(dense.weight.shape, generator=g) < density
    with torch.no_grad():
        dense.weight.mul_(mask)
    sparse = nn.Conv2d(c_in, c_out, kernel, stride, padding, dilation, bias=bias).double().to(memory_format=fmt)
    sparse.load_state_dict(dense.state_dict())
    layer = SparseConv2d(sparse, mask)
    x = torch.randn(batch, c_in, *size, generator=g, dtype=torch.float64).contiguous(memory_format=fmt)
    xd, xs = x.clone().requires_grad_(), x.clone().requires_grad_()
    yd, ys = dense(xd), sparse(xs)
    torch.testing.assert_close(yd, ys)
    grad_out = torch.randn(yd.shape, generator=g, dtype=torch.float64)
    yd.backward(grad_out)
    ys.backward(grad_out)
    torch.testing.assert_close(xd.grad, xs.grad)
    torch.testing.assert_close(dense.weight.grad * mask, layer.scatter(layer.values.grad))
    torch.testing.assert_close(dense.weight.grad, layer.dense_grad())
    torch.testing.assert_close(layer.values.grad, layer.pattern_grad())
    if bias:
        torch.testing.assert_close(dense.bias.grad, sparse.bias.grad)
    with torch.no_grad():  # evaluation: the same output, and unbatched input too
        torch.testing.assert_close(dense(x[0]), sparse(x[0]))


def test_sparse_conv_state_dict_holds_ordinary_dense_weights():
    conv = nn.Conv2d(3, 4, 3).double().to(memory_format=CL)
    mask = torch.rand(conv.weight.shape) < 0.3
    with torch.no_grad():
        conv.weight.mul_(mask)
    expected = conv.weight.detach().clone()
    layer = SparseConv2d(conv, mask)
    with torch.no_grad():
        layer.values.mul_(2)
    state = conv.state_dict()
    torch.testing.assert_close(state["weight"], expected * 2, rtol=0, atol=0)
    fresh = nn.Conv2d(3, 4, 3).double()
    fresh.load_state_dict(state)  # an ordinary Conv2d takes it as it is
    x = torch.randn(2, 3, 6, 6, dtype=torch.float64)
    torch.testing.assert_close(fresh(x), conv(x))


def _snapshot(model, opt, sp) -> bytes:
    buf = io.BytesIO()
    torch.save({"model": model.state_dict(), "optimizer": opt.state_dict(), "sparsifier": sp.state_dict()}, buf)
    return buf.getvalue()


@pytest.mark.parametrize("stop", [3, 5])
def test_resume_is_bit_identical_within_the_sparse_backend(stop):
    cfg = dict(criterion="running_snip", growth="gradient", beta=0.7)
    batches = data(10)
    model, opt, sp = make("sparse", **cfg)
    for x, y in batches:
        nn.functional.cross_entropy(model(x), y).backward()
        sp.step()
        opt.zero_grad(set_to_none=True)
    full = model.state_dict()

    model, opt, sp = make("sparse", **cfg)
    for x, y in batches[:stop]:
        nn.functional.cross_entropy(model(x), y).backward()
        sp.step()
        opt.zero_grad(set_to_none=True)
    saved = torch.load(io.BytesIO(_snapshot(model, opt, sp)), weights_only=False)
    model, opt, sp = make("sparse", **cfg)  # a fresh process's objects: other masks until loaded
    model.load_state_dict(saved["model"])
    opt.load_state_dict(saved["optimizer"])
    sp.load_state_dict(saved["sparsifier"])
    for x, y in batches[stop:]:
        nn.functional.cross_entropy(model(x), y).backward()
        sp.step()
        opt.zero_grad(set_to_none=True)
    for k, v in model.state_dict().items():
        assert torch.equal(v, full[k]), k


def test_backend_is_validated_with_field_and_allowed_values():
    with pytest.raises(
        ValueError, match=r"unknown sparsity\.backend 'fast'; choose from \['masked', 'sparse', 'auto'\]"
    ):
        SparsityConfig(backend="fast").validate()
    for bad in ({"compat": True}, {"optimizer_state": "keep"}, {"growth": "momentum"}, {"criterion": "grasp"}):
        with pytest.raises(
            ValueError,
            match=r"sparsity\.backend: 'sparse' cannot run with sparsity\..*"
            r"allowed here: \['masked', 'auto'\]",
        ):
            SparsityConfig(backend="sparse", **bad).validate()
    reference = SparsityConfig.reference(backend="sparse")
    with pytest.raises(ValueError, match="sparsity.compat=true"):
        RunConfig(sparsity=reference).validate()
    assert SparsityConfig.reference().validate().backend == "auto"  # auto: masked under compat


@pytest.fixture(autouse=True)
def crossover_table(monkeypatch):
    """`auto` decides by a fixed table here, not by src/sparse/crossover.json as measured on
    whatever CPU last ran bench.crossover."""
    import src.sparse.backend

    monkeypatch.setattr(src.sparse.backend, "CROSSOVER_TABLE", Path(__file__).with_name("crossover_table.json"))


def test_auto_runs_large_sparse_linears_sparse_and_the_rest_masked():
    table = load_crossover()
    assert table == json.loads(Path(__file__).with_name("crossover_table.json").read_text())["layers"]
    assert crossover_density((1024, 3072), table) > 0.05 and crossover_density((10, 512), table) == 0.0
    model = nn.Sequential(nn.Flatten(), nn.Linear(3072, 1024), nn.ReLU(), nn.Linear(1024, 10))
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    sp = Sparsifier(model, opt, SparsityConfig(density=0.05), 10).prepare()
    assert sp.backends == ["sparse", "masked"]
    for cfg in (
        SparsityConfig(density=0.05, compat=True),
        SparsityConfig(density=0.05, growth="momentum"),
        SparsityConfig(density=0.05, criterion="grasp"),
    ):
        params = [model[1].weight, model[3].weight]
        masks = [torch.rand(p.shape) < 0.05 for p in params]
        assert cfg.sparse_unsupported_reason() is not None
        assert choose_backends("auto", params, [model[1], model[3]], masks, sparse_allowed=False) == ["masked"] * 2


def test_auto_runs_lenet5_conv2_and_fc3_sparse_and_first_convolutions_masked():
    table = load_crossover()
    # LeNet-5's conv2 (its ERK density at 0.05 is 0.037) measures faster sparse; a first
    # convolution (1 or 3 input channels, large maps) never does.
    assert crossover_density((50, 20, 5, 5), table) > 0.05
    assert crossover_density((20, 1, 5, 5), table) == crossover_density((32, 3, 3, 3), table) == 0.0
    model = build_model("lenet5").to(memory_format=CL)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    sp = Sparsifier(model, opt, SparsityConfig(density=0.05), 10).prepare()
    assert sp.backends == ["masked", "sparse", "sparse", "masked"]
    sparse_conv = nn.Conv2d(4, 4, 3, groups=2)  # no kernel for grouped convolutions
    mask = torch.rand(sparse_conv.weight.shape) < 0.01
    assert choose_backends("sparse", [sparse_conv.weight], [sparse_conv], [mask]) == ["masked"]


def pooled_cnn():
    """One convolution that the crossover table measures at two input sizes, then global
    pooling, so the same model runs on any input size."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(40, 40, 2), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(40, 5))


def test_auto_decides_a_convolution_by_the_input_size_it_really_sees():
    table = load_crossover()
    # The same weight crosses over at 0.9 on 4x4 maps and never on 16x16 ones.
    assert crossover_density((40, 40, 2, 2), table, (4, 4)) == 0.9
    assert crossover_density((40, 40, 2, 2), table, (16, 16)) == 0.0
    assert crossover_density((40, 40, 2, 2), table, (5, 5)) == 0.9  # nearest in log positions
    backends, outputs = {}, {}
    for size in (4, 16):
        model = pooled_cnn()
        opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
        sp = Sparsifier(model, opt, SparsityConfig(density=0.3, init="uniform"), 10).prepare((40, size, size))
        backends[size] = sp.backends
        x = torch.randn(3, 40, size, size)
        outputs[size] = (model(x), masked_reference(size)(x))
    assert backends == {4: ["sparse", "masked"], 16: ["masked", "masked"]}
    for out, reference in outputs.values():  # the probe changed nothing but the choice
        torch.testing.assert_close(out, reference)


def masked_reference(size):
    """The model of the test above prepared masked: what the probed one must compute."""
    model = pooled_cnn()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    Sparsifier(model, opt, SparsityConfig(density=0.3, init="uniform", backend="masked"), 10).prepare((40, size, size))
    return model


def test_input_size_probe_moves_no_state_and_sees_each_convolution_once():
    model = nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1),
        nn.BatchNorm2d(4),
        nn.Dropout(0.5),
        nn.Conv2d(4, 4, 3, stride=2),
        nn.ReLU(),
        nn.Flatten(),
    )
    model[1].eval()  # a per-module mode survives the probe
    stats = {k: v.clone() for k, v in model.state_dict().items()}
    rng = torch.get_rng_state()
    sizes = conv_input_sizes(model, [model[0], model[3], None, model[1]], (1, 9, 11))
    assert sizes == [(9, 11), (9, 11), None, None]
    assert torch.equal(torch.get_rng_state(), rng)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in stats.items())
    assert [m.training for m in model] == [True, False, True, True, True, True]
    assert not model[0]._forward_pre_hooks and not model[3]._forward_pre_hooks


@pytest.mark.parametrize("fast_size, sparse", [(12, True), (3, False)])
def test_trainer_picks_conv_backend_by_input_size_and_resumes_bit_identically(tmp_path, monkeypatch, fast_size, sparse):
    """LeNet-5's conv2 sees 12x12 maps. A table in which it wins sparse at 12x12 (and not at
    3x3) runs it sparse; the table with the sizes swapped runs it masked; a run interrupted
    and resumed makes the same choice and the same numbers."""
    import src.sparse.backend
    from src.rundir import read_metrics
    from tests.test_train import strip_times, tiny

    layers = [row for row in load_crossover() if row.get("out_channels") != 50]
    for size in (3, 12):  # the size conv2 never sees first: a key without the size would pick it
        layers.append(
            {
                "out_channels": 50,
                "in_channels": 20,
                "kernel_size": [5, 5],
                "input_size": [size, size],
                "crossover_density": 0.9 if size == fast_size else 0.0,
            }
        )
    table = tmp_path / "crossover.json"
    table.write_text(json.dumps({"layers": layers}))
    monkeypatch.setattr(src.sparse.backend, "CROSSOVER_TABLE", table)
    cfg = tiny(backend="auto")
    cfg.train.epochs = 2
    cfg.train.save_model = False
    full = train_run(cfg, tmp_path / "full")
    expected = {
        "conv1.weight": "masked",
        "conv2.weight": "sparse" if sparse else "masked",
        "fc3.weight": "masked",
        "fc4.weight": "masked",
    }
    assert full["layer_backend"] == expected
    calls = {"n": 0}

    def stop():
        calls["n"] += 1
        return calls["n"] == 25

    assert train_run(cfg, tmp_path / "resumed", should_stop=stop)["status"] == "interrupted"
    resumed = train_run(cfg, tmp_path / "resumed")
    assert resumed["status"] == "completed" and resumed["layer_backend"] == expected
    assert strip_times(read_metrics(tmp_path / "resumed")) == strip_times(read_metrics(tmp_path / "full"))
    assert resumed["final"] == full["final"]


def test_momentum_growth_and_compat_run_masked_under_auto():
    _, _, sp = make("auto", growth="momentum")
    assert sp.backends == ["masked"] * 3


@pytest.mark.slow
@pytest.mark.parametrize("model", ["mlp_cifar10_dropout", "lenet5"])
def test_trainer_runs_sparse_and_resumes_bit_identically(tmp_path, model):
    from src.rundir import read_metrics
    from tests.test_train import assert_same_model, final_state, strip_times, tiny

    # (LeNet-5 at density 0.1 does not learn these few steps, with either backend)
    cfg = tiny(
        criterion="running_snip",
        growth="gradient",
        beta=0.7,
        backend="sparse",
        density=0.1 if model == "mlp_cifar10_dropout" else 0.5,
    )
    cfg.model.name = model  # the MLP has dropout: the global RNG state must be restored
    if model == "mlp_cifar10_dropout":
        cfg.data.kwargs = {**cfg.data.kwargs, "input_shape": [3, 32, 32]}
        layers, first = ["fc1.weight", "fc2.weight", "fc3.weight"], "fc1.weight"
    else:  # every convolution and Linear sparse; conv1's input needs no gradient
        layers, first = ["conv1.weight", "conv2.weight", "fc3.weight", "fc4.weight"], "conv2.weight"
    full = train_run(cfg, tmp_path / "full")
    assert full["layer_backend"] == {name: "sparse" for name in layers}
    assert full["final"]["test_acc"] > 30
    calls = {"n": 0}

    def stop():
        calls["n"] += 1
        return calls["n"] == 20

    assert train_run(cfg, tmp_path / "resumed", should_stop=stop)["status"] == "interrupted"
    assert train_run(cfg, tmp_path / "resumed")["status"] == "completed"
    assert strip_times(read_metrics(tmp_path / "resumed")) == strip_times(read_metrics(tmp_path / "full"))
    saved = final_state(tmp_path / "full")
    assert_same_model(saved, final_state(tmp_path / "resumed"))
    weight, mask = saved["model"][first], saved["masks"][first]
    assert weight.shape == build_model(model).state_dict()[first].shape  # dense-shaped, current weights
    assert not weight[~mask].any() and weight[mask].abs().min() > 0


def train_run(cfg, run_dir, **kwargs):
    from src.train import train

    return train(cfg, run_dir, **kwargs)


def _ddp_worker(rank: int, world: int, port: int, backend: str, model_name: str, out: dict):
    import os

    import torch.distributed as dist

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    torch.set_num_threads(1)
    make_model, shape = MODELS[model_name]
    model = make_model()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    cfg = SparsityConfig(density=0.3, criterion="snip", growth="gradient", update_frequency=4, backend=backend)
    sp = Sparsifier(model, opt, cfg, total_steps=100, seed=0).prepare()
    net = nn.parallel.DistributedDataParallel(model)  # after prepare, as the trainer does
    for x, y in data(10, seed=100 + rank, shape=shape):  # each rank sees different data
        nn.functional.cross_entropy(net(x), y).backward()
        sp.step()
        opt.zero_grad(set_to_none=True)
    out[(backend, rank)] = {k: v.clone() for k, v in model.state_dict().items()}
    dist.destroy_process_group()


@pytest.mark.slow
@pytest.mark.parametrize("model", MODELS)
def test_ddp_sparse_backend_matches_masked_and_ranks_agree(model):
    import torch.multiprocessing as mp

    from tests.test_ddp import _free_port

    out = mp.Manager().dict()
    for backend in ("masked", "sparse"):
        mp.spawn(_ddp_worker, args=(2, _free_port(), backend, model, out), nprocs=2, join=True)
    for k, v in out[("sparse", 0)].items():
        assert torch.equal(v, out[("sparse", 1)][k]), k
        torch.testing.assert_close(v, out[("masked", 0)][k], rtol=1e-9, atol=1e-12)


def test_overlap_and_loading_weights_keep_the_sparse_layers_consistent():
    (_, _, masked), (model, opt, sp) = run_both(steps=4, criterion="running_snip", beta=0.5)
    x, y = data(1, seed=7)[0]
    nn.functional.cross_entropy(model(x), y).backward()
    values = [layer.values.detach().clone() for layer in sp._execution.layers.values()]
    result = sp.overlap(["magnitude", "snip"], rate=0.3)
    assert result.criteria == ["magnitude", "snip"]
    for before, layer in zip(values, sp._execution.layers.values()):
        assert torch.equal(before, layer.values) and layer.values.grad is not None
    assert all(r.shape == layer.values.shape for r, layer in zip(sp._running, sp._execution.layers.values()))
    other = mlp()
    model.load_state_dict(other.state_dict())  # loading weights reaches the values the forward uses
    for mask, (name, p) in zip(sp.masks, [(n, p) for n, p in other.named_parameters() if n.endswith("weight")]):
        assert torch.equal(model.state_dict()[name], p.detach() * mask)


def test_launcher_refuses_sparse_backend_under_reference_semantics_before_launching():
    from src.plan import expand

    with pytest.raises(ValueError, match=r"sparsity\.backend: 'sparse' cannot run with sparsity\.compat=true"):
        expand(["setup=smoke", "compat=reference", "sparsity.backend=sparse"], check_data=False)
    with pytest.raises(
        ValueError, match=r"unknown sparsity\.backend 'csr'; choose from \['masked', 'sparse', 'auto'\]"
    ):
        expand(["setup=smoke", "sparsity.backend=csr"], check_data=False)
    # An execution choice, not a different experiment: same run directory.
    auto, masked = (expand(["setup=smoke", f"sparsity.backend={b}"], check_data=False)[0] for b in ("auto", "masked"))
    assert auto.run_dir == masked.run_dir


def test_crossover_table_is_read_for_this_cpu_and_the_products_a_layer_runs_on(tmp_path):
    from src.sparse import kernels

    here, elsewhere = kernels.cpu_info(), {**kernels.cpu_info(), "model": "another CPU"}

    def table(ops, cpu, density):
        return {
            "kernels": ops,
            "cpu": cpu,
            "layers": [{"out_features": 8, "in_features": 8, "crossover_density": density}],
        }

    path = tmp_path / "crossover.json"
    path.write_text(
        json.dumps(
            {
                "tables": [
                    table("compiled", elsewhere, 0.1),
                    table("torch", elsewhere, 0.2),
                    table("compiled", here, 0.3),
                ]
            }
        )
    )
    assert load_crossover(path, ops="compiled")[0]["crossover_density"] == 0.3
    assert load_crossover(path, ops="torch")[0]["crossover_density"] == 0.2  # measured elsewhere: the best there is
    path.write_text(json.dumps({"tables": [table("torch", None, 0.4)]}))
    assert load_crossover(path, ops="compiled")[0]["crossover_density"] == 0.4  # nothing closer

"""The measured choice of the sparse layers' implementations (src/sparse/choice.py), the fused
SGD step, the CPU key of the crossover tables and the AVX2 build of the kernels."""

import itertools
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from torch import nn

from src.sparse import Sparsifier, SparsityConfig, choice, kernels
from src.sparse.backend import SparseConv2d, SparseLinear, choose_backends, choose_ops, load_crossover
from tests.test_sparse_kernels import assert_same_as_masked

ROOT = Path(__file__).resolve().parents[1]
HAS_LIBRARY = kernels.ops_for(torch.zeros(1)).name == "compiled"
needs_library = pytest.mark.skipif(not HAS_LIBRARY, reason="compiled kernels unavailable or switched off")
CL = torch.channels_last


@pytest.fixture(autouse=True)
def fresh_choices(tmp_path, monkeypatch):
    """Trials of these tests measure here, not from another test's (or a sweep's) cache."""
    monkeypatch.setattr(choice, "_memory", {})
    monkeypatch.setattr(choice, "_made", {})
    monkeypatch.setattr(choice, "_cache_file", lambda: tmp_path / "choices.json")
    monkeypatch.delenv("DST_SPARSE_OPS", raising=False)
    monkeypatch.setattr(kernels, "_forced_torch", False)  # the tests give the implementations themselves


class Slowed:
    """An implementation made slow on purpose in some products (a sleep, then the real one)."""

    def __init__(self, ops, slow: set[str], name: str | None = None):
        self.ops, self.slow, self.name = ops, slow, name or ops.name

    def __getattr__(self, attr):
        fn = getattr(self.ops, attr)
        if attr not in self.slow:
            return fn

        def slowed(*args, **kwargs):
            time.sleep(0.05)  # far above any noise of a loaded machine
            return fn(*args, **kwargs)

        return slowed


def masked_pair(seed=0, out_f=200, in_f=300, density=0.05):
    torch.manual_seed(seed)
    dense, sparse = nn.Linear(in_f, out_f), nn.Linear(in_f, out_f)
    mask = torch.rand(out_f, in_f) < density
    with torch.no_grad():
        dense.weight.mul_(mask)
    sparse.load_state_dict(dense.state_dict())
    return dense, sparse, mask


def implementations_with(slow: set[str]) -> dict:
    """The compiled library (or, without it, torch's kernels under another name) slowed in
    ``slow``, and torch's kernels."""
    base = kernels.compiled_ops() if HAS_LIBRARY else kernels.TORCH_OPS
    return {"compiled": Slowed(base, slow, "compiled"), "torch": kernels.TORCH_OPS}


@pytest.mark.parametrize(
    "slow, expected",
    [
        ({"sampled"}, {"weight_grad": "torch"}),
        ({"spmm"}, {"forward": "torch", "input_grad": "torch"}),
    ],
)
def test_the_trial_picks_the_faster_implementation_and_the_results_are_the_same(slow, expected):
    impls = implementations_with(slow)
    dense, sparse, mask = masked_pair()
    if not HAS_LIBRARY:  # torch under two names: only products on the compiled layout are compared
        impls["compiled"].operand = kernels.TORCH_OPS.operand
    ops = choose_ops(sparse, int(mask.sum()), impls, batch=32)
    names = ops.names()
    for op, name in expected.items():
        assert names[op] == name, names
    layer = SparseLinear(sparse, mask, ops=names)
    assert_same_as_masked(dense, sparse, layer, mask)
    made = choice.choices()
    assert (
        len(made) == 1
        and made[0]["shape"] == [200, 300]
        and made[0]["ops"] == {k: v for k, v in names.items() if k != "sgd"}
    )


def test_the_default_stays_unless_another_is_faster_by_the_margin(monkeypatch):
    clock, calls = {"now": 0.0}, {"a": 0, "b": 0}
    monkeypatch.setattr(choice.time, "perf_counter", lambda: clock["now"])

    def taking(name, seconds):  # a call that takes exactly `seconds` on the trial's clock
        def fn():
            calls[name] += 1
            clock["now"] += seconds

        return fn

    # b is 5 % faster: within the margin, the default a stays; 4x faster: b.
    assert choice.fastest({"a": taking("a", 0.0040), "b": taking("b", 0.0038)}, "a")[0] == "a"
    winner, times = choice.fastest({"a": taking("a", 0.0040), "b": taking("b", 0.0010)}, "a")
    assert winner == "b" and times == pytest.approx({"a": 0.004, "b": 0.001})
    assert calls == {"a": 2 * choice.REPEATS, "b": 2 * choice.REPEATS}  # interleaved, every repeat


def test_a_trial_is_measured_once_then_read_from_the_disk_cache(tmp_path, monkeypatch):
    impls = implementations_with({"sampled"})
    _, sparse, mask = masked_pair()
    first = choose_ops(sparse, int(mask.sum()), impls, batch=32).names()
    assert (tmp_path / "choices.json").exists()
    monkeypatch.setattr(choice, "_memory", {})  # a new process on the same node

    def no_measuring(*args, **kwargs):
        raise AssertionError("measured again")

    monkeypatch.setattr(choice, "choose", no_measuring)
    assert choose_ops(sparse, int(mask.sum()), impls, batch=32).names() == first
    with pytest.raises(AssertionError, match="measured again"):  # another batch: another trial
        choose_ops(sparse, int(mask.sum()), impls, batch=64)


def test_forced_implementations_are_not_timed(monkeypatch):
    monkeypatch.setattr(choice, "choose", lambda *a, **k: pytest.fail("timed"))
    _, sparse, mask = masked_pair()
    monkeypatch.setenv("DST_SPARSE_OPS", "torch")
    impls = {"compiled": kernels.TORCH_OPS, "torch": kernels.TORCH_OPS}
    assert choose_ops(sparse, int(mask.sum()), impls).names()["forward"] == "torch"
    monkeypatch.setenv("DST_SPARSE_OPS", "fastest")
    with pytest.raises(ValueError, match=r"DST_SPARSE_OPS='fastest': allowed values are compiled, torch, measure"):
        choose_ops(sparse, int(mask.sum()), impls)


@needs_library
@pytest.mark.parametrize(
    "names",
    [
        {"layout": "compiled", "forward": f, "input_grad": i, "weight_grad": w}
        for f, i, w in itertools.product(("compiled", "torch"), repeat=3)
    ]
    + [dict.fromkeys(("layout", "forward", "input_grad", "weight_grad"), "torch")],
    ids=lambda n: "-".join(v[0] for v in n.values()),
)
def test_sparse_conv_on_every_implementation_matches_masked_conv(names):
    g = torch.Generator().manual_seed(0)
    dense = nn.Conv2d(6, 8, 3, padding=1).to(memory_format=CL)
    mask = torch.rand(dense.weight.shape, generator=g) < 0.3
    with torch.no_grad():
        dense.weight.mul_(mask)
    sparse = nn.Conv2d(6, 8, 3, padding=1).to(memory_format=CL)
    sparse.load_state_dict(dense.state_dict())
    layer = SparseConv2d(sparse, mask, ops=names)
    x = torch.randn(5, 6, 9, 9, generator=g).contiguous(memory_format=CL)
    xd, xs = x.clone().requires_grad_(), x.clone().requires_grad_()
    yd, ys = dense(xd), sparse(xs)
    torch.testing.assert_close(ys, yd, rtol=1e-5, atol=1e-5)
    grad = torch.randn(yd.shape, generator=g)
    yd.backward(grad)
    ys.backward(grad)
    torch.testing.assert_close(xs.grad, xd.grad, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(layer.scatter(layer.values.grad), dense.weight.grad * mask, rtol=1e-5, atol=1e-5)


def test_a_convolution_is_timed_on_the_input_size_it_sees():
    conv = nn.Conv2d(6, 8, 3)
    mask = torch.rand(conv.weight.shape) < 0.3
    impls = implementations_with({"sampled"})
    if not HAS_LIBRARY:
        impls["compiled"].operand = kernels.TORCH_OPS.operand
        impls["compiled"].result = kernels.TORCH_OPS.result
    assert choose_ops(conv, int(mask.sum()), impls, batch=8, input_size=(10, 10)).names()["weight_grad"] == "torch"
    assert choice.choices()[0]["input_size"] == [10, 10]


# ---------------------------------------------------------------------------- fused SGD
@needs_library
@pytest.mark.parametrize(
    "settings",
    [
        {"momentum": 0.9, "nesterov": True, "weight_decay": 5e-4},
        {"momentum": 0.9, "dampening": 0.1, "weight_decay": 1e-2},
        {"momentum": 0.0, "weight_decay": 1e-3},
    ],
)
def test_the_fused_sgd_step_equals_torch_sgd_on_the_dense_masked_weights(settings):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 48), nn.ReLU(), nn.Linear(48, 10))
    masked = nn.Sequential(nn.Linear(64, 48), nn.ReLU(), nn.Linear(48, 10))
    masked.load_state_dict(model.state_dict())
    cfg = {"density": 0.3, "init": "uniform", "include": ["0.weight"], "update_frequency": 10**6}
    runs = {}
    for name, net, backend in (("sparse", model, "sparse"), ("masked", masked, "masked")):
        opt = torch.optim.SGD(net.parameters(), lr=0.05, **settings)
        sp = Sparsifier(net, opt, SparsityConfig(backend=backend, **cfg), 100, seed=1).prepare()
        runs[name] = (net, opt, sp)
    sp = runs["sparse"][2]
    assert sp.backends == ["sparse"] and sp.kernel_choices()["0.weight"]["sgd"] == "fused"
    g = torch.Generator().manual_seed(2)
    for _ in range(6):
        x, y = torch.randn(16, 64, generator=g), torch.randint(0, 10, (16,), generator=g)
        for net, opt, s in runs.values():
            nn.functional.cross_entropy(net(x), y).backward()
            s.step()
            opt.zero_grad(set_to_none=True)
    layer = sp._execution.layers[0]
    torch.testing.assert_close(layer.scatter(layer.values), masked[0].weight, rtol=1e-5, atol=1e-6)
    if settings["momentum"]:
        buf = runs["sparse"][1].state[layer.values]["momentum_buffer"]
        dense_buf = runs["masked"][1].state[masked[0].weight]["momentum_buffer"]
        torch.testing.assert_close(layer.scatter(buf), dense_buf * sp.masks[0], rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------------------- auto and the CPU key
def test_auto_times_the_layers_when_no_table_was_measured_on_this_cpu(tmp_path, monkeypatch):
    """A table measured on a CPU with the same model name but another family (Zen 4's "AMD
    EPYC" on a Zen 1) is not this CPU's: `auto` times the layer itself, and decides by it."""
    import src.sparse.backend as backend

    cpu = kernels.cpu_info()
    other = {**cpu, "family": "not-" + str(cpu["family"])}
    ops = "compiled" if "compiled" in kernels.implementations(torch.zeros(1)) else "torch"
    table = {
        "kernels": ops,
        "cpu": other,
        "layers": [{"out_features": 200, "in_features": 300, "crossover_density": 1}],
    }
    path = tmp_path / "crossover.json"
    path.write_text(json.dumps({"tables": [table]}))
    monkeypatch.setattr(backend, "CROSSOVER_TABLE", path)
    assert load_crossover(ops=ops, here_only=True) is None
    assert load_crossover(ops=ops)[0]["crossover_density"] == 1  # what `auto` used before
    _, sparse, mask = masked_pair(density=0.5)
    for sparse_ms, masked_ms, expected in ((1.0, 2.0, "sparse"), (2.0, 1.0, "masked")):
        monkeypatch.setattr(
            backend, "layer_trial", lambda *a, s=sparse_ms, m=masked_ms, **k: {"sparse_ms": s, "masked_ms": m}
        )
        assert choose_backends("auto", [sparse.weight], [sparse], [mask]) == [expected]
    table["cpu"] = cpu  # measured here: the table decides, nothing is timed
    path.write_text(json.dumps({"tables": [table]}))
    monkeypatch.setattr(backend, "layer_trial", lambda *a, **k: pytest.fail("timed"))
    assert choose_backends("auto", [sparse.weight], [sparse], [mask]) == ["sparse"]


def test_auto_trial_really_measures_the_masked_layer():
    from src.sparse.backend import layer_trial

    linear = nn.Linear(300, 200)
    impls = kernels.implementations(linear.weight)
    out = layer_trial(linear, 3000, impls, 32, None, torch.float32, masked=True)
    assert out["masked_ms"] > 0 and out["sparse_ms"] > 0 and set(out["ops"]) == set(choice.OPERATIONS)


# ---------------------------------------------------------------------------- the AVX2 build
AVX2_CHECK = """
import torch
from src.sparse import kernels
from tests.test_sparse_kernels import random_csr
lib = kernels.library()
assert lib is not None
compiled = kernels.CompiledOps(lib)
torch.manual_seed(0)
for dtype in (torch.float32, torch.float64):
    for batch in (1, 63, 64, 65, 128, 129, 200):
        mask, (crow, col, t_crow, t_col, t_order) = random_csr(300, 170, 0.1, seed=batch)
        values = torch.randn(int(mask.sum()), dtype=dtype)
        weight = torch.zeros(300, 170, dtype=dtype).masked_scatter_(mask, values)
        x_t, grad_t = torch.randn(170, batch, dtype=dtype), torch.randn(300, batch, dtype=dtype)
        # float32 sums of up to 200 products in another order than torch's: errors of ~1e-5 are rounding
        tol = dict(rtol=1e-4, atol=1e-4) if dtype == torch.float32 else {}
        torch.testing.assert_close(compiled.spmm(crow, col, values, None, x_t, 300), weight @ x_t, **tol)
        torch.testing.assert_close(compiled.spmm(t_crow, t_col, values, t_order, grad_t, 170), weight.t() @ grad_t, **tol)
        torch.testing.assert_close(compiled.sampled(crow, col, grad_t, x_t), (grad_t @ x_t.t())[mask], **tol)
print(lib.path)
"""


@pytest.mark.skipif(
    shutil.which("objdump") is None or shutil.which(os.environ.get("CXX", "g++")) is None,
    reason="needs a C++ compiler and objdump",
)
@pytest.mark.skipif(not kernels.cpu_info()["flags"]["avx2"], reason="not an x86 CPU with AVX2")
@pytest.mark.parametrize("flags", ["", "-mno-avx512f"])
def test_both_builds_compute_the_products_with_their_own_vector_width(tmp_path, flags):
    """The AVX2 build (what an AVX2-only CPU gets; here by DST_EXT_FLAGS=-mno-avx512f) and the
    native one: the products right, and 32-byte vectors where there is no AVX-512."""
    env = {**os.environ, "DST_EXT_CACHE": str(tmp_path), "DST_EXT_FLAGS": flags, "PYTHONPATH": str(ROOT)}
    env.pop("DST_NO_EXT", None)
    proc = subprocess.run([sys.executable, "-c", AVX2_CHECK], capture_output=True, text=True, env=env, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    built = proc.stdout.strip().splitlines()[-1]
    code = subprocess.run(["objdump", "-d", built], capture_output=True, text=True, check=True).stdout
    uses_zmm = "%zmm" in code
    assert uses_zmm == (not flags and kernels.cpu_info()["flags"]["avx512f"])
    assert "%ymm" in code


def test_result_json_records_each_sparse_layers_implementations(tmp_path):
    from tests.test_sparse_backend import train_run
    from tests.test_train import tiny

    cfg = tiny(backend="sparse")
    cfg.train.epochs = 1
    cfg.train.save_model = False
    result = train_run(cfg, tmp_path / "run")
    recorded = json.loads((tmp_path / "run" / "result.json").read_text())["layer_kernels"]
    assert recorded == result["layer_kernels"]
    sparse = [name for name, b in result["layer_backend"].items() if b == "sparse"]
    assert sparse and sorted(recorded) == sorted(sparse)
    for names in recorded.values():
        assert set(names) == {*choice.OPERATIONS, "sgd"}
        assert set(names.values()) <= {"compiled", "torch", "fused"}


def test_a_first_layer_is_timed_without_the_input_gradient_it_never_computes():
    from src.sparse.backend import layer_inputs

    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 5))
    rng = torch.get_rng_state()
    sizes, grads = layer_inputs(model, [model[0], model[3]], (1, 8, 8))
    assert sizes == [(8, 8), None] and grads == [False, True]
    assert torch.equal(torch.get_rng_state(), rng) and all(p.grad is None for p in model.parameters())
    impls = implementations_with({"spmm"})
    if not HAS_LIBRARY:
        impls["compiled"].operand = kernels.TORCH_OPS.operand
        impls["compiled"].result = kernels.TORCH_OPS.result
    choose_ops(model[0], 20, impls, batch=4, input_size=(8, 8), input_grad=False)
    made = choice.choices()[-1]
    assert made["input_grad"] is False
    # the slowed product is not run for the input gradient: nothing is timed there
    assert all(t < 1 for layout in made["times_ms"].values() for t in layout["input_grad"].values())
    assert made["times_ms"]["compiled"]["forward"]["compiled"] > 40  # while the forward is slowed

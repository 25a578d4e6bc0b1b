"""The compiled sparse kernels against torch's and against dense arithmetic, and the fallback.

The training-level equivalence (masked vs sparse through topology updates, every criterion and
growth rule) is in test_sparse_backend.py and runs on the compiled kernels wherever they build.
"""

import itertools
import os
import shutil
import subprocess
import sys
import warnings

import pytest
import torch
from torch import nn

from src.sparse import kernels
from src.sparse.backend import SparseLinear, _csr_structure

# Under DST_NO_EXT=1 (or without a compiler) the process runs torch's kernels only.
needs_library = pytest.mark.skipif(
    kernels.ops_for(torch.zeros(1)).name != "compiled",
    reason="compiled kernels unavailable or switched off (DST_NO_EXT=1)",
)


def random_csr(rows, cols, density, seed, empty_rows=True):
    """(crow, col, t_crow, t_col, t_order) of a random pattern, some rows left empty."""
    g = torch.Generator().manual_seed(seed)
    mask = torch.rand(rows, cols, generator=g) < density
    if empty_rows and rows > 2:
        mask[::3] = False
    index = mask.reshape(-1).nonzero().squeeze(1)
    return mask, _csr_structure(index // cols, index % cols, (rows, cols))


# Batches around the kernels' chunks (128 float32 / 64 float64 numbers): below, at, across.
BATCHES = [1, 5, 63, 64, 65, 128, 129, 200]


@needs_library
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("batch", BATCHES)
@pytest.mark.parametrize("threads", [1, 2])
def test_compiled_products_equal_dense_arithmetic_and_torch(dtype, batch, threads):
    compiled, before = kernels.CompiledOps(kernels.library()), torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        rows, cols = 300, 170  # large enough at batch >= 64 for the kernels to go parallel
        mask, (crow, col, t_crow, t_col, t_order) = random_csr(rows, cols, 0.1, seed=batch)
        g = torch.Generator().manual_seed(1)
        values = torch.randn(int(mask.sum()), generator=g, dtype=dtype)
        weight = torch.zeros(rows, cols, dtype=dtype).masked_scatter_(mask, values)
        x_t = torch.randn(cols, batch, generator=g, dtype=dtype)
        grad_t = torch.randn(rows, batch, generator=g, dtype=dtype)
        tol = {"rtol": 1e-5, "atol": 1e-5} if dtype == torch.float32 else {"rtol": 1e-12, "atol": 1e-12}
        for ops in (compiled, kernels.TORCH_OPS):
            torch.testing.assert_close(ops.spmm(crow, col, values, None, x_t, rows), weight @ x_t, **tol)
            torch.testing.assert_close(
                ops.spmm(t_crow, t_col, values, t_order, grad_t, cols), weight.t() @ grad_t, **tol
            )
            torch.testing.assert_close(ops.sampled(crow, col, grad_t, x_t), (grad_t @ x_t.t())[mask], **tol)
    finally:
        torch.set_num_threads(before)


@needs_library
def test_compiled_products_take_a_value_index_strided_operands_and_empty_patterns():
    compiled = kernels.CompiledOps(kernels.library())
    mask, (crow, col, *_) = random_csr(40, 30, 0.2, seed=3)
    nnz = int(mask.sum())
    repeated = torch.randn(7, dtype=torch.float64)
    value_index = torch.randint(0, 7, (nnz,))
    weight = torch.zeros(40, 30, dtype=torch.float64).masked_scatter_(mask, repeated[value_index])
    x = torch.randn(70, 30, dtype=torch.float64)  # batch-outermost: its transpose is strided
    torch.testing.assert_close(compiled.spmm(crow, col, repeated, value_index, x.t(), 40), weight @ x.t())
    empty = torch.zeros(41, dtype=torch.int32), torch.zeros(0, dtype=torch.int32)
    assert torch.equal(compiled.spmm(*empty, torch.zeros(0), None, torch.randn(30, 9), 40), torch.zeros(40, 9))
    assert compiled.sampled(*empty, torch.randn(40, 9), torch.randn(30, 9)).shape == (0,)


# Every combination the measured choice can make: each product on either implementation over
# the compiled layout, and torch's own layout (strided views) with torch's products.
def assert_same_as_masked(dense, sparse, layer, mask, batch=32):
    """The sparse layer's output, input gradient and weight gradient equal the masked dense layer's."""
    x = torch.randn(batch, dense.in_features)
    xd, xs = x.clone().requires_grad_(), x.clone().requires_grad_()
    yd, ys = dense(xd), sparse(xs)
    torch.testing.assert_close(ys, yd, rtol=1e-5, atol=1e-5)
    grad = torch.randn_like(yd)
    yd.backward(grad)
    ys.backward(grad)
    torch.testing.assert_close(xs.grad, xd.grad, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(layer.scatter(layer.values.grad), dense.weight.grad * mask, rtol=1e-5, atol=1e-5)


COMBINATIONS = [
    {"layout": "compiled", "forward": f, "input_grad": i, "weight_grad": w}
    for f, i, w in itertools.product(("compiled", "torch"), repeat=3)
] + [dict.fromkeys(("layout", "forward", "input_grad", "weight_grad"), "torch")]


@needs_library
@pytest.mark.parametrize("batch", [3, 128, 130])
@pytest.mark.parametrize("names", COMBINATIONS, ids=lambda n: "-".join(v[0] for v in n.values()))
def test_sparse_linear_float32_on_every_implementation_matches_masked_linear(batch, names):
    torch.manual_seed(0)
    dense, sparse = nn.Linear(300, 200), nn.Linear(300, 200)
    mask = torch.rand(200, 300) < 0.05
    with torch.no_grad():
        dense.weight.mul_(mask)
    sparse.load_state_dict(dense.state_dict())
    layer = SparseLinear(sparse, mask, ops=names)
    assert {k: v for k, v in layer.ops.names().items() if k in names} == names
    assert_same_as_masked(dense, sparse, layer, mask, batch)
    torch.testing.assert_close(layer.pattern_grad(), layer.values.grad)


def test_ops_are_torch_for_other_devices_dtypes_and_inside_torch_only():
    assert kernels.ops_for(torch.zeros(2, device="meta")) is kernels.TORCH_OPS
    assert kernels.ops_for(torch.zeros(2, dtype=torch.bfloat16)) is kernels.TORCH_OPS
    with kernels.torch_only():
        assert kernels.ops_for(torch.zeros(2)) is kernels.TORCH_OPS
        layer = SparseLinear(nn.Linear(4, 3), torch.rand(3, 4) < 0.5)
    assert layer.ops.name == "torch" and layer.ops.sgd is None
    available = kernels.library() is not None and os.environ.get("DST_NO_EXT", "") in ("", "0")
    assert kernels.ops_for(torch.zeros(2)).name == ("compiled" if available else "torch")


def test_without_a_compiler_the_backend_falls_back_to_torch_with_one_notice(tmp_path, monkeypatch):
    monkeypatch.setenv("DST_EXT_CACHE", str(tmp_path))
    monkeypatch.setenv("CXX", str(tmp_path / "no-such-compiler"))
    kernels.library.cache_clear()
    kernels._compiler_version.cache_clear()
    try:
        with pytest.warns(RuntimeWarning, match=r"compiled sparse kernels unavailable .*torch's kernels"):
            assert kernels.library() is None
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # the notice comes once per process, not per layer
            assert kernels.ops_for(torch.zeros(2)) is kernels.TORCH_OPS
    finally:
        kernels.library.cache_clear()
        kernels._compiler_version.cache_clear()


@pytest.mark.skipif(shutil.which(os.environ.get("CXX", "g++")) is None, reason="no C++ compiler here")
def test_the_library_builds_into_a_fresh_cache_keyed_by_source_and_cpu(tmp_path):
    code = (
        "from src.sparse import kernels; lib = kernels.library(); print(kernels.library_path()); assert lib is not None"
    )
    env = {**os.environ, "DST_EXT_CACHE": str(tmp_path)}
    env.pop("DST_NO_EXT", None)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    path = tmp_path / "fantastic-dst" / os.path.basename(out.stdout.strip())
    assert path.exists() and path.name.startswith("sparse_kernels_")
    # the library, its record (key and SHA-256) and the builders' lock; no temporary left behind
    assert sorted(p.name for p in path.parent.iterdir()) == sorted([".lock", path.name, path.stem + ".json"])


@needs_library
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("shape", [(1, 1), (7, 3), (37, 70), (128, 3072)])  # odd tiles; the last parallel
def test_compiled_layout_moves_are_exact_transpositions(dtype, shape):
    compiled = kernels.CompiledOps(kernels.library())
    x = torch.randn(*shape, dtype=dtype)
    for moved in (compiled.operand(x.t()), compiled.result(x)):
        assert moved.is_contiguous() and torch.equal(moved, x.t())
    assert compiled.operand(x) is x

"""Where the sparse training step's time goes: each product of the MLP-CIFAR sparse layers, per
kernel implementation and thread count.

MLP-CIFAR 3072-1024-512-10, batch 128, ERK 0.05 and 0.02 (fc1 and fc2 run sparse, fc3 dense).
For each sparse layer: the forward product (with the transposition of its input into the
batch-innermost layout, which the first layer pays), the input gradient (transposed product;
the first layer needs none), the weight gradient at the pattern (``sampled``), and the SGD
Nesterov momentum step on its values; then the whole training step, and the dense GEMMs of the
same shapes for scale. Each with torch's kernels and with the compiled ones, on 1 and 2
threads, timed in interleaved rounds (medians). ``python -m bench.sparse_profile``.
"""

from __future__ import annotations

import contextlib
import os
import statistics

import torch

from src.sparse import SparsityConfig, kernels

from .common import median_time, setup_threads, write_result
from .sparse_backend import BATCH, _batch, _sgd, our_step


def layer_ops(layer, ops, x: torch.Tensor, first: bool) -> dict:
    """The timed pieces of one sparse Linear on ``ops``, with operands as training sees them."""
    out_f, in_f = layer.weight.shape
    x_t = ops.operand(x.t()) if first else ops.operand(torch.randn(in_f, BATCH))
    grad_t = ops.operand(torch.randn(out_f, BATCH))
    values = layer.values.detach()
    opt = _sgd([torch.nn.Parameter(values.clone())])
    opt.param_groups[0]["params"][0].grad = torch.randn_like(values)
    pieces = {
        "forward": (lambda: ops.spmm(layer.crow, layer.col, values, None, ops.operand(x.t()), out_f))
        if first
        else (lambda: ops.spmm(layer.crow, layer.col, values, None, x_t, out_f)),
        "input_grad": lambda: ops.spmm(layer.t_crow, layer.t_col, values, layer.t_order, grad_t, in_f),
        "weight_grad": lambda: ops.sampled(layer.crow, layer.col, grad_t, x_t),
        "optimizer": opt.step,
    }
    if first:  # the data needs no gradient
        del pieces["input_grad"]
    return pieces


@contextlib.contextmanager
def _forced(variant: str):
    before = os.environ.get("DST_SPARSE_OPS")
    os.environ["DST_SPARSE_OPS"] = variant
    try:
        yield
    finally:
        if before is None:
            del os.environ["DST_SPARSE_OPS"]
        else:
            os.environ["DST_SPARSE_OPS"] = before


def dense_ops(shape) -> dict:
    out_f, in_f = shape
    w, x, g = torch.randn(out_f, in_f), torch.randn(BATCH, in_f), torch.randn(BATCH, out_f)
    return {"forward": lambda: x @ w.t(), "input_grad": lambda: g @ w, "weight_grad": lambda: g.t() @ x}


def timed(pieces: dict, rounds: int, repeats: int) -> dict:
    for fn in pieces.values():
        fn(), fn()
    times = {k: [] for k in pieces}
    names = list(pieces)
    for r in range(rounds):
        for k in names[r % len(names) :] + names[: r % len(names)]:
            times[k].append(median_time(pieces[k], repeats))
    return {k: statistics.median(v) * 1e3 for k, v in times.items()}


def profile(density: float, threads: int, rounds: int = 9, repeats: int = 20) -> dict:
    torch.set_num_threads(threads)
    x = _batch()[0].flatten(1)
    out = {}
    for variant in ("torch", "compiled"):
        # every operation on one implementation (DST_SPARSE_OPS), not the measured mix
        with kernels.torch_only() if variant == "torch" else _forced(variant):
            sp, step = our_step(SparsityConfig(density=density, update_frequency=10**8, backend="auto"))
        layers = sp._execution.layers
        pieces = {}
        for n, (i, layer) in enumerate(layers.items()):
            if layer.ops.name != variant:
                raise RuntimeError(f"{sp.names[i]} runs {layer.ops.name}, not {variant}")
            for k, fn in layer_ops(layer, layer.ops.forward, x, first=n == 0).items():
                pieces[f"{sp.names[i]} {k}"] = fn
        pieces["step"] = step
        out[variant] = timed(pieces, rounds, repeats)
    dense = {}
    for i, layer in sp._execution.layers.items():
        for k, fn in dense_ops(tuple(layer.weight.shape)).items():
            dense[f"{sp.names[i]} {k}"] = fn
    out["dense_gemm"] = timed(dense, rounds, repeats)
    out["nnz"] = {sp.names[i]: int(layer.values.numel()) for i, layer in sp._execution.layers.items()}
    return out


def main() -> None:
    setup_threads(2)
    result = {f"{d} / {t} thread{'s' * (t > 1)}": profile(d, t) for d in (0.05, 0.02) for t in (1, 2)}
    setup_threads(2)
    path = write_result("sparse_profile", {"batch": BATCH, "profile": result})
    for name, r in result.items():
        print(f"ERK {name}: nnz {r['nnz']}")
        for piece in r["torch"]:
            dense = r["dense_gemm"].get(piece)
            print(
                f"  {piece:18s} torch {r['torch'][piece]:7.3f} ms  compiled {r['compiled'][piece]:7.3f} ms"
                + (f"  dense GEMM {dense:6.3f} ms" if dense else "")
            )
    print(f"wrote {path}")


if __name__ == "__main__":
    main()

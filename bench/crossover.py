"""Crossover density per Linear shape: below it the sparse backend's training step beats the
masked one. Writes the table that `sparsity.backend=auto` reads (src/sparse/crossover.json)
and a copy under bench/results/.

    python -m bench.crossover            # re-measure on this machine (2 threads, batch 128)

For each shape and density (uniform), one layer's training step — forward, backward with
the input gradient, SGD momentum step (and the mask for the masked backend) — is timed for
both backends in interleaved rounds; the per-round ratios' median gives sparse / masked. The
crossover is where that ratio crosses 1, interpolated in log density between measured points
(0 when sparse never wins, the largest measured density when it always does).
"""

from __future__ import annotations

import json
import math
import statistics
import time

import torch
from torch import nn

from src.sparse import Sparsifier, SparsityConfig
from src.sparse.backend import CROSSOVER_TABLE

from .common import median_time, setup_threads, write_result

# (out_features, in_features): the Linear layers of the registered models, plus a few more.
SHAPES = [(1024, 3072), (512, 1024), (10, 512), (1024, 784), (500, 800), (10, 500), (256, 256), (256, 24),
          (1, 256), (100, 512), (10, 128), (1000, 2048)]
DENSITIES = [0.01, 0.02, 0.05, 0.1, 0.2, 0.35, 0.5]


def layer_step(shape, density: float, backend: str, batch: int):
    torch.manual_seed(0)
    out_f, in_f = shape
    layer = nn.Linear(in_f, out_f)
    opt = torch.optim.SGD(layer.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    cfg = SparsityConfig(mode="static", density=density, init="uniform", backend=backend)
    sp = Sparsifier(layer, opt, cfg, total_steps=1).prepare()
    assert sp.backends == [backend]
    x = torch.randn(batch, in_f, requires_grad=True)
    g = torch.randn(batch, out_f)

    def step():
        layer(x).backward(g)
        sp.step()
        opt.zero_grad(set_to_none=True)
        x.grad = None

    return step


def ratio(shape, density: float, batch: int, rounds: int, repeats: int) -> tuple[float, float, float]:
    masked, sparse = layer_step(shape, density, "masked", batch), layer_step(shape, density, "sparse", batch)
    for fn in (masked, sparse):
        fn(), fn()
    m_t, s_t = [], []
    for r in range(rounds):
        pair = [(masked, m_t), (sparse, s_t)]
        for fn, times in pair[::-1] if r % 2 else pair:
            times.append(median_time(fn, repeats))
    return statistics.median(s / m for s, m in zip(s_t, m_t)), statistics.median(m_t), statistics.median(s_t)


def crossover(points: list[tuple[float, float]]) -> float:
    """Density where sparse/masked crosses 1 (log-density interpolation)."""
    if points[0][1] >= 1:
        return 0.0
    for (d0, r0), (d1, r1) in zip(points, points[1:]):
        if r0 < 1 <= r1:
            t = (0 - math.log(r0)) / (math.log(r1) - math.log(r0))
            return math.exp(math.log(d0) + t * (math.log(d1) - math.log(d0)))
    return points[-1][0]


def run(batch: int = 128, rounds: int = 5, repeats: int = 5, shapes=SHAPES, densities=DENSITIES) -> list[dict]:
    setup_threads(2)
    rows = []
    for shape in shapes:
        points, detail = [], []
        for d in densities:
            r, m, s = ratio(shape, d, batch, rounds, repeats)
            points.append((d, r))
            detail.append({"density": d, "sparse_over_masked": r, "masked_ms": m * 1e3, "sparse_ms": s * 1e3})
        rows.append({"out_features": shape[0], "in_features": shape[1], "batch": batch,
                     "crossover_density": crossover(points), "points": detail})
        print(f"Linear {shape[1]}->{shape[0]}: crossover density {rows[-1]['crossover_density']:.3f}  "
              + " ".join(f"{p['density']}:{p['sparse_over_masked']:.2f}" for p in detail), flush=True)
    return rows


def conv_probe(batch: int = 128, rounds: int = 5, repeats: int = 5) -> dict:
    """LeNet-5's conv2 (20 -> 50 channels, 5x5, 12x12 input) at its ERK density for overall
    density 0.05 (0.037): forward + backward of the dense convolution (the masked backend)
    against two sparse formulations on unfolded input columns (K x positions, K = c*kh*kw):
    ``unfold_csr``: forward CSR x columns, weight gradient by sampled_addmm at the active entries,
    input gradient by the transposed CSR and fold; ``unfold_csr_dense_input_grad``: the same
    with the input gradient of the dense transposed convolution (no fold). Convolutions run
    masked while both ratios are above 1: the unfold / fold copies (memory-bound, ~K x the
    input) cost more than the multiply-adds they save at this size."""
    from torch.nn import functional as F

    torch.manual_seed(0)
    c, o, k, h, density = 20, 50, 5, 12, 0.037
    x = torch.randn(batch, c, h, h)
    weight = torch.randn(o, c, k, k) * (torch.rand(o, c, k, k) < density)
    csr = weight.reshape(o, -1).to_sparse_csr()
    csr_t = weight.reshape(o, -1).t().to_sparse_csr()
    side = h - k + 1
    grad = torch.randn(batch, o, side, side)

    def dense():
        xx, w = x.clone().requires_grad_(), weight.clone().requires_grad_()
        F.conv2d(xx, w).backward(grad)

    def sparse_forward_and_weight_grad():
        cols = F.unfold(x, k).transpose(0, 1).reshape(c * k * k, batch * side * side)
        (csr @ cols).view(o, batch, side, side).permute(1, 0, 2, 3)
        g = grad.permute(1, 0, 2, 3).reshape(o, -1)
        torch.sparse.sampled_addmm(csr, g, cols.t(), beta=0.0)
        return g

    def unfold_csr():
        g = sparse_forward_and_weight_grad()
        F.fold((csr_t @ g).view(c * k * k, batch, side * side).transpose(0, 1), (h, h), k)

    def unfold_csr_dense_input_grad():
        sparse_forward_and_weight_grad()
        torch.nn.grad.conv2d_input(x.shape, weight, grad)

    variants = {"dense": dense, "unfold_csr": unfold_csr, "unfold_csr_dense_input_grad": unfold_csr_dense_input_grad}
    times = {name: [] for name in variants}
    for r in range(rounds):  # alternate the order so a load change hits every variant
        for name in (list(variants)[::-1] if r % 2 else list(variants)):
            times[name].append(median_time(variants[name], repeats))
    result = {"layer": "lenet5.conv2", "density": density, "batch": batch, "threads": torch.get_num_threads()}
    for name, ts in times.items():
        result[f"{name}_ms"] = statistics.median(ts) * 1e3
        if name != "dense":
            result[f"{name}_over_dense"] = statistics.median(s / d for s, d in zip(ts, times["dense"]))
    return result


def main(update_table: bool = True) -> None:
    """Measure; with ``update_table`` also replace the table `backend=auto` reads."""
    start = time.perf_counter()
    rows = run()
    conv = conv_probe()
    print(f"LeNet-5 conv2 at density {conv['density']}, forward + backward: dense {conv['dense_ms']:.2f} ms; "
          f"unfold x CSR x{conv['unfold_csr_over_dense']:.2f}, with the dense input gradient "
          f"x{conv['unfold_csr_dense_input_grad_over_dense']:.2f} (> 1: slower, convolutions run masked)")
    path = write_result("crossover", {"layers": rows, "conv": conv, "seconds": time.perf_counter() - start})
    print(f"wrote {path}")
    if update_table:
        table = {"measured": time.strftime("%Y-%m-%dT%H:%M:%S"), "threads": 2, "torch": torch.__version__,
                 "command": "python -m bench.crossover", "layers": rows}
        tmp = CROSSOVER_TABLE.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(table, indent=1))
        tmp.replace(CROSSOVER_TABLE)
        print(f"wrote {CROSSOVER_TABLE}")


if __name__ == "__main__":
    main()

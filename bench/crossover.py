"""Crossover density per layer shape: below it the sparse backend's training step beats the
masked one. Writes the table that `sparsity.backend=auto` reads (src/sparse/crossover.json)
and a copy under bench/results/.

    python -m bench.crossover            # re-measure on this machine (2 threads, batch 128)
    python -m bench.crossover --torch    # the same with torch's sparse kernels

The table is one per CPU and implementation of the sparse products (`src.sparse.kernels`):
the measurement replaces the table of this CPU model and these products and keeps the others.

For each Linear and convolution shape of the registered models and each density (uniform),
one layer's training step — forward, backward with the input gradient (none for a model's
first convolution, whose input is the data), SGD momentum step (and the mask for the masked
backend) — is timed for both backends in interleaved rounds, convolutions channels-last as
they train; the per-round ratios' median gives sparse / masked. The crossover is where that
ratio crosses 1, interpolated in log density between measured points (0 when sparse never
wins, the largest measured density when it always does). Densities are measured upwards
until sparse stops winning. Each convolution row records the input size it was measured on:
`auto` keys a convolution by its input positions too (`crossover_density`), since the same
weight crosses over at different densities on small and large maps.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import statistics
import sys
import time

import torch
from torch import nn

from src.sparse import Sparsifier, SparsityConfig, kernels
from src.sparse.backend import CROSSOVER_TABLE, _same_cpu

from .common import median_time, setup_threads, write_result

# (out_features, in_features): the Linear layers of the registered models, plus a few more.
SHAPES = [
    (1024, 3072),
    (512, 1024),
    (10, 512),
    (1024, 784),
    (500, 800),
    (10, 500),
    (256, 256),
    (256, 24),
    (1, 256),
    (100, 512),
    (10, 128),
    (1000, 2048),
]
# (out_channels, in_channels, kernel, input size, padding): the convolutions of LeNet-5, the
# small CIFAR ConvNet, ResNet-56's first two stages, and the VGG stages on 32x32 inputs.
CONV_SHAPES = [
    (20, 1, 5, 28, 0),
    (50, 20, 5, 12, 0),
    (32, 3, 3, 32, 0),
    (64, 32, 3, 15, 0),
    (128, 64, 3, 6, 0),
    (16, 16, 3, 32, 1),
    (32, 32, 3, 16, 1),
    (64, 3, 3, 32, 1),
    (64, 64, 3, 32, 1),
    (128, 128, 3, 16, 1),
    (256, 256, 3, 8, 1),
    (512, 512, 3, 4, 1),
]
DENSITIES = [0.01, 0.02, 0.05, 0.1, 0.2, 0.35, 0.5]


def make_layer(shape, batch: int) -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    """The layer, an input batch and an output gradient for a Linear (2-tuple) or conv shape."""
    if len(shape) == 2:
        out_f, in_f = shape
        return nn.Linear(in_f, out_f), torch.randn(batch, in_f, requires_grad=True), torch.randn(batch, out_f)
    c_out, c_in, k, size, padding = shape
    layer = nn.Conv2d(c_in, c_out, k, padding=padding).to(memory_format=torch.channels_last)
    x = torch.randn(batch, c_in, size, size).contiguous(memory_format=torch.channels_last)
    out = size + 2 * padding - k + 1
    g = torch.randn(batch, c_out, out, out).contiguous(memory_format=torch.channels_last)
    return layer, x.requires_grad_(c_in > 3), g


def layer_step(shape, density: float, backend: str, batch: int):
    torch.manual_seed(0)
    layer, x, g = make_layer(shape, batch)
    opt = torch.optim.SGD(layer.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    cfg = SparsityConfig(mode="static", density=density, init="uniform", backend=backend)
    sp = Sparsifier(layer, opt, cfg, total_steps=1).prepare()
    assert sp.backends == [backend]

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


def run(
    batch: int = 128, rounds: int = 5, repeats: int = 5, shapes=(*SHAPES, *CONV_SHAPES), densities=DENSITIES
) -> list[dict]:
    setup_threads(2)
    rows = []
    for shape in shapes:
        points, detail = [], []
        for d in densities:
            r, m, s = ratio(shape, d, batch, rounds, repeats)
            points.append((d, r))
            detail.append({"density": d, "sparse_over_masked": r, "masked_ms": m * 1e3, "sparse_ms": s * 1e3})
            if r >= 1:  # the crossover is found (or sparse never wins): denser is slower still
                break
        if len(shape) == 2:
            row, name = {"out_features": shape[0], "in_features": shape[1]}, f"Linear {shape[1]}->{shape[0]}"
        else:
            c_out, c_in, k, size, padding = shape
            row = {
                "out_channels": c_out,
                "in_channels": c_in,
                "kernel_size": [k, k],
                "input_size": [size, size],
                "padding": padding,
            }
            name = f"Conv2d {c_in}->{c_out} {k}x{k} on {size}x{size}"
        rows.append({**row, "batch": batch, "crossover_density": crossover(points), "points": detail})
        print(
            f"{name}: crossover density {rows[-1]['crossover_density']:.3f}  "
            + " ".join(f"{p['density']}:{p['sparse_over_masked']:.2f}" for p in detail),
            flush=True,
        )
    return rows


def main(update_table: bool = True, torch_kernels: bool = False) -> None:
    """Measure; with ``update_table`` also replace this CPU's table in the file `backend=auto` reads."""
    start = time.perf_counter()
    with kernels.torch_only() if torch_kernels else contextlib.nullcontext():
        ops = kernels.ops_for(torch.zeros(1)).name
        rows = run()
    path = write_result(f"crossover_{ops}", {"kernels": ops, "layers": rows, "seconds": time.perf_counter() - start})
    print(f"wrote {path}")
    if update_table:
        cpu = kernels.cpu_info()
        table = {
            "measured": time.strftime("%Y-%m-%dT%H:%M:%S"),
            "threads": 2,
            "torch": torch.__version__,
            "command": "python -m bench.crossover" + " --torch" * torch_kernels,
            "kernels": ops,
            "cpu": cpu,
            "load_average": list(os.getloadavg()),
            "layers": rows,
        }
        tables = json.loads(CROSSOVER_TABLE.read_text()).get("tables", []) if CROSSOVER_TABLE.exists() else []
        tables = [t for t in tables if not (t.get("kernels") == ops and _same_cpu(t.get("cpu"), cpu))]
        from src.rundir import atomic_write_text

        atomic_write_text(CROSSOVER_TABLE, json.dumps({"tables": [table, *tables]}, indent=1))
        print(f"wrote {CROSSOVER_TABLE}")


if __name__ == "__main__":
    main(torch_kernels="--torch" in sys.argv[1:])

"""Per-step overhead of the Sparsifier and the cost of one topology update.

For each model at density 0.05 (2 threads, batch 128, SGD Nesterov):
(a) step_ratio = median DST step time between updates / median dense step time;
(b) update_ratio = one topology update / one training step.
Dense and DST steps are timed in short interleaved rounds (alternating which goes first), and
the ratio is the median of the per-round ratios, so that drift in machine load hits both.
"""

from __future__ import annotations

import statistics

import torch
from torch import nn

from src.models import build_model, model_info
from src.sparse import Sparsifier, SparsityConfig

from .common import median_time, setup_threads, write_result

SETUPS = {"lenet5": 10, "mlp_cifar10": 10}


def _trainer(name: str, cfg: SparsityConfig, batch: int = 128):
    torch.manual_seed(0)
    info = model_info(name)
    fmt = torch.channels_last if info.is_conv else torch.contiguous_format
    model = build_model(name).to(memory_format=fmt)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, nesterov=True, weight_decay=5e-4)
    sp = Sparsifier(model, opt, cfg, total_steps=10**9).prepare(info.input_shape)
    x = (
        torch.randn(batch, *info.input_shape).contiguous(memory_format=fmt)
        if info.is_conv
        else torch.randn(batch, *info.input_shape)
    )
    y = torch.randint(0, info.default_num_classes, (batch,))

    def step():
        nn.functional.cross_entropy(model(x), y).backward()
        sp.step()
        opt.zero_grad(set_to_none=True)

    def backward_only():
        nn.functional.cross_entropy(model(x), y).backward()

    return sp, step, backward_only


def run(rounds: int = 21, steps: int = 15) -> dict:
    setup_threads(2)
    out = {}
    for name in SETUPS:
        dst_cfg = SparsityConfig(density=0.05, update_frequency=10**8, criterion="magnitude", growth="random")
        _, dense_step, _ = _trainer(name, SparsityConfig(mode="dense"))
        sp, dst_step, backward = _trainer(name, dst_cfg)
        for fn in (dense_step, dst_step):
            for _ in range(5):
                fn()
        dense_t, dst_t = [], []
        for r in range(rounds):
            order = [(dense_step, dense_t), (dst_step, dst_t)]
            for fn, times in order[::-1] if r % 2 else order:
                times.append(median_time(fn, steps))
        dense, dst = statistics.median(dense_t), statistics.median(dst_t)
        ratio = statistics.median(s / d for s, d in zip(dst_t, dense_t))
        backward()  # the update reads the gradients of the last backward pass
        update = median_time(sp.update, 9)
        apply = median_time(sp.apply_masks, 50)
        out[name] = {
            "density": 0.05,
            "dense_step_ms": dense * 1e3,
            "dst_step_ms": dst * 1e3,
            "mask_apply_ms": apply * 1e3,
            "update_ms": update * 1e3,
            "step_ratio": ratio,
            "step_ratio_target": 1.05,
            "update_ratio": update / dst,
        }
    return out


def main() -> None:
    result = run()
    path = write_result("sparse_step", {"setups": result})
    for name, r in result.items():
        print(
            f"{name}: dense {r['dense_step_ms']:.2f} ms, DST {r['dst_step_ms']:.2f} ms "
            f"(x{r['step_ratio']:.3f}), mask apply {r['mask_apply_ms']:.3f} ms, "
            f"update {r['update_ms']:.2f} ms (= {r['update_ratio']:.2f} steps)"
        )
    print(f"wrote {path}")


if __name__ == "__main__":
    main()

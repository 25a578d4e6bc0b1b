"""Data-parallel training: joining the process group torchrun's variables describe (the launch
side exports them for a multi-task SLURM job, `src.execute.environment`), and agreeing
across ranks on when to stop."""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0


def is_main_process() -> bool:
    """Rank 0 (or no process group), before the group exists: torchrun's RANK."""
    return int(os.environ.get("RANK", "0")) == 0


def init_distributed(device_kind: str) -> Dist:
    """Join the process group when launched as several processes (WORLD_SIZE > 1)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Dist()
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device_kind == "cuda" else "gloo")
    return Dist(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))


def agree(flag: bool, ddp: Dist, device) -> bool:
    """True if any rank's flag is true (the flag itself in a single process)."""
    if ddp.world == 1:
        return flag
    t = torch.tensor([float(flag)], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


def divergence(acc, ddp: Dist, device) -> dict | None:
    """The first non-finite loss of this rank, or of any rank (all ranks stop together)."""
    diverged = acc.divergence()
    if agree(diverged is not None, ddp, device):
        return diverged or {"step": None, "reason": "non-finite training loss on another rank"}
    return None

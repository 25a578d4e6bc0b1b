"""DDP on CPU with the gloo backend and two processes: masks stay identical across ranks
and are synchronised only when the topology changes."""

import os
import socket
import subprocess
import sys

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from src.rundir import read_metrics, read_result
from src.sparse import Sparsifier, SparsityConfig


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world: int, port: int, out: dict):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(20, 32), nn.ReLU(), nn.Linear(32, 5))
    net = nn.parallel.DistributedDataParallel(model)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    cfg = SparsityConfig(density=0.3, criterion="snip", growth="random", update_frequency=4)
    sp = Sparsifier(model, opt, cfg, total_steps=100, seed=0).prepare()
    syncs = []
    original = sp._sync_masks
    sp._sync_masks = lambda: (syncs.append(sp.steps), original())[1]
    g = torch.Generator().manual_seed(100 + rank)  # each rank sees different data
    for _ in range(12):
        x, y = torch.randn(16, 20, generator=g), torch.randint(0, 5, (16,), generator=g)
        nn.functional.cross_entropy(net(x), y).backward()
        sp.step()
        opt.zero_grad(set_to_none=True)
    flat = torch.cat([m.flatten() for m in sp.masks] + [p.detach().flatten() for p in model.parameters()])
    gathered = [torch.zeros_like(flat) for _ in range(world)]
    dist.all_gather(gathered, flat)
    out[rank] = {"identical": all(torch.equal(gathered[0], t) for t in gathered), "syncs": syncs}
    dist.destroy_process_group()


def test_masks_identical_across_ranks_and_synced_only_at_updates():
    manager = mp.Manager()
    out = manager.dict()
    mp.spawn(_worker, args=(2, _free_port(), out), nprocs=2, join=True)
    for rank in (0, 1):
        assert out[rank]["identical"]
        assert out[rank]["syncs"] == [4, 8, 12]  # at the updates, never between them


@pytest.mark.slow
def test_trainer_under_torchrun_two_processes(tmp_path):
    args = [
        "model.name=lenet5",
        "data.name=synthetic",
        "data.kwargs.input_shape=[1,28,28]",
        "data.kwargs.num_classes=10",
        "data.kwargs.num_train=640",
        "data.kwargs.class_separation=30.0",
        "data.batch_size=32",
        "train.epochs=2",
        "train.threads=1",
        "sparsity.density=0.5",
        "sparsity.update_frequency=3",
        "train.save_model=true",
    ]
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node=2",
        "--master_addr=127.0.0.1",
        f"--master_port={_free_port()}",
        "-m",
        "src.train",
        *args,
        "--run-dir",
        str(tmp_path),
    ]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    result = read_result(tmp_path)
    assert result["status"] == "completed"
    assert result["steps"] == 2 * 9  # 576 training samples / 2 ranks / batch 32 = 9 steps per epoch
    assert len(read_metrics(tmp_path, "epoch")) == 2  # one writer: rank 0
    assert [u["step"] for u in read_metrics(tmp_path, "update")] == [3, 6, 9, 12, 15]

"""Shared helpers for the benchmarks: thread setup, timing, atomic JSON results."""

from __future__ import annotations

import json
import os
import platform
import statistics
import time
from pathlib import Path

import torch

from src.sparse import choice, kernels

RESULTS = Path(__file__).parent / "results"


def setup_threads(n: int = 2) -> None:
    torch.set_num_threads(n)
    os.environ["OMP_NUM_THREADS"] = str(n)


def median_time(fn, repeats: int) -> float:
    """Median wall time of ``fn()`` over ``repeats`` calls, in seconds."""
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def write_result(name: str, payload: dict) -> Path:
    """Write ``bench/results/<name>.json`` atomically, with the machine it ran on: figures from
    different CPUs differ (vector width, cores), so each result names its CPU and the sparse
    kernels the process had."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    payload = {
        "benchmark": name,
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "machine": platform.machine(),
        "cpus": os.cpu_count(),
        "cpu": kernels.cpu_info(),
        "sparse_kernels": kernels.ops_for(torch.zeros(1)).name,
        "kernel_build": {"flags": kernels.build_flags(), "key": kernels.build_key()[:16]},
        # every per-layer, per-operation choice of implementation this process made (src/sparse/choice.py)
        "kernel_choices": choice.choices(),
        "load_average": list(os.getloadavg()),
        "time": time.strftime("%Y-%m-%dT%H:%M:%S"),
        **payload,
    }
    if extra := kernels.extra_flags():  # another build of the kernels: its own file
        name += "_" + "".join(c if c.isalnum() else "_" for c in "".join(extra)).strip("_")
    path = RESULTS / f"{name}.json"
    from src.rundir import atomic_write_text

    atomic_write_text(path, json.dumps(payload, indent=2))
    return path

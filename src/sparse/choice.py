"""Which implementation runs each operation of a sparse layer, chosen by measurement.

The fastest implementation of a sparse product differs per CPU (vector width, cores), per
operation and per layer shape: on an AVX2-only CPU torch's forward product beat the compiled
one while the compiled weight gradient beat torch's, on an AVX-512 one the compiled products
won everywhere. So each sparse layer times the implementations it can run (`kernels`: the
compiled library and torch's CSR kernels) on its own shapes, density and batch, for each
operation:

- ``layout``: moving the dense operands into the layout the products read (the compiled tiled
  transposition, or torch's strided views as they are) and the results back;
- ``forward``: the layer's product; ``input_grad``: the transposed product; ``weight_grad``:
  the gradient at the active entries.

A trial is a few interleaved repeats of every candidate (`REPEATS`; each candidate's fastest
run counts, which load on a shared machine distorts least), and a candidate replaces the
default (the compiled library where it is available) only when it is faster by more than
`MARGIN` -- a close call under load must not flip the choice from run to run. Trials are cached
in memory and on disk beside the compiled library (`kernels.cache_dir`), keyed by the CPU (model
and vector extensions), the library build, torch, the thread count and the layer's shapes, so a
sweep pays them once per node; `choices` lists what this process chose (recorded in every
benchmark's JSON; a run's result.json records its layers' choices).

``DST_SPARSE_OPS=compiled|torch`` forces one implementation for every operation (``DST_NO_EXT=1``
implies torch); nothing is timed then.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import torch

from . import kernels

OPERATIONS = ("layout", "forward", "input_grad", "weight_grad")
REPEATS = 7
MIN_REPEATS = 3
ROUNDS_BUDGET_S = 0.08
MARGIN = 0.12
CHOICES_FILE = "choices.json"
TRIAL_VERSION = 2  # part of the cache key: a changed procedure measures again

_memory: dict[str, dict] = {}
_made: dict[str, dict] = {}  # what this process chose, by key (for the benchmarks' JSON)


@dataclass
class LayerOps:
    """The implementation of each operation of one sparse layer (each a `kernels` ops object),
    and the fused optimizer step when the compiled library is there."""

    layout: kernels.Ops
    forward: kernels.Ops
    input_grad: kernels.Ops
    weight_grad: kernels.Ops
    sgd: object | None = None

    @classmethod
    def uniform(cls, ops) -> LayerOps:
        return cls(ops, ops, ops, ops, ops if hasattr(ops, "sgd") else None)

    def names(self) -> dict[str, str]:
        names = {op: getattr(self, op).name for op in OPERATIONS}
        names["sgd"] = "fused" if self.sgd is not None else "torch"
        return names

    @property
    def name(self) -> str:
        """'compiled' or 'torch' when every product runs on one, 'mixed' otherwise."""
        used = {getattr(self, op).name for op in OPERATIONS}
        return used.pop() if len(used) == 1 else "mixed"


def forced() -> str | None:
    """The implementation ``DST_SPARSE_OPS`` (or ``DST_NO_EXT``, `kernels.torch_only`) forces."""
    if kernels.torch_forced():
        return "torch"
    value = os.environ.get("DST_SPARSE_OPS", "").strip()
    if value in ("", "measure", "auto"):
        return None
    if value not in ("compiled", "torch"):
        raise ValueError(f"DST_SPARSE_OPS={value!r}: allowed values are compiled, torch, measure")
    return value


def from_names(names: dict[str, str], impls: Mapping[str, kernels.Ops]) -> LayerOps:
    """The `LayerOps` that ``names`` (as `LayerOps.names` gives them) describe."""
    default = impls.get("compiled", kernels.TORCH_OPS)
    ops = {op: impls.get(names.get(op, ""), default) for op in OPERATIONS}
    compiled = impls.get("compiled")
    sgd = compiled if names.get("sgd", "fused") == "fused" and hasattr(compiled, "sgd") else None
    return LayerOps(**ops, sgd=sgd)


def fastest(candidates: dict[str, Callable[[], object]], default: str, repeats: int = REPEATS) -> tuple[str, dict]:
    """The fastest of ``candidates`` (name -> call) in interleaved rounds, each one's best time
    counting; ``default`` unless another is faster by more than `MARGIN`. Also returns the times
    (s). Rounds stop early (after `MIN_REPEATS`) once they took `ROUNDS_BUDGET_S`: on a loaded
    machine a layer's trial stays within about a second."""
    names = list(candidates)
    best = dict.fromkeys(names, math.inf)
    started = time.perf_counter()
    for r in range(repeats):
        if r >= MIN_REPEATS and time.perf_counter() - started > ROUNDS_BUDGET_S:
            break
        for name in names[r % len(names) :] + names[: r % len(names)]:  # rotate who goes first
            start = time.perf_counter()
            candidates[name]()
            best[name] = min(best[name], time.perf_counter() - start)
    winner = min(best, key=best.__getitem__)
    if default in best and best[winner] >= (1 - MARGIN) * best[default]:
        winner = default
    return winner, best


def choose(trial: Callable[[object], dict], impls: dict[str, object], repeats: int = REPEATS) -> dict:
    """Per-operation choice between ``impls`` (name -> ops). ``trial(layout_ops)`` gives, with
    the operands laid out by ``layout_ops``: {"layout": call, "forward": {name: call}, ...}.
    For each layout the fastest implementation of each product counts; the layout with the
    least total wins. Returns {"ops": names, "sparse_ms": total, "times_ms": per layout,
    "trial_s": the trial's own wall time}."""
    default = "compiled" if "compiled" in impls else next(iter(impls))
    totals, picks, times, started = {}, {}, {}, time.perf_counter()
    for layout_name, layout in impls.items():
        fns = trial(layout)
        _, layout_time = fastest({layout_name: fns["layout"]}, layout_name, repeats)
        pick, total, detail = {"layout": layout_name}, layout_time[layout_name], {"layout": layout_time[layout_name]}
        for op in OPERATIONS[1:]:
            name, op_times = fastest(fns[op], default, repeats)
            pick[op], total = name, total + op_times[name]
            detail[op] = op_times
        totals[layout_name], picks[layout_name], times[layout_name] = total, pick, detail
    layout = min(totals, key=totals.__getitem__)
    if default in totals and totals[layout] >= (1 - MARGIN) * totals[default]:
        layout = default
    ms = {
        lay: {op: (v * 1e3 if not isinstance(v, dict) else {k: t * 1e3 for k, t in v.items()}) for op, v in d.items()}
        for lay, d in times.items()
    }
    trial_s = time.perf_counter() - started
    return {"ops": picks[layout], "sparse_ms": totals[layout] * 1e3, "times_ms": ms, "trial_s": trial_s}


def key(spec: dict) -> str:
    """The cache key of a trial: the CPU, the library build, torch, threads and the layer."""
    cpu = kernels.cpu_info()
    build = kernels.build_key()[:16] if "compiled" in spec.get("implementations", ()) else "torch-only"
    machine = f"{cpu['model']}|{cpu.get('family', '')}/{cpu.get('model_id', '')}|{cpu['all_flags_sha1']}"
    return json.dumps(
        {
            "cpu": machine,
            "build": build,
            "torch": torch.__version__,
            "threads": torch.get_num_threads(),
            "trial": TRIAL_VERSION,
            **spec,
        },
        sort_keys=True,
    )


def cached(spec: dict, measure: Callable[[], dict]) -> dict:
    """The trial for ``spec`` from memory, else from the disk cache, else ``measure()`` (stored)."""
    k = key(spec)
    if k not in _memory:
        stored = _read_disk().get(k)
        _memory[k] = stored if isinstance(stored, dict) and "ops" in stored else measure()
        if stored is not _memory[k]:
            _write_disk(k, _memory[k])
    _made[k] = _memory[k]
    return _memory[k]


def choices() -> list[dict]:
    """Every choice this process made: the layer, where it was measured, and what won."""
    return [{**json.loads(k), **v} for k, v in _made.items()]


def _cache_file() -> Path | None:
    try:
        return kernels._checked_dir(kernels.cache_dir()) / CHOICES_FILE
    except (OSError, kernels.UntrustedCache):
        return None  # measured again by every process: slower, never wrong


def _read_disk() -> dict:
    path = _cache_file()
    data = kernels._read_trusted(path) if path is not None else None
    if data is None:
        return {}
    try:
        content = json.loads(data)
    except ValueError:
        return {}
    return content if isinstance(content, dict) else {}


def _write_disk(k: str, value: dict) -> None:
    path = _cache_file()
    if path is None:
        return
    with contextlib.suppress(OSError), kernels._locked(path.parent):
        content = {**_read_disk(), k: value}
        fd, tmp = tempfile.mkstemp(prefix=".choices-", dir=path.parent)
        try:
            with os.fdopen(fd, "w") as f:
                json.dump(content, f)
            os.replace(tmp, path)
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)

"""What a launch commits to, said before it starts: its runs x epochs, and how long that takes
on this kind of machine where a rate is known.

    6 run(s); 0 already finished (will be skipped); to train: 6 x 100 epochs = 600 epochs
    estimate: 1.1 run-hours (6.6 s/epoch for lenet5 on fashion_mnist, dst (measured: ..., AMD EPYC x1)); about 33 min here, 2 run(s) at a time

A rate is seconds per epoch (wall time of a run over its epochs: training, evaluation and
start-up) for a (model, dataset, batch size, mode) on a machine (the CPU model, the same thread count
preferred, or the GPU model). It is learned from the completed runs under the launch's runs_root that ran
on this machine (the median of the closest ones: same density first), else taken from the
committed table of measured rates (`epoch_seconds.json`, with where each was measured).
"""

from __future__ import annotations

import json
import os
import statistics
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from .rundir.state import duration

TABLE = Path(__file__).with_name("epoch_seconds.json")
MAX_RECORDS = 2000  # result.json files read per launch at most (the newest sweeps' first)


@dataclass(frozen=True)
class Rate:
    seconds_per_epoch: float
    source: str  # "3 runs under runs/" / "the measured table (where)"


def machine(device: str) -> str:
    """`cpu:<model>` or `gpu:<model>`: what a rate is valid for (with its thread count)."""
    if device.startswith("cuda"):
        import torch  # only for a GPU run's device name: the launch stays light

        return f"gpu:{torch.cuda.get_device_name() if torch.cuda.is_available() else 'unknown'}"
    from .sparse.kernels import cpu_info  # (torch, imported by the kernels module)

    return f"cpu:{cpu_info()['model']}"


def _kind(config: dict) -> tuple:
    return (config["model"]["name"], config["data"]["name"], config["data"]["batch_size"], config["sparsity"]["mode"])


def _density(config: dict) -> float:
    return 1.0 if config["sparsity"]["mode"] == "dense" else float(config["sparsity"]["density"])


def learned_rates(runs_root: Path) -> dict[tuple, list[tuple[float, int, float, str]]]:
    """(kind, machine) -> [(density, threads, seconds per epoch, source)] of the completed runs under runs_root."""
    found: dict[tuple, list[tuple[float, int, float, str]]] = {}
    try:
        sweeps = sorted((p for p in Path(runs_root).iterdir() if p.is_dir()), key=os.path.getmtime, reverse=True)
    except OSError:
        return found
    read = 0
    for sweep in sweeps:
        for path in sweep.glob("*/result.json"):
            if read >= MAX_RECORDS:
                return found
            read += 1
            try:
                result = json.loads(path.read_text())
                config, epochs = result["config"], int(result["epochs_completed"])
                if result["status"] != "completed" or epochs < 1 or result["resumed_at_steps"]:
                    continue  # (a resumed run's wall time covers only its last attempt)
                gpu = str(config["train"].get("device", "cpu")).startswith("cuda")
                where = f"gpu:{result['gpu_model']}" if gpu else f"cpu:{result['cpu_model']}"
                rate = (_density(config), int(result["threads"] or 1), result["wall_time"] / epochs, "")
                found.setdefault((_kind(config), where), []).append(rate)
            except (OSError, ValueError, KeyError, TypeError):
                continue
    return found


def table_rates() -> dict[tuple, list[tuple[float, int, float, str]]]:
    """(kind, machine) -> [(density, threads, seconds per epoch, where measured)] from the committed table."""
    rates: dict[tuple, list[tuple[float, int, float, str]]] = {}
    for e in json.loads(TABLE.read_text())["rates"]:
        key = ((e["model"], e["data"], e["batch_size"], e["mode"]), e["machine"])
        rates.setdefault(key, []).append((e["density"], e["threads"], e["seconds_per_epoch"], e["measured"]))
    return rates


def _closest(entries: list, density: float, threads: int) -> list:
    """The entries nearest the run: the same thread count first, then the nearest density."""
    distance = [(e[1] != threads, abs(e[0] - density)) for e in entries]
    return [e for e, d in zip(entries, distance) if d == min(distance)]


def rate_for(config: dict, here: str, threads: int, learned: dict, table: dict, runs_root: Path) -> Rate | None:
    key = (_kind(config), here)
    for known, source in ((learned, f"completed run(s) under {runs_root}"), (table, "measured")):
        if key in known:
            near = _closest(known[key], _density(config), threads)
            what = f"{len(near)} {source}" if known is learned else f"measured: {near[0][3]}"
            return Rate(statistics.median(e[2] for e in near), f"{what}, {here.split(':', 1)[1]} x{near[0][1]}")
    return None


def estimate(jobs: Iterable, *, workers: int | None, threads: int = 1) -> list[str]:
    """The lines a launch prints before it starts: runs x epochs, and the time where known.
    ``workers``: runs at a time on this machine (None: a cluster, where only run-hours are said);
    ``threads``: each run's threads where its config does not set them."""
    jobs = list(jobs)
    todo = [job for job in jobs if job.finished is None]
    lines = [f"{len(jobs)} run(s); {len(jobs) - len(todo)} already finished (will be skipped)"]
    if todo:
        epochs = sorted({job.config.train.epochs for job in todo})
        each = f"{epochs[0]} epoch{'s' * (epochs[0] > 1)}" if len(epochs) == 1 else f"{epochs[0]}-{epochs[-1]} epochs"
        lines[0] += f"; to train: {len(todo)} x {each} = {sum(job.config.train.epochs for job in todo)} epochs"
    if not todo:
        return lines
    runs_root = todo[0].run_dir.parent.parent  # runs_root/<name>/<run>
    learned, table, seconds = learned_rates(runs_root), table_rates(), 0.0
    unknown: set = set()
    sources: dict = {}
    for job in todo:
        config = job.config_dict()
        here = machine(config["train"].get("device", "cpu"))
        rate = rate_for(config, here, config["train"].get("threads") or threads, learned, table, runs_root)
        if rate is None:
            unknown.add(f"{config['model']['name']} on {config['data']['name']} ({config['sparsity']['mode']})")
            continue
        seconds += rate.seconds_per_epoch * config["train"]["epochs"]
        kind = f"{config['model']['name']} on {config['data']['name']}, {config['sparsity']['mode']}"
        sources.setdefault(kind, rate)
    if seconds:
        rates = "; ".join(
            f"{rate.seconds_per_epoch:.1f} s/epoch for {kind} ({rate.source})"
            for kind, rate in list(sources.items())[:3]
        )
        line = f"estimate: {seconds / 3600:.1f} run-hours ({rates}{'; ...' if len(sources) > 3 else ''})"
        if workers:
            line += f"; about {duration(seconds / min(workers, len(todo)))} here, {workers} run(s) at a time"
        lines.append(line)
    if unknown:
        lines.append(
            f"estimate: no measured rate on this machine for {', '.join(sorted(unknown))}; "
            "the next launch learns it from the runs that complete"
        )
    return lines

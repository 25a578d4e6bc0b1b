"""The cost of training: each run's training and inference FLOPs (`src.sparse.flops`), as a
fraction of the dense model's, next to its accuracy.

Runs record their FLOPs in result.json (``flops.*`` columns of the runs table). Older
records carry none: their FLOPs are counted here from what they do record, with the same
counting (`src.sparse.flops.run_flops`): the model's layer shapes from its config, the
per-layer active counts of each update line of metrics.jsonl and the final per-layer
densities; where those are missing too, the updates the schedule made (``topology_updates``
every ``update_frequency`` steps) at the layers' initial densities, which is exact for the
growth rules that keep every layer's count. The ``flops_source`` column says which.
Counting older records builds models on the meta device, so this module imports torch then.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd

from src.rundir.files import CONFIG, read_metrics

from . import columns as C
from .grid import completed

COLUMNS = ("flops.train", "flops.train_fraction", "flops.inference", "flops.inference_fraction")
RECORDED, FROM_RECORDS, FROM_SCHEDULE = "recorded", "counted from the records", "counted from config and schedule"


def run_costs(runs: pd.DataFrame) -> pd.DataFrame:
    """The completed trained runs with their FLOPs columns filled in and ``flops_source``."""
    done = completed(runs)
    done = done[done[C.KIND].isin(["dense", "static", "dst"])].copy()
    for name in COLUMNS:
        if name not in done:
            done[name] = np.nan
    done["flops_source"] = np.where(done["flops.train"].notna(), RECORDED, "")
    missing = done.index[done["flops.train"].isna()]
    for index in missing:
        counted, source = _count(done.loc[index])
        if counted is not None:
            for name in COLUMNS:
                done.loc[index, name] = counted[name.split(".", 1)[1]]
            done.loc[index, "flops_source"] = source
    return done


def _count(run: pd.Series) -> tuple[dict | None, str]:
    from src.sparse.flops import record_flops  # torch: only for older records, which carry no FLOPs

    run_dir = Path(run[C.RUN_DIR])
    try:
        config = json.loads((run_dir / CONFIG).read_text())
    except (OSError, ValueError):
        return None, ""
    steps, total = run.get("steps"), run.get("total_steps")
    epochs = config["train"]["epochs"]
    if _blank(steps) or _blank(total) or not epochs:
        return None, ""
    steps, total = int(steps), int(total)
    updates = read_metrics(run_dir, "update")
    source = FROM_RECORDS
    final = _json(run.get("achieved_layer_density"))
    if config["sparsity"]["mode"] == "dst" and not updates and not _blank(run.get(C.TOPOLOGY_UPDATES)):
        updates, source = _scheduled_updates(config, int(run[C.TOPOLOGY_UPDATES])), FROM_SCHEDULE
    if not final:
        final, source = None, FROM_SCHEDULE
    counted = record_flops(
        config,
        input_shape=None,
        num_classes=None,
        final_density=final,
        update_records=updates,
        steps=steps,
        steps_per_epoch=math.ceil(total / epochs),
    )
    return (None, "") if "error" in counted else (counted, source)


def _scheduled_updates(config: dict, count: int) -> list[dict]:
    """The update lines a run of the schedule made, at its initial per-layer densities."""
    from src.sparse.flops import initial_densities, model_costs  # (torch, as in `_count`)

    model = config["model"]
    costs = model_costs(model["name"], model.get("num_classes"), None, **model.get("kwargs", {}))
    active = {n: round(d * costs[n].numel) for n, d in initial_densities(config, costs).items()}
    frequency = int(config["sparsity"]["update_frequency"])
    return [
        {"step": frequency * (i + 1), "layers": [{"name": n, "active": a} for n, a in active.items()]}
        for i in range(count)
    ]


def _json(text):
    if _blank(text):
        return None
    value = json.loads(text) if isinstance(text, str) else text
    return value or None


def _blank(value) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def flops_summary(costs: pd.DataFrame, metric: str = C.DEFAULT_METRIC) -> pd.DataFrame:
    """Per (setup, kind, growth, criterion, density): n, the metric's mean and std, and the
    mean training and inference FLOPs, absolute and as a fraction of dense."""
    frame = costs.assign(
        **{
            C.GROWTH: costs[C.GROWTH].where(costs[C.KIND] == "dst", "—"),
            C.CRITERION: costs[C.CRITERION].where(costs[C.KIND] == "dst", costs[C.KIND]),
            C.DENSITY: costs[C.DENSITY].where(costs[C.KIND] != "dense", 1.0),
        }
    )
    by = [C.SETUP, C.VARIANT, C.KIND, C.GROWTH, C.CRITERION, C.DENSITY]
    grouped = frame.groupby(by, dropna=False, sort=True)
    out = grouped[metric].agg(n="count", mean="mean", std="std")
    for name in COLUMNS:
        out[name] = grouped[name].mean()
    out["flops_source"] = grouped["flops_source"].agg(lambda s: ", ".join(sorted(set(s) - {""})))
    return out.reset_index()

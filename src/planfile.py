"""A launch's saved plan on disk, read and checked (no Hydra here: `status` reads plans too).

    <sweep dir>/plan.json            per run: its directory, cell, overrides, identity hash,
                                     job number, whether the launch skips it; the launch's
                                     overrides, host and pid (`src.plan.write_plan`)
    <sweep dir>/plan-configs.jsonl   each run's resolved config, one a line, in the same order

A plan is a file anyone who may write the sweep dir can change, and a crash or a full disk
can cut it short: each config is checked against the identity hash the plan names for its
run and against its run directory's name before it is used, and a damaged plan is named in
one line (`PlanDamaged`).
"""

from __future__ import annotations

import json
from pathlib import Path

from .rundir import identity_hash

PLAN, PLAN_CONFIGS = "plan.json", "plan-configs.jsonl"


class PlanDamaged(ValueError):
    """A saved plan that cannot be read, or whose configs are not the runs it names; the
    message is one line naming the file."""


def read_plan(sweep_dir: Path) -> dict:
    """A launch's saved plan, without the configs; `PlanDamaged` naming the file when it is
    cut short or not a plan."""
    path = Path(sweep_dir) / PLAN
    try:
        record = json.loads(path.read_text())
        runs = record.get("runs") if isinstance(record, dict) else None
        if not isinstance(runs, list) or not isinstance(record.get("overrides"), list):
            raise ValueError("not a launch's plan")
        for r in runs:
            if not (isinstance(r, dict) and {"run_dir", "cell", "overrides", "config_hash"} <= set(r)):
                raise ValueError("a run without its directory, cell, overrides or config hash")
    except (OSError, ValueError) as error:
        raise PlanDamaged(f"damaged plan {path}: {type(error).__name__}: {error}") from None
    return record


def read_plan_configs(sweep_dir: Path, record: dict) -> list[dict]:
    """The resolved config of each run of `record` (`read_plan`), each checked against the
    identity hash the plan names for its run and its directory's name; `PlanDamaged` naming
    the file and line of the first that is missing, cut short or another run's."""
    path = Path(sweep_dir) / PLAN_CONFIGS
    try:
        lines = path.read_text().splitlines()
    except (OSError, ValueError) as error:
        raise PlanDamaged(f"damaged plan {path}: {type(error).__name__}: {error}") from None
    runs = record["runs"]
    if len(lines) != len(runs):
        raise PlanDamaged(f"damaged plan {path}: {len(lines)} config line(s) for the {len(runs)} planned run(s)")
    configs = []
    for number, (run, line) in enumerate(zip(runs, lines), 1):
        try:
            config = json.loads(line)
            identity = identity_hash(config)
        except (ValueError, TypeError, AttributeError, KeyError) as error:
            raise PlanDamaged(f"damaged plan {path}:{number}: {type(error).__name__}: {error}") from None
        name = Path(run["run_dir"]).name
        if identity != run["config_hash"] or not name.endswith("-" + identity[:10]):
            raise PlanDamaged(
                f"damaged plan {path}:{number}: this config's identity hash is {identity}, but the plan's run "
                f"{name} has {run['config_hash']} (edited after its launch?)"
            )
        configs.append(config)
    return configs

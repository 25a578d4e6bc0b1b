"""Planning a launch: the sweep's jobs, each composed and validated once, its run directory,
whether it is skipped, and the plan written once into the launch's sweep directory.

    jobs = plan(["setup=smoke", "criterion=magnitude,snip", "seed=1,2,3"])
    write_plan(sweep_dir, jobs, overrides)     # <sweep dir>/plan.json (+ plan-configs.jsonl)
    read_plan(sweep_dir)                       # what the launchers, packs and `status` read

A run's directory is `runs_root/name/<slug>-<hash of the run's identity>`; a run is skipped
when it finished there with this identity (`rundir.finished_status`).
"""

from __future__ import annotations

import copy
import itertools
import json
import os
import re
import socket
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, cast

from hydra import compose, initialize_config_dir
from hydra.core.config_store import ConfigStore
from hydra.core.global_hydra import GlobalHydra
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import HydraException
from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import ConfigAttributeError, ConfigKeyError, OmegaConfBaseException
from omegaconf.nodes import ValueNode

from . import checks
from .config import LaunchConfig, RunConfig
from .config_groups import CONF_DIR, GROUPS  # noqa: F401  (CONF_DIR: part of the planner's API)
from .execute.slurm_queue import SUBMISSION
from .planfile import PLAN, PLAN_CONFIGS, PlanDamaged, read_plan, read_plan_configs  # noqa: F401  (the API)
from .resources import SWEEPS_DIR  # noqa: F401  (hydra_plugins/dst_config puts sweeps/ on the search path)
from .rundir import RESULT, atomic_write_text, finished_status, identity_hash, run_dir_link, run_directory
from .rundir.heartbeat import process_start
from .status import Sweep, intact_plans

LAUNCH_KEYS = ("seed", "name", "runs_root")  # LaunchConfig's own fields: where a run goes, not what it is

ConfigStore.instance().store(name="launch_schema", node=LaunchConfig)  # conf/config.yaml's schema


@dataclass
class Job:
    overrides: list[str]
    config: RunConfig
    run_dir: Path
    finished: str | None = None  # "completed" / "diverged" when the launch skips it (`finished_status`)
    cell: str = "all"  # the overrides that vary across the sweep's cells (seed aside)
    hash: str = field(default="", repr=False)  # the run's identity hash (`rundir.identity_hash`)
    data: dict | None = field(default=None, repr=False)  # `config` as a dict (`config.to_dict()`), when planned

    def config_dict(self) -> dict:
        return self.data if self.data is not None else self.config.to_dict()

    @property
    def key(self) -> tuple[str, ...]:
        """The job's overrides as Hydra's sweeper passes them to a launcher (no `hydra.*` ones)."""
        return tuple(o for o in self.overrides if not o.lstrip("+~").startswith(("hydra.", "hydra/")))


def to_run_config(cfg: DictConfig) -> tuple[RunConfig, DictConfig]:
    """The RunConfig of a composed Hydra config, and the launch-level fields."""
    data = _plain(cfg)
    launch = OmegaConf.create({k: data.pop(k) for k in LAUNCH_KEYS})
    return RunConfig.from_dict(data), launch


def job_of(cfg: DictConfig) -> tuple[RunConfig, Path]:
    """The run a composed Hydra config describes, and its directory."""
    run_cfg, launch = to_run_config(cfg)
    return run_cfg, run_directory(launch.runs_root, launch.name, run_cfg.to_dict())


def plan(overrides: list[str], *, check_data: bool = True, detach: bool = False) -> list[Job]:
    """The launch's jobs, each composed and validated once, its launcher options checked and
    whether it is skipped decided (finished here, with this identity)."""
    jobs = expand(overrides, check_data=check_data, detach=detach)
    for job in jobs:  # before anything is made or written there
        link = run_dir_link(job.run_dir, sweep_dir=True)
        if link:
            raise ValueError(f"{link} (a run and its sweep directory are written only where they are)")
    checks.check_plan(jobs, create=check_data)  # name and runs_root: writable (made, with check_data)
    for job in jobs:
        if (job.run_dir / RESULT).exists():
            job.finished = finished_status(job.run_dir, job.config_dict())
    return jobs


def expand(overrides: list[str], *, check_data: bool = True, detach: bool = False) -> list[Job]:
    """Compose and validate every job of the sweep that `overrides` (plus any
    `hydra.sweeper.params` of the selected configs) describes, each once. Raises ValueError
    with the field and the allowed values on the first invalid job or launcher option,
    FileNotFoundError for missing dataset files (unless `check_data` is false), and
    ValueError if two jobs are the same experiment (they would share a run directory)."""

    from .data import check_dataset  # torch: only when planning, never for status' light path

    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        # with the config loader, as Hydra's sweeper has it: glob() lists a group's options
        parser = OverridesParser.create(config_loader=GlobalHydra.instance().config_loader())
        parsed = parser.parse_overrides(overrides)
        fixed = [str(o.input_line) for o in parsed if not o.is_sweep_override()]
        # (without --detach's option: its absence from a local launcher is reported by check_launcher)
        base = compose(
            "config",
            overrides=[o for o in fixed if not o.startswith("hydra.launcher.detach")],
            return_hydra_config=True,
        )
        check_launcher(base.hydra.launcher, detach)
        params = OmegaConf.select(base, "hydra.sweeper.params") or {}
        sweep_lines = [f"{k}={v}" for k, v in params.items()] + list(overrides)
        combinations = sweep_combinations(parser.parse_overrides(sweep_lines))
        composers: dict[tuple[str, ...], _Composer] = {}
        if combinations == [fixed] and not any(o.startswith("hydra.launcher.detach") for o in fixed):
            composers[tuple(fixed)] = _Composer(base, parser)  # no sweep: the launch's own composition
        jobs, checked = [], set()
        validated: dict = {}
        for combo in combinations:
            # Composing is slow (tens of ms), so each distinct choice of config groups is
            # composed once (`_Composer`), and plain `key=value` overrides are applied to it.
            groups = tuple(combo) if tuple(combo) in composers else tuple(o for o in combo if _is_group_choice(o))
            if groups not in composers:
                composers[groups] = _Composer(compose("config", overrides=list(groups)), parser)
            try:
                composer = composers[groups]
                lines = [line for line in combo if line not in groups]
                data = composer.job(lines)
                launch = {k: data.pop(k) for k in LAUNCH_KEYS}
                # jobs that differ in their seed alone are built and validated once
                seedless = (
                    (groups, tuple(x for x in lines if not x.startswith("seed="))) if composer.seed_only else None
                )
                cell = validated.get(seedless)
                if cell is None:
                    cell = validated[seedless] = checks.validated(RunConfig.from_dict(data))
                run_cfg = replace(cell, train=replace(cell.train, seed=data["train"]["seed"]))
                identity = identity_hash(data)
                run_dir = run_directory(launch["runs_root"], launch["name"], data, identity)
            except (ValueError, OmegaConfBaseException) as error:
                raise ValueError(f"{error}\n  (in the job with overrides: {' '.join(combo)})") from None
            key = (run_cfg.data.name, run_cfg.data.root, run_cfg.data.download)
            if check_data and key not in checked:  # the error says where it looked, how to get it
                check_dataset(*key)
                checked.add(key)
            jobs.append(Job(combo, run_cfg, run_dir, hash=identity, data=data))
    seen: dict[Path, Job] = {}
    for job in jobs:
        if job.run_dir in seen:
            raise ValueError(
                f"two jobs are the same experiment (a sweep axis has no effect on them):\n"
                f"  {' '.join(seen[job.run_dir].overrides)}\n  {' '.join(job.overrides)}"
            )
        seen[job.run_dir] = job
    _name_cells(jobs)
    return jobs


class _Composer:
    """The jobs of one choice of config groups, composed once. A job's plain `key=value`
    overrides are applied to a plain copy of the resolved config: each distinct override once
    by Hydra's rules on the composed config (`_apply`: its errors and type conversions), its
    resulting value then set per job; interpolations (`train.seed: ${seed}`) are resolved
    again after. A job whose overrides overlap (one key inside another's) or that cannot be
    resolved so is composed the general way: a copy of the composed config, overrides applied."""

    def __init__(self, cfg: DictConfig, parser):
        self.cfg, self.parser = cfg, parser
        self.plain = _plain(cfg)
        raw = _plain(cfg, resolve=False)
        self.refs: dict[str, str] = {}  # key -> the key its value interpolates (`${seed}`)
        self.simple = _collect_refs(raw, "", self.refs)
        # `seed=N` sets the seed and nothing else (conf/config.yaml: train.seed: ${seed})
        self.seed_only = self.simple and [k for k, v in self.refs.items() if v == "seed"] == ["train.seed"]
        self.values: dict[str, tuple[str | None, object]] = {}  # override line -> (key, value after it)

    def job(self, lines: list[str]) -> dict:
        if not self.simple:
            return self._general(lines)
        sets: dict[str, object] = {}
        refs = dict(self.refs)
        for line in lines:
            if line not in self.values:
                self.values[line] = self._value(line)
            key, value = self.values[line]
            if key is None:
                return self._general(lines)
            if isinstance(value, _Ref):
                refs[key] = value.target
            else:
                refs.pop(key, None)
                sets[key] = value
        if any(a != b and (a.startswith(b + ".") or b.startswith(a + ".")) for a in sets for b in refs):
            return self._general(lines)
        keys = sorted(sets)
        if any(b.startswith(a + ".") for a, b in zip(keys, keys[1:])):
            return self._general(lines)
        data = _copy(self.plain)
        for key, value in sets.items():
            _set(data, key, _copy(value))
        for _ in range(len(refs)):  # chains resolve in as many rounds as they are long
            changed = False
            for key, target in refs.items():
                value = _get(data, target)
                if value is _MISSING:
                    return self._general(lines)
                if _get(data, key) != value:
                    _set(data, key, _copy(value))
                    changed = True
            if not changed:
                break
        return data

    def _value(self, line: str) -> tuple[str | None, object]:
        """The key an override sets and its value after Hydra's rules (validated, converted)."""

        override = self.parser.parse_override(line)
        key = override.key_or_group.lstrip("+~")
        raw = override.value()
        if isinstance(raw, str) and "${" in raw:
            match = re.fullmatch(r"\$\{([\w.]+)\}", raw)
            return (key, _Ref(match.group(1))) if match else (None, None)
        node = _value_node(self.cfg, key)
        if node is not None and not override.is_add() and not isinstance(raw, (dict, list)):
            try:  # a plain value: converted by its node's type, on a copy of that node alone
                node = copy.deepcopy(node)
                node._set_value(raw)
                return key, node._value()
            except Exception:
                pass  # (the error is raised below, by the general rules and with their message)
        cfg = copy.deepcopy(self.cfg)
        _apply(cfg, override)
        node = OmegaConf.select(cfg, key)
        if isinstance(node, (DictConfig, ListConfig)):
            if any(isinstance(v, str) and "${" in v for v in _leaves(OmegaConf.to_container(node, resolve=False))):
                return None, None
            return key, OmegaConf.to_container(node, resolve=True)
        return key, node

    def _general(self, lines: list[str]) -> dict:

        cfg = copy.deepcopy(self.cfg)
        for line in lines:
            _apply(cfg, self.parser.parse_override(line))
        return _plain(cfg)


def _plain(cfg: DictConfig, resolve: bool = True) -> dict:
    """A composed config as plain data, without Hydra's own section."""
    return cast(
        dict, OmegaConf.to_container(OmegaConf.masked_copy(cfg, [str(k) for k in cfg if k != "hydra"]), resolve=resolve)
    )


def _value_node(cfg: DictConfig, key: str):
    """The value node (not a container, not an interpolation) at `key` of a composed config, or None."""

    node: Any = cfg
    for part in key.split("."):
        if not isinstance(node, DictConfig) or part not in node:
            return None
        node = node._get_node(part)
    return node if isinstance(node, ValueNode) and not node._is_interpolation() else None


@dataclass
class _Ref:
    target: str


_MISSING = object()


def _collect_refs(node, prefix: str, refs: dict) -> bool:
    """Record the `${key}` values of an unresolved config; False if it has other interpolations."""
    if isinstance(node, dict):
        return all(_collect_refs(v, f"{prefix}{k}.", refs) for k, v in node.items())
    if isinstance(node, list):
        return not any(isinstance(v, str) and "${" in v for v in _leaves(node))
    if isinstance(node, str) and "${" in node:
        match = re.fullmatch(r"\$\{([\w.]+)\}", node)
        if not match:
            return False
        refs[prefix[:-1]] = match.group(1)
    return True


def _leaves(node):
    if isinstance(node, dict):
        for v in node.values():
            yield from _leaves(v)
    elif isinstance(node, list):
        for v in node:
            yield from _leaves(v)
    else:
        yield node


def _copy(node):
    """A copy of plain config data (dicts, lists, scalars): much faster than copy.deepcopy."""
    if isinstance(node, dict):
        return {k: _copy(v) for k, v in node.items()}
    if isinstance(node, list):
        return [_copy(v) for v in node]
    return node


def _get(data: dict, key: str):
    for part in key.split("."):
        if not isinstance(data, dict) or part not in data:
            return _MISSING
        data = data[part]
    return data


def _set(data: dict, key: str, value) -> None:
    *path, last = key.split(".")
    for part in path:
        data = data.setdefault(part, {})
    data[last] = value


def _name_cells(jobs: list[Job]) -> None:
    """Each job's cell: the overrides that vary across the sweep, seeds aside."""
    values: dict[str, set] = {}
    for job in jobs:
        for line in job.overrides:
            key, _, value = line.partition("=")
            values.setdefault(key, set()).add(value)
    varying = {k for k, v in values.items() if len(v) > 1 and k.lstrip("+~") not in ("seed", "train.seed")}
    for job in jobs:
        job.cell = " ".join(line for line in job.overrides if line.partition("=")[0] in varying) or "all"


def sweep_combinations(overrides) -> list[list[str]]:
    """The jobs of a sweep (parsed overrides) as Hydra's basic sweeper forms them: one value
    per key (a later override of a key replaces an earlier one), the product over the keys in
    order. The app's sweeper (hydra_plugins/dst_config/sweeper.py) forms them with this too."""

    axes: dict[str, list[str]] = {}
    for override in overrides:
        key = override.get_key_element()
        if not override.is_sweep_override():
            axes[key] = [f"{key}={override.get_value_element_as_str()}"]
        elif override.is_discrete_sweep():
            axes[key] = [f"{key}={value}" for value in override.sweep_string_iterator()]
        else:
            raise HydraException(f"BasicSweeper does not support sweep type : {override.value_type.name}")
    return [list(combo) for combo in itertools.product(*axes.values())]


def _is_group_choice(line: str) -> bool:
    """`criterion=snip`, `+sweeps=mlp_dst`: a choice of config group (composed by Hydra)."""
    key = line.split("=", 1)[0].lstrip("+~")
    return key in GROUPS or key.startswith("hydra")


def _apply(cfg: DictConfig, override) -> None:
    """Apply a `key=value` / `+key=value` / `++key=value` override to a composed config by
    Hydra's rules for them (Hydra has no public API for this step of its composition)."""

    key, value = override.key_or_group, override.value()
    if override.is_delete():
        raise ValueError(f"{override.input_line}: deletions are not supported in sweeps")
    if (
        override.is_add()
        and OmegaConf.select(cfg, key, throw_on_missing=False) is not None
        and not isinstance(value, (dict, list))
    ):
        raise ValueError(f"Could not append to config. An item is already at '{key}'.")
    try:
        OmegaConf.update(cfg, key, value, merge=True, force_add=override.is_add() or override.is_force_add())
    except (ConfigAttributeError, ConfigKeyError) as error:
        raise ValueError(f"Could not override '{key}'.\nTo append to your config use +{override.input_line}") from error


def check_launcher(launcher: DictConfig, detach: bool) -> None:
    """The launcher's own options, checked before anything is submitted."""
    if detach and "detach" not in launcher:
        raise ValueError(
            "--detach: needs a SLURM launcher that submits and returns (launcher=slurm or launcher=slurm_gpu)"
        )
    for key in ("runs_per_job", "concurrent_runs"):
        if key in launcher and not (isinstance(launcher[key], int) and launcher[key] >= 1):
            raise ValueError(f"hydra.launcher.{key}: must be an integer >= 1, got {launcher[key]}")


# ---------------------------------------------------------------------------- the saved plan
def sweep_logs(overrides: list[str]) -> Path | None:
    """`runs_root/.hydra/<name>`: where the launches of these overrides log and save their
    plans (one composition of the launch's fixed overrides); None when they do not compose."""

    try:
        with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
            parser = OverridesParser.create(config_loader=GlobalHydra.instance().config_loader())
            fixed = [str(o.input_line) for o in parser.parse_overrides(overrides) if not o.is_sweep_override()]
            cfg = compose("config", overrides=[o for o in fixed if not o.startswith("hydra.")])
    except Exception:  # (any composition error: status then plans anew, and reports it there)
        return None
    return Path(cfg.runs_root) / ".hydra" / cfg.name


def sweep_of(overrides: list[str], saved: bool = True) -> Sweep:
    """The sweep a launch's overrides name, for `status`: the latest saved plan of a launch with
    these overrides (with `saved`); planned anew without one (not saved, data not checked)."""
    overrides = [o for o in overrides if not o.startswith("hydra.launcher.detach")]
    logs = sweep_logs(overrides)
    if saved and logs is not None:  # (the launcher's options, `hydra.*`, do not change the runs)
        runs_of = [o for o in overrides if not o.startswith("hydra.")]
        same = [
            p
            for p, record in intact_plans(sorted(logs.glob(f"*/{PLAN}"), key=lambda p: p.stat().st_mtime))
            if [o for o in record["overrides"] if not o.startswith("hydra.")] == runs_of
        ]
        if same:
            return Sweep.from_plans(same)
    jobs = expand(overrides, check_data=False)
    roots = {job.run_dir.parent for job in jobs}
    records = sorted(r for root in roots for r in (root.parent / ".hydra" / root.name).glob(f"*/{SUBMISSION}"))
    plans = sorted(r for root in roots for r in (root.parent / ".hydra" / root.name).glob(f"*/{PLAN}"))
    return Sweep([(str(job.run_dir.resolve()), job.cell) for job in jobs], records, plans)


def write_plan(sweep_dir: Path, jobs: list[Job], overrides: list[str]) -> Path:
    """Write the plan once per launch: `<sweep dir>/plan.json` (per run: its directory, cell,
    overrides, identity hash, job number, and whether the launch skips it; the launch's
    overrides, host, pid and process start time) and `plan-configs.jsonl` (each run's resolved config, one a line,
    in the same order: what the launchers run)."""
    sweep_dir = Path(sweep_dir)
    sweep_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(sweep_dir / PLAN_CONFIGS, "".join(json.dumps(j.config_dict()) + "\n" for j in jobs))
    record = {
        "time": time.time(),
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "started": process_start(os.getpid()),  # (with the pid: what a reused pid cannot fake)
        "overrides": list(overrides),
        "runs": [
            {
                "idx": i,
                "run_dir": str(j.run_dir.resolve()),
                "cell": j.cell,
                "overrides": j.overrides,
                "config_hash": j.hash,
                "finished": j.finished,
            }
            for i, j in enumerate(jobs)
        ],
    }
    try:  # the two files stand together: plan.json names the configs' hashes
        atomic_write_text(sweep_dir / PLAN, json.dumps(record))
    except BaseException:
        (sweep_dir / PLAN_CONFIGS).unlink(missing_ok=True)
        raise
    return sweep_dir / PLAN


def planned_jobs(sweep_dir: Path) -> dict[tuple[str, ...], Job]:
    """The jobs of a saved plan with their configs, by the overrides Hydra's sweeper gives
    the launcher: what the launchers run. Each config is checked against its run's identity
    hash before anything runs (`planfile.read_plan_configs`: `PlanDamaged` naming the file)."""
    record = read_plan(sweep_dir)
    configs = read_plan_configs(sweep_dir, record)
    jobs = [
        Job(
            r["overrides"],
            RunConfig.from_dict(c),
            Path(r["run_dir"]),
            r.get("finished"),
            r["cell"],
            r["config_hash"],
            c,
        )
        for r, c in zip(record["runs"], configs)
    ]
    return {job.key: job for job in jobs}


def launch_plan(sweep_dir: Path) -> dict[tuple[str, ...], Job] | None:
    """The planned jobs a launcher runs: the plan this launch saved in its sweep dir
    (`planned_jobs`), or None when there is none of this launch's (a launch that did not go
    through `src.launch`'s planning, or a sweep dir that holds an earlier launch's plan: the
    launcher then composes each job itself). A damaged plan of this launch ends the launch,
    before any job starts, with one line (`SystemExit`)."""
    if not (Path(sweep_dir) / PLAN).exists():
        return None
    try:
        record = read_plan(sweep_dir)
        if (record.get("host"), record.get("pid")) != (socket.gethostname(), os.getpid()):
            return None
        return planned_jobs(sweep_dir)
    except PlanDamaged as error:
        raise SystemExit(f"error: {error}") from None

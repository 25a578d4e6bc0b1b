"""A run's identity: which fields of its resolved config say what it computes, the hash of
them, and the name of its directory. The one definition; nobody else parses a run's name.

    runs_root/<name>/<model>-<mode>[-d<density>][-<criterion>-<growth>]-s<seed>-<hash[:10]>

Plain dicts in, plain values out (no torch, no Hydra): the planner, the trainer, `status`
and the analysis all read it.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path

# Fields that change how a run is executed, not what it computes: excluded from the run's
# identity (its directory hash), so relaunching with more threads or on another node reuses it.
LAUNCH_ONLY = (
    "train.threads",
    "train.progress",
    "train.log_every",
    "train.device",
    "train.checkpoint_every",
    "train.checkpoint_interval_min",
    "train.scratch_dir",
    "train.heartbeat_every_s",
    "data.root",
    "data.download",
    "data.num_workers",
    "logging",
)
# The sparsity fields that decide what a run computes, per mode (the rest cannot affect it):
# the mode alone for dense runs, the initial mask's fields for static ones, all but these
# (how layers are computed, not what) for DST.
SPARSITY_STATIC_FIELDS = ("mode", "density", "init", "erk_power_scale", "include", "exclude", "compat")
SPARSITY_LAUNCH_ONLY = ("backend",)
# Recorded, and part of the run's identity (its records differ), but not of what it computes:
# overlap tracking draws from its own random generator, so a run with `overlap_with` set
# trains exactly like one without.
OBSERVE_ONLY = ("sparsity.overlap_with",)

SAFE_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*")  # a sweep's `name`: one path component
HASH_LENGTH = 10  # hex digits of the identity hash in a run directory's name
_HASH_SUFFIX = re.compile(rf"-([0-9a-f]{{{HASH_LENGTH}}})$")
_SEED_AND_HASH = re.compile(r"-s\d+-[0-9a-f]+$")  # (a hash of any length: names given by hand too)


def config_hash(config: dict) -> str:
    """A stable short hash of a (resolved) config: key order does not matter."""
    return hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()[:16]


def sparsity_identity(fields: dict) -> dict:
    """The part of a sparsity section that identifies the experiment (see SPARSITY_STATIC_FIELDS)."""
    if fields.get("mode") == "dense":
        return {"mode": "dense"}
    if fields.get("mode") == "static":
        return {k: fields[k] for k in SPARSITY_STATIC_FIELDS if k in fields}
    return {k: v for k, v in fields.items() if k not in SPARSITY_LAUNCH_ONLY}


def run_identity(config: dict) -> dict:
    """The part of a resolved run config that identifies the experiment: launch-only fields
    dropped, and the sparsity section reduced to what matters for its mode (a dense baseline
    launched with another default criterion is recognised as done)."""
    identity = {k: dict(v) if isinstance(v, dict) else v for k, v in config.items()}
    for key in LAUNCH_ONLY:
        section, _, field_name = key.partition(".")
        if field_name:
            identity.get(section, {}).pop(field_name, None)
        else:
            identity.pop(section, None)
    if isinstance(identity.get("sparsity"), dict):
        identity["sparsity"] = sparsity_identity(identity["sparsity"])
    return identity


def identity_hash(config: dict) -> str:
    """The hash of a run config's identity (what checkpoints, results and plans record)."""
    return config_hash(run_identity(config))


def cell_identity(config: dict) -> dict:
    """What an experiment computes, seed aside: runs with equal cell identities are seeds of
    one cell (the analysis aggregates over them)."""
    identity = run_identity(config)
    for key in ("train.seed", *OBSERVE_ONLY):
        section, _, field_name = key.partition(".")
        identity.get(section, {}).pop(field_name, None)
    return identity


def cell_hash(config: dict) -> str:
    return config_hash(cell_identity(config))


def identity_diff(recorded: dict, expected: dict) -> list[str]:
    """`field: old -> new` for each identity field where two run configs differ."""
    a, b = _flat(run_identity(recorded)), _flat(run_identity(expected))
    return [
        f"{k}: {a.get(k, '<absent>')!r} -> {b.get(k, '<absent>')!r}"
        for k in sorted(set(a) | set(b))
        if a.get(k, "<absent>") != b.get(k, "<absent>")
    ]


def _flat(d: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in d.items():
        if isinstance(value, dict):
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


# ---------------------------------------------------------------------------- the directory
def check_name(name) -> None:
    """A sweep's `name` must be one safe path component, so that runs stay under runs_root."""
    if not isinstance(name, str) or not SAFE_NAME.fullmatch(name):
        raise ValueError(
            f"name: {name!r} must be one path component of letters, digits, '_', '.' and '-' "
            f"(not starting with '.'), so that runs stay under runs_root"
        )


def directory_name(config: dict, hash_: str | None = None) -> str:
    """`<slug>-s<seed>-<hash[:10]>`: readable, and unique per experiment identity."""
    s = config["sparsity"]
    parts = [config["model"]["name"], s["mode"]]
    if s["mode"] != "dense":
        parts.append(f"d{s['density']:g}")
    if s["mode"] == "dst":
        parts += [s["criterion"], s["growth"]]
    parts.append(f"s{config['train']['seed']}")
    return "-".join(parts) + "-" + (hash_ or identity_hash(config))[:HASH_LENGTH]


def run_directory(runs_root: str | Path, name: str, config: dict, hash_: str | None = None) -> Path:
    """`runs_root/name/<directory_name>`."""
    check_name(name)
    return Path(runs_root) / name / directory_name(config, hash_)


def hash_of_name(run_dir: str | Path) -> str | None:
    """The identity hash in a run directory's name (its first 10 hex digits), or None."""
    match = _HASH_SUFFIX.search(os.path.basename(os.path.normpath(run_dir)))  # (no Path: 10,000 runs)
    return match.group(1) if match else None


def cell_of_name(run_dir: str | Path) -> str:
    """`lenet5-dst-d0.1-snip-gradient-s3-<hash>` -> `lenet5-dst-d0.1-snip-gradient`."""
    return _SEED_AND_HASH.sub("", Path(run_dir).name)


def cells_of_directories(configs: dict[str, dict | None]) -> dict[str, str]:
    """Each run directory's cell label, given its recorded config (None: none yet): its name's
    (`cell_of_name`), and where directories of one name hold different cells (they differ in
    a field the name does not carry: an lr, a schedule), the fields that tell them apart, so
    that no table merges two cells."""
    by_name: dict[str, list[str]] = {}
    for run_dir in configs:
        by_name.setdefault(cell_of_name(run_dir), []).append(run_dir)
    labels = {}
    for name, group in by_name.items():
        flat = {r: _flat(cell_identity(c)) for r in group if (c := configs[r]) is not None}
        varying = sorted({k for f in flat.values() for k in f if len({repr(g.get(k)) for g in flat.values()}) > 1})
        for r in group:
            extra = " ".join(f"{k}={flat[r].get(k)}" for k in varying) if r in flat else ""
            labels[r] = f"{name} {extra}".rstrip()
    return labels


def sweep_of(run_dir: str | Path) -> str:
    """The sweep a run directory belongs to (`runs_root/<sweep>/<run>`)."""
    return Path(run_dir).parent.name

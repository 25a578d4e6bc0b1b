"""Checks a launch makes before anything runs, beyond each field's own range, and the
messages that say how to fix what they find.

* `model_fits_data`: the model takes the dataset's inputs (and has enough outputs);
* `check_places`: `name` and `runs_root` give directories that can be made and written;
* `update_warnings`: DST runs that would make no (or very few) topology updates, per cell;
* `suggest` / `explain`: close matches for a mistyped field, config-group option or sweep
  name, in place of Hydra's hints (`+train.epoch=3` for `train.epoch=3`).
"""

from __future__ import annotations

import math
import os
import re
import tempfile
from dataclasses import is_dataclass, replace
from functools import lru_cache
from pathlib import Path

from .config import RunConfig, field_names, has_field, schema_at
from .config_groups import CONF_DIR, REGISTRY_GROUPS, setup_choices
from .registry import suggest
from .rundir import CONFIG, HEARTBEAT, LOCK, RESULT
from .rundir.identity import hash_of_name
from .sparse.few_updates import MIN_UPDATES, few_updates_advice


# ---------------------------------------------------------------------------- suggestions
def unknown_field_message(path: str) -> str | None:
    """For a dotted path the config has no field at: which field was probably meant."""
    parent, _, leaf = path.rpartition(".")
    try:
        node = schema_at(parent)
    except KeyError:  # a section on the way is misspelt: name the first one
        parts = parent.split(".")
        first = next(".".join(parts[:i]) for i in range(1, len(parts) + 1) if not has_field(".".join(parts[:i])))
        return unknown_field_message(first)
    if node is dict:  # model.kwargs.x: a keyword; or a field of the section above it
        section = parent.rpartition(".")[0]
        if leaf in field_names(section):
            return f"{path}: {leaf} is not a keyword in {parent} but a field of its own: did you mean {section}.{leaf}?"
        return None  # Hydra's own hint (`+model.kwargs.x=...`) is the right one
    if not is_dataclass(node):
        return f"{path}: {parent} is a value, not a section with fields"
    valid = field_names(parent)
    if not parent:  # top level: fields and config groups
        groups = sorted({p.name for p in _conf_dir().iterdir() if p.is_dir()} | set(REGISTRY_GROUPS))
        hint = suggest(leaf, valid + groups)
        return f"{path}: no such field or config group; {hint + ' ' if hint else ''}fields: {valid}; groups: {groups}"
    hint = suggest(leaf, valid, prefix=f"{parent}.")
    return f"{path}: no such field; {hint + ' ' if hint else ''}fields of {parent}: {valid}"


def _conf_dir() -> Path:
    return CONF_DIR


# ---------------------------------------------------------------------------- explain
def explain(error: BaseException, overrides: list[str]) -> str | None:
    """A message that says how to fix a launch's error, where Hydra's own would lead
    nowhere; None to keep Hydra's."""
    from hydra.errors import MissingConfigException  # Hydra: not on the --help path

    if isinstance(error, MissingConfigException) and error.missing_cfg_file and error.options:
        group, _, option = error.missing_cfg_file.rpartition("/")
        if group:
            plus = "+" if group == "sweeps" else ""
            hint = suggest(option, error.options, prefix=f"{plus}{group}=")
            what = "sweep" if group == "sweeps" else f"option of {group}"
            return f"{plus}{group}={option}: no such {what}; {hint + ' ' if hint else ''}choose from {error.options}"
    text = "\n".join(str(e) for e in _chain(error))
    match = re.search(r"Could not override '([^']+)'", text)
    if match:
        return unknown_field_message(match.group(1))
    if "LexerNoViableAltException" in text or "token recognition error" in text:
        return _unparsable(overrides)
    return None


def _chain(error: BaseException):
    seen = set()
    cause: BaseException | None = error
    while cause is not None and id(cause) not in seen:
        seen.add(id(cause))
        yield cause
        cause = cause.__cause__ or cause.__context__


NAME_RULE = "one path component of ASCII letters, digits, '_', '.' and '-' (not starting with '.'), at most {} bytes"


def _unparsable(overrides: list[str]) -> str | None:
    from hydra.core.override_parser.overrides_parser import OverridesParser  # Hydra: not on the --help path
    from hydra.errors import HydraException  # (as above)

    parser = OverridesParser.create()
    for line in overrides:
        try:
            parser.parse_override(line)
        except HydraException:
            key, _, value = line.partition("=")
            if key.lstrip("+~") == "name":
                return f"name: {value!r} is not allowed; a name is {NAME_RULE.format(255)}"
            if not line.isascii():
                word = re.search(r"[^\s,\[\]{}:='\"]*[^\x00-\x7f][^\s,\[\]{}:='\"]*", value)
                return (
                    f"{line}: Hydra's override syntax takes characters outside ASCII only inside quotes: "
                    f"write '{word.group(0) if word else value}'"
                )
    return None


# ---------------------------------------------------------------------------- model and data
def validated(cfg: RunConfig) -> RunConfig:
    """The one validation of a run's config, before anything runs: each field's own range
    (`RunConfig.validate`) and that the model takes the dataset's inputs (`model_fits_data`)."""
    cfg.validate()
    model_fits_data(cfg)
    return cfg


@lru_cache(maxsize=256)
def _output_shape(model: str, input_shape: tuple, num_classes, kwargs: tuple) -> tuple[int, ...] | str | None:
    """The model's output shape, or why the input does not fit it; None: cannot tell here."""
    from .models.registry import output_shape  # (torch, as in `model_fits_data`)

    try:
        return output_shape(model, input_shape, num_classes, **dict(kwargs))
    except NotImplementedError:  # an operator without a meta kernel: the run itself will tell
        return None
    except (RuntimeError, ValueError) as error:  # torch's reason, e.g. 'a and b must have same reduction dim'
        return str(error).strip().splitlines()[0]


def model_fits_data(cfg: RunConfig) -> None:
    """Refuse a model that cannot take the dataset's inputs, or has too few outputs for its
    classes, naming both shapes and what fits. Where the dataset's input shape differs from
    the model's registered one, a shape-only forward pass on the meta device decides (the
    first costs seconds: torch imports its meta kernels)."""
    from .data import DATASETS  # torch: the checks stay importable without it (--help)
    from .models import MODELS  # (as above)

    model, data = cfg.model.name, cfg.data.name
    info = DATASETS[data].describe(**cfg.data.kwargs)
    registered = MODELS[model].info.input_shape
    if info.input_shape != registered:  # (a forward pass decides: e.g. ResNets pool any image size)
        out = _output_shape(
            model,
            info.input_shape,
            cfg.model.num_classes,
            tuple(sorted((k, _hashable(v)) for k, v in cfg.model.kwargs.items())),
        )
        if isinstance(out, str):
            fixes = [f"setup={s}" for s, (m, d) in setup_choices().items() if m == model][:1]
            models = [m for m in MODELS if MODELS[m].info.input_shape == info.input_shape]
            if models:
                fixes.append(f"a model for {_shape(info.input_shape)}: model.name={' or '.join(models)}")
            datasets = [d for d in DATASETS if d != "synthetic" and DATASETS[d].info.input_shape == registered]
            if datasets:
                fixes.append(f"its data: data.name={' or '.join(datasets)}")
            if data == "synthetic":
                fixes.append(f"data.kwargs.input_shape=[{','.join(map(str, registered))}]")
            raise ValueError(
                f"model.name: {model} takes inputs of shape {_shape(registered)}, but data.name="
                f"{data} gives {_shape(info.input_shape)} ({out}); use {'; or '.join(fixes)}"
            )
    classes = cfg.model.num_classes
    if classes is not None and (classes != 1 if info.num_classes == 1 else classes < info.num_classes):
        task = "a binary task (1 output)" if info.num_classes == 1 else f"{info.num_classes} classes"
        raise ValueError(
            f"model.num_classes: {classes} outputs, but data.name={data} has {task}; "
            f"set model.num_classes={info.num_classes} or model.num_classes=null (the dataset's)"
        )


def _hashable(value):
    return tuple(map(_hashable, value)) if isinstance(value, (list, tuple)) else value


def _shape(shape) -> str:
    return "(" + ", ".join(map(str, shape)) + ")"


# ---------------------------------------------------------------------------- topology updates
def steps_per_epoch(cfg: RunConfig) -> int:
    """Optimizer steps in one epoch: the training split in batches (the last one partial),
    as the trainer's loader makes them (one process; DDP divides them by its ranks)."""
    from .data import DATASETS, Holdout, ValidationPolicy  # (torch, as in `model_fits_data`)

    source = DATASETS[cfg.data.name]
    holdout = source.reference_holdout if cfg.data.reference_splits else Holdout.RANDOM
    fraction = source.default_val_fraction if cfg.data.val_fraction is None else cfg.data.val_fraction
    samples = source.train_split_size(ValidationPolicy(holdout, fraction), **cfg.data.kwargs)
    return math.ceil(samples / cfg.data.batch_size)


def topology_updates(cfg: RunConfig, spe: int, epochs: int | None = None, update_frequency: int | None = None) -> int:
    """How many topology updates a run makes (`Sparsifier.is_update_step` over its steps)."""
    from .sparse.sparsifier import is_update_step  # (torch, as in `model_fits_data`)

    sparsity = cfg.sparsity if update_frequency is None else replace(cfg.sparsity, update_frequency=update_frequency)
    total = (cfg.train.epochs if epochs is None else epochs) * spe
    last = total if cfg.train.max_steps is None else min(total, cfg.train.max_steps)
    f = sparsity.update_frequency
    return sum(is_update_step(sparsity, s, total) for s in range(f, last + 1, f))


def _update_fix(cfg: RunConfig, spe: int) -> list[str]:
    """The settings that would give MIN_UPDATES updates: a lower frequency, more epochs."""
    fixes = []
    # the largest step an update may happen at (frequency 1), then the frequency that fits MIN_UPDATES
    window = topology_updates(cfg, spe, update_frequency=1)
    if window >= MIN_UPDATES:
        fixes.append(f"sparsity.update_frequency<={window // MIN_UPDATES}")
    if cfg.train.max_steps is None and cfg.sparsity.end_fraction > 0:
        # enough epochs for MIN_UPDATES + 1 update intervals inside the update window
        enough = math.ceil((MIN_UPDATES + 1) * cfg.sparsity.update_frequency / (spe * cfg.sparsity.end_fraction)) + 1
        low, high = cfg.train.epochs, enough  # the count grows with the epochs: bisect
        while high - low > 1:
            middle = (low + high) // 2
            low, high = (low, middle) if topology_updates(cfg, spe, epochs=middle) >= MIN_UPDATES else (middle, high)
        fixes.append(f"train.epochs>={high}")
    elif cfg.train.max_steps is not None:
        fixes.append("train.max_steps (it stops the run first)")
    if cfg.sparsity.end_fraction < 1:
        fixes.append(f"sparsity.end_fraction (updates stop at {cfg.sparsity.end_fraction:g} of training)")
    return fixes


def update_warnings(jobs) -> list[str]:
    """One line per cell of the sweep (its axes except the seed) whose DST runs make no
    topology update, or fewer than MIN_UPDATES over a full schedule: such a run measures
    (almost) nothing of its criterion."""
    lines, warned = [], set()
    for job in jobs:
        cfg = job.config
        cell = job.cell if job.cell != "all" else "the run" if len(jobs) == 1 else "all runs"
        if cfg.sparsity.mode != "dst" or cell in warned:
            continue
        spe = steps_per_epoch(cfg)
        count = topology_updates(cfg, spe)
        # (a run cut short by train.max_steps is a deliberate probe: e.g. Fig. 6a's one update)
        if count >= MIN_UPDATES or (count and cfg.train.max_steps is not None):
            continue
        warned.add(cell)
        epochs = f"{cfg.train.epochs} epoch{'s' * (cfg.train.epochs > 1)} x {spe} steps"
        if cfg.train.max_steps is not None:
            epochs += f", train.max_steps={cfg.train.max_steps}"
        context = f"{epochs}; sparsity.update_frequency={cfg.sparsity.update_frequency}"
        lines.append(f"warning: {cell}: {few_updates_advice(count, context, _update_fix(cfg, spe))}")
    return lines


# ---------------------------------------------------------------------------- names and paths
def check_places(places: set[tuple[str, str]], *, create: bool) -> None:
    """Each `(runs_root, name)` of a launch gives a directory that can be made and written
    (with `create`, made and written to; without, as far as permissions tell)."""
    for runs_root, name in sorted(places):
        existing = Path(runs_root).absolute()
        while not existing.exists():
            existing = existing.parent
        limit = _name_max(existing)
        if len(name.encode()) > limit:
            raise ValueError(
                f"name: {len(name)} characters; a name is {NAME_RULE.format(limit)} on this "
                f"file system: use a shorter name"
            )
        if not existing.is_dir():
            raise ValueError(
                f"runs_root: {runs_root!r} is not a directory ({existing} is a file); choose a directory: runs_root=DIR"
            )
        inside = enclosing_run_dir(existing)
        if inside is not None:  # its runs would mix with that run's records (and its status)
            raise ValueError(
                f"runs_root: {runs_root!r} is inside the run directory {inside}; choose a directory outside "
                f"run directories: runs_root=DIR"
            )
        target, reason = Path(runs_root) / name, None
        try:
            if create:
                target.mkdir(parents=True, exist_ok=True)
                fd, probe = tempfile.mkstemp(prefix=".write-test-", dir=target)  # (exclusive, unpredictable)
                os.close(fd)
                os.unlink(probe)
            elif not os.access(existing, os.W_OK | os.X_OK):
                reason = f"{existing} is not writable"
        except OSError as error:
            reason = error.strerror or str(error)
        if reason:  # (raised here, not in the except: the message is the whole story)
            raise ValueError(
                f"runs_root: cannot write the runs under {target} ({reason}); "
                f"choose a writable directory: runs_root=DIR"
            )


def enclosing_run_dir(path: Path) -> Path | None:
    """The run directory that `path` is or lies in (a `<slug>-<hash>` directory holding a run's
    records), or None."""
    for directory in (path, *path.parents):
        if hash_of_name(directory) and any((directory / f).exists() for f in (CONFIG, RESULT, HEARTBEAT, LOCK)):
            return directory
    return None


def _name_max(directory: Path) -> int:
    try:
        return os.pathconf(directory, "PC_NAME_MAX")
    except (OSError, ValueError):
        return 255


def check_plan(jobs, *, create: bool) -> None:
    """The checks a launch makes on its planned jobs together, before launching any."""
    check_places({(str(job.run_dir.parent.parent), job.run_dir.parent.name) for job in jobs}, create=create)

"""The configuration of one run: one dataclass per concern, composed into `RunConfig`.

These dataclasses are the structured-config schemas that Hydra validates YAML against, and
plain Python objects for everything else (`RunConfig.from_dict`, `to_dict`).
"""

from __future__ import annotations

import importlib.util
import inspect
import json
import math
from dataclasses import asdict, dataclass, field, fields, is_dataclass
from typing import Any

from .registry import suggest, unknown
from .sparse.config import SparsityConfig

OPTIMIZERS = ("sgd", "adam")
LR_SCHEDULES = ("multistep", "cosine", "constant")
WANDB_MODES = ("off", "offline", "online")
DEVICES = ("auto", "cpu", "cuda")


@dataclass
class ModelConfig:
    name: str = "lenet5"
    num_classes: int | None = None  # default: the dataset's
    kwargs: dict[str, Any] = field(default_factory=dict)  # model-specific, e.g. {dropout: 0.05}


@dataclass
class DataConfig:
    name: str = "fashion_mnist"
    root: str | None = None  # default: the dataset's environment variable / standard places
    val_fraction: float | None = None  # held out for model selection; None: the dataset's default
    reference_splits: bool = False  # the reference's splits (val = test for CIFAR-100 / TIN)
    batch_size: int = 128
    eval_batch_size: int = 1000
    num_workers: int = 4  # only for datasets streamed from disk
    download: bool = False  # fetch missing files (where the dataset can be downloaded; needs network)
    kwargs: dict[str, Any] = field(default_factory=dict)  # dataset-specific options


@dataclass
class OptimConfig:
    name: str = "sgd"
    lr: float = 0.01
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float = 5e-4
    decay_bias_and_norm: bool = True  # the paper decays every parameter
    lr_schedule: str = "multistep"
    milestones: list[float] = field(default_factory=lambda: [0.5, 0.75])  # fractions of epochs
    lr_decay: float = 0.1
    warmup_epochs: int = 0
    label_smoothing: float = 0.0


@dataclass
class TrainConfig:
    epochs: int = 100
    seed: int = 0
    device: str = "auto"  # auto: CUDA when available
    threads: int | None = None  # default: the CPUs this process may use
    channels_last: bool | None = None  # default: for conv models
    progress: bool | None = None  # default: a progress bar on a terminal, plain lines otherwise
    log_every: int = 200  # steps between non-finite-loss checks and progress lines
    # Checkpoints: at the end of every `checkpoint_every`-th epoch once `checkpoint_interval_min`
    # minutes have passed since the last one, and always when the run is stopped (a signal,
    # preemption, `max_steps`). 10 minutes: see the README's "Load on the file system".
    checkpoint_every: int = 1
    checkpoint_interval_min: float = 10.0
    # A node-local directory for the checkpoint of every `checkpoint_every`-th epoch, copied to
    # the run directory at the interval and when the run stops; environment variables are
    # expanded in the job (`'$SLURM_TMPDIR'`: the node's, not the launching machine's).
    scratch_dir: str | None = None
    heartbeat_every_s: float = 60.0  # seconds between heartbeat.json rewrites (`status` reads them)
    save_model: bool = False  # keep the final weights and masks as model_final.pt
    max_steps: int | None = None  # stop after this many optimizer steps (schedules still span `epochs`)


@dataclass
class LoggingConfig:
    wandb: str = "off"  # off | offline | online (the API key only from WANDB_API_KEY)
    wandb_project: str = "fantastic-dst"
    wandb_entity: str | None = None
    tags: list[str] = field(default_factory=list)
    wandb_dir: str | None = None  # W&B's local files; default: <sweep dir>/.wandb (not in the run dir)


@dataclass
class RunConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    sparsity: SparsityConfig = field(default_factory=SparsityConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> RunConfig:
        return _build(cls, d)

    def validate(self) -> RunConfig:
        """Raise ValueError naming the field and its allowed values; return self."""
        from . import data, models  # the registries import torch: the schema stays light

        DATASETS, MODELS = data.DATASETS, models.MODELS

        _choice("model.name", self.model.name, sorted(MODELS))
        _choice("data.name", self.data.name, sorted(DATASETS))
        _choice("optim.name", self.optim.name, OPTIMIZERS)
        _choice("optim.lr_schedule", self.optim.lr_schedule, LR_SCHEDULES)
        _choice("logging.wandb", self.logging.wandb, WANDB_MODES)
        if self.logging.wandb != "off":
            require_wandb(f"logging.wandb={self.logging.wandb}")
        _choice("train.device", self.train.device, DEVICES)
        for name, value, low in (
            ("train.epochs", self.train.epochs, 1),
            ("data.batch_size", self.data.batch_size, 1),
            ("data.eval_batch_size", self.data.eval_batch_size, 1),
            ("train.log_every", self.train.log_every, 1),
            ("train.checkpoint_every", self.train.checkpoint_every, 1),
            ("train.checkpoint_interval_min", self.train.checkpoint_interval_min, 0),
            ("train.heartbeat_every_s", self.train.heartbeat_every_s, 1),
            ("train.max_steps", 1 if self.train.max_steps is None else self.train.max_steps, 1),
            ("optim.momentum", self.optim.momentum, 0),
            ("optim.weight_decay", self.optim.weight_decay, 0),
        ):
            if not value >= low:  # also refuses nan
                raise ValueError(f"{name}: must be >= {low}, got {value}")
        if self.data.val_fraction is not None and not 0 < self.data.val_fraction < 1:
            raise ValueError(f"data.val_fraction: must be in (0, 1), got {self.data.val_fraction}")
        if not (math.isfinite(self.optim.lr) and self.optim.lr >= 0):  # 0: criteria on the initial weights
            raise ValueError(f"optim.lr: must be a finite number >= 0, got {self.optim.lr}")
        if any(not 0 < m < 1 for m in self.optim.milestones):
            raise ValueError(f"optim.milestones: fractions of training in (0, 1), got {self.optim.milestones}")
        if self.optim.name == "sgd" and self.optim.nesterov and self.optim.momentum == 0:
            raise ValueError(
                "optim.nesterov: Nesterov momentum needs a momentum, got optim.momentum=0; "
                "set optim.nesterov=false (plain SGD) or optim.momentum>0 (e.g. 0.9)"
            )
        if self.data.download and not DATASETS[self.data.name].downloadable:
            raise ValueError(DATASETS[self.data.name].no_download_message())
        _keywords("model.kwargs", self.model.kwargs, MODELS[self.model.name], skip=("num_classes",))
        _keywords(
            "data.kwargs", self.data.kwargs, type(DATASETS[self.data.name]).load, skip=("self", "location", "policy")
        )
        self.sparsity.validate()
        return self


@dataclass
class LaunchConfig(RunConfig):
    """The Hydra root config: a run plus where it goes and what it belongs to.

    `seed` is top level so that sweeps read `seed=1,2,3` (conf/config.yaml sets
    `train.seed: ${seed}`); `name` groups the runs of one sweep under `runs_root/name/`.
    """

    seed: int = 0
    name: str = "default"
    runs_root: str = "runs"


# ---------------------------------------------------------------------------- the schema's fields
def schema_at(path: str):
    """The schema (a dataclass type, `dict` for a free-form mapping, or None: a value) at a
    dotted field path of the launch config; KeyError where there is no such field."""
    node: Any = LaunchConfig
    for part in path.split(".") if path else ():
        if node is dict:
            return dict
        if not is_dataclass(node):
            raise KeyError(path)
        field_ = {f.name: f for f in fields(node)}.get(part)
        if field_ is None:
            raise KeyError(path)
        default = field_.default_factory() if callable(field_.default_factory) else field_.default
        node = type(default) if is_dataclass(default) else dict if isinstance(default, dict) else None
    return node


def has_field(path: str) -> bool:
    try:
        schema_at(path)
        return True
    except KeyError:
        return False


def field_names(section: str) -> list[str]:
    """The fields of a section of the launch config (`train`, '' for the top level)."""
    node = schema_at(section)
    return sorted(f.name for f in fields(node)) if is_dataclass(node) else []


WANDB_INSTALL = "pip install 'fantastic-dst[wandb]' (or pip install wandb)"


def require_wandb(what: str) -> None:
    """W&B is an optional dependency: a run that asks for it fails before it starts when it is absent."""
    if importlib.util.find_spec("wandb") is None:
        raise ValueError(f"{what}: needs the wandb package, which is not installed; {WANDB_INSTALL}")


def _choice(name: str, value, allowed) -> None:
    if value not in allowed:
        raise unknown(name, value, allowed)


def _keywords(name: str, given: dict, builder, skip: tuple[str, ...]) -> None:
    """Refuse keywords that ``builder`` does not take (before any job starts, not inside it)."""
    params = inspect.signature(builder).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return
    valid = sorted(k for k, p in params.items() if k not in skip and p.kind is not inspect.Parameter.VAR_POSITIONAL)
    unknown = sorted(set(given) - set(valid))
    if unknown:
        hints = []
        for key in unknown:
            before, colon, after = key.partition(":")
            section = name.rpartition(".")[0]
            if colon and before in valid:  # YAML reads `{a: 1,b:2}` as the key `b:2`
                hints.append(f"{key!r} looks like a missing space after the colon: write {{{before}: {after}}}")
            elif key in field_names(section):
                hints.append(f"{key!r} is a field of its own: did you mean {section}.{key}={json.dumps(given[key])}?")
            elif suggest(key, valid):
                hints.append(f"{key!r}: {suggest(key, valid)}")
        raise ValueError(f"{name}: unknown key(s) {unknown}; valid: {valid}" + "".join(f"; {h}" for h in hints))


def _build(cls, d: dict, path: str = ""):
    """Dataclass from a nested dict, rejecting unknown keys by their full name."""
    known = {f.name: f for f in fields(cls)}
    unknown = set(d) - set(known)
    if unknown:
        where = path.rstrip(".") or cls.__name__
        hints = "".join(
            f"; {path}{key}: {suggest(key, known, prefix=path)}" for key in sorted(unknown) if suggest(key, known)
        )
        raise ValueError(f"{where}: unknown field(s) {sorted(unknown)}; valid: {sorted(known)}{hints}")
    kwargs = {}
    for name, value in d.items():
        factory: Any = known[name].default_factory
        default = factory() if callable(factory) else None
        if is_dataclass(default) and isinstance(value, dict):
            value = _build(type(default), value, f"{path}{name}.")
        kwargs[name] = value
    return cls(**kwargs)

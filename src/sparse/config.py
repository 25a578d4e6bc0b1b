"""What a sparse run does, as one validated dataclass (also the Hydra `sparsity` schema).

Free of torch at import time (the registries are imported when validating), so reading
results (`analysis`) never loads torch."""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import yaml

from ..registry import unknown
from ..resources import CONF_DIR

REFERENCE_PRESET = CONF_DIR / "compat" / "reference.yaml"
MODES = ("dense", "static", "dst")
UPDATE_ORDERS = ("prune_then_step", "step_then_prune", "reference")
OPTIMIZER_STATE_POLICIES = ("zero", "keep")
REGROW_INITS = ("zero", "keep")


@dataclass
class SparsityConfig:
    """Sparse training settings. Defaults are the clean behaviour; `reference()` gives the
    paper's code's behaviour (see PAPER_SPEC §10)."""

    mode: str = "dst"  # dense | static (fixed initial mask) | dst (prune and regrow)
    density: float = 0.05  # fraction of masked weights that are active, in (0, 1]
    init: str = "erk"  # per-layer densities: erk | er | uniform
    erk_power_scale: float = 1.0
    # Which tensors are masked: by default every Conv/Linear weight. Regexes on parameter
    # names (re.search): `include` replaces the default choice, `exclude` removes from it.
    include: list[str] = field(default_factory=list)
    exclude: list[str] = field(default_factory=list)

    update_frequency: int = 800  # optimizer steps between topology updates
    end_fraction: float = 1.0  # no updates after this fraction of training
    prune_rate: float = 0.5  # initial fraction of active weights exchanged per update
    prune_rate_schedule: str = "cosine"
    prune_rate_floor: float = 0.005

    criterion: str = "magnitude"
    gamma: float = 1.0  # MEST / grad_step coefficient
    beta: float = 1.0  # EMA coefficient of running_* criteria
    global_pruning: bool = False
    normalization: str = "none"
    norm_reduction: str = "sum"
    rescale: str = "none"
    grasp_temperature: float = 200.0  # T of GraSP's softened loss CE(f(x) / T, y)

    growth: str = "random"
    exclude_just_pruned: bool = True  # do not regrow what this update pruned (unless forced)
    regrow_init: str = "zero"  # zero | keep (pruned-and-regrown weights keep their value)
    optimizer_state: str = "zero"  # zero | keep the moments of pruned and regrown weights
    update_order: str = "prune_then_step"  # | step_then_prune | reference (per criterion)
    # At every update, also compute which weights these criteria would prune and the Jaccard
    # similarity of their pruned sets with the run's own (the paper's Fig. 6b analysis).
    overlap_with: list[str] = field(default_factory=list)
    # The reference's scores, tie handling, SET, Bernoulli growth and mask sampling, ER as
    # an ERK alias, and a topology update allowed on the very last step.
    compat: bool = False
    # How masked layers are computed: masked (dense weights times masks), sparse (Linear
    # layers on their active weights only), auto (sparse where measured faster; see backend.py).
    backend: str = "auto"

    @classmethod
    def reference(cls, **overrides) -> SparsityConfig:
        """The paper's reference implementation's semantics, overridable field by field.

        Defined once, as the `compat=reference` config group option (conf/compat/reference.yaml)."""
        fields = yaml.safe_load(REFERENCE_PRESET.read_text())
        return replace(cls(**fields), **overrides)

    def validate(self) -> SparsityConfig:
        """Raise ValueError naming the field and its allowed values; return self."""
        # the registries import torch: not at import time (reading results needs no torch)
        from . import backend, criteria, density, functional, growth, schedules

        CRITERIA = criteria.CRITERIA

        choices = {
            "mode": MODES,
            "init": density.INITS,
            "prune_rate_schedule": schedules.SCHEDULES,
            "criterion": sorted(CRITERIA),
            "normalization": functional.NORMALIZATIONS,
            "norm_reduction": functional.NORM_REDUCTIONS,
            "rescale": functional.RESCALES,
            "growth": sorted(growth.GROWTH_RULES),
            "regrow_init": REGROW_INITS,
            "optimizer_state": OPTIMIZER_STATE_POLICIES,
            "update_order": UPDATE_ORDERS,
            "backend": backend.BACKENDS,
        }
        for name, allowed in choices.items():
            value = getattr(self, name)
            if value not in allowed:
                raise unknown(f"sparsity.{name}", value, allowed)
        for name in self.overlap_with:
            if name not in CRITERIA:
                raise unknown("sparsity.overlap_with", name, sorted(CRITERIA))
        if self.overlap_with and self.global_pruning:
            raise ValueError("sparsity.overlap_with: overlap is measured layer-wise; it needs global_pruning=false")
        if not 0 < self.density <= 1:
            raise ValueError(f"sparsity.density: must be in (0, 1], got {self.density}")
        for name in ("prune_rate", "prune_rate_floor", "end_fraction"):
            if not 0 <= getattr(self, name) <= 1:
                raise ValueError(f"sparsity.{name}: must be in [0, 1], got {getattr(self, name)}")
        if self.update_frequency < 1:
            raise ValueError(f"sparsity.update_frequency: must be >= 1, got {self.update_frequency}")
        if not self.gamma >= 0:
            raise ValueError(f"sparsity.gamma: must be >= 0, got {self.gamma}")
        if self.global_pruning and CRITERIA[self.criterion].remove in (criteria.BOTH_ENDS, criteria.SIGN_SPLIT_LEGACY):
            raise ValueError(f"sparsity.criterion: {self.criterion!r} has no global variant")
        if self.global_pruning and self.compat and self.criterion == "grasp":
            # PAPER_SPEC §2.6: its global GraSP keeps S < tau on scores without the +inf of
            # inactive entries, switching inactive weights on; not reproduced.
            raise ValueError("sparsity.criterion: 'grasp' with global_pruning has no compat variant; use compat=false")
        for name in self.overlap_with:
            if CRITERIA[name].needs_batch:
                raise ValueError(f"sparsity.overlap_with: {name!r} scores on a batch of data; not supported")
        if self.global_pruning and CRITERIA[self.criterion].running:
            raise ValueError(f"sparsity.criterion: running criterion {self.criterion!r} has no global variant")
        if self.backend == "sparse" and self.mode != "dense" and self.sparse_unsupported_reason():
            raise ValueError(
                f"sparsity.backend: 'sparse' cannot run with {self.sparse_unsupported_reason()}; "
                f"allowed here: ['masked', 'auto'] (auto then runs every layer masked)"
            )
        return self

    def sparse_unsupported_reason(self) -> str | None:
        """Why these settings need dense masked weights everywhere (no sparse layer), or None."""
        from . import criteria, growth  # (torch, as in `validate`)

        if self.compat:
            return "sparsity.compat=true (the reference's semantics read and keep state at inactive weights)"
        if self.optimizer_state == "keep":
            return "sparsity.optimizer_state='keep' (regrown weights keep moments accumulated while inactive)"
        if growth.get_growth(self.growth).needs_momentum:
            return f"sparsity.growth={self.growth!r} (it ranks the optimizer momentum of inactive weights)"
        if self.mode == "dst" and criteria.get_criterion(self.criterion).needs_batch:
            return f"sparsity.criterion={self.criterion!r} (it differentiates a dense copy of the model twice)"
        return None

    def step_first(self) -> bool:
        """True when the optimizer steps before the topology update."""
        if self.update_order == "reference":
            from .reference import STEP_FIRST  # (torch, as in `validate`)

            return self.criterion in STEP_FIRST
        return self.update_order == "step_then_prune"

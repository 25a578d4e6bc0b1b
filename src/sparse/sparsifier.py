"""The Sparsifier: masks for a model's weights, kept sparse through an optimizer's steps.

    sparsifier = Sparsifier(model, optimizer, SparsityConfig(...), total_steps, seed=0)
    sparsifier.prepare(input_shape)         # sample the initial masks, zero the inactive weights
    for x, y in batches:
        loss_fn(model(x), y).backward()
        record = sparsifier.step()          # instead of optimizer.step(); a record on updates
        optimizer.zero_grad(set_to_none=True)

Between topology updates a step is `optimizer.step()` plus one fused in-place multiply of all
masked weights by their masks, with no host-device synchronisation. Layers that the execution
backend (`sparsity.backend`, see backend.py) runs sparse hold only their active weights, so
they need no mask multiply; an update gives them a dense view and rebuilds them after. Every `update_frequency`
steps the topology update prunes with the configured criterion (layer-wise or global) and
regrows as many weights in the same layer with the growth rule, so per-layer active counts
never change (except under the reference's Bernoulli growth). The pruning and growth are
`functional.prune_tensors` and `grow`; `policy` (clean, or the reference's: reference.py)
is chosen once here from `compat`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from .backend import SparseExecution, _distributed, choose_backends, layer_inputs, sparse_layer
from .config import SparsityConfig
from .criteria import get_criterion
from .density import layer_densities, masked_parameter_names
from .functional import CLEAN, Policy, grow, prune_count, prune_tensors, rescale_weight
from .grasp import hessian_gradient
from .growth import get_growth
from .overlap import OverlapResult, criteria_overlap
from .reference import REFERENCE
from .schedules import prune_rate

# Seeds of the sparsifier's own generators are offset by purpose so that, e.g., random
# pruning never shifts the growth or the data order (PAPER_SPEC §10.1 item 21).
_INIT, _PRUNE, _GROW, _ANALYSIS = 1, 2, 3, 4


@dataclass
class LayerUpdate:
    name: str
    active: int  # before the update (and after it: counts are preserved)
    removed: int
    regrown: int
    regrown_just_pruned: int  # of the regrown, how many were removed by this same update


@dataclass
class UpdateRecord:
    step: int
    prune_rate: float
    layers: list[LayerUpdate] = field(default_factory=list)
    # Jaccard similarity of the pruned set with each `overlap_with` criterion's, and between
    # those criteria (pooled over layers; "run" is this update's actual pruned set).
    overlap: dict | None = None


class Sparsifier:
    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        config: SparsityConfig,
        total_steps: int,
        *,
        seed: int = 0,
        batches: Callable[[], tuple[Tensor, Tensor]] | None = None,
    ):
        """``batches`` returns one (inputs, targets) batch; only criteria scored on data
        (grasp) call it, once per topology update."""
        self.model, self.optimizer = model, optimizer
        self.config = config.validate()
        self.batches = batches
        self.total_steps = total_steps
        self.steps = 0
        params = dict(model.named_parameters())
        self.names = [] if config.mode == "dense" else masked_parameter_names(model, config.include, config.exclude)
        if config.mode != "dense" and not self.names:
            raise ValueError("sparsity.include/exclude: no parameter of the model is selected for masking")
        self.params: list[Tensor] = [params[n] for n in self.names]
        # Masks are stored in the weights' dtype so one foreach multiply applies them all.
        self.masks = [torch.ones_like(p, memory_format=torch.preserve_format) for p in self.params]
        device = self.params[0].device if self.params else torch.device("cpu")
        self._generators = {
            k: torch.Generator(device=device).manual_seed(seed * 1000 + k) for k in (_INIT, _PRUNE, _GROW, _ANALYSIS)
        }
        self.policy: Policy = REFERENCE if config.compat else CLEAN  # the semantics, see reference.py
        self._criterion = get_criterion(config.criterion)
        self._growth = get_growth(config.growth)
        if self._criterion.needs_batch and config.mode == "dst" and batches is None:
            raise ValueError(
                f"sparsity.criterion: {config.criterion!r} scores on a batch of data; "
                "the Sparsifier needs batches=<callable returning (inputs, targets)>"
            )
        self._running: list[Tensor | None] = [None] * len(self.params)
        self._step_first = config.step_first()
        # Whether an update reads gradients (a sparse layer then forms its dense gradient).
        self._reads_grad = (
            self._criterion.needs_grad
            or self._growth.needs_grad
            or any(get_criterion(c).needs_grad for c in config.overlap_with)
        )
        # Every masked tensor runs masked until `prepare` picks the backend of each.
        self.backends = ["masked"] * len(self.params)
        self._execution = SparseExecution(optimizer, {})
        self._stepped: tuple[list[Tensor], list[Tensor]] = (
            self.params,
            self.masks,
        )  # the tensors masked after optimizer steps

    # ------------------------------------------------------------------ set-up
    @torch.no_grad()
    def prepare(self, input_shape: tuple[int, ...] | None = None, batch_size: int | None = None) -> Sparsifier:
        """Sample the initial masks (per-layer densities by `init`) and zero inactive weights.
        ``input_shape``: one sample's model input shape; it gives each convolution the input
        size its crossover and its kernels' trial depend on (`conv_input_sizes`).
        ``batch_size``: the training batch, which the sparse layers' kernels are timed on
        (`choice`; 128 when not given)."""
        if self.config.mode == "dense":
            return self
        cfg = self.config
        densities = layer_densities(
            [p.shape for p in self.params], cfg.density, self.policy.init(cfg.init), power_scale=cfg.erk_power_scale
        )
        for mask, param, d in zip(self.masks, self.params, densities):
            mask.copy_(self.policy.sample_mask(param.shape, d, generator=self._generators[_INIT], device=param.device))
        self._sync_masks()
        self.apply_masks()
        self._start_backends(input_shape, batch_size)
        return self

    def _start_backends(self, input_shape: tuple[int, ...] | None, batch_size: int | None = None) -> None:
        """Hand the layers that `config.backend` runs sparse to a `SparseExecution`. Decided
        here, from the initial masks and the input's shape only, so a resumed run (which
        prepares the same way before loading its checkpoint) and every DDP rank decide alike."""
        modules = dict(self.model.named_modules())
        owners = [modules.get(n.rpartition(".")[0]) if n.rpartition(".")[2] == "weight" else None for n in self.names]
        allowed = self.config.sparse_unsupported_reason() is None
        sizes: list[tuple[int, int] | None] = [None] * len(self.params)
        grads = [True] * len(self.params)
        if self.config.backend != "masked" and allowed and input_shape is not None:
            sizes, grads = layer_inputs(self.model, owners, tuple(input_shape))
        backend = self.config.backend
        self.backends = choose_backends(backend, self.params, owners, self.masks, allowed, sizes, batch_size, grads)
        sparse = [i for i, b in enumerate(self.backends) if b == "sparse"]
        options = {i: {"batch": batch_size, "input_size": sizes[i], "input_grad": grads[i]} for i in sparse}
        rank0 = not _distributed() or torch.distributed.get_rank() == 0

        def owner(i: int) -> nn.Module:
            module = owners[i]
            assert module is not None  # choose_backends runs sparse only a module's own weight
            return module

        layers = {i: sparse_layer(owner(i), self.masks[i], **options[i]) for i in sparse} if rank0 else {}
        if _distributed():
            # Every rank runs rank 0's choices (timed trials may differ between ranks).
            chosen: list[Any] = [self.backends, {i: layer.ops.names() for i, layer in layers.items()}]
            torch.distributed.broadcast_object_list(chosen, src=0)
            if not rank0:
                self.backends, names = chosen
                layers = {i: sparse_layer(owner(i), self.masks[i], ops=n) for i, n in names.items()}
        self._execution = SparseExecution(self.optimizer, layers)
        kept = [i for i, b in enumerate(self.backends) if b == "masked"]
        self._stepped = ([self.params[i] for i in kept], [self.masks[i] for i in kept])

    @torch.no_grad()
    def apply_masks(self) -> None:
        """Zero the inactive entries of the masked-backend weights (sparse ones have none)."""
        params, masks = self._stepped
        if params:
            torch._foreach_mul_(params, masks)

    # ------------------------------------------------------------------ per step
    def step(self) -> UpdateRecord | None:
        """One optimizer step, masks applied, and a topology update when one is due."""
        self.steps += 1
        if self.config.mode != "dst":
            self._optimizer_step()
            return None
        record = None
        if self._step_first:
            self._optimizer_step()
        if self._criterion.running:
            self._accumulate_running()
        if self.is_update_step(self.steps):
            record = self.update()
        if not self._step_first:
            self._optimizer_step()
        return record

    def _optimizer_step(self) -> None:
        self._execution.all_reduce_grads()
        with self._execution.fused_sgd():  # the sparse values in one pass where compiled
            self.optimizer.step()
        self.apply_masks()

    def kernel_choices(self) -> dict[str, dict[str, str]]:
        """For each layer that runs sparse, the implementation of each of its operations
        (`choice.LayerOps.names`: compiled or torch per product, fused or torch's SGD step)."""
        return {self.names[i]: names for i, names in self._execution.kernel_choices().items()}

    def is_update_step(self, step: int) -> bool:
        return is_update_step(self.config, step, self.total_steps)

    def prune_rate(self, step: int | None = None) -> float:
        cfg = self.config
        step = self.steps if step is None else step
        return prune_rate(cfg.prune_rate_schedule, step, self.total_steps, cfg.prune_rate, cfg.prune_rate_floor)

    @torch.no_grad()
    def _accumulate_running(self) -> None:
        beta = self.config.beta
        for i, (p, m) in enumerate(zip(self.params, self.masks)):
            if i in self._execution.layers:  # sampled at the active entries only
                p = self._execution.layers[i].values
                m = torch.ones_like(p, dtype=torch.bool)
            sample = self._criterion.sample(p, p.grad, m)
            running = self._running[i]
            if running is None:
                self._running[i] = sample
            else:
                running.mul_(beta).add_(sample, alpha=1 - beta)

    # ------------------------------------------------------------------ topology update
    @torch.no_grad()
    def update(self) -> UpdateRecord:
        """Prune and regrow every masked tensor now (normally called by `step`)."""
        cfg = self.config
        rate = self.prune_rate()
        self._to_dense(with_grad=self._reads_grad)
        before = [m.bool() for m in self.masks]
        active = _counts(before)
        pruned = self._prune(before, active, rate)
        removed = [a - c for a, c in zip(active, _counts(pruned))]
        record = UpdateRecord(self.steps, rate)
        if cfg.overlap_with:  # the references remove as many weights per layer as the run did
            record.overlap = self._overlap(cfg.overlap_with, rate, before, pruned, removed).as_dict()
        regrown_counts = []
        for i, (param, old, new) in enumerate(zip(self.params, before, pruned)):
            rescale_weight(param, old, new, cfg.rescale, policy=self.policy)
            just_pruned = old & ~new
            grown = grow(
                self._growth,
                param,
                param.grad,
                new,
                max(removed[i], 0),
                momentum=self._momentum(param),
                generator=self._generators[_GROW],
                exclude=just_pruned if cfg.exclude_just_pruned else None,
                policy=self.policy,
            )
            regrown = grown & ~new
            if cfg.regrow_init == "zero":
                param.masked_fill_(regrown, 0)
            param.mul_(grown)
            if cfg.optimizer_state == "zero":
                self._zero_optimizer_state(param, just_pruned | regrown)
            self.masks[i].copy_(grown)
            regrown_counts.append(torch.stack([regrown.count_nonzero(), (regrown & just_pruned).count_nonzero()]))
        self._running = [None] * len(self.params)
        self._sync_masks()
        self._to_sparse()
        counts = torch.stack(regrown_counts).tolist() if regrown_counts else []
        for name, a, r, (g, gj) in zip(self.names, active, removed, counts):
            record.layers.append(LayerUpdate(name, a, r, g, gj))
        return record

    def _to_dense(self, with_grad: bool) -> None:
        """Give the sparse-backend layers their dense view for an update (running scores too)."""
        self._execution.to_dense(with_grad)
        for i, layer in self._execution.layers.items():
            running = self._running[i]
            if running is not None and running.shape != layer.weight.shape:
                self._running[i] = layer.scatter(running)

    def _to_sparse(self) -> None:
        """Rebuild the sparse-backend layers for the current masks (running scores too)."""
        self._execution.to_sparse(self.masks)
        for i, layer in self._execution.layers.items():
            running = self._running[i]
            if running is not None and running.shape == layer.weight.shape:
                self._running[i] = layer.gather(running)

    def _prune(self, masks: list[Tensor], active: list[int], rate: float) -> list[Tensor]:
        """The masks after pruning, layer-wise or global. With `exclude_just_pruned`, never
        remove more than can be regrown elsewhere: a layer loses at most its inactive
        count, and global pruning leaves dense layers alone."""
        cfg = self.config
        exclude = cfg.exclude_just_pruned
        eligible: list[Tensor] | None = None
        hg: list[Tensor] | None = None
        counts: int | list[int]
        if self._criterion.needs_batch:
            assert self.batches is not None  # __init__ refuses a batch criterion without batches
            hg = hessian_gradient(self.model, self.names, self.batches(), cfg.grasp_temperature)
        if cfg.global_pruning:
            counts = prune_count(rate, sum(active))
            if exclude:
                eligible = [m if a < m.numel() else torch.zeros_like(m) for m, a in zip(masks, active)]
        else:
            counts = [
                min(prune_count(rate, a), m.numel() - a) if exclude else prune_count(rate, a)
                for m, a in zip(masks, active)
            ]
        return prune_tensors(
            self._criterion,
            self.params,
            [p.grad for p in self.params],
            masks,
            counts,
            scope="global" if cfg.global_pruning else "layer",
            eligible=eligible,
            policy=self.policy,
            normalization=cfg.normalization,
            norm_reduction=cfg.norm_reduction,
            running=self._running,
            hg=hg,
            gamma=cfg.gamma,
            generator=self._generators[_PRUNE],
        )

    def _momentum(self, param: Tensor) -> Tensor | None:
        """The growth signal of `momentum` growth: SGD's buffer or Adam's m / (sqrt(v) + 1e-8)."""
        if not self._growth.needs_momentum:
            return None
        state = self.optimizer.state.get(param, {})
        if "momentum_buffer" in state and state["momentum_buffer"] is not None:
            return state["momentum_buffer"]
        if "exp_avg" in state:
            return state["exp_avg"] / (state["exp_avg_sq"].sqrt() + 1e-8)
        return None

    def _zero_optimizer_state(self, param: Tensor, positions: Tensor) -> None:
        for value in self.optimizer.state.get(param, {}).values():
            if torch.is_tensor(value) and value.shape == param.shape:
                value.masked_fill_(positions, 0)

    def _sync_masks(self) -> None:
        """Under DDP, make rank 0's masks everyone's. Called only when masks change."""
        if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
            return
        if torch.distributed.get_world_size() == 1 or not self.masks:
            return
        flat = torch.cat([m.reshape(-1) for m in self.masks])
        torch.distributed.broadcast(flat, src=0)
        for m, part in zip(self.masks, flat.split([m.numel() for m in self.masks])):
            m.copy_(part.view_as(m))

    # ------------------------------------------------------------------ inspection
    def densities(self) -> dict[str, float]:
        """Per-layer density (one synchronisation for all layers)."""
        counts = _counts(self.masks)
        return {n: c / m.numel() for n, c, m in zip(self.names, counts, self.masks)}

    def overall_density(self) -> float:
        total = sum(m.numel() for m in self.masks)
        return sum(_counts(self.masks)) / total if total else 1.0

    def overlap(self, criteria: list[str], rate: float | None = None) -> OverlapResult:
        """Which weights each of ``criteria`` would prune now, and their pairwise Jaccard
        similarities, on the current weights, gradients and masks (nothing is copied)."""
        masks = [m.bool() for m in self.masks]
        self._to_dense(with_grad=True)
        try:
            return self._overlap(criteria, self.prune_rate() if rate is None else rate, masks)
        finally:
            self._to_sparse()

    def _overlap(self, criteria, rate, masks, pruned=None, counts=None) -> OverlapResult:
        cfg = self.config
        given = None if pruned is None else {"run": [m & ~p for m, p in zip(masks, pruned)]}
        return criteria_overlap(
            criteria,
            self.names,
            self.params,
            [p.grad for p in self.params],
            masks,
            rate,
            counts=counts,
            given=given,
            policy=self.policy,
            gamma=cfg.gamma,
            generator=self._generators[_ANALYSIS],
        )

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict:
        return {
            "names": list(self.names),
            "steps": self.steps,
            "masks": [m.bool().cpu() for m in self.masks],
            "running": [None if r is None else r.clone() for r in self._running],
            "generators": {k: g.get_state() for k, g in self._generators.items()},
        }

    @torch.no_grad()
    def load_state_dict(self, state: dict) -> None:
        if state["names"] != self.names:
            raise ValueError(f"sparsifier state is for tensors {state['names']}, this model has {self.names}")
        self.steps = state["steps"]
        for mask, saved in zip(self.masks, state["masks"]):
            mask.copy_(saved)
        self._running = [None if r is None else r.to(p.device) for r, p in zip(state["running"], self.params)]
        for k, g in self._generators.items():
            g.set_state(state["generators"][k])
        if self.params:
            torch._foreach_mul_(self.params, self.masks)
        self._execution.rebuild(self.masks)


def _counts(masks: list[Tensor]) -> list[int]:
    """Active count of each mask, with a single host-device synchronisation."""
    if not masks:
        return []
    return torch.stack([m.count_nonzero() for m in masks]).tolist()


def is_update_step(config: SparsityConfig, step: int, total_steps: int) -> bool:
    """Whether optimizer step ``step`` (counted from 1) of a ``total_steps`` run makes a
    topology update (also what a launch counts to warn about runs that make none)."""
    if config.mode != "dst" or step % config.update_frequency:
        return False
    if step > config.end_fraction * total_steps:
        return False
    return step < total_steps or (REFERENCE if config.compat else CLEAN).update_on_last_step

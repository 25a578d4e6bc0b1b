"""Training and inference FLOPs of a run, counted as the DST literature counts them (RigL,
Evci et al. 2020, appendix H), from the densities each layer actually had:

* a layer's dense cost ``F`` is the multiply-adds of its weight in one forward pass of one
  sample (a linear layer: inputs x outputs per output position; a convolution: output
  positions x output channels x input channels / groups x kernel size), found by one
  forward pass on the meta device (`layer_costs`: no memory, no data); FLOPs = 2 x
  multiply-adds;
* at density ``d`` a forward pass costs ``d F``, a backward pass ``2 d F`` (the gradients of
  the layer's input and of its weights);
* a step whose backward pass forms the dense weight gradient costs ``F`` instead of ``d F``
  for that gradient: the step of each topology update whose criterion or growth reads
  gradients (gradient growth, SNIP, MEST, ...), and every step under momentum growth (its
  momentum is the running mean of dense gradients);
* a topology update scores and selects among all of a layer's weights: one operation per
  weight;
* only the weights of linear and convolutional layers are counted (biases, normalisation,
  activations and pooling cost the same sparse or dense, and little); layers left dense by
  ``sparsity.include/exclude`` count at density 1.

Densities are constant between topology updates; each update record holds every layer's
active count before it, and the final masks give the last segment (`count_flops`, plain
Python, so that the analysis can count older records that carry no FLOPs). The dense
reference is the same model at density 1 over the same samples.
"""

from __future__ import annotations

import copy
import functools
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from ..models import build_model, model_info
from .config import SparsityConfig
from .criteria import get_criterion
from .density import layer_densities, masked_parameter_names
from .functional import CLEAN
from .growth import get_growth
from .reference import REFERENCE

METHOD = (
    "2 x multiply-adds of the linear and convolution weights at the layer densities of the run; "
    "backward = 2 x forward, the weight gradient dense on the steps that read it (RigL's counting)"
)


@dataclass(frozen=True)
class LayerCost:
    macs: int  # multiply-adds of the dense weight in one forward pass of one sample
    numel: int  # weights of the layer


def layer_costs(model, input_shape: Sequence[int]) -> dict[str, LayerCost]:
    """Per weight name (``conv1.weight``), its `LayerCost`, from one forward pass of a
    meta-device copy of ``model``'s structure (``model`` itself is not run)."""
    meta = copy.deepcopy(model).to("meta")
    costs: dict[str, LayerCost] = {}
    hooks = []
    for name, module in meta.named_modules():
        if isinstance(module, (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)):

            def hook(module, inputs, output, name=name):
                weight = module.weight
                per_output = weight[0].numel()  # inputs (x kernel / groups) per output value
                costs[f"{name}.weight" if name else "weight"] = LayerCost(output.numel() * per_output, weight.numel())

            hooks.append(module.register_forward_hook(hook))
    try:
        with torch.no_grad():
            meta(torch.empty(1, *input_shape, device="meta"))
    finally:
        for h in hooks:
            h.remove()
    return costs


def model_costs(model_name: str, num_classes: int | None, input_shape: Sequence[int] | None = None, **kwargs):
    """`layer_costs` of a registered model, built on the meta device (``input_shape``
    defaults to the model's own); computed once per model, classes, shape and kwargs."""
    shape = None if input_shape is None else tuple(input_shape)
    return _model_costs(model_name, num_classes, shape, json.dumps(kwargs, sort_keys=True))


@functools.lru_cache(maxsize=64)
def _model_costs(model_name: str, num_classes: int | None, input_shape, kwargs: str) -> dict[str, LayerCost]:

    with torch.device("meta"):
        model = build_model(model_name, num_classes, **json.loads(kwargs))
    return layer_costs(model, input_shape or model_info(model_name).input_shape)


def dense_gradient_steps(sparsity) -> str:
    """When a run's backward pass forms dense weight gradients: ``never``, at ``updates``
    (an update that reads gradients) or ``every step`` (momentum growth)."""
    if sparsity.mode != "dst":
        return "never"
    growth = get_growth(sparsity.growth)
    if growth.needs_momentum:
        return "every step"
    reads = get_criterion(sparsity.criterion).needs_grad or growth.needs_grad
    reads = reads or any(get_criterion(c).needs_grad for c in sparsity.overlap_with)
    return "updates" if reads else "never"


def count_flops(
    costs: Mapping[str, LayerCost],
    *,
    final_density: Mapping[str, float],
    updates: Sequence[tuple[int, Mapping[str, int]]],
    steps: int,
    batch_size: int,
    steps_per_epoch: int,
    samples_per_epoch: int | None = None,
    dense_gradient: str = "never",
    ranks: int = 1,
) -> dict:
    """A run's FLOPs (module docstring). ``final_density``: per masked weight name, its
    density at the end (others are dense); ``updates``: (step, active count per masked
    weight before the update) of each topology update, in order; ``steps``: the optimizer
    steps run; ``samples_per_epoch``: one process's training samples (default: every batch
    full); ``ranks``: the data-parallel processes, each of which ran those steps.

    Returns ``train`` (forward and backward of every step, the dense gradients and the
    updates), ``train_dense`` (the dense model over the same samples), ``inference`` (one
    sample's forward pass at the final densities), ``inference_dense`` and both fractions."""
    samples_per_epoch = samples_per_epoch or steps_per_epoch * batch_size

    def samples(step: int) -> int:  # samples in the first ``step`` steps (an epoch's last batch may be short)
        full, rest = divmod(step, steps_per_epoch)
        return ranks * (full * samples_per_epoch + rest * batch_size)

    def forward(density: Mapping[str, float]) -> float:  # one sample's forward pass, in multiply-adds
        return sum(c.macs * density.get(name, 1.0) for name, c in costs.items())

    dense = forward({})
    segments = []  # (first step, last step, densities during them)
    start = 0
    for step, active in updates:
        density = {name: active[name] / costs[name].numel for name in active if name in costs}
        segments.append((start, min(step, steps), density))
        start = min(step, steps)
    segments.append((start, steps, dict(final_density)))
    macs = 0.0
    for first, last, density in segments:
        per_sample = 3 * forward(density)  # forward, input gradient, weight gradient
        if dense_gradient == "every step":
            per_sample += dense - forward(density)
        macs += per_sample * (samples(last) - samples(first))
    for step, active in updates:
        if step > steps:
            continue
        density = {name: active[name] / costs[name].numel for name in active if name in costs}
        if dense_gradient == "updates":  # this step's weight gradient was dense
            macs += (dense - forward(density)) * (samples(step) - samples(step - 1))
        macs += sum(costs[name].numel for name in active if name in costs)  # scoring every weight
    total = samples(steps)
    inference = forward(final_density)
    return {
        "train": 2 * macs,
        "train_dense": 2 * 3 * dense * total,
        "train_fraction": macs / (3 * dense * total) if total else None,
        "inference": 2 * inference,
        "inference_dense": 2 * dense,
        "inference_fraction": inference / dense if dense else None,
        "samples": total,
        "method": METHOD,
    }


def update_active_counts(update_records: Sequence[Mapping]) -> list[tuple[int, dict[str, int]]]:
    """(step, active count per layer before it) of each ``update`` line of metrics.jsonl."""
    return [
        (int(r["step"]), {layer["name"]: int(layer["active"]) for layer in r.get("layers", [])}) for r in update_records
    ]


def run_flops(
    config: Mapping,
    *,
    input_shape: Sequence[int] | None,
    num_classes: int | None,
    final_density: Mapping[str, float] | None,
    update_records: Sequence[Mapping],
    steps: int,
    steps_per_epoch: int,
    samples_per_epoch: int | None = None,
    ranks: int = 1,
) -> dict:
    """`count_flops` of one run from its config (a dict, as in config.json) and records.
    Without ``final_density`` (records older than per-layer densities) the masked layers
    keep their initial densities (exact where growth preserves every layer's count)."""
    sparsity = SparsityConfig(
        **{k: v for k, v in config["sparsity"].items() if k in SparsityConfig.__dataclass_fields__}
    )
    model = config["model"]
    costs = model_costs(model["name"], model.get("num_classes") or num_classes, input_shape, **model.get("kwargs", {}))
    if sparsity.mode == "dense":
        final_density = {}
    elif final_density is None:
        final_density = initial_densities(config, costs)
    return count_flops(
        costs,
        final_density=final_density,
        updates=update_active_counts(update_records),
        steps=steps,
        batch_size=config["data"]["batch_size"],
        steps_per_epoch=steps_per_epoch,
        samples_per_epoch=samples_per_epoch,
        dense_gradient=dense_gradient_steps(sparsity),
        ranks=ranks,
    )


def initial_densities(config: Mapping, costs: Mapping[str, LayerCost]) -> dict[str, float]:
    """The per-layer densities a run's masks start from (its ``sparsity.init`` over the
    weights it masks), computed as the `Sparsifier` computes them."""

    sparsity, model = config["sparsity"], config["model"]
    with torch.device("meta"):
        net = build_model(model["name"], model.get("num_classes"), **model.get("kwargs", {}))
    names = masked_parameter_names(net, sparsity.get("include", ()), sparsity.get("exclude", ()))
    params = dict(net.named_parameters())
    policy = REFERENCE if sparsity.get("compat") else CLEAN
    densities = layer_densities(
        [params[n].shape for n in names],
        sparsity["density"],
        policy.init(sparsity.get("init", "erk")),
        power_scale=sparsity.get("erk_power_scale", 1.0),
    )
    return dict(zip(names, densities))


def record_flops(config: Mapping, **records) -> dict:
    """`run_flops` for a run's result.json: a model the meta-device pass cannot trace is
    recorded as ``{"error": ...}``, never a run lost at its end."""
    try:
        return run_flops(config, **records)
    except Exception as e:  # noqa: BLE001 (the run's result matters more than its FLOPs)
        return {"error": f"{type(e).__name__}: {e}"}

"""Execution backends: how a masked layer's weights are stored and multiplied.

``masked``: the weight stays a dense tensor multiplied by its mask after every optimizer step,
so every multiply-add of the dense layer is still computed. Works for any tensor and option.

``sparse``: an ``nn.Linear`` holds its active weights as the values of a CSR matrix. Forward
(``W @ xᵀ``), input gradient (a pre-built transposed CSR) and weight gradient (only at the
active entries, ``sampled_addmm``) cost O(active); the optimizer steps the values, so its
moments are sized to the active entries too, and no mask is ever multiplied in.

The dense-shaped weight parameter stays in the module (and in ``model.state_dict()``, kept in
step by a hook) so criteria, checkpoints and saved models see ordinary weights. At a topology
update the `Sparsifier` asks for a dense view (weights, the dense gradient computed once from
the last batch, optimizer state scattered to dense shape), runs its usual prune/grow code on
it, and the layer is rebuilt from the new mask.

``auto`` runs a Linear layer sparse when its density is below the crossover density measured
for its shape (`crossover.json`, re-measured by ``python -m bench.crossover``), on the CPU.
Convolutions run masked: unfold x CSR measures slower than the dense convolution even for
LeNet-5's conv2 at 3.7 % density (`bench.crossover.conv_probe`), the unfold / fold copies
costing more than the saved multiply-adds.
"""

from __future__ import annotations

import json
import math
import warnings
from pathlib import Path

import torch
from torch import Tensor, nn

BACKENDS = ("masked", "sparse", "auto")
INDEX_DTYPE = torch.int32
CROSSOVER_TABLE = Path(__file__).with_name("crossover.json")

# torch marks CSR support as beta; the operations used here are the supported core ones.
warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta state")


class _SparseLinearFn(torch.autograd.Function):
    """y = x Wᵀ with W given by CSR values; gradients at the active entries only."""

    @staticmethod
    def forward(ctx, x: Tensor, values: Tensor, layer: "SparseLinear") -> Tensor:
        ctx.layer = layer
        ctx.save_for_backward(x, values)
        return (layer.csr(values) @ x.t()).t()

    @staticmethod
    def backward(ctx, grad_out: Tensor):
        x, values = ctx.saved_tensors
        layer = ctx.layer
        # Kept (not copied) so an update step can form the dense weight gradient once.
        layer.last_input, layer.last_grad_out = x, grad_out
        grad_x = grad_values = None
        if ctx.needs_input_grad[0]:
            grad_x = (layer.csr_t(values) @ grad_out.t()).t()
        if ctx.needs_input_grad[1]:
            grad_values = torch.sparse.sampled_addmm(layer.csr(values), grad_out.t(), x, beta=0.0).values()
        return grad_x, grad_values, None


class SparseLinear:
    """One ``nn.Linear`` run on its active weights: the values parameter, its CSR structure
    and the transposed structure, rebuilt from the mask after each topology update."""

    def __init__(self, module: nn.Linear, mask: Tensor):
        self.module = module
        self.weight = module.weight
        self.last_input = self.last_grad_out = None
        self.build(mask)
        self.weight.requires_grad_(False)
        self.weight.grad = None
        module.forward = self.forward  # the instance attribute shadows nn.Linear.forward
        module.register_state_dict_pre_hook(lambda *_: self.sync_dense())
        module.register_load_state_dict_post_hook(lambda *_: self.load_dense())

    @torch.no_grad()
    def build(self, mask: Tensor) -> None:
        """Index structures for ``mask`` and a new values parameter read from the dense weight
        (new, because autograd keeps a leaf's shape: the active count may change)."""
        out_features, in_features = self.weight.shape
        index = mask.reshape(-1).nonzero().squeeze(1)  # row-major: the CSR order
        rows, cols = index // in_features, index % in_features
        order = torch.argsort(cols * out_features + rows)  # column-major: the transposed CSR order
        self.index, self.t_order = index, order
        # 32-bit indices: what the CPU sparse kernels use without converting on every call.
        self.crow, self.col = _offsets(rows, out_features), cols.to(INDEX_DTYPE)
        self.t_crow, self.t_col = _offsets(cols, in_features), rows[order].to(INDEX_DTYPE)
        self.values = nn.Parameter(self.weight.reshape(-1)[index].clone())

    def csr(self, values: Tensor) -> Tensor:
        return torch.sparse_csr_tensor(self.crow, self.col, values, tuple(self.weight.shape), check_invariants=False)

    def csr_t(self, values: Tensor) -> Tensor:
        values_t = values.index_select(0, self.t_order)
        shape = tuple(self.weight.shape[::-1])
        return torch.sparse_csr_tensor(self.t_crow, self.t_col, values_t, shape, check_invariants=False)

    def forward(self, x: Tensor) -> Tensor:
        lead = x.shape[:-1]
        y = _SparseLinearFn.apply(x.reshape(-1, x.shape[-1]), self.values, self)
        if self.module.bias is not None:
            y = y + self.module.bias
        return y.reshape(*lead, y.shape[-1])

    @torch.no_grad()
    def sync_dense(self) -> None:
        """Write the values into the dense weight, zero elsewhere (for checkpoints and updates)."""
        self.weight.zero_().view(-1).index_copy_(0, self.index, self.values)

    @torch.no_grad()
    def load_dense(self) -> None:
        """Read the values back from the dense weight (after `load_state_dict` on the module).
        The dense weight is left as loaded: a checkpoint's masks, loaded next, may differ."""
        self.values.copy_(self.gather(self.weight))

    @torch.no_grad()
    def dense_grad(self) -> Tensor | None:
        """The dense weight gradient of the last backward pass (one dense matmul). With several
        backward passes per optimizer step (gradient accumulation) it is the last one's only."""
        if self.last_grad_out is None:
            return None
        return self.last_grad_out.t() @ self.last_input

    @torch.no_grad()
    def pattern_grad(self) -> Tensor:
        """The last backward pass's weight gradient at the active entries of the current pattern."""
        return torch.sparse.sampled_addmm(self.csr(self.values), self.last_grad_out.t(), self.last_input,
                                          beta=0.0).values()

    def gather(self, dense: Tensor) -> Tensor:
        return dense.reshape(-1)[self.index]

    def scatter(self, values: Tensor) -> Tensor:
        dense = torch.zeros(self.weight.numel(), dtype=values.dtype, device=values.device)
        return dense.index_copy_(0, self.index, values).view(self.weight.shape)


def _offsets(rows: Tensor, n: int) -> Tensor:
    crow = torch.zeros(n + 1, dtype=INDEX_DTYPE, device=rows.device)
    crow[1:] = torch.bincount(rows, minlength=n).cumsum(0)
    return crow


class SparseExecution:
    """The layers of one model that run sparse, and the moves between their sparse state
    (values, value-sized optimizer moments) and the dense view a topology update works on."""

    def __init__(self, optimizer: torch.optim.Optimizer, layers: dict[int, SparseLinear]):
        self.optimizer, self.layers = optimizer, layers
        self._had_grad = {i: False for i in layers}
        for layer in layers.values():
            _replace_in_optimizer(optimizer, layer.weight, layer.values)
            _move_state(optimizer, layer.weight, layer.values, layer.gather)

    def sync_dense(self) -> None:
        for layer in self.layers.values():
            layer.sync_dense()

    @torch.no_grad()
    def to_dense(self, with_grad: bool = True) -> None:
        """Dense weights, dense-shaped optimizer state and, ``with_grad``, dense gradients
        (one dense matmul per layer: only for rules that read the gradient) for an update."""
        self._had_grad = {i: layer.values.grad is not None for i, layer in self.layers.items()}
        for i, layer in self.layers.items():
            layer.sync_dense()
            # As in the masked backend: a dense gradient exactly when there is a gradient.
            has_grad = with_grad and self._had_grad[i]
            layer.weight.grad = _all_reduced(layer.dense_grad()) if has_grad else None
            _move_state(self.optimizer, layer.values, layer.weight, layer.scatter)

    @torch.no_grad()
    def to_sparse(self, masks: list[Tensor]) -> None:
        """Rebuild each layer for its (new) mask from the dense view left by the update."""
        for i, layer in self.layers.items():
            self._build(layer, masks[i])
            grad = layer.weight.grad
            if self._had_grad[i]:  # an optimizer step may follow: the gradient at the new pattern
                layer.values.grad = layer.gather(grad) if grad is not None else layer.pattern_grad()
            layer.weight.grad = None
            _move_state(self.optimizer, layer.weight, layer.values, layer.gather)

    def rebuild(self, masks: list[Tensor]) -> None:
        """After loading a checkpoint: structures for the loaded masks; the optimizer state
        loaded for the values is already in this layout."""
        for i, layer in self.layers.items():
            old = self._build(layer, masks[i])
            _move_state(self.optimizer, old, layer.values, lambda state: state)

    def _build(self, layer: SparseLinear, mask: Tensor) -> Tensor:
        """Rebuild ``layer`` for ``mask`` and let the optimizer step its new values; returns the old ones."""
        old = layer.values
        layer.build(mask)
        _replace_in_optimizer(self.optimizer, old, layer.values)
        return old

    def all_reduce_grads(self) -> None:
        """Under DDP the values are not module parameters: average their gradients here."""
        grads = [layer.values.grad for layer in self.layers.values() if layer.values.grad is not None]
        if not grads or not _distributed():
            return
        flat = _all_reduced(torch.cat([g.reshape(-1) for g in grads]))
        for g, part in zip(grads, flat.split([g.numel() for g in grads])):
            g.copy_(part)


def _distributed() -> bool:
    return torch.distributed.is_available() and torch.distributed.is_initialized() and \
        torch.distributed.get_world_size() > 1


def _all_reduced(grad: Tensor | None) -> Tensor | None:
    """Under DDP, the mean over ranks (what DDP gives the masked backend's dense gradients)."""
    if grad is not None and _distributed():
        torch.distributed.all_reduce(grad)
        grad.div_(torch.distributed.get_world_size())
    return grad


def _replace_in_optimizer(optimizer, old: Tensor, new: Tensor) -> None:
    for group in optimizer.param_groups:
        group["params"] = [new if p is old else p for p in group["params"]]


def _move_state(optimizer, old: Tensor, new: Tensor, convert) -> None:
    """Re-key ``old``'s optimizer state to ``new``, converting the per-entry tensors."""
    state = optimizer.state.pop(old, None)
    if not state:
        return
    optimizer.state[new] = {k: convert(v) if torch.is_tensor(v) and v.shape == old.shape else v
                            for k, v in state.items()}


# ---------------------------------------------------------------------------- auto
def sparse_unsupported_reason(config) -> str | None:
    """Why this configuration needs dense masked weights everywhere, or None."""
    from .criteria import get_criterion
    from .growth import get_growth

    if config.compat:
        return "sparsity.compat=true (the reference's semantics read and keep state at inactive weights)"
    if config.optimizer_state == "keep":
        return "sparsity.optimizer_state='keep' (regrown weights keep moments accumulated while inactive)"
    if get_growth(config.growth).needs_momentum:
        return f"sparsity.growth={config.growth!r} (it ranks the optimizer momentum of inactive weights)"
    if config.mode == "dst" and get_criterion(config.criterion).needs_batch:
        return f"sparsity.criterion={config.criterion!r} (it differentiates a dense copy of the model twice)"
    return None


def load_crossover(path: Path = CROSSOVER_TABLE) -> list[dict]:
    if not path.exists():
        return []
    return json.loads(path.read_text())["layers"]


def crossover_density(shape: tuple[int, int], table: list[dict]) -> float:
    """The measured density below which the sparse kernels beat the dense ones, for the
    measured Linear shape nearest to ``shape`` (in log size); 0 when nothing is measured."""
    if not table:
        return 0.0
    out_f, in_f = shape

    def distance(row):
        return abs(math.log(row["out_features"] / out_f)) + abs(math.log(row["in_features"] / in_f))

    return min(table, key=distance)["crossover_density"]


def choose_backends(backend: str, params: list[Tensor], modules: list[nn.Module | None], masks: list[Tensor],
                    config) -> list[str]:
    """'sparse' or 'masked' for each masked tensor."""
    if backend == "masked" or sparse_unsupported_reason(config):
        return ["masked"] * len(params)
    table = load_crossover() if backend == "auto" else []
    choices = []
    for p, module, mask in zip(params, modules, masks):
        linear = isinstance(module, nn.Linear) and module.weight is p and p.requires_grad
        if not linear:
            choices.append("masked")
            continue
        if backend == "sparse":
            choices.append("sparse")
            continue
        density = float(mask.float().mean())
        use = p.device.type == "cpu" and density < crossover_density(tuple(p.shape), table)
        choices.append("sparse" if use else "masked")
    return choices

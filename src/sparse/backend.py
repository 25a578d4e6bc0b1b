"""Execution backends: how a masked layer's weights are stored and multiplied.

``masked``: the weight stays a dense tensor multiplied by its mask after every optimizer step,
so every multiply-add of the dense layer is still computed. Works for any tensor and option.

``sparse``: the layer holds its active weights as a values parameter and computes on them
only; the optimizer steps the values, so its moments are sized to the active entries too, and
no mask is ever multiplied in.
- ``nn.Linear``: the weight is a CSR matrix. Forward (``W @ xᵀ``), input gradient (a pre-built
  transposed CSR) and weight gradient (only at the active entries, ``sampled_addmm``) cost
  O(active).
- ``nn.Conv2d``: the convolution is one sparse matrix over the input's and the output's
  positions x channels, holding each active weight once per output position it reaches
  (`_ConvMatrix`); the same three products then cost O(active x output positions), where the
  dense convolution costs O(all weights x output positions). No unfolded copy of the input is
  made (that copy alone cost more than LeNet-5's dense conv2); what remains is a transposition
  of the activations into the batch-innermost layout the sparse kernels read fastest, which
  is why first layers (few input channels, large maps) stay faster dense.

The dense-shaped weight parameter stays in the module (and in ``model.state_dict()``, kept in
step by a hook) so criteria, checkpoints and saved models see ordinary weights. At a topology
update the `Sparsifier` asks for a dense view (weights, the dense gradient computed once from
the last batch, optimizer state scattered to dense shape), runs its usual prune/grow code on
it, and the layer is rebuilt from the new mask.

``auto`` runs a layer sparse when its density is below the crossover density measured for the
nearest measured shape of its kind (`crossover.json`, re-measured by ``python -m
bench.crossover``), a convolution's shape including the size of the input it really sees
(`conv_input_sizes`), on the CPU; on CUDA everything runs masked. The crossovers are measured
per CPU and per implementation of the products (`kernels`: our compiled kernels, or torch's
where they are unavailable), and `auto` reads the table of the ones the layer will run on,
measured on this CPU; where there is none, the layer's timed trial decides (`layer_trial`).
Each operation of a sparse layer runs on the implementation its trial found fastest
(`choose_ops`, `choice`; docs/kernels.md).
"""

from __future__ import annotations

import contextlib
import json
import math
from pathlib import Path
from typing import Any, overload

import torch
import torch.nn.grad
from torch import Tensor, nn

from . import choice, kernels
from .choice import LayerOps

BACKENDS = ("masked", "sparse", "auto")
INDEX_DTYPE = torch.int32
CROSSOVER_TABLE = Path(__file__).with_name("crossover.json")


class _SparseLinearFn(torch.autograd.Function):
    """y = x Wᵀ with W given by CSR values; gradients at the active entries only. Computed
    transposed (yᵀ = W xᵀ), the batch innermost: the layout in which the sparse kernels read
    their dense operands fastest. The results are returned as transposed views: the next
    sparse layer (after element-wise ops, which keep the layout) reads them without a copy,
    which costs less than the slower dense GEMM a dense layer after it runs on such a view
    (measured on the MLP: ~20 % of the step at ERK 0.02)."""

    @staticmethod
    def forward(ctx, x: Tensor, values: Tensor, layer: SparseLinear) -> Tensor:
        ctx.layer = layer
        x_t = layer.ops.layout.operand(x.t())
        ctx.save_for_backward(x_t, values)
        return layer.ops.forward.spmm(layer.crow, layer.col, values, None, x_t, layer.weight.shape[0]).t()

    @staticmethod
    def backward(ctx, grad_out: Tensor):
        x_t, values = ctx.saved_tensors
        layer, ops = ctx.layer, ctx.layer.ops
        grad_t = ops.layout.operand(grad_out.t())
        # Kept (not copied) so an update step can form the dense weight gradient once.
        layer.last = (x_t, grad_t)
        grad_x = grad_values = None
        if ctx.needs_input_grad[0]:
            rows = layer.weight.shape[1]
            grad_x = ops.input_grad.spmm(layer.t_crow, layer.t_col, values, layer.t_order, grad_t, rows).t()
        if ctx.needs_input_grad[1]:
            grad_values = ops.weight_grad.sampled(layer.crow, layer.col, grad_t, x_t)
        return grad_x, grad_values, None


class _SparseLayer:
    """A module run on its active weights: the values parameter (the active entries of the
    dense weight, in row-major order) and the index structures of its kind, rebuilt from the
    mask after each topology update. The dense weight stays in the module, frozen, and is
    written from the values for checkpoints (a state_dict hook) and updates."""

    def __init__(
        self,
        module: nn.Module,
        mask: Tensor,
        batch: int | None = None,
        input_size: tuple[int, int] | None = None,
        ops: dict[str, str] | None = None,
        input_grad: bool = True,
    ):
        """``batch`` / ``input_size`` (a convolution's input height, width) / ``input_grad``
        (whether its input needs a gradient: not a first layer's): what its implementations
        are timed on (`choose_ops`); ``ops``: names of the implementations to run instead (as
        `LayerOps.names` gives them: another rank's choice, a forced one)."""
        self.module = module
        weight = module.weight
        assert isinstance(weight, Tensor)  # a Linear's or a Conv2d's weight
        self.weight: Tensor = weight
        # What the last backward pass leaves for `dense_grad` / `pattern_grad`.
        self.last: tuple[Any, ...] | None = None
        self.build(mask)
        impls = kernels.implementations(self.weight)
        if ops is not None:
            self.ops = choice.from_names(ops, impls)
        else:
            self.ops = choose_ops(module, int(mask.sum()), impls, batch, input_size, input_grad)
        self.weight.requires_grad_(False)
        self.weight.grad = None
        module.forward = self.forward  # the instance attribute shadows the class's forward
        module.register_state_dict_pre_hook(lambda *_: self.sync_dense())
        module.register_load_state_dict_post_hook(lambda *_: self.load_dense())

    @torch.no_grad()
    def build(self, mask: Tensor) -> None:
        """Index structures for ``mask`` and a new values parameter read from the dense weight
        (new, because autograd keeps a leaf's shape: the active count may change)."""
        self.index = mask.reshape(-1).nonzero().squeeze(1)
        self.build_structure()
        self.values = nn.Parameter(self.gather(self.weight).clone())

    def build_structure(self) -> None:
        raise NotImplementedError

    def forward(self, x: Tensor) -> Tensor:
        raise NotImplementedError

    def dense_grad(self) -> Tensor | None:
        """The dense weight gradient of the last backward pass (computed once, for an update).
        With several backward passes per optimizer step (gradient accumulation) it is the
        last one's only."""
        raise NotImplementedError

    def pattern_grad(self) -> Tensor:
        """The last backward pass's weight gradient at the active entries of the current pattern."""
        raise NotImplementedError

    @torch.no_grad()
    def sync_dense(self) -> None:
        """Write the values into the dense weight, zero elsewhere (for checkpoints and updates)."""
        self.weight.copy_(self.scatter(self.values))

    @torch.no_grad()
    def load_dense(self) -> None:
        """Read the values back from the dense weight (after `load_state_dict` on the module).
        The dense weight is left as loaded: a checkpoint's masks, loaded next, may differ."""
        self.values.copy_(self.gather(self.weight))

    def gather(self, dense: Tensor) -> Tensor:
        return dense.reshape(-1)[self.index]

    def scatter(self, values: Tensor) -> Tensor:
        dense = torch.zeros(self.weight.numel(), dtype=values.dtype, device=values.device)
        return dense.index_copy_(0, self.index, values).view(self.weight.shape)


class SparseLinear(_SparseLayer):
    """An ``nn.Linear`` whose weight is a CSR matrix, with its transposed structure for the
    input gradient."""

    def build_structure(self) -> None:
        in_features = self.weight.shape[1]
        rows, cols = self.index // in_features, self.index % in_features  # row-major: the CSR order
        self.crow, self.col, self.t_crow, self.t_col, self.t_order = _csr_structure(rows, cols, self.weight.shape)

    def forward(self, x: Tensor) -> Tensor:
        lead = x.shape[:-1]
        y = _SparseLinearFn.apply(x.reshape(-1, x.shape[-1]), self.values, self)
        if self.module.bias is not None:
            y = y + self.module.bias
        return y.reshape(*lead, y.shape[-1])

    @torch.no_grad()
    def dense_grad(self) -> Tensor | None:
        if self.last is None:
            return None
        x_t, grad_t = self.last
        return grad_t @ x_t.t()

    @torch.no_grad()
    def pattern_grad(self) -> Tensor:
        assert self.last is not None  # called after a backward pass
        x_t, grad_t = self.last
        return self.ops.weight_grad.sampled(self.crow, self.col, grad_t, x_t)


class _ConvMatrix:
    """A convolution with a sparse kernel as one sparse matrix, for one input size.

    With the input's positions x channels as columns (index (iy * W + ix) * C_in + c_in) and
    the output's as rows ((oy * oW + ox) * C_out + c_out), a convolution is a linear map whose
    matrix repeats each kernel weight once per output position it reaches: active weights x
    output positions entries (padding drops the taps that fall outside). ``value_of`` says
    which kernel weight each entry repeats, in CSR order; ``t_*`` is the transposed matrix."""

    def __init__(self, conv: nn.Conv2d, index: Tensor, size: tuple[int, int]):
        c_out, c_in, kh, kw = conv.weight.shape
        assert not isinstance(conv.padding, str)  # `runs_sparse`: padding given in numbers
        (h, w), (sh, sw), (ph, pw), (dh, dw) = size, conv.stride, conv.padding, conv.dilation
        self.out_size = ((h + 2 * ph - dh * (kh - 1) - 1) // sh + 1, (w + 2 * pw - dw * (kw - 1) - 1) // sw + 1)
        oh, ow = self.out_size
        device = index.device
        co, ci = index // (c_in * kh * kw), index // (kh * kw) % c_in
        ky, kx = index // kw % kh, index % kw
        oy, ox = torch.arange(oh, device=device).view(-1, 1, 1), torch.arange(ow, device=device).view(1, -1, 1)
        iy, ix = torch.broadcast_tensors(oy * sh - ph + ky * dh, ox * sw - pw + kx * dw)
        inside = (iy >= 0) & (iy < h) & (ix >= 0) & (ix < w)
        rows = ((oy * ow + ox) * c_out + co).expand_as(iy)[inside]
        cols = ((iy * w + ix) * c_in + ci)[inside]
        value_of = torch.arange(len(index), device=device).expand_as(iy)[inside]
        self.shape = (oh * ow * c_out, h * w * c_in)
        order = torch.argsort(rows * self.shape[1] + cols)  # row-major: the CSR order
        rows, cols, self.value_of = rows[order], cols[order], value_of[order]
        self.crow, self.col, self.t_crow, self.t_col, t_order = _csr_structure(rows, cols, self.shape)
        self.t_value_of = self.value_of[t_order]

    def product(self, ops, values: Tensor, cols: Tensor) -> Tensor:
        """The matrix times ``cols`` (input positions x channels, batch)."""
        return ops.spmm(self.crow, self.col, values, self.value_of, cols, self.shape[0])

    def product_t(self, ops, values: Tensor, grad_rows: Tensor) -> Tensor:
        """The transposed matrix times ``grad_rows`` (output positions x channels, batch)."""
        return ops.spmm(self.t_crow, self.t_col, values, self.t_value_of, grad_rows, self.shape[1])

    def kernel_grad(self, ops, grad_rows: Tensor, cols: Tensor, values: Tensor) -> Tensor:
        """The weight gradient at the active kernel entries: each matrix entry's gradient
        (sampled at the pattern) summed over the positions that repeat it."""
        per_entry = ops.sampled(self.crow, self.col, grad_rows, cols)
        return torch.zeros_like(values).index_add_(0, self.value_of, per_entry)


class _SparseConvFn(torch.autograd.Function):
    """y = conv2d(x, W) + b as (matrix x columns), the batch innermost: the layout in which the
    CPU sparse kernels read their dense operands fastest."""

    @staticmethod
    def forward(ctx, x: Tensor, values: Tensor, bias: Tensor | None, layer: SparseConv2d) -> Tensor:
        batch, _, h, w = x.shape
        matrix, ops = layer.matrix((h, w)), layer.ops
        # (positions x channels, batch): of a channels-last input, a transposed view
        cols = ops.layout.operand(x.permute(2, 3, 1, 0).reshape(-1, batch))
        out = matrix.product(ops.forward, values, cols)
        oh, ow = matrix.out_size
        # Written channels-last: the layout of the dense convolutions around it.
        y = torch.empty(batch, oh, ow, out.shape[0] // (oh * ow), dtype=x.dtype, device=x.device)
        rows = ops.layout.result(out).view(batch, oh, ow, -1)
        if bias is None:
            y.copy_(rows)
        else:
            torch.add(rows, bias, out=y)
        ctx.save_for_backward(cols, values)
        ctx.layer, ctx.matrix, ctx.input_shape = layer, matrix, tuple(x.shape)
        return y.permute(0, 3, 1, 2)

    @staticmethod
    def backward(ctx, grad_y: Tensor):
        cols, values = ctx.saved_tensors
        matrix, ops, (batch, c_in, h, w) = ctx.matrix, ctx.layer.ops, ctx.input_shape
        grad_rows = ops.layout.operand(grad_y.permute(2, 3, 1, 0).reshape(-1, batch))
        # Kept so an update step can form the dense weight gradient once.
        ctx.layer.last = (cols, grad_rows, ctx.input_shape, grad_y.shape)
        grad_x = grad_values = grad_bias = None
        if ctx.needs_input_grad[0]:
            grad_cols = matrix.product_t(ops.input_grad, values, grad_rows)
            grad_x = ops.layout.result(grad_cols).reshape(batch, h, w, c_in).contiguous().permute(0, 3, 1, 2)
        if ctx.needs_input_grad[1]:
            grad_values = matrix.kernel_grad(ops.weight_grad, grad_rows, cols, values)
        if ctx.needs_input_grad[2]:
            grad_bias = grad_rows.view(-1, grad_y.shape[1], batch).sum((0, 2))
        return grad_x, grad_values, grad_bias, None


class SparseConv2d(_SparseLayer):
    """An ``nn.Conv2d`` (zero padding, no groups) computed as one sparse matrix product per
    batch (`_ConvMatrix`, built once per input size and pattern), so its cost is proportional
    to the active weights, with no unfolded copy of the input."""

    module: nn.Conv2d  # `sparse_layer` makes one for a Conv2d only

    def build_structure(self) -> None:
        self._matrices: dict[tuple[int, int], _ConvMatrix] = {}

    def matrix(self, size: tuple[int, int]) -> _ConvMatrix:
        if size not in self._matrices:
            self._matrices[size] = _ConvMatrix(self.module, self.index, size)
        return self._matrices[size]

    def forward(self, x: Tensor) -> Tensor:
        squeeze = x.dim() == 3
        y = _SparseConvFn.apply(x.unsqueeze(0) if squeeze else x, self.values, self.module.bias, self)
        return y.squeeze(0) if squeeze else y

    @torch.no_grad()
    def dense_grad(self) -> Tensor | None:
        if self.last is None:
            return None
        cols, grad_rows, (batch, c_in, h, w), (_, c_out, oh, ow) = self.last
        x = cols.view(h, w, c_in, batch).permute(3, 2, 0, 1)
        grad_y = grad_rows.view(oh, ow, c_out, batch).permute(3, 2, 0, 1)
        conv = self.module
        return torch.nn.grad.conv2d_weight(x, self.weight.shape, grad_y, conv.stride, conv.padding, conv.dilation)

    @torch.no_grad()
    def pattern_grad(self) -> Tensor:
        assert self.last is not None  # called after a backward pass
        cols, grad_rows, (_, _, h, w), _ = self.last
        return self.matrix((h, w)).kernel_grad(self.ops.weight_grad, grad_rows, cols, self.values)


def sparse_layer(module: nn.Module, mask: Tensor, **options) -> _SparseLayer:
    """The sparse layer of ``module`` (options: `_SparseLayer`)."""
    return (SparseConv2d if isinstance(module, nn.Conv2d) else SparseLinear)(module, mask, **options)


# ---------------------------------------------------------------------------- measured choice
DEFAULT_TRIAL_BATCH = 128  # when the run's batch size is not known


def choose_ops(
    module: nn.Module,
    nnz: int,
    impls: dict,
    batch: int | None = None,
    input_size: tuple[int, int] | None = None,
    input_grad: bool = True,
) -> LayerOps:
    """The fastest implementation of each operation of the sparse ``module`` with ``nnz``
    active weights (`choice`): timed on its shapes once per machine, or forced
    (``DST_SPARSE_OPS``); the default (compiled where available) where nothing can be timed
    (another device, a convolution whose input size is unknown)."""
    forced = choice.forced()
    if forced is not None and forced in impls:
        return LayerOps.uniform(impls[forced])
    weight = module.weight
    if len(impls) == 1 or (isinstance(module, nn.Conv2d) and input_size is None):
        return LayerOps.uniform(next(iter(impls.values())))
    measured = layer_trial(module, nnz, impls, batch or DEFAULT_TRIAL_BATCH, input_size, weight.dtype, input_grad)
    return choice.from_names(measured["ops"], impls)


def layer_trial(module, nnz, impls, batch, input_size, dtype, input_grad: bool = True, masked: bool = False) -> dict:
    """The (cached) trial of a sparse layer like ``module`` with ``nnz`` active weights;
    ``input_grad``: whether its input gradient is computed (a first layer's is not);
    ``masked``: also the dense layer's time (forward and gradients), for `auto`."""
    conv = isinstance(module, nn.Conv2d)
    spec = {
        "kind": "conv" if conv else "linear",
        "shape": list(module.weight.shape),
        "nnz": nnz,
        "batch": batch,
        "dtype": str(dtype).removeprefix("torch."),
        "implementations": sorted(impls),
        "input_grad": input_grad,
    }
    if conv:
        spec.update(input_size=list(input_size), stride=list(module.stride), padding=list(module.padding))
        spec.update(dilation=list(module.dilation))
    if conv:
        trial = _conv_trial(module, nnz, impls, batch, input_size, dtype)
    else:
        trial = _linear_trial(tuple(module.weight.shape), nnz, impls, batch, dtype)
    if not input_grad:
        trial = _without_input_grad(trial)
    result = choice.cached(spec, lambda: choice.choose(trial, impls))
    if masked and "masked_ms" not in result:
        spec = {**spec, "masked": True}

        def measure():
            return {**result, "masked_ms": _masked_ms(module, nnz, batch, input_size, dtype, input_grad)}

        result = choice.cached(spec, measure)
    return result


def _without_input_grad(trial):
    """A trial of a layer whose input gradient is never computed (a first layer)."""

    def without(layout):
        fns = trial(layout)
        fns["input_grad"] = {name: (lambda: None) for name in fns["input_grad"]}
        return fns

    return without


def _random_index(numel: int, nnz: int, g: torch.Generator) -> Tensor:
    return torch.randperm(numel, generator=g)[:nnz].sort().values


def _linear_trial(shape, nnz, impls, batch, dtype):
    rows, cols = shape
    g = torch.Generator().manual_seed(0)  # its own generator: the run's random stream is untouched
    index = _random_index(rows * cols, nnz, g)
    crow, col, t_crow, t_col, t_order = _csr_structure(index // cols, index % cols, shape)
    values = torch.randn(nnz, generator=g, dtype=dtype)
    x, grad = torch.randn(batch, cols, generator=g, dtype=dtype), torch.randn(batch, rows, generator=g, dtype=dtype)

    def trial(layout):
        # Operands as the layer gets them (transposed views of batch-outermost tensors).
        x_t, g_t = layout.operand(x.t()), layout.operand(grad.t())
        products = impls if layout.name == "compiled" else {layout.name: layout}
        return {
            "layout": lambda: (layout.operand(x.t()), layout.operand(grad.t())),
            "forward": {n: (lambda o=o: o.spmm(crow, col, values, None, x_t, rows)) for n, o in products.items()},
            "input_grad": {
                n: (lambda o=o: o.spmm(t_crow, t_col, values, t_order, g_t, cols)) for n, o in products.items()
            },
            "weight_grad": {n: (lambda o=o: o.sampled(crow, col, g_t, x_t)) for n, o in products.items()},
        }

    return trial


def _conv_trial(conv, nnz, impls, batch, size, dtype):
    g = torch.Generator().manual_seed(0)
    index = _random_index(conv.weight.numel(), nnz, g)
    matrix = _ConvMatrix(conv, index, tuple(size))
    values = torch.randn(nnz, generator=g, dtype=dtype)
    c_out, c_in = conv.weight.shape[:2]
    x = torch.randn(batch, *size, c_in, generator=g, dtype=dtype)  # channels-last
    grad = torch.randn(batch, *matrix.out_size, c_out, generator=g, dtype=dtype)

    def trial(layout):
        cols, rows = layout.operand(x.view(batch, -1).t()), layout.operand(grad.view(batch, -1).t())
        out, grad_cols = matrix.product(layout, values, cols), matrix.product_t(layout, values, rows)
        products = impls if layout.name == "compiled" else {layout.name: layout}
        return {
            "layout": lambda: (
                layout.operand(x.view(batch, -1).t()),
                layout.operand(grad.view(batch, -1).t()),
                layout.result(out),
                layout.result(grad_cols),
            ),
            "forward": {n: (lambda o=o: matrix.product(o, values, cols)) for n, o in products.items()},
            "input_grad": {n: (lambda o=o: matrix.product_t(o, values, rows)) for n, o in products.items()},
            "weight_grad": {n: (lambda o=o: matrix.kernel_grad(o, rows, cols, values)) for n, o in products.items()},
        }

    return trial


def _masked_ms(module, nnz, batch, size, dtype, input_grad: bool = True) -> float:
    """The masked backend's time for the layer: the dense forward product, the weight gradient,
    the input gradient where it is computed, and the mask multiply."""
    g = torch.Generator().manual_seed(0)
    weight = torch.randn(module.weight.shape, generator=g, dtype=dtype)
    mask = torch.zeros(weight.numel(), dtype=dtype).index_fill_(0, _random_index(weight.numel(), nnz, g), 1)
    mask = mask.view_as(weight)
    if isinstance(module, nn.Conv2d):
        weight, mask = (t.contiguous(memory_format=torch.channels_last) for t in (weight, mask))
        x = torch.randn(batch, module.weight.shape[1], *size, generator=g, dtype=dtype)
        x = x.contiguous(memory_format=torch.channels_last)
        assert not isinstance(module.padding, str)  # `runs_sparse`: padding given in numbers
        args = (module.stride, module.padding, module.dilation)
        y = nn.functional.conv2d(x, weight, None, *args)
        grad = torch.randn(y.shape, generator=g, dtype=dtype).contiguous(memory_format=torch.channels_last)

        def step():
            nn.functional.conv2d(x, weight, None, *args)
            # what autograd runs for the masked layer's backward: both gradients in one call
            torch.ops.aten.convolution_backward(
                grad, x, weight, None, *args, False, [0, 0], 1, [input_grad, True, False]
            )
            weight.mul_(mask)
    else:
        x = torch.randn(batch, weight.shape[1], generator=g, dtype=dtype)
        grad = torch.randn(batch, weight.shape[0], generator=g, dtype=dtype)

        def step():
            x @ weight.t()
            if input_grad:
                grad @ weight
            grad.t() @ x
            weight.mul_(mask)

    return choice.fastest({"masked": step}, "masked")[1]["masked"] * 1e3


def _csr_structure(rows: Tensor, cols: Tensor, shape) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """(crow, col) of the entries (rows, cols), given in row-major order, and (crow, col) of
    the transposed matrix with ``t_order``, the entries in column-major order (the order of
    the transposed matrix's values). 32-bit indices: what the CPU sparse kernels use without
    converting on every call."""
    t_order = torch.argsort(cols * shape[0] + rows)
    return (
        _offsets(rows, shape[0]),
        cols.to(INDEX_DTYPE),
        _offsets(cols, shape[1]),
        rows[t_order].to(INDEX_DTYPE),
        t_order,
    )


def _offsets(rows: Tensor, n: int) -> Tensor:
    crow = torch.zeros(n + 1, dtype=INDEX_DTYPE, device=rows.device)
    crow[1:] = torch.bincount(rows, minlength=n).cumsum(0)
    return crow


class SparseExecution:
    """The layers of one model that run sparse, and the moves between their sparse state
    (values, value-sized optimizer moments) and the dense view a topology update works on."""

    def __init__(self, optimizer: torch.optim.Optimizer, layers: dict[int, _SparseLayer]):
        self.optimizer, self.layers = optimizer, layers
        self._had_grad = {i: False for i in layers}
        for layer in layers.values():
            _replace_in_optimizer(optimizer, layer.weight, layer.values)
            _move_state(optimizer, layer.weight, layer.values, layer.gather)

    def sync_dense(self) -> None:
        for layer in self.layers.values():
            layer.sync_dense()

    @contextlib.contextmanager
    @torch.no_grad()
    def fused_sgd(self):
        """Inside, the optimizer's step skips the sparse values that were just stepped by the
        compiled fused update (torch.optim.SGD's arithmetic -- weight decay, momentum,
        dampening, Nesterov -- in one pass; its momentum buffer stays the optimizer's state, so
        checkpoints and updates see it as always). Only for a plain SGD with number settings."""
        stepped = []
        if type(self.optimizer) is torch.optim.SGD:
            for layer in self.layers.values():
                v, fused = layer.values, layer.ops.sgd
                if fused is None or v.grad is None or v.grad.layout != torch.strided or not v.grad.is_contiguous():
                    continue
                group = next(g for g in self.optimizer.param_groups if any(p is v for p in g["params"]))
                if group.get("maximize") or group.get("differentiable") or torch.is_tensor(group["lr"]):
                    continue
                state = self.optimizer.state[v]
                buf, first = state.get("momentum_buffer"), False
                if group["momentum"] != 0 and buf is None:
                    buf, first = torch.empty_like(v, memory_format=torch.contiguous_format), True
                fused.sgd(v, v.grad, buf if group["momentum"] != 0 else None, group, first)
                if group["momentum"] != 0:
                    state["momentum_buffer"] = buf
                torch.autograd.graph.increment_version(v)  # written in place, outside autograd
                stepped.append((v, v.grad))
                v.grad = None
        try:
            yield
        finally:
            for v, grad in stepped:
                v.grad = grad

    def kernel_choices(self) -> dict[int, dict[str, str]]:
        """Which implementation runs each operation of each sparse layer (by tensor index)."""
        return {i: layer.ops.names() for i, layer in self.layers.items()}

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

    def _build(self, layer: _SparseLayer, mask: Tensor) -> Tensor:
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
    return (
        torch.distributed.is_available()
        and torch.distributed.is_initialized()
        and torch.distributed.get_world_size() > 1
    )


@overload
def _all_reduced(grad: Tensor) -> Tensor: ...
@overload
def _all_reduced(grad: None) -> None: ...
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
    optimizer.state[new] = {
        k: convert(v) if torch.is_tensor(v) and v.shape == old.shape else v for k, v in state.items()
    }


# ---------------------------------------------------------------------------- auto
def load_crossover(path: Path | None = None, ops: str | None = None, here_only: bool = False) -> list[dict] | None:
    """The measured crossovers (`CROSSOVER_TABLE`, or the file at `path`) for the sparse
    products ``ops`` ('compiled' or 'torch', `kernels`; by default what this process runs) on
    this CPU. The file holds one table per CPU and products (`bench.crossover` adds them):
    the one measured on this CPU model with these products, else the one with these products
    measured elsewhere, else the first. A file with one table ({"layers": ...}) is that table.
    ``here_only``: None unless a table of the file was measured on this CPU (model, family and
    model number, vector extensions) with these products, or the file holds one table only
    (a table given on purpose): `auto` then times the layers itself."""
    path = Path(path or CROSSOVER_TABLE)
    if not path.exists():
        return None if here_only else []
    content = json.loads(path.read_text())
    if here_only and "tables" not in content:
        return content["layers"]
    tables = content.get("tables", [content])
    ops = ops or kernels.ops_for(torch.zeros(1)).name
    same_ops = [t for t in tables if t.get("kernels", "torch") == ops]
    here = [t for t in same_ops if _same_cpu(t.get("cpu"), kernels.cpu_info())]
    if here_only:
        return here[0]["layers"] if here else None
    return (here or same_ops or tables)[0]["layers"]


def _same_cpu(measured: dict | None, cpu: dict) -> bool:
    """The same CPU: model name, vector extensions and, where both record them, family and
    model number (the model name alone is "AMD EPYC" on Zen 1 and Zen 4 alike)."""
    if not measured or measured["model"] != cpu["model"] or measured["flags"] != cpu["flags"]:
        return False
    return all(measured[k] == cpu[k] for k in ("family", "model_id") if k in measured and k in cpu)


def crossover_density(shape: tuple[int, ...], table: list[dict], input_size: tuple[int, int] | None = None) -> float:
    """The measured density below which the sparse kernels beat the dense ones, for the
    measured layer nearest to a weight of ``shape`` (in log size, Linear rows for a 2-D
    weight, convolution rows for a 4-D one); 0 when nothing of that kind is measured.
    A convolution is keyed by (c_out, c_in, kernel area, input positions): the sparse
    kernel's fixed costs (the layout transposition, building its matrix) weigh differently
    on small and large maps, so the same weight crosses over at different densities.
    Without ``input_size`` (nothing ran the model, see `conv_input_sizes`) the positions
    are left out of the key."""
    if len(shape) == 2:
        rows = [(row, (row["out_features"], row["in_features"])) for row in table if "out_features" in row]
    else:
        shape = (shape[0], shape[1], math.prod(shape[2:]))
        if input_size is not None:
            shape = (*shape, math.prod(input_size))
        rows = [
            (
                row,
                (
                    row["out_channels"],
                    row["in_channels"],
                    math.prod(row["kernel_size"]),
                    *([math.prod(row["input_size"])] if "input_size" in row else []),
                ),
            )
            for row in table
            if "out_channels" in row
        ]
    if not rows:
        return 0.0

    def distance(item):
        # zip stops at the shorter key: positions count only where both are known.
        return sum(abs(math.log(a / b)) for a, b in zip(item[1], shape))

    return min(rows, key=distance)[0]["crossover_density"]


def runs_sparse(module: nn.Module | None, param: Tensor) -> bool:
    """Whether the sparse backend has a kernel for ``param``: the weight of an ``nn.Linear``,
    or of an ``nn.Conv2d`` with zero padding given in numbers and no groups."""
    if module is None or module.weight is not param or not param.requires_grad:
        return False
    if isinstance(module, nn.Conv2d):
        return module.groups == 1 and module.padding_mode == "zeros" and not isinstance(module.padding, str)
    return isinstance(module, nn.Linear)


@torch.no_grad()
def conv_input_sizes(
    model: nn.Module, modules: list[nn.Module | None], input_shape: tuple[int, ...]
) -> list[tuple[int, int] | None]:
    """The spatial size (height, width) of the input each convolution of ``modules`` sees
    when ``model`` runs on a sample of ``input_shape`` (one sample's shape, without the
    batch), None for the other modules. One forward pass of a zero sample in eval mode: no
    batch-norm statistics move and no random number is drawn, so training is unchanged."""
    convs = {id(m) for m in modules if isinstance(m, nn.Conv2d)}
    if not convs:
        return [None] * len(modules)
    seen: dict[int, tuple[int, int]] = {}

    def record(module, args):  # returns None: the input goes on unchanged
        seen.setdefault(id(module), tuple(args[0].shape[-2:]))

    hooks = [m.register_forward_pre_hook(record) for m in model.modules() if id(m) in convs]
    training = {m: m.training for m in model.modules()}
    first = next(model.parameters())
    try:
        model.eval()
        model(torch.zeros(1, *input_shape, dtype=first.dtype, device=first.device))
    finally:
        for hook in hooks:
            hook.remove()
        for m, mode in training.items():
            m.training = mode
    return [seen.get(id(m)) if m is not None else None for m in modules]


def layer_inputs(
    model: nn.Module, modules: list[nn.Module | None], input_shape: tuple[int, ...]
) -> tuple[list[tuple[int, int] | None], list[bool]]:
    """For each of ``modules``: the spatial size of the input a convolution sees (as
    `conv_input_sizes`), and whether the module's input needs a gradient (False for a layer
    fed by the data: its input gradient is never computed). One probe pass with gradients on,
    in eval mode; nothing is stepped and no random number is drawn."""
    grads: dict[int, bool] = {}

    def record(module, args):
        grads.setdefault(id(module), bool(args[0].requires_grad))

    wanted = {id(m) for m in modules if m is not None}
    hooks = [m.register_forward_pre_hook(record) for m in model.modules() if id(m) in wanted]
    training = {m: m.training for m in model.modules()}
    first = next(model.parameters())
    try:
        model.eval()
        with torch.enable_grad():
            model(torch.zeros(1, *input_shape, dtype=first.dtype, device=first.device))
    finally:
        for hook in hooks:
            hook.remove()
        for m, mode in training.items():
            m.training = mode
    sizes = conv_input_sizes(model, modules, input_shape)
    return sizes, [grads.get(id(m), True) if m is not None else True for m in modules]


def choose_backends(
    backend: str,
    params: list[Tensor],
    modules: list[nn.Module | None],
    masks: list[Tensor],
    sparse_allowed: bool = True,
    input_sizes: list[tuple[int, int] | None] | None = None,
    batch: int | None = None,
    input_grads: list[bool] | None = None,
) -> list[str]:
    """'sparse' or 'masked' for each masked tensor. `sparse_allowed`: whether the run's settings
    allow sparse layers at all (`SparsityConfig.sparse_unsupported_reason`). `input_sizes`: each
    convolution's input (height, width), which its crossover depends on (`conv_input_sizes`).
    Under `auto` a layer runs sparse below the crossover density measured on this CPU
    (`load_crossover`); where none was measured here, when its timed trial (`layer_trial`, at
    ``batch``; ``input_grads``: whether each layer's input needs a gradient, `layer_inputs`)
    is faster sparse than masked."""
    if backend == "masked" or not sparse_allowed:
        return ["masked"] * len(params)
    tables = {}  # per kind of products: a layer's crossover is measured on the kernels it runs
    input_sizes = input_sizes or [None] * len(params)
    input_grads = input_grads or [True] * len(params)
    choices = []
    for p, module, mask, size, input_grad in zip(params, modules, masks, input_sizes, input_grads):
        if not runs_sparse(module, p):
            choices.append("masked")
            continue
        if backend == "sparse":
            choices.append("sparse")
            continue
        density = float(mask.float().mean())
        if p.device.type != "cpu":
            choices.append("masked")
            continue
        impls = kernels.implementations(p)
        ops = "compiled" if "compiled" in impls else "torch"
        if ops not in tables:
            tables[ops] = load_crossover(ops=ops, here_only=True)
        table = tables[ops]
        if table is not None:
            use = density < crossover_density(tuple(p.shape), table, size)
        elif isinstance(module, nn.Conv2d) and size is None:
            use = False  # nothing ran the model: its convolutions' inputs are unknown
        else:
            batch = batch or DEFAULT_TRIAL_BATCH
            trial = layer_trial(module, int(mask.sum()), impls, batch, size, p.dtype, input_grad, masked=True)
            use = trial["sparse_ms"] < trial["masked_ms"]
        choices.append("sparse" if use else "masked")
    return choices

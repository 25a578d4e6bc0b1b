"""The products of the sparse backend, computed by torch's sparse kernels or by our compiled ones.

Both implementations compute the same two products on CSR structures (32-bit ``crow`` / ``col``)
with dense operands stored batch innermost, i.e. row-major ``(rows, batch)``:

- ``spmm(crow, col, values, value_index, dense, rows)``: the CSR matrix (its entry j holding
  ``values[value_index[j]]``, or ``values[j]`` without an index) times ``dense``;
- ``sampled(crow, col, left, right)``: ``left @ right.T`` at the matrix's entries only, in CSR
  order (a weight gradient at the pattern);
- ``operand(t)`` / ``result(t)``: a (features, batch) operand from a transposed (batch,
  features) view, and a (features, batch) product as the layer's (batch, features) output.

`TorchOps` runs them with torch's CSR kernels (any device and dtype). `CompiledOps` runs them
with sparse_kernels.cpp, a C++/OpenMP library compiled on first use with the machine's own
compiler into a cache keyed by the source, the compiler flags and the CPU (``-march=native``:
a library built for one CPU is never loaded on another). `ops_for` picks the compiled ones
for float32 / float64 CPU tensors when they are available; otherwise, and when the build
fails (one line says why) or ``DST_NO_EXT=1`` is set, torch's. ``python -m src.sparse.kernels``
builds the library (`make install` does).
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
import warnings
from pathlib import Path

import torch
from torch import Tensor

SOURCE = Path(__file__).with_name("sparse_kernels.cpp")
FLAGS = ["-O3", "-march=native", "-fopenmp", "-fPIC", "-shared", "-std=c++17"]
DTYPES = {torch.float32: "f32", torch.float64: "f64"}

# torch marks CSR support as beta; the operations used here are the supported core ones.
warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta state")


@functools.cache
def cpu_info() -> dict:
    """The CPU's model name and the vector / matrix extensions that decide kernel speed
    (recorded with every benchmark figure and keying the crossover table)."""
    model, flags = platform.processor() or platform.machine(), set()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name":
                model = value.strip()
            elif key.strip() == "flags":
                flags = set(value.split())
    return {
        "model": model,
        "cpus": os.cpu_count(),
        "flags": {f: f in flags for f in ("avx2", "avx512f", "avx512_bf16", "amx_tile", "amx_bf16")},
        "all_flags_sha1": hashlib.sha1(" ".join(sorted(flags)).encode()).hexdigest()[:12],
    }


class TorchOps:
    """The products with torch's sparse CSR kernels."""

    name = "torch"

    @staticmethod
    def operand(dense: Tensor) -> Tensor:
        return dense  # torch's kernels take strided operands as they are

    @staticmethod
    def result(product: Tensor) -> Tensor:
        return product.t()

    @staticmethod
    def spmm(crow: Tensor, col: Tensor, values: Tensor, value_index: Tensor | None, dense: Tensor, rows: int) -> Tensor:
        if value_index is not None:
            values = values.index_select(0, value_index)
        matrix = torch.sparse_csr_tensor(crow, col, values, (rows, dense.shape[0]), check_invariants=False)
        return matrix @ dense

    @staticmethod
    def sampled(crow: Tensor, col: Tensor, left: Tensor, right: Tensor) -> Tensor:
        nnz = col.shape[0]
        pattern = torch.sparse_csr_tensor(
            crow,
            col,
            torch.zeros(nnz, dtype=left.dtype, device=left.device),
            (left.shape[0], right.shape[0]),
            check_invariants=False,
        )
        return torch.sparse.sampled_addmm(pattern, left, right.t(), beta=0.0).values()


class CompiledOps:
    """The products with the compiled library: contiguous batch-innermost operands, results
    written into fresh tensors, no sparse tensor objects built per call."""

    name = "compiled"

    def __init__(self, lib: ctypes.CDLL):
        self.lib = lib

    def operand(self, dense: Tensor) -> Tensor:
        """A dense operand as the kernels read it: contiguous, transposed by the library's
        tiled transposition when it is the transposed view of a (batch, features) tensor."""
        if dense.is_contiguous():
            return dense
        if dense.dim() == 2 and dense.t().is_contiguous():
            return self.transposed(dense.t())
        return dense.contiguous()

    def result(self, product: Tensor) -> Tensor:
        """A product (features, batch) as torch's usual contiguous (batch, features) (a
        convolution's output is written channels-last from it)."""
        return self.transposed(product)

    def transposed(self, matrix: Tensor) -> Tensor:
        """A contiguous copy of ``matrix.t()`` (``matrix`` contiguous)."""
        out = torch.empty(matrix.shape[1], matrix.shape[0], dtype=matrix.dtype)
        getattr(self.lib, f"dst_transpose_{DTYPES[matrix.dtype]}")(*matrix.shape, matrix.data_ptr(), out.data_ptr())
        return out

    def spmm(
        self, crow: Tensor, col: Tensor, values: Tensor, value_index: Tensor | None, dense: Tensor, rows: int
    ) -> Tensor:
        dense = dense.contiguous()
        out = torch.empty(rows, dense.shape[1], dtype=dense.dtype)
        fn = getattr(self.lib, f"dst_spmm_{DTYPES[dense.dtype]}")
        fn(
            rows,
            crow.data_ptr(),
            col.data_ptr(),
            values.data_ptr(),
            None if value_index is None else value_index.data_ptr(),
            dense.data_ptr(),
            dense.shape[1],
            out.data_ptr(),
        )
        return out

    def sampled(self, crow: Tensor, col: Tensor, left: Tensor, right: Tensor) -> Tensor:
        left, right = left.contiguous(), right.contiguous()
        out = torch.empty(col.shape[0], dtype=left.dtype)
        fn = getattr(self.lib, f"dst_sampled_{DTYPES[left.dtype]}")
        fn(
            left.shape[0],
            crow.data_ptr(),
            col.data_ptr(),
            left.data_ptr(),
            right.data_ptr(),
            left.shape[1],
            out.data_ptr(),
        )
        return out


_forced_torch = os.environ.get("DST_NO_EXT", "") not in ("", "0")


TORCH_OPS = TorchOps()


def ops_for(weight: Tensor) -> TorchOps | CompiledOps:
    """The products a sparse layer with this weight runs on: compiled for float32 / float64
    CPU tensors when the library is available, torch's otherwise."""
    if weight.device.type == "cpu" and weight.dtype in DTYPES and not _forced_torch:
        return compiled_ops() or TORCH_OPS
    return TORCH_OPS


def compiled_ops() -> CompiledOps | None:
    lib = library()
    return None if lib is None else CompiledOps(lib)


@contextlib.contextmanager
def torch_only():
    """Layers built inside run torch's products (the benchmarks' "before"; what DST_NO_EXT=1
    gives a whole process)."""
    global _forced_torch
    before, _forced_torch = _forced_torch, True
    try:
        yield
    finally:
        _forced_torch = before


def cache_dir() -> Path:
    base = os.environ.get("DST_EXT_CACHE") or Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
    return Path(base) / "fantastic-dst"


def library_path() -> Path:
    """Where the library for this source, these flags, this compiler and this CPU lives."""
    key = hashlib.sha1()
    key.update(SOURCE.read_bytes())
    key.update(" ".join(FLAGS).encode())
    key.update(_compiler_version().encode())
    key.update(repr(sorted(cpu_info().items())).encode())
    return cache_dir() / f"sparse_kernels_{key.hexdigest()[:16]}.so"


@functools.cache
def library() -> ctypes.CDLL | None:
    """The compiled library, built on first use; None (with a one-line notice) when it cannot
    be built or loaded."""
    try:
        return _load(_build())
    except (OSError, subprocess.CalledProcessError, RuntimeError) as error:
        detail = getattr(error, "stderr", None) or str(error)
        warnings.warn(
            f"compiled sparse kernels unavailable ({detail.strip().splitlines()[-1] if detail else error}); "
            "the sparse backend uses torch's kernels",
            RuntimeWarning,
            stacklevel=2,
        )
        return None


def _compiler() -> str:
    compiler = os.environ.get("CXX") or shutil.which("g++") or shutil.which("c++")
    if compiler is None:
        raise RuntimeError("no C++ compiler (g++ / c++ / $CXX) found")
    return compiler


@functools.cache
def _compiler_version() -> str:
    try:
        return subprocess.run([_compiler(), "--version"], capture_output=True, text=True).stdout
    except (OSError, RuntimeError):
        return ""


def _build() -> Path:
    path = library_path()
    if path.exists():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    # Built under a temporary name and renamed: processes building at once never load half a file.
    with tempfile.TemporaryDirectory(dir=path.parent) as tmp:
        built = Path(tmp) / path.name
        subprocess.run([_compiler(), *FLAGS, str(SOURCE), "-o", str(built)], check=True, capture_output=True, text=True)
        built.replace(path)
    return path


def _load(path: Path) -> ctypes.CDLL:
    # torch is imported, so its OpenMP runtime is loaded: the library's libgomp.so.1 resolves to
    # it, and the kernels share torch's thread pool and thread count.
    lib = ctypes.CDLL(str(path))
    p, i64 = ctypes.c_void_p, ctypes.c_int64
    for dtype in DTYPES.values():
        getattr(lib, f"dst_spmm_{dtype}").argtypes = [i64, p, p, p, p, p, i64, p]
        getattr(lib, f"dst_sampled_{dtype}").argtypes = [i64, p, p, p, p, i64, p]
        getattr(lib, f"dst_transpose_{dtype}").argtypes = [i64, i64, p, p]
    return lib


if __name__ == "__main__":
    built = library()
    where = built._name if built is not None else "unavailable: the sparse backend uses torch's kernels"
    off = " (not used: DST_NO_EXT is set)" if built is not None and _forced_torch else ""
    print(f"compiled sparse kernels: {where}{off}")

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
compiler (``-march=native``, plus ``DST_EXT_FLAGS``, e.g. ``-mno-avx512f`` for the AVX2 build)
into a cache keyed by the source, the flags, the compiler and the CPU, and loaded only after
verification (docs/kernels.md, "Guarantees": a user-only cache directory, a record with the
build key and the library's SHA-256, checked through the descriptor that is dlopened; anything
else is rebuilt). `implementations` lists what can run a layer's weight -- both for float32 /
float64 CPU tensors when the library loads, torch's otherwise, and torch's only when the
library cannot be built or loaded (one warning says why) or ``DST_NO_EXT=1`` is set --, and
`choice` picks per layer and operation between them by measurement. ``python -m
src.sparse.kernels`` builds the library (`make install` does).
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import functools
import hashlib
import json
import os
import platform
import shlex
import shutil
import stat
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
    model, flags, ids = platform.processor() or platform.machine(), set(), {}
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name":
                model = value.strip()
            elif key.strip() in ("cpu family", "model") and key.strip() not in ids:
                ids[key.strip()] = value.strip()
            elif key.strip() == "flags":
                flags = set(value.split())
    return {
        "model": model,
        # The model name alone does not tell CPUs apart ("AMD EPYC" is Zen 1 and Zen 4 alike).
        "family": ids.get("cpu family", ""),
        "model_id": ids.get("model", ""),
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

    def sgd(self, param: Tensor, grad: Tensor, buf: Tensor | None, group: dict, first: bool) -> None:
        """torch.optim.SGD's step of ``param`` (contiguous, with its contiguous gradient and
        momentum buffer) with ``group``'s settings, in one pass over the values."""
        getattr(self.lib, f"dst_sgd_{DTYPES[param.dtype]}")(
            param.numel(),
            param.data_ptr(),
            grad.data_ptr(),
            None if buf is None else buf.data_ptr(),
            float(group["lr"]),
            float(group["momentum"]),
            float(group["dampening"]),
            float(group["weight_decay"]),
            int(bool(group["nesterov"])),
            int(first),
        )

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


def torch_forced() -> bool:
    return _forced_torch


Ops = TorchOps | CompiledOps  # either implements every product


def implementations(weight: Tensor) -> dict[str, Ops]:
    """The implementations of the products that can run a layer with this weight, by name."""
    if weight.device.type == "cpu" and weight.dtype in DTYPES and not _forced_torch:
        compiled = compiled_ops()
        if compiled is not None:
            return {"compiled": compiled, "torch": TORCH_OPS}
    return {"torch": TORCH_OPS}


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


def extra_flags() -> list[str]:
    """Compiler flags added by ``DST_EXT_FLAGS`` (e.g. ``-mno-avx512f``: the AVX2 build of the
    kernels on an AVX-512 CPU, what the tests use to check both); part of the library's key."""
    return shlex.split(os.environ.get("DST_EXT_FLAGS", ""))


def build_flags() -> list[str]:
    return [*FLAGS, *extra_flags()]


def build_key() -> str:
    """The hash of everything the library is built from: source, flags, compiler, CPU."""
    key = hashlib.sha256()
    key.update(SOURCE.read_bytes())
    key.update(" ".join(build_flags()).encode())
    key.update(_compiler_version().encode())
    key.update(repr(sorted(cpu_info().items())).encode())
    return key.hexdigest()


def library_path() -> Path:
    """Where the library for this source, these flags, this compiler and this CPU lives (its
    record, ``.json`` beside it, holds the full key and the library's own SHA-256)."""
    return cache_dir() / f"sparse_kernels_{build_key()[:16]}.so"


class UntrustedCache(RuntimeError):
    """The cache directory (or a file in it) is not one only this user can write."""


def _checked_dir(path: Path) -> Path:
    """``path`` as a directory only this user can write, created 0700 when missing. A link,
    another owner, or group/world write permission is refused (nothing in it is loaded)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with contextlib.suppress(FileExistsError):
        path.mkdir(mode=0o700)
    st = os.lstat(path)
    if stat.S_ISLNK(st.st_mode):
        raise UntrustedCache(f"kernel cache {path} is a symbolic link")
    if not stat.S_ISDIR(st.st_mode):
        raise UntrustedCache(f"kernel cache {path} is not a directory")
    if st.st_uid != os.geteuid():
        raise UntrustedCache(f"kernel cache {path} is owned by uid {st.st_uid}, not this user")
    if st.st_mode & 0o022:
        raise UntrustedCache(f"kernel cache {path} is writable by group or others (mode {st.st_mode & 0o777:o})")
    return path


def _read_trusted(path: Path) -> bytes | None:
    """The bytes of a regular file owned by this user and writable by no one else, read
    without following a link; None when it is missing or fails any of these."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return None
    with os.fdopen(fd, "rb") as f:
        st = os.fstat(f.fileno())
        if not stat.S_ISREG(st.st_mode) or st.st_uid != os.geteuid() or st.st_mode & 0o022:
            return None
        return f.read()


def _verified(path: Path, key: str) -> bytes | None:
    """The library at ``path`` when its record names this build's key and the library's
    SHA-256 matches the record's; None otherwise (it is then rebuilt)."""
    record, built = _read_trusted(path.with_suffix(".json")), _read_trusted(path)
    if record is None or built is None:
        return None
    try:
        expected = json.loads(record)
    except ValueError:
        return None
    if not isinstance(expected, dict) or expected.get("key") != key:
        return None
    return built if expected.get("sha256") == hashlib.sha256(built).hexdigest() else None


_BUILD_PREFIX = ".build-"


def _remove_stale_builds(directory: Path) -> None:
    """Temporary build directories left by a build that was killed (their process is gone)."""
    for entry in directory.glob(f"{_BUILD_PREFIX}*"):
        pid = entry.name[len(_BUILD_PREFIX) :].partition("-")[0]
        if pid.isdigit() and int(pid) != os.getpid() and not _alive(int(pid)):
            shutil.rmtree(entry, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@contextlib.contextmanager
def _locked(directory: Path):
    """One builder at a time per cache: a library and its record are replaced together."""
    fd = os.open(directory / ".lock", os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _build() -> tuple[Path, bytes]:
    """The library for this build key and its bytes: the cached one when it verifies, else
    built now (into a fresh temporary directory with an unpredictable name, removed whatever
    happens; a killed build's directory is removed by the next build) and installed with its
    record."""
    directory, key = _checked_dir(cache_dir()), build_key()
    _remove_stale_builds(directory)
    path = directory / f"sparse_kernels_{key[:16]}.so"
    if (built := _verified(path, key)) is not None:
        return path, built
    with _locked(directory):
        if (built := _verified(path, key)) is not None:  # another process built it meanwhile
            return path, built
        tmp = Path(tempfile.mkdtemp(prefix=f"{_BUILD_PREFIX}{os.getpid()}-", dir=directory))
        try:
            out = tmp / path.name
            cmd = [_compiler(), *build_flags(), str(SOURCE), "-o", str(out)]
            subprocess.run(cmd, check=True, capture_output=True, text=True)
            built = out.read_bytes()
            record = tmp / "record.json"
            record.write_text(json.dumps({"key": key, "sha256": hashlib.sha256(built).hexdigest(), "flags": cmd[1:-3]}))
            os.chmod(out, 0o700)
            os.chmod(record, 0o600)
            out.replace(path)
            record.replace(path.with_suffix(".json"))
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return path, built


class _KernelLibrary(ctypes.CDLL):
    """The loaded library; ``path``: the cached file whose verified bytes it was loaded from."""

    path: str


def _load(path: Path, expected: bytes) -> _KernelLibrary:
    """dlopen the library through a descriptor whose content is checked first: what is loaded
    is exactly the verified bytes, even if the name is replaced in between."""
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        with os.fdopen(os.dup(fd), "rb") as f:
            if hashlib.sha256(f.read()).digest() != hashlib.sha256(expected).digest():
                raise UntrustedCache(f"{path} changed while it was being loaded")
        # torch is imported, so its OpenMP runtime is loaded: the library's libgomp.so.1 resolves
        # to it, and the kernels share torch's thread pool and thread count.
        lib = _KernelLibrary(f"/proc/self/fd/{fd}")
    finally:
        os.close(fd)
    p, i64 = ctypes.c_void_p, ctypes.c_int64
    for dtype in DTYPES.values():
        getattr(lib, f"dst_spmm_{dtype}").argtypes = [i64, p, p, p, p, p, i64, p]
        getattr(lib, f"dst_sampled_{dtype}").argtypes = [i64, p, p, p, p, i64, p]
        getattr(lib, f"dst_transpose_{dtype}").argtypes = [i64, i64, p, p]
        d, i = ctypes.c_double, ctypes.c_int
        getattr(lib, f"dst_sgd_{dtype}").argtypes = [i64, p, p, p, d, d, d, d, i, i]
    lib.path = str(path)
    return lib


@functools.cache
def library() -> _KernelLibrary | None:
    """The compiled library, built on first use; None (with one warning) when it cannot be
    built, verified or loaded -- whatever the failure, the backend then runs torch's kernels."""
    try:
        return _load(*_build())
    except Exception as error:  # noqa: BLE001 -- any failure falls back to torch's kernels
        detail = getattr(error, "stderr", None) or str(error) or type(error).__name__
        warnings.warn(
            f"compiled sparse kernels unavailable ({detail.strip().splitlines()[-1]}); "
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


if __name__ == "__main__":
    built = library()
    where = built.path if built is not None else "unavailable: the sparse backend uses torch's kernels"
    off = " (not used: DST_NO_EXT is set)" if built is not None and _forced_torch else ""
    print(f"compiled sparse kernels: {where}{off}")

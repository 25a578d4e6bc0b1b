"""What the compiled-kernel cache trusts (docs/kernels.md, "Guarantees"): each fault injected for
real -- a planted library with a constructor, a truncated library, one without the kernels'
symbols, a world-writable or linked cache directory, a killed build's leftovers."""

import json
import os
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from src.sparse import kernels

ROOT = Path(__file__).resolve().parents[1]
needs_compiler = pytest.mark.skipif(shutil.which(os.environ.get("CXX", "g++")) is None, reason="no C++ compiler here")
pytestmark = needs_compiler

# Loads the library in a fresh process and says what it got (a SIGBUS there must not end the test).
LOAD = textwrap.dedent(
    """
    import json, warnings
    from src.sparse import kernels
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        lib = kernels.library()
    print(json.dumps({"loaded": lib is not None, "path": str(kernels.library_path()),
                      "warnings": [str(w.message) for w in caught]}))
    """
)


def load_in_child(cache: Path, **env) -> dict:
    environment = {**os.environ, "DST_EXT_CACHE": str(cache), "PYTHONPATH": str(ROOT), **env}
    environment.pop("DST_NO_EXT", None)
    proc = subprocess.run([sys.executable, "-c", LOAD], capture_output=True, text=True, env=environment, cwd=ROOT)
    assert proc.returncode == 0, f"the loading process died ({proc.returncode}): {proc.stderr[-2000:]}"
    return json.loads(proc.stdout.strip().splitlines()[-1])


def compile_so(tmp_path: Path, source: str, name: str) -> Path:
    src = tmp_path / f"{name}.cpp"
    src.write_text(source)
    out = tmp_path / f"{name}.so"
    subprocess.run([os.environ.get("CXX", "g++"), "-shared", "-fPIC", str(src), "-o", str(out)], check=True)
    return out


def test_a_planted_library_never_runs_its_constructor_and_is_replaced_by_a_build(tmp_path):
    marker = tmp_path / "constructor-ran"
    planted = compile_so(
        tmp_path,
        f"""
        #include <cstdio>
        __attribute__((constructor)) static void planted() {{
            if (FILE* f = std::fopen("{marker}", "w")) std::fclose(f);
        }}
        extern "C" void dst_spmm_f32() {{}}
        """,
        "planted",
    )
    cache = tmp_path / "cache"
    path = Path(load_in_child(cache)["path"])  # where this build's library lives
    assert not marker.exists()
    for with_record in (False, True):
        shutil.copy(planted, path)
        if not with_record:
            path.with_suffix(".json").unlink()
        got = load_in_child(cache)
        assert got["loaded"] and got["warnings"] == []
        assert not marker.exists(), "the planted library's constructor ran"
        assert path.read_bytes() != planted.read_bytes()  # rebuilt in its place


def test_a_truncated_library_is_rebuilt_not_loaded(tmp_path):
    cache = tmp_path / "cache"
    path = Path(load_in_child(cache)["path"])
    whole = path.read_bytes()
    with open(path, "r+b") as f:
        f.truncate(len(whole) // 2)
    got = load_in_child(cache)
    assert got["loaded"] and got["warnings"] == []
    assert path.stat().st_size == len(whole)


def test_a_library_without_the_kernels_symbols_falls_back_with_one_warning(tmp_path):
    # A source that builds and verifies but lacks the kernels: the load itself fails.
    source = tmp_path / "empty.cpp"
    source.write_text('extern "C" int unrelated() { return 0; }\n')
    code = (
        "import warnings, torch\n"
        "from pathlib import Path\n"
        "from src.sparse import kernels\n"
        f"kernels.SOURCE = Path({str(source)!r})\n"
        "with warnings.catch_warnings(record=True) as caught:\n"
        "    warnings.simplefilter('always')\n"
        "    assert kernels.library() is None\n"
        "    assert kernels.ops_for(torch.zeros(2)) is kernels.TORCH_OPS\n"
        "    assert kernels.library() is None\n"
        "print(len(caught), caught[0].message)\n"
    )
    env = {**os.environ, "DST_EXT_CACHE": str(tmp_path / "cache"), "PYTHONPATH": str(ROOT)}
    env.pop("DST_NO_EXT", None)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    count, message = proc.stdout.strip().split(" ", 1)
    assert count == "1" and "dst_spmm_f32" in message and "torch's kernels" in message


@pytest.mark.parametrize("fault", ["world-writable", "group-writable", "symlink"])
def test_an_unsafe_cache_directory_is_refused_and_nothing_in_it_loaded(tmp_path, fault):
    marker = tmp_path / "constructor-ran"
    cache = tmp_path / "cache"
    path = Path(load_in_child(cache)["path"])
    directory = path.parent
    planted = compile_so(
        tmp_path,
        f"""
        #include <cstdio>
        __attribute__((constructor)) static void planted() {{
            if (FILE* f = std::fopen("{marker}", "w")) std::fclose(f);
        }}
        """,
        "planted",
    )
    if fault == "symlink":  # the cache directory a link to a directory holding a planted library
        elsewhere = tmp_path / "elsewhere"
        shutil.copytree(directory, elsewhere)
        shutil.copy(planted, elsewhere / path.name)
        shutil.rmtree(directory)
        directory.symlink_to(elsewhere)
    else:
        os.chmod(directory, 0o777 if fault == "world-writable" else 0o770)
    got = load_in_child(cache)
    assert not got["loaded"] and len(got["warnings"]) == 1
    assert "kernel cache" in got["warnings"][0] and "torch's kernels" in got["warnings"][0]
    assert not marker.exists()


def test_a_linked_library_file_is_not_followed(tmp_path):
    cache = tmp_path / "cache"
    path = Path(load_in_child(cache)["path"])
    real = tmp_path / "real.so"
    shutil.copy(path, real)
    path.unlink()
    path.symlink_to(real)  # same bytes, same record: refused as a link all the same, and rebuilt
    got = load_in_child(cache)
    assert got["loaded"] and not path.is_symlink()


def test_a_killed_build_leaves_nothing_behind_once_the_next_build_runs(tmp_path):
    cache = tmp_path / "cache"
    # A build killed by SIGKILL while the compiler runs: a wrapper "compiler" that waits.
    slow = tmp_path / "slow-cxx"
    slow.write_text(
        f'#!/bin/sh\ncase "$*" in *" -o "*) touch {tmp_path}/compiling; sleep 30;; esac\n'
        f'exec {shutil.which("g++")} "$@"\n'
    )
    slow.chmod(0o755)
    env = {**os.environ, "DST_EXT_CACHE": str(cache), "PYTHONPATH": str(ROOT), "CXX": str(slow)}
    env.pop("DST_NO_EXT", None)
    proc = subprocess.Popen([sys.executable, "-c", LOAD], env=env, cwd=ROOT, start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        while not (tmp_path / "compiling").exists():
            assert time.monotonic() < deadline and proc.poll() is None
            time.sleep(0.05)
        leftovers = list((cache / "fantastic-dst").glob(".build-*"))
        assert len(leftovers) == 1
        assert len(leftovers[0].name) > len(f".build-{proc.pid}-") + 6  # an unpredictable name
        os.killpg(proc.pid, 9)
        proc.wait()
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, 9)
    assert leftovers[0].exists()
    got = load_in_child(cache)  # the next build removes the dead build's directory
    assert got["loaded"]
    assert not list((cache / "fantastic-dst").glob(".build-*"))


def test_a_failed_build_removes_its_temporary_directory(tmp_path, monkeypatch):
    broken = tmp_path / "broken.cpp"
    broken.write_text("this is not C++\n")
    monkeypatch.setattr(kernels, "SOURCE", broken)
    monkeypatch.setenv("DST_EXT_CACHE", str(tmp_path / "cache"))
    kernels.library.cache_clear()
    try:
        with pytest.warns(RuntimeWarning, match="compiled sparse kernels unavailable"):
            assert kernels.library() is None
    finally:
        kernels.library.cache_clear()
    assert not list((tmp_path / "cache" / "fantastic-dst").glob(".build-*"))

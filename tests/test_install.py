"""`pip install .` (not editable) works anywhere: the wheel built from this checkout, installed
into a fresh venv made here, and its commands run from a directory outside the checkout with
the checkout off sys.path. The venv sees this environment's site-packages through a .pth file
(its dependencies, torch included, are not installed again); that directory's own .pth files
are not processed, so the editable install of the project there stays out of the way.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(out), str(REPO)],
        check=True,
        cwd=out,
    )
    (found,) = out.glob("fantastic_dst-*.whl")
    return found


def test_wheel_carries_configs_sweeps_and_notebook(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    for path in REPO.glob("conf/**/*.yaml"):
        assert f"src/_resources/{path.relative_to(REPO).as_posix()}" in names
    for path in REPO.glob("sweeps/**/*.yaml"):
        assert f"src/_resources/{path.relative_to(REPO).as_posix()}" in names
    assert "analysis/notebooks/aggregate.ipynb" in names
    assert "src/sparse/sparse_kernels.cpp" in names
    assert not any(n.startswith(("tests/", "bench/", "conf/", "sweeps/")) for n in names)


@pytest.fixture(scope="module")
def installed(wheel, tmp_path_factory):
    """(env, cwd, venv): the wheel installed with --no-deps into a fresh venv."""
    root = tmp_path_factory.mktemp("installed")
    venv = root / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    purelib = subprocess.run(
        [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")}
    # installed before the venv sees the shared site-packages: pip must neither find the project's
    # editable install there as already satisfied nor touch it
    subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(python), "install", "-q", "--no-deps", "--no-index", str(wheel)],
        check=True,
        env=env,
    )
    Path(purelib, "shared-site-packages.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    env["PATH"] = f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}"
    env.setdefault("DST_EXT_CACHE", str(root / "kernel-cache"))
    cwd = root / "elsewhere"
    cwd.mkdir()
    return env, cwd, venv


def _run(installed, *command, timeout=600):
    env, cwd, _ = installed
    return subprocess.run(command, env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout)


def test_imports_come_from_the_venv_not_the_checkout(installed):
    _, _, venv = installed
    out = _run(
        installed,
        "python",
        "-c",
        "import json, sys, src, analysis, src.resources as r; "
        "print(json.dumps([src.__file__, analysis.__file__, str(r.CONF_DIR), sys.path]))",
    )
    assert out.returncode == 0, out.stderr
    src_file, analysis_file, conf_dir, path = json.loads(out.stdout)
    for where in (src_file, analysis_file, conf_dir):
        assert Path(where).is_relative_to(venv), where
    assert str(REPO) not in path and "" not in path[1:]


def test_commands_work_from_any_directory(installed, tmp_path):
    help_text = _run(installed, "dst-launch", "--help")
    assert help_text.returncode == 0, help_text.stderr
    assert "smoke" in help_text.stdout and "fmnist_quick" in help_text.stdout  # conf/setup and sweeps/ found

    runs = tmp_path / "runs"
    launch = _run(
        installed, "dst-launch", "-m", "setup=smoke", "criterion=magnitude", "seed=1,2,3", f"runs_root={runs}"
    )
    assert launch.returncode == 0, launch.stderr[-3000:]
    results = [json.loads(p.read_text()) for p in (runs / "default").glob("*/result.json")]
    assert len(results) == 3 and all(r["status"] == "completed" for r in results)

    status = _run(installed, "dst-launch", "status", str(runs / "default"))
    assert status.returncode == 0, status.stderr[-3000:]
    assert "completed" in status.stdout

    usage = _run(installed, "dst-report", "--help")
    assert usage.returncode == 0 and usage.stdout.startswith("usage: dst-report"), usage.stdout
    report = _run(installed, "dst-report", str(runs / "default"))
    assert report.returncode == 0, report.stderr[-3000:]
    assert (runs / "default" / "report" / "index.html").is_file()

    notebook = _run(installed, "dst-report", "notebook", str(runs / "default"), "--out", str(tmp_path / "nb.ipynb"))
    assert notebook.returncode == 0, notebook.stderr[-3000:]
    cells = json.loads((tmp_path / "nb.ipynb").read_text())["cells"]
    assert any(c.get("outputs") for c in cells if c["cell_type"] == "code")

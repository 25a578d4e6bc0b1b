"""What the package declares: compatible ranges (the exact tested set in a constraints file that
`make install` uses), W&B and the notebook tools as extras, W&B asked for only by a run that
uses it. (The wheel itself, installed and run outside the checkout: test_install.py.)"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import tomllib

REPO = Path(__file__).resolve().parents[1]
PROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
CONSTRAINTS = REPO / "requirements" / "constraints.txt"


def test_dependencies_are_ranges_and_the_tested_set_is_a_constraints_file():
    for requirement in PROJECT["dependencies"]:
        assert "==" not in requirement, f"{requirement}: a pin; pin in requirements/constraints.txt"
        assert re.search(r">=", requirement), f"{requirement}: give the oldest version that works"
    pinned = {
        line.split("==")[0].lower().replace("_", "-")
        for line in CONSTRAINTS.read_text().splitlines()
        if "==" in line and not line.startswith("#")
    }
    for requirement in PROJECT["dependencies"]:
        name = re.match(r"[A-Za-z0-9_.-]+", requirement).group(0).lower().replace("_", "-")
        assert name in pinned, f"{name}: missing from {CONSTRAINTS.name}"
    assert "-c requirements/constraints.txt" in (REPO / "Makefile").read_text()


def test_wandb_and_notebook_tools_are_extras_not_dependencies():
    names = " ".join(PROJECT["dependencies"])
    assert "wandb" not in names and "nbclient" not in names
    extras = PROJECT["optional-dependencies"]
    assert any(r.startswith("wandb") for r in extras["wandb"])
    assert {"nbclient", "nbformat", "ipykernel"} <= {re.match(r"[a-z]+", r).group(0) for r in extras["notebook"]}


def test_build_outputs_are_ignored():
    ignored = subprocess.run(
        ["git", "check-ignore", "build/lib/x.py", "dist/x.whl", "src/_resources/conf/x.yaml"],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    assert ignored.stdout.split() == ["build/lib/x.py", "dist/x.whl", "src/_resources/conf/x.yaml"]


def test_a_run_asking_for_wandb_without_it_says_how_to_install_it_before_launching(tmp_path):
    """wandb made unimportable: the launch stops at validation with the extra to install."""
    code = (
        "import sys\n"
        "sys.modules['wandb'] = None  # what import finds when the package is absent\n"
        "from src.launch import main\n"
        f"sys.exit(main(['setup=smoke', 'logging.wandb=offline', 'runs_root={tmp_path}']))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert out.returncode != 0
    assert "logging.wandb=offline: needs the wandb package" in out.stderr
    assert "pip install 'fantastic-dst[wandb]'" in out.stderr
    assert not list(tmp_path.rglob("result.json"))

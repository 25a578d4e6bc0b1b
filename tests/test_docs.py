"""The README is a user guide that works: short, its links resolve (docs/ too), the commands it
marks `<!-- smoke-test -->` run as written, and the SLURM options it names are real."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
PAGES = [README, *sorted((REPO / "docs").glob("*.md"))]
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")
FENCE = re.compile(r"<!-- smoke-test -->\n```(\w+)\n(.*?)\n```", re.S)


def test_readme_is_a_guide_of_at_most_250_lines():
    text = README.read_text()
    assert len(text.splitlines()) <= 250
    for section in ("## Requirements", "## Install", "## Quick start", "## Reproduce the paper", "## Analyse results"):
        assert section in text
    for section in ("## Run on SLURM", "## Use the Sparsifier in your own training loop", "## Citation", "## License"):
        assert section in text
    assert "arxiv.org/abs/2306.12230" in text
    assert (REPO / "LICENSE").read_text().startswith("MIT License")
    assert "preferred-citation:" in (REPO / "CITATION.cff").read_text()
    for page in ("configuration", "sweeps-and-slurm", "status-and-records", "analysis"):
        assert (REPO / "docs" / f"{page}.md").is_file()
    for page in ("sparse-core-and-kernels", "guarantees", "benchmarks", "extending"):
        assert (REPO / "docs" / f"{page}.md").is_file()


def _anchors(page: Path) -> set[str]:
    """GitHub's heading anchors: lower case, punctuation dropped, spaces to hyphens."""
    headings = re.findall(r"^#+ (.+)$", page.read_text(), re.M)
    return {re.sub(r"[^\w\- ]", "", h.strip().lower()).replace(" ", "-") for h in headings}


def test_every_relative_link_resolves():
    broken = []
    for page in PAGES:
        for target in LINK.findall(page.read_text()):
            if re.match(r"[a-z]+:", target):  # https:, mailto:
                continue
            path, _, anchor = target.partition("#")
            resolved = (page.parent / path).resolve() if path else page
            if not resolved.exists():
                broken.append(f"{page.relative_to(REPO)}: {target}")
            elif anchor and resolved.suffix == ".md" and anchor not in _anchors(resolved):
                broken.append(f"{page.relative_to(REPO)}: {target} (no such heading)")
    assert not broken, broken


def test_smoke_blocks_are_marked():
    blocks = [m for page in PAGES for m in FENCE.finditer(page.read_text())]
    assert {language for language, _ in (m.groups() for m in blocks)} == {"bash", "python"}


@pytest.mark.slow
@pytest.mark.parametrize(
    "page, number",
    [(page.relative_to(REPO).as_posix(), i) for page in PAGES for i, _ in enumerate(FENCE.findall(page.read_text()))],
)
def test_smoke_blocks_run_as_written(page, number, tmp_path):
    """Each marked block, in a fresh directory, with this checkout's commands on PATH."""
    language, code = FENCE.findall((REPO / page).read_text())[number]
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for command, module in (("dst-launch", "src.launch"), ("dst-report", "analysis"), ("dst-train", "src.train")):
        (bin_dir / command).write_text(f'#!/bin/sh\nexec {sys.executable} -m {module} "$@"\n')
        (bin_dir / command).chmod(0o755)
    env = {**os.environ, "PYTHONPATH": str(REPO), "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"}
    env.setdefault("DST_EXT_CACHE", str(tmp_path / "kernel-cache"))
    command = ["bash", "-euo", "pipefail", "-c", code] if language == "bash" else [sys.executable, "-c", code]
    out = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, f"{page} block {number}:\n{code}\n{out.stdout[-2000:]}\n{out.stderr[-3000:]}"


SLURM_OPTIONS = [
    """hydra.launcher.setup='["module load cuda/12.4","conda activate dst"]'""",
    "hydra.launcher.account=ACC hydra.launcher.qos=QOS",
    "+hydra.launcher.additional_parameters.reservation=NAME",
    """hydra.launcher.python="apptainer exec --nv dst.sif python\"""",
    "launcher=slurm_gpu train.device=cuda",
]


def test_the_slurm_options_the_readme_names_reach_sbatch(tmp_path):
    """Composed as a launch composes them, the README's SLURM settings become the submitit
    executor's sbatch parameters and job command."""
    import shlex

    text = README.read_text()
    overrides = []
    for option in SLURM_OPTIONS:
        assert option in text, option
        overrides += shlex.split(option)
    code = (
        "import json, sys\n"
        "import src.plan\n"
        "from hydra import compose, initialize_config_dir\n"
        "from omegaconf import OmegaConf\n"
        "from src.resources import CONF_DIR\n"
        "from hydra_plugins.dst_slurm_launcher.slurm_launcher import PackedSlurmLauncher\n"
        "with initialize_config_dir(str(CONF_DIR), version_base='1.3'):\n"
        "    cfg = compose('config', overrides=sys.argv[2:], return_hydra_config=True)\n"
        "params = OmegaConf.to_container(cfg.hydra.launcher, resolve=False)\n"
        "params.pop('_target_'); params['submitit_folder'] = sys.argv[1]\n"
        "executor = PackedSlurmLauncher(**params)._executor()._executor\n"
        "print(json.dumps([executor._submitit_command_str, executor.parameters, cfg.train.device]))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path / "%j"), *overrides],
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    command, sbatch, device = json.loads(out.stdout.splitlines()[-1])
    assert command.startswith("apptainer exec --nv dst.sif python -u -m submitit")
    assert sbatch["setup"] == ["module load cuda/12.4", "conda activate dst"]
    assert (sbatch["account"], sbatch["qos"]) == ("ACC", "QOS")
    assert sbatch["additional_parameters"] == {"reservation": "NAME"}
    assert sbatch["gpus_per_node"] == 1 and device == "cuda"

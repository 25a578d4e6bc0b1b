"""`make demo` answers: its three sweeps give every cell enough seeds for a verdict and every DST
run comfortably more topology updates than the shared "too few updates" threshold (5), in about
the compute the demo always had (26 runs x 2 epochs), on a grid the paper's claims can be checked
on; the target ends with the claims' verdicts and the Fig. 1 plot."""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path

from src.checks import steps_per_epoch, topology_updates
from src.plan import expand

REPO = Path(__file__).resolve().parents[1]
DEMO = ("fmnist_quick_dense", "fmnist_quick_static", "fmnist_quick")
TOO_FEW_UPDATES = 5  # the launch's and the report's threshold


def _demo_jobs(tmp_path):
    return [job for sweep in DEMO for job in expand([f"+sweeps={sweep}", f"runs_root={tmp_path}"], check_data=False)]


def test_every_demo_cell_gets_a_verdict_and_enough_topology_updates(tmp_path):
    jobs = _demo_jobs(tmp_path)
    seeds = Counter((job.config.sparsity.mode, job.cell) for job in jobs)
    assert min(seeds.values()) >= 3, seeds
    dst = [job.config for job in jobs if job.config.sparsity.mode == "dst"]
    updates = {topology_updates(cfg, steps_per_epoch(cfg)) for cfg in dst}
    assert min(updates) >= TOO_FEW_UPDATES + 2, updates


def test_the_demo_grid_can_check_the_papers_claims_in_the_demos_usual_compute(tmp_path):
    configs = [job.config for job in _demo_jobs(tmp_path)]
    modes = Counter(cfg.sparsity.mode for cfg in configs)
    assert modes["dense"] >= 3
    dst_densities = {cfg.sparsity.density for cfg in configs if cfg.sparsity.mode == "dst"}
    static_densities = {cfg.sparsity.density for cfg in configs if cfg.sparsity.mode == "static"}
    assert min(dst_densities) <= 0.1 and max(dst_densities) >= 0.3  # claims 1 and 2: low and high density
    assert dst_densities <= static_densities  # claim 3: DST against static at every density
    assert (
        "magnitude" in {cfg.sparsity.criterion for cfg in configs}
        and len({cfg.sparsity.criterion for cfg in configs if cfg.sparsity.mode == "dst"}) >= 3
    )
    epochs = sum(cfg.train.epochs for cfg in configs)
    assert epochs <= 1.1 * 26 * 2, epochs  # the demo's compute before: 26 runs x 2 epochs


def test_make_demo_ends_in_the_verdicts_and_the_figure():
    makefile = (REPO / "Makefile").read_text()
    target = re.search(r"^demo:.*?(?=^\S)", makefile, re.S | re.M).group(0)
    assert "tables/claims.md" in target
    assert "fig1_accuracy_vs_density" in target

"""Shared pytest set-up: the real SLURM cluster fixture (tests/slurm_cluster.py)."""

pytest_plugins = ["tests.slurm_cluster"]

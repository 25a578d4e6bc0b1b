"""The sparse training core: criteria, growth rules, initial densities, schedules, and the
`Sparsifier` that applies them to any model and optimizer.

The names below are imported on first use (PEP 562), so `src.sparse.config` (the config
schema) can be imported without torch.
"""

import importlib

_HOME = {
    "SparsityConfig": "config",
    "CRITERIA": "criteria",
    "Criterion": "criteria",
    "get_criterion": "criteria",
    "register_criterion": "criteria",
    "layer_densities": "density",
    "sample_mask": "density",
    "CLEAN": "functional",
    "grow": "functional",
    "normalize_scores": "functional",
    "prune": "functional",
    "prune_count": "functional",
    "prune_tensors": "functional",
    "rescale_weight": "functional",
    "REFERENCE": "reference",
    "GROWTH_RULES": "growth",
    "get_growth": "growth",
    "register_growth": "growth",
    "OverlapResult": "overlap",
    "criteria_overlap": "overlap",
    "jaccard_matrix": "overlap",
    "prune_rate": "schedules",
    "select_highest": "selection",
    "select_lowest": "selection",
    "LayerUpdate": "sparsifier",
    "Sparsifier": "sparsifier",
    "UpdateRecord": "sparsifier",
    "masked_parameter_names": "density",
}

__all__ = sorted(_HOME)


def __getattr__(name: str):
    if name not in _HOME:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f".{_HOME[name]}", __name__), name)

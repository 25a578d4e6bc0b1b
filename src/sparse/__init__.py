"""The sparse training core: criteria, growth rules, initial densities, schedules, and the
`Sparsifier` that applies them to any model and optimizer."""

from .config import SparsityConfig
from .criteria import CRITERIA, Criterion, get_criterion, register_criterion
from .density import layer_densities, sample_mask
from .functional import grow, normalize_scores, prune, prune_count, rescale_weight
from .growth import GROWTH_RULES, get_growth, register_growth
from .overlap import OverlapResult, criteria_overlap, jaccard_matrix
from .schedules import prune_rate
from .selection import select_highest, select_lowest
from .sparsifier import LayerUpdate, Sparsifier, UpdateRecord, masked_parameter_names

__all__ = [
    "CRITERIA", "GROWTH_RULES", "Criterion", "LayerUpdate", "OverlapResult", "Sparsifier",
    "SparsityConfig", "UpdateRecord", "criteria_overlap", "get_criterion", "get_growth", "grow",
    "jaccard_matrix", "layer_densities", "masked_parameter_names", "normalize_scores", "prune",
    "prune_count", "prune_rate", "register_criterion", "register_growth", "rescale_weight",
    "sample_mask", "select_highest", "select_lowest",
]

"""Prune-rate schedules r(s): the fraction of active weights each topology update exchanges.

``s`` counts optimizer steps from 1 over the whole run; ``total`` is the run's step count.
"""

from __future__ import annotations

import math

from ..registry import unknown

SCHEDULES = ("cosine", "linear", "constant", "exponential_steps")


def prune_rate(schedule: str, step: int, total: int, initial: float, floor: float = 0.005) -> float:
    """The prune rate at optimizer step ``step`` of ``total``.

    - ``cosine``: floor + (initial - floor) * (1 + cos(pi * s / total)) / 2 (the paper's).
    - ``linear``: from initial at s = 0 to floor at s = total.
    - ``constant``: initial.
    - ``exponential_steps``: initial * 0.99 ** floor(s / 600), what the reference calls
      "linear".
    """
    progress = min(step / total, 1.0) if total > 0 else 1.0
    if schedule == "cosine":
        return floor + (initial - floor) * (1 + math.cos(math.pi * progress)) / 2
    if schedule == "linear":
        return initial + (floor - initial) * progress
    if schedule == "constant":
        return initial
    if schedule == "exponential_steps":
        return initial * 0.99 ** (step // 600)
    raise unknown("prune_rate_schedule", schedule, SCHEDULES)

"""Too few topology updates: one threshold and one piece of advice, for the launch's warning
(`src.checks.update_warnings`, from the planned schedule) and the report's (`analysis.cells.
topology_warnings`, from the records). Plain Python: importing it loads no torch."""

from __future__ import annotations

import math

# A DST run with fewer topology updates than this measures little of its criterion.
MIN_UPDATES = 3


def few_updates_advice(updates: int, context: str, fixes: list[str]) -> str:
    """``only 2 topology updates (2 epochs x 422 steps; sparsity.update_frequency=400): its
    criterion and growth barely act; for 3 updates set sparsity.update_frequency<=281 or
    train.epochs>=3``."""
    what = "no topology update" if updates == 0 else f"only {updates} topology update{'s' * (updates > 1)}"
    effect = "have no effect (it trains like static sparse)" if updates == 0 else "barely act"
    advice = f"{what} ({context}): its criterion and growth {effect}"
    return advice + (f"; for {MIN_UPDATES} updates set {' or '.join(fixes)}" if fixes else "")


def update_fixes(update_frequency: int, steps_per_epoch: float, epochs: int, end_fraction: float = 1.0) -> list[str]:
    """The settings that give a run MIN_UPDATES updates, from its schedule: updates every
    ``update_frequency`` steps up to ``end_fraction`` of training, never on the last step."""
    fixes = []
    window = math.floor(end_fraction * steps_per_epoch * epochs)  # the last step an update may happen at
    if window > MIN_UPDATES:
        fixes.append(f"sparsity.update_frequency<={max((window - 1) // MIN_UPDATES, 1)}")
    if end_fraction > 0:
        fixes.append(
            f"train.epochs>={math.floor(MIN_UPDATES * update_frequency / (steps_per_epoch * end_fraction)) + 1}"
        )
    if end_fraction < 1:
        fixes.append(f"sparsity.end_fraction (updates stop at {end_fraction:g} of training)")
    return fixes

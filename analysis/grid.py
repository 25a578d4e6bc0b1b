"""The experimental design read back from the records: which runs form one curve, one
figure, one baseline.

Every run's *identity* (the config fields that define the experiment, seed excluded; see
`analysis.load`) says what it computed. A study varies some identity fields (its axes:
criterion, growth, density, update frequency, ...); any other field that varies among the
runs of a setup splits them into *variants* that are never averaged together. Baselines
(dense, static) are matched to a variant by identity too, and when no baseline was trained
with exactly the same settings the closest one is used and the difference is reported.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import pandas as pd

from . import columns as C

# The axes of the paper's main grid (Fig. 1).
AXES = (C.CRITERION, C.GROWTH, C.DENSITY)
_MISSING = object()  # a field absent from an identity (differs from any value, None included)


@dataclass
class Baseline:
    runs: pd.DataFrame
    differences: dict = field(default_factory=dict)  # identity fields where it differs from the variant

    def note(self) -> str:
        return describe(self.differences)


@dataclass
class Selection:
    """The completed DST runs of one variant of one setup, with their matched baselines."""

    setup: str
    label: str  # the variant: the identity fields outside the study's axes ("" if only one)
    runs: pd.DataFrame
    baselines: dict[str, Baseline] = field(default_factory=dict)  # "dense", "static", ...

    @property
    def title(self) -> str:
        return self.setup + (f" ({self.label})" if self.label else "")


# ------------------------------------------------------------------------ identities
@functools.lru_cache(maxsize=65536)
def _parse(text: str) -> tuple:
    return tuple(json.loads(text).items())


def identity(text: str) -> dict:
    """A run's identity from its ``identity`` column (each text parsed once per process)."""
    return dict(_parse(text))


def common_identity(runs: pd.DataFrame) -> dict:
    """The identity fields that all ``runs`` share, with their value."""
    dicts = [identity(s) for s in pd.unique(runs[C.IDENTITY])]
    if not dicts:
        return {}
    return {k: v for k, v in dicts[0].items() if all(d.get(k, _MISSING) == v for d in dicts[1:])}


def describe(values: dict) -> str:
    """``{"sparsity.update_frequency": 100}`` -> ``"update_frequency=100"``."""
    return ", ".join(f"{name.rsplit('.', 1)[-1]}={_fmt(v)}" for name, v in sorted(values.items()))


def _fmt(value) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


# ------------------------------------------------------------------------ variants
def variant_labels(runs: pd.DataFrame) -> pd.Series:
    """Each run's variant within its (setup, kind) with respect to the main-grid axes."""
    labels = pd.Series("", index=runs.index, dtype=object)
    readable = runs[runs[C.IDENTITY].notna()] if C.IDENTITY in runs else runs.iloc[:0]
    for _, group in readable.groupby([C.SETUP, C.KIND], dropna=False):
        labels[group.index] = _labels(group, AXES)
    return labels


def split_variants(runs: pd.DataFrame, axes: Iterable[str]) -> dict[str, pd.DataFrame]:
    """``runs`` split by the identity fields outside ``axes`` that vary among them."""
    if runs.empty:
        return {}
    labels = _labels(runs, tuple(axes))
    return {label: runs[labels == label] for label in sorted(labels.unique())}


def _labels(runs: pd.DataFrame, axes: tuple[str, ...]) -> pd.Series:
    frame = identity_frame(runs[C.IDENTITY])
    varying = [c for c in frame.columns if c not in axes and frame[c].nunique(dropna=False) > 1]
    if not varying:
        return pd.Series("", index=runs.index, dtype=object)
    labels = {
        text: describe({k: v for k, v in zip(varying, row) if v is not None and v == v})
        for text, row in zip(frame.index, frame[varying].itertuples(index=False))
    }
    return runs[C.IDENTITY].map(labels).astype(object)


def identity_frame(texts: pd.Series) -> pd.DataFrame:
    """One row per distinct identity (index: its text), one column per field (NaN where a
    field is absent). Runs of one cell share their identity, so a sweep of 10,000 runs over
    five seeds parses 2,000 identities, not 10,000. Do not modify the frame: it is shared."""
    return _identity_frame(tuple(pd.unique(texts.dropna())))


@functools.lru_cache(maxsize=256)
def _identity_frame(unique: tuple[str, ...]) -> pd.DataFrame:
    return pd.DataFrame([identity(t) for t in unique], index=list(unique))


# ------------------------------------------------------------------------ run sets
def completed(runs: pd.DataFrame) -> pd.DataFrame:
    """The completed runs, one per (cell, seed).

    The same experiment with the same seed recorded twice (e.g. a grid point shared by two
    sweeps) is one observation, not two seeds; the latest result is kept.
    `analysis.completeness` reports such duplicates.
    """
    keys = runs.loc[runs[C.STATUS] == C.COMPLETED, [C.CELL, C.SEED, C.RESULT_MTIME]]  # narrow: one take at the end
    keep = keys.sort_values(C.RESULT_MTIME, kind="stable").drop_duplicates([C.CELL, C.SEED], keep="last").index
    return runs.loc[keep.sort_values()]


def setups(runs: pd.DataFrame) -> list[str]:
    return sorted(runs[C.SETUP].dropna().unique())


def nearest(candidates: pd.DataFrame, reference: dict, ignore: Iterable[str] = ()) -> Baseline | None:
    """The candidates closest to ``reference`` by identity, ``ignore`` left out.

    Candidates are grouped by identity; the group differing from ``reference`` in the fewest
    fields wins (ties: the one with more runs). Returns it with those differences (empty
    when it matches exactly), or None without candidates.
    """
    ignore = set(ignore) | {C.MODE}
    keys = {
        text: json.dumps({k: v for k, v in identity(text).items() if k not in ignore}, sort_keys=True)
        for text in pd.unique(candidates[C.IDENTITY])
    }  # parsed once per cell
    groups: dict[str, list] = defaultdict(list)
    for index, text in zip(candidates.index, candidates[C.IDENTITY]):
        groups[keys[text]].append(index)
    if not groups:
        return None

    def differences(key: str) -> dict:
        return {k: v for k, v in json.loads(key).items() if reference.get(k, _MISSING) != v}

    best = min(groups, key=lambda key: (len(differences(key)), -len(groups[key]), key))
    return Baseline(candidates.loc[groups[best]], differences(best))


def _of(runs: pd.DataFrame, setup: str, kind: str) -> pd.DataFrame:
    return runs[(runs[C.SETUP] == setup) & (runs[C.KIND] == kind)]


def _selections(
    done: pd.DataFrame,
    setup: str,
    dst: pd.DataFrame,
    axes: tuple[str, ...],
    narrow: Callable[[pd.DataFrame], pd.DataFrame] = lambda runs: runs,
    baselines: tuple[str, ...] = ("dense",),
) -> list[Selection]:
    """``dst`` split into variants over ``axes``, each narrowed to the runs the study can use
    (variants left empty are dropped) and given its nearest ``baselines`` from ``done``."""
    out = []
    for label, runs in split_variants(dst, axes).items():
        runs = narrow(runs)
        if runs.empty:
            continue
        reference = common_identity(runs)
        matched = {kind: nearest(_of(done, setup, kind), reference, ignore=(C.DENSITY,)) for kind in baselines}
        out.append(Selection(setup, label, runs, {k: b for k, b in matched.items() if b is not None}))
    return out


def _swept(x: str, over: tuple[str, ...] = AXES) -> Callable[[pd.DataFrame], pd.DataFrame]:
    """Keeps the runs of the ``over`` groups in which ``x`` takes at least two values."""

    def narrow(runs: pd.DataFrame) -> pd.DataFrame:
        return runs[runs.groupby(list(over))[x].transform("nunique") >= 2]

    return narrow


# ------------------------------------------------------------------------ studies
_MEMO: dict | None = None  # (id(runs), setup) -> density grids, while `memoised` is active


@contextlib.contextmanager
def memoised():
    """Within the block, `density_grids` of one runs table and setup is computed once (the
    report's studies each ask for it); the table must not be modified inside the block."""
    global _MEMO
    outer, _MEMO = _MEMO, {} if _MEMO is None else _MEMO
    try:
        yield
    finally:
        _MEMO = outer


def density_grids(runs: pd.DataFrame, setup: str) -> list[Selection]:
    """Accuracy-vs-density grids (Fig. 1) of a setup, the main grid first (see `memoised`)."""
    if _MEMO is None:
        return _density_grids(runs, setup)
    key = (id(runs), setup)
    if key not in _MEMO:
        _MEMO[key] = (runs, _density_grids(runs, setup))  # (holding runs keeps its id unique)
    # Callers may add baselines to a grid (`global_pruning_grids`): each gets its own copies.
    return [dataclasses.replace(g, baselines=dict(g.baselines)) for g in _MEMO[key][1]]


def _density_grids(runs: pd.DataFrame, setup: str) -> list[Selection]:
    """Accuracy-vs-density grids (Fig. 1) of a setup, the main grid first.

    DST runs below density 1, split into variants by everything but criterion, growth and
    density; the main grid is the variant covering the most (criterion, growth, density)
    cells, i.e. the paper's grid when a sweep also holds smaller studies (update frequency,
    MEST gamma, ...). Baselines: dense and static runs of the setup.
    """
    done = completed(runs)
    dst = _of(done, setup, "dst")
    grids = _selections(
        done,
        setup,
        dst[dst[C.DENSITY] < 1],
        AXES,
        lambda r: r if r[C.DENSITY].nunique() >= 2 else r.iloc[:0],
        baselines=("dense", "static"),
    )

    def coverage(s: Selection):
        return len(s.runs.groupby(list(AXES))), len(s.runs)

    return sorted(grids, key=coverage, reverse=True)


def main_grid(runs: pd.DataFrame, setup: str) -> Selection | None:
    grids = density_grids(runs, setup)
    return grids[0] if grids else None


def update_frequency_grids(runs: pd.DataFrame, setup: str) -> list[Selection]:
    """Variants of a setup's DST runs in which (criterion, growth, density) combinations were
    run at two or more update frequencies (Fig. 4); only those combinations are kept."""
    done = completed(runs)
    return _selections(done, setup, _of(done, setup, "dst"), AXES + (C.UPDATE_FREQUENCY,), _swept(C.UPDATE_FREQUENCY))


def gamma_grids(runs: pd.DataFrame, setup: str) -> list[Selection]:
    """Variants of a setup's MEST runs in which (growth, density) combinations were run with
    two or more values of gamma (Fig. 7); only those combinations are kept."""
    done = completed(runs)
    dst = _of(done, setup, "dst")
    return _selections(done, setup, dst[dst[C.CRITERION] == "mest"], AXES + (C.GAMMA,), _swept(C.GAMMA))


def sensitivity_grids(runs: pd.DataFrame, setup: str) -> list[Selection]:
    """The density grids that include the sensitivity criterion (Fig. 8)."""
    return [g for g in density_grids(runs, setup) if (g.runs[C.CRITERION] == "sensitivity").any()]


def global_pruning_grids(runs: pd.DataFrame, setup: str) -> list[Selection]:
    """Global-pruning density grids, each with the closest layer-wise DST runs as the
    ``"layer-wise"`` baseline (Fig. 13)."""
    done = completed(runs)
    dst = _of(done, setup, "dst")
    layerwise = dst[dst[C.GLOBAL] != True]  # noqa: E712 (the column may hold None)
    out = []
    for grid in density_grids(runs, setup):
        if not (grid.runs[C.GLOBAL] == True).all():  # noqa: E712
            continue
        match = nearest(layerwise, common_identity(grid.runs), ignore=AXES + (C.GLOBAL,))
        if match is not None:
            grid.baselines["layer-wise"] = match
        out.append(grid)
    return out


def density_one_grids(runs: pd.DataFrame, setup: str) -> list[Selection]:
    """DST at density 1.0 (Fig. 5), with the dense baseline and the dense model with
    dropout (``<model>_dropout``) as ``"dense + dropout"``."""
    done = completed(runs)
    dst = _of(done, setup, "dst")
    grids = _selections(done, setup, dst[dst[C.DENSITY] >= 1], AXES)
    model, _, data = setup.partition("/")
    dropout = _of(done, f"{model}_dropout/{data}", "dense")
    for grid in grids:
        reference = {k: v for k, v in common_identity(grid.runs).items() if k != C.MODEL}
        match = nearest(dropout, reference, ignore=(C.MODEL, "model.kwargs.dropout"))
        if match is not None:
            grid.baselines["dense + dropout"] = match
    return grids

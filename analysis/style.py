"""How every criterion, growth rule, model and dataset is shown: one table for all figures and tables.

    style(C.CRITERION, "snip_plus")   # Style(label="SNIP+", color="#ff9896", marker="P")
    label(C.MODEL, "lenet5")          # "LeNet-5"

A name that is not in the table (a newly registered criterion) gets a readable label made
from its id and a colour and marker derived from its name, the same in every figure; the
tests check that every registered name has an entry, so that raw ids never reach a figure.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from . import columns as C


@dataclass(frozen=True)
class Style:
    label: str
    color: str = "black"
    marker: str = "o"


def _table(rows: dict[str, tuple]) -> dict[str, Style]:
    return {name: Style(*row) for name, row in rows.items()}


# The paper's names; colours from matplotlib's tab20 so that related criteria share a hue.
STYLES: dict[str, dict[str, Style]] = {
    C.CRITERION: _table(
        {
            "magnitude": ("Magnitude", "#d62728", "o"),
            "running_magnitude": ("Running magnitude", "#ff9896", "o"),
            "set": ("SET", "#2ca02c", "s"),
            "set_legacy": ("SET (legacy)", "#98df8a", "s"),
            "mest": ("MEST", "#9467bd", "D"),
            "snip": ("SNIP", "#ff7f0e", "^"),
            "snip_plus": ("SNIP+", "#ffbb78", "^"),
            "snip_half": ("SNIP½", "#bcbd22", "v"),
            "running_snip": ("Running SNIP", "#dbdb8d", "v"),
            "sensitivity": ("Sensitivity", "#e377c2", "P"),
            "reciprocal_sensitivity": ("RSensitivity", "#8c564b", "X"),
            "random": ("Random", "#7f7f7f", "x"),
            "grad_step": ("GradStep", "#17becf", "*"),
            "taylor_fo": ("Taylor FO", "#1f3a93", "h"),
            "grasp": ("GraSP", "#c49c94", "p"),
            "run": ("run", "black", "o"),  # the run's own pruned set in overlap records
        }
    ),
    C.GROWTH: _table(
        {
            "random": ("random", "#1f77b4", "o"),
            "random_bernoulli": ("random (Bernoulli)", "#aec7e8", "o"),
            "gradient": ("gradient", "#ff7f0e", "s"),
            "momentum": ("momentum", "#2ca02c", "^"),
            "momentum_neuron": ("momentum (per neuron)", "#98df8a", "^"),
        }
    ),
    C.MODEL: _table(
        {
            "lenet5": ("LeNet-5", "#1f77b4", "o"),
            "mlp_fashion_mnist": ("MLP (Fashion-MNIST)", "#aec7e8", "o"),
            "mlp_cifar10": ("MLP (CIFAR-10)", "#ff7f0e", "s"),
            "mlp_cifar10_dropout": ("MLP with dropout (CIFAR-10)", "#ffbb78", "s"),
            "mlp_higgs": ("MLP (HIGGS)", "#2ca02c", "^"),
            "conv_cifar10": ("ConvNet (CIFAR-10)", "#d62728", "D"),
            "vgg16": ("VGG-16", "#9467bd", "P"),
            "resnet56": ("ResNet-56", "#8c564b", "X"),
            "resnet50": ("ResNet-50", "#e377c2", "h"),
            "efficientnet_b0": ("EfficientNet-B0", "#7f7f7f", "*"),
        }
    ),
    C.DATA: _table(
        {
            "fashion_mnist": ("Fashion-MNIST", "#1f77b4", "o"),
            "cifar10": ("CIFAR-10", "#ff7f0e", "s"),
            "cifar100": ("CIFAR-100", "#2ca02c", "^"),
            "higgs": ("HIGGS", "#d62728", "D"),
            "imagenet": ("ImageNet", "#9467bd", "P"),
            "tiny_imagenet": ("Tiny ImageNet", "#8c564b", "X"),
            "synthetic": ("synthetic data", "#7f7f7f", "x"),
        }
    ),
    C.MODE: _table(
        {
            "dense": ("dense", "black", "_"),
            "static": ("static sparse", "#8ecae6", "s"),
            "dst": ("DST", "#d62728", "o"),
        }
    ),
}
STYLES[C.KIND] = {**STYLES[C.MODE], "overlap_init": Style("overlap at initialisation", "#7f7f7f", "x")}

_COLORS = ("#393b79", "#637939", "#8c6d31", "#843c39", "#7b4173", "#3182bd", "#31a354", "#756bb1", "#636363")
_MARKERS = ("o", "s", "^", "D", "v", "P", "X", "h", "*")


def style(field: str, value) -> Style:
    """The style of ``value`` of the config ``field`` (criterion, growth, model, data, mode, kind)."""
    known = STYLES.get(field, {})
    if value in known:
        return known[value]
    text = "—" if value is None else str(value)
    digest = int(hashlib.sha1(f"{field}={text}".encode()).hexdigest(), 16)  # stable across processes
    return Style(text.replace("_", " "), _COLORS[digest % len(_COLORS)], _MARKERS[digest // 7 % len(_MARKERS)])


def label(field: str, value) -> str:
    """The display name of ``value``; numbers as ``%g`` (``0.05``, ``800``)."""
    if isinstance(value, float):
        return f"{value:g}"
    if field in STYLES:
        return style(field, value).label
    return "—" if value is None else str(value)


def setup_label(setup: str) -> str:
    """``"lenet5/fashion_mnist"`` -> ``"LeNet-5 on Fashion-MNIST"``."""
    model, _, data = str(setup).partition("/")
    return f"{label(C.MODEL, model)} on {label(C.DATA, data)}" if data else label(C.MODEL, model)


def field_label(field: str) -> str:
    """A config column's name for axis labels and table headers: ``sparsity.update_frequency``
    -> ``update frequency``."""
    return FIELD_LABELS.get(field, field.rsplit(".", 1)[-1].replace("_", " "))


FIELD_LABELS = {
    C.CRITERION: "criterion",
    C.GROWTH: "growth",
    C.DENSITY: "density",
    C.SEED: "seed",
    C.MODEL: "model",
    C.DATA: "dataset",
    C.MODE: "mode",
    C.KIND: "kind",
    C.SETUP: "setup",
    C.UPDATE_FREQUENCY: "update frequency",
    C.GAMMA: "γ",
    C.GLOBAL: "global pruning",
}


# Columns of the report's display tables whose values are ids, and the field they name.
_ID_COLUMNS = {
    C.SETUP: C.SETUP,
    "setup": C.SETUP,
    C.CRITERION: C.CRITERION,
    "criterion": C.CRITERION,
    "method": C.CRITERION,
    "a": C.CRITERION,
    "b": C.CRITERION,
    "reference": C.CRITERION,
    C.GROWTH: C.GROWTH,
    "growth": C.GROWTH,
    C.MODEL: C.MODEL,
    C.DATA: C.DATA,
    C.MODE: C.MODE,
    C.KIND: C.KIND,
    "kind": C.KIND,
}


def display_names(frame):
    """A display table with every id shown by its display name (setup, criterion, growth,
    model, dataset, mode, kind columns; a "method" column may also hold a baseline's kind)."""
    out = frame.copy()
    for column in out.columns:
        field = _ID_COLUMNS.get(column)
        if field is None or out[column].dtype.kind in "fiub":
            continue
        names = {v: _shown(field, v) for v in out[column].dropna().unique()}  # once per distinct id
        out[column] = out[column].map(lambda v, names=names: names.get(v, v))
    return out


def _shown(field: str, value):
    if not isinstance(value, str) or value in ("", "—"):
        return value
    if field == C.SETUP:
        return setup_label(value)
    if field == C.CRITERION and value not in STYLES[C.CRITERION] and value in STYLES[C.KIND]:
        return STYLES[C.KIND][value].label  # "dense", "static" in a method column
    return label(field, value)

"""The report's figures, as `matplotlib.figure.Figure` objects.

Figures are built without pyplot, so they work under any backend (Agg in scripts and
tests, inline in notebooks) and are freed when dropped. Each accuracy figure draws the
mean over seeds with a band of ±1 standard deviation over seeds, and says so and how many
seeds each point has (`BAND`); differences between criteria carry their 95 % confidence
interval (Welch). A criterion has the same colour and marker in every panel and figure,
static sparse training is light blue with square markers and the dense model a dashed black
line, as in the paper.
"""

from __future__ import annotations

import math
import textwrap
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib import colormaps
from matplotlib.artist import Artist
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.font_manager import FontProperties
from matplotlib.ticker import FixedLocator, FuncFormatter, NullLocator

from . import columns as C
from .cells import _axis_values, _context, _trained, sweep_axes
from .grid import Baseline, Selection
from .grid import completed as completed_runs
from .overlap import jaccard_matrix, random_expectation
from .stats import summarize, welch_interval
from .style import STYLES, Style, field_label, label, setup_label, style

STATIC_COLOR = STYLES[C.MODE]["static"].color  # the paper's light blue
STATIC_MARKER = STYLES[C.MODE]["static"].marker  # the same in every panel
BAND = "bands, bars: ±1 std over seeds"  # what every shaded band and error bar of an accuracy figure is
CI_LEVEL = 0.95
DENSE_STYLE = {"color": "black", "linestyle": "--", "linewidth": 1.3}
DROPOUT_STYLE = {"color": "tab:blue", "linestyle": ":", "linewidth": 1.6}
RANDOM_STYLE = {"color": "0.45", "linestyle": ":", "linewidth": 1.4}
_PANEL = (4.4, 3.6)  # inches per panel


def criterion_color(criterion: str) -> str:
    return style(C.CRITERION, criterion).color


def criterion_label(criterion: str) -> str:
    return label(C.CRITERION, criterion)


def growth_label(growth: str) -> str:
    return label(C.GROWTH, growth)


def criterion_order(criteria: Iterable[str]) -> list[str]:
    """The paper's order for known criteria, then the others alphabetically."""
    known = list(STYLES[C.CRITERION])
    return sorted(set(criteria), key=lambda c: (known.index(c) if c in known else len(known), c))


def save_figure(fig: Figure, stem: str | Path) -> list[Path]:
    """Write ``<stem>.png`` and ``<stem>.pdf``."""
    stem = Path(stem)
    stem.parent.mkdir(parents=True, exist_ok=True)
    paths = [stem.parent / f"{stem.name}.png", stem.parent / f"{stem.name}.pdf"]  # (stems may contain dots)
    fig.savefig(paths[0], dpi=150)
    fig.savefig(paths[1])
    return paths


# ------------------------------------------------------------------------ drawing helpers
def _panels(rows: int, cols: int, *, sharey: bool = True, legend_space: float = 1.9) -> tuple[Figure, np.ndarray]:
    fig = Figure(figsize=(_PANEL[0] * cols + legend_space, _PANEL[1] * rows), layout="constrained")
    return fig, fig.subplots(rows, cols, sharey=sharey, squeeze=False)


def _curve(ax: Axes, stats: pd.DataFrame, x: str, label: str, color: str, marker: str = "o", **line) -> None:
    """Mean with a ±1 std band (no band for single-seed points)."""
    stats = stats.sort_values(x)
    ax.plot(stats[x], stats["mean"], marker=marker, markersize=3.5, color=color, label=label, **line)
    spread = stats["std"].fillna(0)
    ax.fill_between(stats[x], stats["mean"] - spread, stats["mean"] + spread, color=color, alpha=0.15, linewidth=0)


def _hline(ax: Axes, baseline: Baseline, metric: str, label: str, line: dict) -> int:
    """The baseline's mean as a horizontal line with a ±1 std band; returns its seed count."""
    values = baseline.runs[metric].dropna()
    if baseline.differences:
        label = f"{label} ({baseline.note()})"
    ax.axhline(values.mean(), label=label, **line)
    if len(values) > 1:
        ax.axhspan(
            values.mean() - values.std(), values.mean() + values.std(), color=line["color"], alpha=0.07, linewidth=0
        )
    return len(values)


def _log_axis(ax: Axes, values: Iterable[float], base: float = 10) -> None:
    """Log x axis with a labelled tick at every value that occurs (no minor ticks)."""
    values = sorted(set(values))
    ax.set_xscale("log", base=base)
    ax.xaxis.set_major_locator(FixedLocator(values))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda x, _: f"{x:g}"))
    ax.xaxis.set_minor_locator(NullLocator())
    if len(values) > 6:  # the paper's 11 densities crowd below 0.1
        ax.tick_params(axis="x", labelrotation=45, labelsize=8)


def _seeds_text(counts: Iterable[int]) -> str:
    counts = [int(n) for n in counts]
    if not counts:
        return ""
    low, high = min(counts), max(counts)
    seeds = f"seeds per point: {low}" if low == high else f"seeds per point: {low}–{high}"
    return f"{seeds}\n{BAND}"


def _legend(fig: Figure, axes: np.ndarray, counts: Iterable[int]) -> None:
    """One legend for all panels, right of them (labels deduplicated, in drawing order),
    titled with how many seeds the points average."""
    entries: dict[str, Artist] = {}
    for ax in axes.flat:
        for handle, text in zip(*ax.get_legend_handles_labels()):
            entries.setdefault(text, handle)
    if entries:
        fig.legend(
            entries.values(),
            entries.keys(),
            loc="outside right center",
            frameon=False,
            fontsize=8,
            title=_seeds_text(counts) or None,
            title_fontsize=8,
        )


def _growth_order(growths: Iterable[str]) -> list[str]:
    """Random growth first, as in the paper's figures."""
    known = ["random", "gradient", "momentum"]
    return sorted(set(growths), key=lambda g: (known.index(g) if g in known else len(known), g))


def _criterion_curves(ax: Axes, runs: pd.DataFrame, x: str, metric: str, highlight: str | None = None) -> list[int]:
    """One curve per criterion of ``runs`` against ``x``; returns the seed counts drawn."""
    stats = summarize(runs, [C.CRITERION, x], metric)
    for criterion in criterion_order(stats[C.CRITERION]):
        emphasis = {}
        if highlight is not None:
            emphasis = {"linewidth": 2.6, "zorder": 3} if criterion == highlight else {"alpha": 0.55}
        look = style(C.CRITERION, criterion)
        _curve(ax, stats[stats[C.CRITERION] == criterion], x, look.label, look.color, look.marker, **emphasis)
    return list(stats["n"])


def _variant_title(fig: Figure, label: str) -> None:
    """The variant's settings above the panels, wrapped to the figure's width."""
    if label:
        fig.suptitle(textwrap.fill(label, width=int(fig.get_figwidth() * 11)), fontsize=8)


# ------------------------------------------------------------------------ accuracy figures
def accuracy_vs_density(selection: Selection, metric: str = C.DEFAULT_METRIC, highlight: str | None = None) -> Figure:
    """Fig. 1: one panel per growth rule, one curve per criterion, log density axis, static
    sparse training as a light-blue curve and the dense model as a dashed line.
    ``highlight`` draws one criterion bold and the others faded (Fig. 8).

    Below each panel, every curve's difference to the best criterion's mean at each density
    (in points), so that gaps too small to see on the accuracy scale are readable."""
    runs = selection.runs
    growths = _growth_order(runs[C.GROWTH])
    fig = Figure(figsize=(_PANEL[0] * len(growths) + 1.9, _PANEL[1] * 1.45), layout="constrained")
    axes = fig.subplots(
        2, len(growths), sharex="col", sharey="row", squeeze=False, gridspec_kw={"height_ratios": [2.4, 1]}
    )
    static, dense = selection.baselines.get("static"), selection.baselines.get("dense")
    densities, counts = set(runs[C.DENSITY]), []
    for ax, diff_ax, growth in zip(axes[0], axes[1], growths):
        of_growth = runs[runs[C.GROWTH] == growth]
        counts += _criterion_curves(ax, of_growth, C.DENSITY, metric, highlight)
        stats = summarize(of_growth, [C.CRITERION, C.DENSITY], metric)
        best = stats.loc[stats.groupby(C.DENSITY)["mean"].idxmax()].set_index(C.DENSITY)
        curves = [(stats[stats[C.CRITERION] == c], style(C.CRITERION, c)) for c in criterion_order(stats[C.CRITERION])]
        if static is not None:
            static_stats = summarize(static.runs, [C.DENSITY], metric)
            label_ = "static" + (f" ({static.note()})" if static.differences else "")
            _curve(ax, static_stats, C.DENSITY, label_, STATIC_COLOR, STATIC_MARKER, linewidth=2)
            densities |= set(static_stats[C.DENSITY])
            counts += list(static_stats["n"])
            curves.append((static_stats, Style("static", STATIC_COLOR, STATIC_MARKER)))
        for number, (curve, look) in enumerate(curves):
            _difference(diff_ax, curve, best, look, number, len(curves), static=look.label == "static")
        if dense is not None:
            counts.append(_hline(ax, dense, metric, "dense", DENSE_STYLE))
        diff_ax.axhline(0, color="0.3", linewidth=0.8)
        _log_axis(diff_ax, densities)
        ax.set_title(f"{setup_label(selection.setup)} — {growth_label(growth)} growth", fontsize=10)
        diff_ax.set_xlabel("density")
        ax.tick_params(axis="x", labelbottom=False)
        for a in (ax, diff_ax):
            a.grid(alpha=0.3)
    axes[0, 0].set_ylabel(C.metric_label(metric))
    axes[1, 0].set_ylabel(f"difference to the best\ncriterion (points, {CI_LEVEL:.0%} CI)")
    _variant_title(fig, selection.label)
    _legend(fig, axes, counts)
    return fig


def _difference(
    ax: Axes, curve: pd.DataFrame, best: pd.DataFrame, look, number: int, count: int, static: bool = False
) -> None:
    """A curve's difference to the best criterion's mean at each density, with the 95 %
    confidence interval of that difference of means (Welch); the best itself sits at 0.
    Series are nudged apart along the (log) density axis so that their bars do not overlap."""
    curve = curve[curve[C.DENSITY].isin(best.index)].sort_values(C.DENSITY)
    if curve.empty:
        return
    ref = best.loc[curve[C.DENSITY]]
    diff, half = welch_interval(
        curve["mean"], curve["std"] ** 2, curve["n"], ref["mean"], ref["std"] ** 2, ref["n"], CI_LEVEL
    )
    if static:
        is_best = np.zeros(len(curve), dtype=bool)
    else:
        is_best = curve[C.CRITERION].to_numpy() == ref[C.CRITERION].to_numpy()
    half = np.where(is_best, np.nan, half)
    nudge = 1.035 ** (number - (count - 1) / 2)
    ax.errorbar(
        curve[C.DENSITY] * nudge,
        diff,
        yerr=np.nan_to_num(half),
        marker=look.marker,
        markersize=3.5,
        color=look.color,
        linewidth=2 if static else 1.2,
        elinewidth=0.9,
        capsize=2,
    )


def accuracy_vs_update_frequency(selection: Selection, metric: str = C.DEFAULT_METRIC) -> Figure:
    """Fig. 4: accuracy against the update frequency (log2 axis), one curve per criterion,
    one row per density and one column per growth rule."""
    runs = selection.runs
    densities, growths = sorted(runs[C.DENSITY].unique()), _growth_order(runs[C.GROWTH])
    fig, axes = _panels(len(densities), len(growths), sharey=False)
    dense, counts = selection.baselines.get("dense"), []
    for row, density in zip(axes, densities):
        for ax, growth in zip(row, growths):
            cell = runs[(runs[C.DENSITY] == density) & (runs[C.GROWTH] == growth)]
            counts += _criterion_curves(ax, cell, C.UPDATE_FREQUENCY, metric)
            if dense is not None:
                counts.append(_hline(ax, dense, metric, "dense", DENSE_STYLE))
            _log_axis(ax, runs[C.UPDATE_FREQUENCY], base=2)
            ax.set_title(
                f"{setup_label(selection.setup)} — density {density:g}, {growth_label(growth)} growth", fontsize=10
            )
            ax.set_xlabel("update frequency (steps between updates)")
            ax.set_ylabel(C.metric_label(metric))
            ax.grid(alpha=0.3)
    _variant_title(fig, selection.label)
    _legend(fig, axes, counts)
    return fig


def accuracy_vs_gamma(selection: Selection, metric: str = C.DEFAULT_METRIC) -> Figure:
    """Fig. 7: MEST's accuracy against gamma (log axis), one curve per density, one panel per
    growth rule."""
    runs = selection.runs
    growths = _growth_order(runs[C.GROWTH])
    densities = sorted(runs[C.DENSITY].unique())
    colors = dict(zip(densities, _sequential(len(densities))))
    fig, axes = _panels(1, len(growths), sharey=False)
    counts = []
    for ax, growth in zip(axes[0], growths):
        stats = summarize(runs[runs[C.GROWTH] == growth], [C.DENSITY, C.GAMMA], metric)
        for density, curve in stats.groupby(C.DENSITY):
            _curve(ax, curve, C.GAMMA, f"density {density:g}", colors[density])
        _log_axis(ax, runs[C.GAMMA])
        counts += list(stats["n"])
        ax.set_title(f"{setup_label(selection.setup)} — MEST, {growth_label(growth)} growth", fontsize=10)
        ax.set_xlabel("γ (MEST gradient coefficient)")
        ax.set_ylabel(C.metric_label(metric))
        ax.grid(alpha=0.3)
    _variant_title(fig, selection.label)
    _legend(fig, axes, counts)
    return fig


def _sequential(n: int) -> list:
    return [colormaps["viridis"](x) for x in np.linspace(0.05, 0.9, n)]


def global_vs_layerwise(selection: Selection, metric: str = C.DEFAULT_METRIC) -> Figure:
    """Fig. 13: global against layer-wise pruning per criterion (panels), accuracy against
    density; the layer-wise runs are the selection's ``"layer-wise"`` baseline."""
    runs = selection.runs
    layerwise = selection.baselines.get("layer-wise")
    growths, criteria = _growth_order(runs[C.GROWTH]), criterion_order(runs[C.CRITERION])
    fig, axes = _panels(len(growths), len(criteria))
    label = "layer-wise" + (f" ({layerwise.note()})" if layerwise is not None and layerwise.differences else "")
    counts = []
    for row, growth in zip(axes, growths):
        for ax, criterion in zip(row, criteria):
            cell = runs[(runs[C.GROWTH] == growth) & (runs[C.CRITERION] == criterion)]
            stats = summarize(cell, [C.DENSITY], metric)
            _curve(ax, stats, C.DENSITY, "global pruning", "black")
            counts += list(stats["n"])
            if layerwise is not None:
                other = layerwise.runs
                other = other[
                    (other[C.GROWTH] == growth)
                    & (other[C.CRITERION] == criterion)
                    & other[C.DENSITY].isin(stats[C.DENSITY])
                ]
                other_stats = summarize(other, [C.DENSITY], metric)
                _curve(ax, other_stats, C.DENSITY, label, "0.55", linestyle="--")
                counts += list(other_stats["n"])
            _log_axis(ax, stats[C.DENSITY])
            ax.set_title(
                f"{setup_label(selection.setup)} — {criterion_label(criterion)}, {growth_label(growth)} growth",
                fontsize=10,
            )
            ax.set_xlabel("density")
            ax.grid(alpha=0.3)
        row[0].set_ylabel(C.metric_label(metric))
    _variant_title(fig, selection.label)
    _legend(fig, axes, counts)
    return fig


def density_one(selection: Selection, metric: str = C.DEFAULT_METRIC) -> Figure:
    """Fig. 5: DST at density 1.0 per criterion (mean ± std) against the dense model and
    the dense model with dropout (horizontal lines with ±1 std bands)."""
    stats = summarize(selection.runs, [C.CRITERION, C.GROWTH], metric)
    several_growths = stats[C.GROWTH].nunique() > 1
    order = {c: i for i, c in enumerate(criterion_order(stats[C.CRITERION]))}
    stats = stats.assign(order=stats[C.CRITERION].map(order)).sort_values([C.GROWTH, "order"])
    fig, axes = _panels(1, 1, legend_space=2.6)
    ax = axes[0, 0]
    x = np.arange(len(stats))
    for i, (_, row) in enumerate(stats.iterrows()):
        ax.errorbar(
            i,
            row["mean"],
            yerr=0 if pd.isna(row["std"]) else row["std"],
            fmt="o",
            capsize=4,
            color=criterion_color(row[C.CRITERION]),
        )
    labels = [
        criterion_label(c) + (f"\n{growth_label(g)}" if several_growths else "")
        for c, g in zip(stats[C.CRITERION], stats[C.GROWTH])
    ]
    ax.set_xticks(x, labels, rotation=30, ha="right")
    counts = list(stats["n"])
    for kind, line in (("dense", DENSE_STYLE), ("dense + dropout", DROPOUT_STYLE)):
        if kind in selection.baselines:
            counts.append(_hline(ax, selection.baselines[kind], metric, kind, line))
    ax.set_xlim(-0.6, len(stats) - 0.4)
    ax.set_title(f"{setup_label(selection.setup)} — DST at density 1.0", fontsize=10)
    ax.set_ylabel(C.metric_label(metric))
    ax.grid(alpha=0.3, axis="y")
    _variant_title(fig, selection.label)
    _legend(fig, axes, counts)
    return fig


# ------------------------------------------------------------------------ overlap figures
def overlap_heatmaps(at_init: pd.DataFrame, setup: str) -> Figure:
    """Fig. 6a: Jaccard similarity of the criteria's pruned sets at initialisation, one
    annotated heatmap per (density: rows, prune fraction: columns), mean over seeds."""
    data = at_init[at_init[C.SETUP] == setup]
    densities = sorted(data[C.DENSITY].unique())
    rates = sorted(data["prune_rate"].unique(), reverse=True)
    k = data["a"].nunique()
    side = max(2.6, 0.5 * k + 1.2)
    fig = Figure(figsize=(side * len(rates) + 1.2, side * len(densities) + 0.6), layout="constrained")
    axes = fig.subplots(len(densities), len(rates), squeeze=False)
    image = None
    for row, density in zip(axes, densities):
        for ax, rate in zip(row, rates):
            cell = data[(data[C.DENSITY] == density) & (data["prune_rate"] == rate)]
            if cell.empty:
                ax.set_axis_off()
                continue
            matrix = jaccard_matrix(cell)
            order = criterion_order(matrix.index)
            matrix = matrix.reindex(index=order, columns=order)
            image = ax.imshow(matrix.to_numpy(dtype=float), vmin=0, vmax=1, cmap="viridis")
            for (i, j), value in np.ndenumerate(matrix.to_numpy(dtype=float)):
                if not math.isnan(value):
                    ax.text(
                        j,
                        i,
                        f"{value:.2f}",
                        ha="center",
                        va="center",
                        fontsize=7,
                        color="black" if value > 0.6 else "white",
                    )
            names = [criterion_label(c) for c in order]
            ax.set_xticks(range(len(names)), names, rotation=45, ha="right", fontsize=8)
            ax.set_yticks(range(len(names)), names, fontsize=8)
            seeds = int(cell["n"].max())
            ax.set_title(
                f"density {density:g}, r = {rate:g} (random: {random_expectation(rate):.2f}); "
                f"{seeds} seed{'s' if seeds > 1 else ''}",
                fontsize=8,
            )
    if image is not None:
        fig.colorbar(image, ax=axes, shrink=0.6, label="Jaccard similarity")
    fig.suptitle(f"{setup_label(setup)} — overlap of pruned sets at initialisation", fontsize=10)
    return fig


def overlap_trajectory_curves(trajectories: pd.DataFrame) -> Figure:
    """Fig. 6b: per trajectory criterion (panels), the Jaccard similarity of the run's pruned
    set with each reference criterion's along training (mean ± std over seeds), and the
    random-pruning expectation r/(2-r) at each update's prune fraction.

    ``trajectories``: the `overlap_trajectories` rows of one (setup, variant, density).
    """
    criteria = criterion_order(trajectories[C.CRITERION])
    cols = min(3, len(criteria))
    rows = math.ceil(len(criteria) / cols)
    fig, axes = _panels(rows, cols)
    first = trajectories.iloc[0]
    for ax, criterion in zip(axes.flat, criteria):
        runs = trajectories[trajectories[C.CRITERION] == criterion]
        for reference in criterion_order(runs["reference"]):
            _curve(
                ax, runs[runs["reference"] == reference], "step", criterion_label(reference), criterion_color(reference)
            )
        rate = runs.groupby("step")["prune_rate"].mean()
        ax.plot(rate.index, random_expectation(rate), label="random expectation r/(2−r)", **RANDOM_STYLE)
        ax.set_title(
            f"{setup_label(first[C.SETUP])}, density {first[C.DENSITY]:g} — run: {criterion_label(criterion)}",
            fontsize=10,
        )
        ax.set_xlabel("step")
        ax.set_ylim(0, 1.02)
        ax.grid(alpha=0.3)
    for ax in axes.flat[len(criteria) :]:
        ax.set_axis_off()
    for row in axes:
        row[0].set_ylabel("Jaccard similarity with the run's pruned set")
    _variant_title(fig, first[C.VARIANT])
    _legend(fig, axes, trajectories["n"])
    return fig


# ------------------------------------------------------------------------ any sweep's axes
def axis_figure(
    runs: pd.DataFrame, setup: str, axis: str, metric: str = C.DEFAULT_METRIC, max_series: int = 8
) -> Figure | None:
    """The metric along one axis of a sweep (`analysis.cells.sweep_axes`), one series per
    combination of the other axes: a point plot with every seed for a categorical axis
    (criterion, growth, kind, ...), a curve with a ±1 std band for a numeric one (density,
    update frequency, ...). None when the axis has fewer than two levels or more than
    ``max_series`` combinations of the other axes (the tables have them)."""
    done = _trained(completed_runs(runs))
    done = done[(done[C.SETUP] == setup)].dropna(subset=[metric])
    axes = sweep_axes(runs).get(setup, [])
    if axis not in axes or done.empty:
        return None
    values = _axis_values(done, axes)
    frame = done[[metric]].assign(level=values[axis], series=_context(values, [a for a in axes if a != axis]))
    frame = frame.dropna(subset=["level"])
    if frame["level"].nunique() < 2 or frame["series"].nunique() > max_series:
        return None
    numeric = (
        axis != C.KIND
        and pd.api.types.is_numeric_dtype(frame["level"].infer_objects())
        and not pd.api.types.is_bool_dtype(frame["level"].infer_objects())
    )
    fig, axs = _panels(1, 1, legend_space=2.6 if frame["series"].nunique() > 1 else 0.4)
    ax = axs[0, 0]
    series = sorted(frame["series"].unique())
    colors = dict(zip(series, _sequential(len(series)))) if len(series) > 1 else {}
    counts = []
    if numeric:
        frame["level"] = frame["level"].astype(float)
        for name in series:
            part = frame[frame["series"] == name]
            stats = part.groupby("level")[metric].agg(mean="mean", std="std", n="count").reset_index()
            _curve(ax, stats, "level", name or label(C.KIND, "dst"), colors.get(name, "black"))
            ax.scatter(part["level"], part[metric], s=8, color=colors.get(name, "black"), alpha=0.5, linewidth=0)
            counts += list(stats["n"])
        levels = sorted(frame["level"].unique())
        if levels[0] > 0 and levels[-1] / levels[0] >= 10:
            _log_axis(ax, levels)
    else:
        levels = _level_order(axis, frame["level"].unique())
        width = 0.6 / max(len(series), 1)
        for k, name in enumerate(series):
            part = frame[frame["series"] == name]
            offset = (k - (len(series) - 1) / 2) * width
            for i, level in enumerate(levels):
                seeds = part.loc[part["level"] == level, metric].to_numpy(float)
                if not len(seeds):
                    continue
                color = colors.get(name) or _level_color(axis, level)
                look = style(axis, level) if axis in STYLES else None
                ax.errorbar(
                    i + offset,
                    seeds.mean(),
                    yerr=seeds.std(ddof=1) if len(seeds) > 1 else 0,
                    capsize=4,
                    fmt=look.marker if look else "o",
                    color=color,
                    markersize=6,
                    label=name if (colors and i == 0) else None,
                )
                jitter = np.linspace(-width / 4, width / 4, len(seeds)) if len(seeds) > 1 else np.zeros(1)
                ax.scatter(i + offset + jitter, seeds, s=10, color=color, alpha=0.5, linewidth=0, zorder=3)
                counts.append(len(seeds))
        ax.set_xticks(
            range(len(levels)),
            [label(axis, v) for v in levels],
            rotation=30 if len(levels) > 4 else 0,
            ha="right" if len(levels) > 4 else "center",
        )
        ax.set_xlim(-0.6, len(levels) - 0.4)
    ax.set_xlabel(field_label(axis))
    ax.set_ylabel(C.metric_label(metric))
    ax.set_title(f"{setup_label(setup)} — {C.metric_label(metric)} by {field_label(axis)}", fontsize=10)
    ax.grid(alpha=0.3, axis="y" if not numeric else "both")
    if colors:
        _legend(fig, axs, counts)
    else:
        ax.text(
            0.99,
            0.01,
            _seeds_text(counts) + " (dots: seeds; bars: ±1 std)",
            transform=ax.transAxes,
            ha="right",
            va="bottom",
            fontsize=7,
            color="0.35",
        )
    return fig


def _level_order(axis: str, levels) -> list:
    levels = list(levels)
    if axis == C.CRITERION:
        return criterion_order(levels)
    if axis == C.GROWTH:
        return _growth_order(levels)
    if axis in STYLES:
        known = list(STYLES[axis])
        return sorted(levels, key=lambda v: (known.index(v) if v in known else len(known), str(v)))
    return sorted(levels, key=str)


def _level_color(axis: str, level) -> str:
    return style(axis, level).color if axis in STYLES else "black"


# ------------------------------------------------------------------------ cost
def accuracy_vs_flops(summary: pd.DataFrame, setup: str, metric: str = C.DEFAULT_METRIC) -> Figure | None:
    """Accuracy against training FLOPs as a fraction of the dense model's (log axis), one
    panel per growth rule: a curve per criterion through its densities, static sparse
    training, and the dense model at 1. ``summary``: `analysis.flops.flops_summary`."""
    rows = summary[(summary[C.SETUP] == setup) & summary["flops.train_fraction"].notna() & (summary["n"] > 0)]
    dst = rows[rows[C.KIND] == "dst"]
    if dst.empty:
        return None
    growths = _growth_order(dst[C.GROWTH])
    fig, axes = _panels(1, len(growths))
    counts = list(rows["n"])
    for ax, growth in zip(axes[0], growths):
        of_growth = dst[dst[C.GROWTH] == growth]
        series = [
            (of_growth[of_growth[C.CRITERION] == c], style(C.CRITERION, c))
            for c in criterion_order(of_growth[C.CRITERION])
        ]
        static = rows[rows[C.KIND] == "static"]
        if len(static):
            series.append((static, Style("static", STATIC_COLOR, STATIC_MARKER)))
        for part, look in series:
            part = part.sort_values("flops.train_fraction")
            ax.errorbar(
                part["flops.train_fraction"],
                part["mean"],
                yerr=part["std"].fillna(0),
                marker=look.marker,
                markersize=4,
                color=look.color,
                label=look.label,
                capsize=2,
                elinewidth=0.8,
                linewidth=2 if look.label == "static" else 1.2,
            )
        dense = rows[rows[C.KIND] == "dense"]
        if len(dense):
            ax.errorbar(
                dense["flops.train_fraction"],
                dense["mean"],
                yerr=dense["std"].fillna(0),
                fmt="*",
                markersize=9,
                color="black",
                label="dense",
                capsize=2,
            )
        low = rows["flops.train_fraction"].min()
        ax.set_xscale("log")
        candidates = (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.3, 0.5, 1.0)
        left = min(low * 0.85, max([t for t in candidates if t <= low], default=low) * 0.95)
        ax.xaxis.set_major_locator(FixedLocator([t for t in candidates if t >= left]))
        ax.xaxis.set_major_formatter(FuncFormatter(lambda x, _: f"{x:g}"))
        ax.xaxis.set_minor_locator(NullLocator())
        ax.set_xlim(left, 1.15)
        ax.set_title(f"{setup_label(setup)} — {growth_label(growth)} growth", fontsize=10)
        ax.set_xlabel("training FLOPs (fraction of dense)")
        ax.grid(alpha=0.3, which="both")
    axes[0, 0].set_ylabel(C.metric_label(metric))
    _legend(fig, axes, counts)
    return fig


# ------------------------------------------------------------------------ learning curves, topology updates
LINE_STYLES = ("-", "--", ":", "-.", (0, (5, 1, 1, 1)), (0, (1, 3)))  # one per density, in increasing order


def learning_curves(epochs: pd.DataFrame, names: dict | None = None) -> list[Figure]:
    """Test accuracy per epoch, mean over seeds with the seeds' range shaded, one curve per
    cell: colour by criterion (static light blue, dense black), line style by density, one
    panel per growth rule (the baselines in each); one figure per setup.

    ``epochs``: `load_metrics(runs, "epoch")` joined with the runs' setup, cell, kind,
    criterion, growth and density; ``names``: a label per cell (default: from those)."""
    out = []
    epochs = epochs.assign(**{C.GROWTH: epochs[C.GROWTH].where(epochs[C.KIND] == "dst", "")})
    for setup, of_setup in epochs.groupby(C.SETUP):
        densities = sorted(of_setup[C.DENSITY].where(of_setup[C.KIND] != "dense").dropna().unique())
        dash = {d: LINE_STYLES[i % len(LINE_STYLES)] for i, d in enumerate(densities)}
        growths = _growth_order(g for g in of_setup[C.GROWTH].unique() if g) or [""]
        fig, axes = _panels(1, len(growths), legend_space=2.8)
        for ax, growth in zip(axes[0], growths):
            part = of_setup[(of_setup[C.GROWTH] == growth) | (of_setup[C.KIND] != "dst")]
            for cell, curve in part.groupby(C.CELL):
                first = curve.iloc[0]
                kind = first[C.KIND]
                color = style(C.CRITERION, first[C.CRITERION]).color if kind == "dst" else style(C.KIND, kind).color
                line = DENSE_STYLE["linestyle"] if kind == "dense" else dash.get(first[C.DENSITY], "-")
                by_epoch = curve.groupby("epoch")["test_acc"].agg(["mean", "min", "max"])
                name = (names or {}).get(cell) or _cell_name(first)
                ax.plot(by_epoch.index, by_epoch["mean"], color=color, linestyle=line, label=name, linewidth=1.4)
                ax.fill_between(by_epoch.index, by_epoch["min"], by_epoch["max"], color=color, alpha=0.1, linewidth=0)
            ax.set_title(f"{setup_label(setup)}" + (f" — {growth_label(growth)} growth" if growth else ""), fontsize=10)
            ax.set_xlabel("epoch")
            ax.grid(alpha=0.3)
        axes[0, 0].set_ylabel("test accuracy (%)")
        _legend(fig, axes, [])
        if fig.legends:
            fig.legends[0].set_title("mean over seeds;\nshaded: the seeds' range", prop=FontProperties(size=8))
        out.append(fig)
    return out


def _cell_name(row: pd.Series) -> str:
    kind = row[C.KIND]
    if kind == "dense":
        return label(C.KIND, kind)
    what = label(C.CRITERION, row[C.CRITERION]) if kind == "dst" else label(C.KIND, kind)
    return f"{what}, d {row[C.DENSITY]:g}"


def topology_update_curves(summary: pd.DataFrame, setup: str) -> Figure:
    """Per density (rows): the weights pruned (and regrown) per update, and the share of
    the regrown that the same update had pruned, one curve per criterion.

    ``summary``: one row per (setup, density, criterion, step) with ``removed``,
    ``regrown_just_pruned_share`` and ``excluded`` (all its runs had
    ``sparsity.exclude_just_pruned``: then that share is 0 by design, and the panel says so)."""
    of_setup = summary[summary[C.SETUP] == setup]
    densities = sorted(of_setup[C.DENSITY].unique())
    fig, axes = _panels(len(densities), 2, sharey=False)
    fig.set_figheight(2.6 * len(densities) + 0.6)
    for (left, right), density in zip(axes, densities):
        at = of_setup[of_setup[C.DENSITY] == density]
        for criterion in criterion_order(at[C.CRITERION]):
            part = at[at[C.CRITERION] == criterion].sort_values("step")
            look = style(C.CRITERION, criterion)
            left.plot(part["step"], part["removed"], marker=look.marker, color=look.color, label=look.label)
            right.plot(part["step"], part["regrown_just_pruned_share"], marker=look.marker, color=look.color)
        left.set_title(f"density {density:g}: weights pruned (and regrown) per update", fontsize=9)
        right.set_title(f"density {density:g}: share regrown that had just been pruned", fontsize=9)
        left.set_ylabel("weights")
        right.set_ylabel("share")
        right.set_ylim(-0.02, 1)
        if at["excluded"].all() and (at["regrown_just_pruned_share"] == 0).all():
            right.text(
                0.5,
                0.5,
                "0 by design: sparsity.exclude_just_pruned=true\n(growth skips what the update pruned)",
                transform=right.transAxes,
                ha="center",
                va="center",
                fontsize=8,
                color="0.35",
            )
        for ax in (left, right):
            ax.grid(alpha=0.3)
    for ax in axes[-1]:
        ax.set_xlabel("step")
    fig.suptitle(f"{setup_label(setup)} — topology updates (mean over seeds)", fontsize=10)
    _legend(fig, axes, [])
    return fig

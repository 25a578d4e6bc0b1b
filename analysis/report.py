"""Everything the records support, written to one directory with an index page.

    <out>/index.md, <out>/index.html   what was produced, with the figures inline
    <out>/tables/<name>.{md,csv,tex}
    <out>/figures/<name>.{png,pdf}

Each study (a figure of the paper and its table) is produced only when the runs contain it;
the index lists the ones that were not, and why.
"""

from __future__ import annotations

import hashlib
import html
import importlib
import json
import re
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd

from src.rundir.files import atomic_write_text

from . import cells, claims, flops, grid, overlap, tables
from . import columns as C
from .completeness import cell_accounting, completeness
from .style import field_label, label, setup_label
from .tables import Table

if TYPE_CHECKING:
    from matplotlib.figure import Figure


class _Figures:
    """`analysis.figures`, imported when a figure is first drawn: a repeated report whose
    figures are all up to date never loads matplotlib (a good part of its time)."""

    def __getattr__(self, name: str):
        return getattr(importlib.import_module(".figures", __package__), name)


figures = _Figures()

_EMBED_MAX_ROWS = 60  # larger tables are linked from the HTML index, not inlined
_INLINE_MD = ("accuracy", "ranking", "claims", "flops", "cell_results")  # the results, also inline in index.md


@dataclass
class Options:
    """How runs are compared (the options of ``python -m analysis report``)."""

    metric: str = C.DEFAULT_METRIC
    alpha: float = 0.05
    alternative: str = "greater"
    low_density: float = 0.1
    high_density: float = 0.3  # the paper's claims compare d <= low_density with d >= high_density
    expected_seeds: int | None = None
    min_seeds: int = cells.MIN_SEEDS  # completed seeds per cell for a verdict


@dataclass
class Section:
    """One heading of the index: a study's text, tables and figures."""

    title: str
    text: str = ""  # paragraphs, one a line
    summary: str = ""  # one line per finding: a list in markdown (the HTML shows the section's table)
    tables: list[Table] = field(default_factory=list)
    figures: list[tuple[str, str]] = field(default_factory=list)  # (caption, file stem relative to out)
    notes: list[str] = field(default_factory=list)  # remarks shown with the bookkeeping, after the results
    # (kind, what it concerns, advice): collapsed after the results into one line per kind
    warnings: list[tuple[str, str, str]] = field(default_factory=list)


class _Output:
    """Writes tables and figures under the report directory and files them in a section.

    A figure is drawn only when its inputs changed since the report was last written there:
    its key (the runs' directories, statuses and result times, the options, the analysis
    code) is kept in ``figures/.keys.json``; drawing is most of a cached report's time."""

    def __init__(self, out: Path, key: str = ""):
        self.out = out
        self.key = key
        self.keys_path = out / "figures" / ".keys.json"
        try:
            self.old_keys = json.loads(self.keys_path.read_text()) if key else {}
        except (OSError, ValueError):
            self.old_keys = {}
        self.keys: dict[str, str] = {}

    def table(self, section: Section, table: Table | None) -> None:
        if table is not None:
            table.write(self.out / "tables")
            section.tables.append(table)

    def figure(self, section: Section, draw: Callable[[], Figure | None], name: str, caption: str) -> None:
        """``draw()`` saved as ``figures/<name>.{png,pdf}`` (or reused); None draws nothing."""
        stem = self.out / "figures" / name
        key = hashlib.sha256(f"{self.key}\0{name}\0{caption}".encode()).hexdigest() if self.key else ""
        reusable = (
            key
            and self.old_keys.get(name) == key
            and all((stem.parent / f"{stem.name}.{ext}").exists() for ext in ("png", "pdf"))
        )
        if not reusable:
            fig = draw()
            if fig is None:
                return
            figures.save_figure(fig, stem)
        if key:
            self.keys[name] = key
        section.figures.append((caption, f"figures/{name}"))

    def close(self) -> None:
        if self.key:
            self.keys_path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_text(self.keys_path, json.dumps(self.keys, sort_keys=True))


def _inputs_key(runs: pd.DataFrame, opt: Options) -> str:
    """What every figure depends on: which runs, in which state, with which result file
    (its modification time), the options and the analysis package's code."""
    columns = [c for c in (C.RUN_DIR, C.STATUS, C.RESULT_MTIME) if c in runs]
    content = pd.util.hash_pandas_object(runs[columns], index=False).to_numpy().tobytes()
    code = b"".join(p.read_bytes() for p in sorted(Path(__file__).parent.glob("*.py")))
    return hashlib.sha256(content + code + repr(opt).encode()).hexdigest()


BAND_CAPTION = "Lines and points: mean over seeds; shaded bands and error bars: ±1 standard deviation over seeds."


def _title(selection: grid.Selection) -> str:
    return setup_label(selection.setup) + (f" ({selection.label})" if selection.label else "")


def slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9.-]+", "_", text).strip("_")


def _name(prefix: str, setup: str, number: int | None = None) -> str:
    """``<prefix>__<setup>``, numbered when a setup has several figures of a study (their
    variants are in the captions: labels can be too long for file names)."""
    return f"{prefix}__{slug(setup)}" + ("" if number is None else f"__{number}")


# ------------------------------------------------------------------------ studies
def _accuracy(runs: pd.DataFrame, out: _Output, opt: Options) -> Section | None:
    section = Section("Accuracy vs density (Fig. 1) and which criterion wins where")
    mains, notes = [], []
    for setup in grid.setups(runs):
        grids = grid.density_grids(runs, setup)
        if not grids:
            continue
        main = grids[0]
        mains.append(main)
        out.figure(
            section,
            partial(figures.accuracy_vs_density, main, opt.metric),
            _name("fig1_accuracy_vs_density", setup),
            f"{_title(main)}: {C.metric_label(opt.metric)} against density. Lines: mean over seeds; shaded bands: "
            f"±1 standard deviation over seeds; lower panels: each curve's difference to the best criterion's mean "
            f"at that density, with the 95 % confidence interval of the difference of means (Welch).",
        )
        section.warnings += [
            ("a baseline differs from the DST runs", f"{setup_label(setup)}, {kind}", f"it differs in {b.note()}")
            for kind, b in main.baselines.items()
            if b.differences
        ]
        if len(grids) > 1:
            notes.append(
                f"{setup_label(setup)}: Fig. 1 shows the grid '{main.label or 'all'}'; other DST variants (in their "
                f"own studies below, or not plotted): " + "; ".join(g.label for g in grids[1:])
            )
    if not mains:
        return None
    section.notes = notes
    out.table(
        section,
        tables.accuracy_table(
            mains,
            opt.metric,
            runs=runs,
            expected_seeds=opt.expected_seeds,
            alpha=opt.alpha,
            alternative=opt.alternative,
            min_seeds=opt.min_seeds,
        ),
    )
    ranked = tables.ranking_tables(
        mains,
        metric=opt.metric,
        alpha=opt.alpha,
        alternative=opt.alternative,
        low_density=opt.low_density,
        min_seeds=opt.min_seeds,
    )
    for table in ranked or ():
        out.table(section, table)
    return section


def _claims(runs: pd.DataFrame, out: _Output, opt: Options) -> Section | None:
    mains = [grids[0] for grids in (grid.density_grids(runs, setup) for setup in grid.setups(runs)) if grids]
    if not mains:
        return None
    found = claims.check_claims(
        mains,
        metric=opt.metric,
        alpha=opt.alpha,
        alternative=opt.alternative,
        low_density=opt.low_density,
        high_density=opt.high_density,
        min_seeds=opt.min_seeds,
    )
    section = Section("The paper's claims, checked on these runs", summary=claims.claims_summary(found))
    out.table(section, tables.claims_table(found))
    return section


def _per_cell(runs: pd.DataFrame, out: _Output, opt: Options) -> Section | None:
    """Every sweep, whatever its axes: the metric per cell, tests along each axis, and
    figures along the axes of setups that have no density grid (Fig. 1 covers those)."""
    table = cells.cell_table(runs, opt.metric, unfinished=True)
    if not (table["n"] > 0).any():
        return None
    section = Section("Results per cell and along each axis")
    out.table(
        section,
        Table(
            "cell_results",
            f"{C.metric_label(opt.metric)} per cell: mean ± standard deviation over the completed seeds "
            f"(their number, or how many of the planned runs completed and what became of the others), min–max, the median epoch of the best validation "
            f"accuracy and the last epoch, and the fewest topology updates of its DST runs.",
            table,
            cells.cell_display(table, cell_accounting(runs, opt.expected_seeds)),
        ),
    )
    tests = cells.axis_tests(table, alpha=opt.alpha, alternative=opt.alternative, min_seeds=opt.min_seeds)
    if len(tests):
        side = "one" if opt.alternative == "greater" else "two"
        out.table(
            section,
            Table(
                "axis_tests",
                f"Along each axis, with the other axes fixed ('with'): every level "
                f"against the best level (highest mean) by Welch's t-test ({side}-sided), "
                f"Holm-corrected over the levels compared, alpha = {opt.alpha:g}; a verdict needs "
                f"≥ {opt.min_seeds} seeds on both sides and DST runs that made topology updates.",
                tests,
                cells.axis_tests_display(tests),
            ),
        )
    warnings = cells.topology_warnings(runs)
    if len(warnings):
        kind = f"fewer than {cells.FEW_UPDATES} topology updates"
        section.warnings += [
            (kind, f"{setup_label(setup)}, {where} ({int(n)})", advice)
            for setup, where, n, advice in zip(
                warnings[C.SETUP], warnings["description"], warnings[C.TOPOLOGY_UPDATES], warnings["fix"]
            )
        ]
        out.table(
            section,
            Table(
                "topology_warnings",
                "DST cells whose runs made no or very few topology updates "
                "(they are then little more than static sparse training).",
                warnings,
            ),
        )
    for setup, axes in cells.sweep_axes(runs).items():
        if grid.density_grids(runs, setup):
            continue
        for axis in axes:
            out.figure(
                section,
                partial(figures.axis_figure, runs, setup, axis, opt.metric),
                _name(f"by_{slug(axis.rsplit('.', 1)[-1])}", setup),
                f"{setup_label(setup)}: {C.metric_label(opt.metric)} by {field_label(axis)}. "
                "Dots: single seeds; points or lines: mean over seeds; bars or bands: ±1 standard deviation over seeds.",
            )
    return section


def _cost(runs: pd.DataFrame, out: _Output, opt: Options) -> Section | None:
    """Training and inference FLOPs next to accuracy, as a fraction of the dense model's."""
    costs = flops.run_costs(runs)
    if not costs["flops.train"].notna().any():
        return None
    summary = flops.flops_summary(costs, opt.metric)
    section = Section("The cost of training: FLOPs")
    for setup in grid.setups(costs):
        out.figure(
            section,
            partial(figures.accuracy_vs_flops, summary, setup, opt.metric),
            _name("accuracy_vs_training_flops", setup),
            f"{setup_label(setup)}: {C.metric_label(opt.metric)} against training FLOPs as a fraction of the dense "
            f"model's (forward and backward of every step at each layer's density, the dense-gradient steps and "
            f"the topology updates; log axis), one point per density. Points: mean over seeds; error bars: ±1 "
            f"standard deviation over seeds.",
        )
    sources = sorted(set(summary["flops_source"]) - {""})
    note = "" if sources == [flops.RECORDED] else f" FLOPs: {'; '.join(sources)} (see analysis/flops.py)."
    out.table(
        section,
        Table(
            "flops",
            f"Training FLOPs per run and inference FLOPs per sample (2 × multiply-adds of the linear and "
            f"convolution weights), mean over seeds, and as a fraction of the dense model's; "
            f"{C.metric_label(opt.metric)}: mean ± standard deviation over seeds.{note}",
            summary,
            _flops_display(summary),
            title="Training and inference FLOPs",
        ),
    )
    return section


def _flops_display(summary: pd.DataFrame) -> pd.DataFrame:
    def fraction(x) -> str:
        return "" if pd.isna(x) else f"{100 * x:.1f} %"

    def number(x) -> str:
        return "" if pd.isna(x) else f"{x:.3g}"

    shown = pd.DataFrame(
        {
            "setup": summary[C.SETUP],
            "growth": summary[C.GROWTH],
            "method": summary[C.CRITERION],
            "density": summary[C.DENSITY],
            "accuracy": [tables.mean_std_n(m, s, n) for m, s, n in zip(summary["mean"], summary["std"], summary["n"])],
            "training FLOPs": summary["flops.train"].map(number),
            "training, of dense": summary["flops.train_fraction"].map(fraction),
            "inference FLOPs": summary["flops.inference"].map(number),
            "inference, of dense": summary["flops.inference_fraction"].map(fraction),
        }
    )
    if (summary[C.VARIANT].fillna("") != "").any():
        shown.insert(1, "variant", summary[C.VARIANT])
    return shown


def _figure_study(
    title: str,
    prefix: str,
    select: Callable,
    draw: Callable,
    table: Callable[[list[grid.Selection], Options], Table | None],
):
    """A study drawn as one figure per selection, with one table over all selections."""

    def study(runs: pd.DataFrame, out: _Output, opt: Options) -> Section | None:
        section = Section(title)
        selections = []
        for setup in grid.setups(runs):
            found = select(runs, setup)
            for number, selection in enumerate(found, 1):
                out.figure(
                    section,
                    partial(draw, selection, opt.metric),
                    _name(prefix, setup, number if len(found) > 1 else None),
                    f"{_title(selection)}. {BAND_CAPTION}",
                )
            selections += found
        if not selections:
            return None
        out.table(section, table(selections, opt))
        return section

    return study


def _update_frequency_table(selections: list[grid.Selection], opt: Options) -> Table | None:
    return tables.study_table(
        "update_frequency",
        "Accuracy by update frequency (columns).",
        selections,
        [C.GROWTH, C.DENSITY, C.CRITERION],
        C.UPDATE_FREQUENCY,
        opt.metric,
        alpha=opt.alpha,
        alternative=opt.alternative,
        min_seeds=opt.min_seeds,
    )


def _gamma_table(selections: list[grid.Selection], opt: Options) -> Table | None:
    return tables.study_table(
        "mest_gamma",
        "MEST accuracy by gamma (columns).",
        selections,
        [C.GROWTH, C.DENSITY],
        C.GAMMA,
        opt.metric,
        alpha=opt.alpha,
        alternative=opt.alternative,
        min_seeds=opt.min_seeds,
    )


def _sensitivity_table(selections: list[grid.Selection], opt: Options) -> Table | None:
    return tables.study_table(
        "sensitivity",
        "Sensitivity and the criteria run with the same settings.",
        selections,
        [C.GROWTH, C.CRITERION],
        C.DENSITY,
        opt.metric,
        alpha=opt.alpha,
        alternative=opt.alternative,
        min_seeds=opt.min_seeds,
    )


def _global_table(selections: list[grid.Selection], opt: Options) -> Table | None:
    combined = []
    for s in selections:
        runs = s.runs.assign(pruning="global")
        if "layer-wise" in s.baselines:
            other = s.baselines["layer-wise"].runs
            other = other[
                other[C.CRITERION].isin(runs[C.CRITERION])
                & other[C.GROWTH].isin(runs[C.GROWTH])
                & other[C.DENSITY].isin(runs[C.DENSITY])
            ]
            runs = pd.concat([runs, other.assign(pruning="layer-wise")])
        combined.append(grid.Selection(s.setup, s.label, runs))
    return tables.study_table(
        "global_pruning",
        "Global vs layer-wise pruning.",
        combined,
        [C.GROWTH, C.CRITERION, "pruning"],
        C.DENSITY,
        opt.metric,
        alpha=opt.alpha,
        alternative=opt.alternative,
        min_seeds=opt.min_seeds,
    )


def _density_one_table(selections: list[grid.Selection], opt: Options) -> Table | None:
    return tables.baselines_table(
        "density_one",
        "DST at density 1.0 by criterion / growth, the dense model, and the dense model with dropout.",
        selections,
        [C.CRITERION, C.GROWTH],
        opt.metric,
    )


def _sensitivity_figure(selection: grid.Selection, metric: str) -> Figure:
    return figures.accuracy_vs_density(selection, metric, highlight="sensitivity")


def _overlap_init(runs: pd.DataFrame, out: _Output, opt: Options) -> Section | None:
    at_init = overlap.overlap_at_init(runs)
    if at_init.empty:
        return None
    section = Section("Overlap of pruned sets at initialisation (Fig. 6a)")
    for setup in sorted(at_init[C.SETUP].unique()):
        out.figure(
            section,
            partial(figures.overlap_heatmaps, at_init, setup),
            _name("fig6a_overlap_init", setup),
            f"{setup_label(setup)}: Jaccard similarity of the criteria's pruned sets at initialisation, mean over seeds",
        )
    out.table(section, tables.overlap_init_table(at_init))
    return section


def _overlap_trajectories(runs: pd.DataFrame, out: _Output, opt: Options) -> Section | None:
    trajectories = overlap.overlap_trajectories(runs)
    if trajectories.empty:
        return None
    section = Section("Overlap of pruned sets along training (Fig. 6b)")
    for setup, of_setup in trajectories.groupby(C.SETUP):
        parts = list(of_setup.groupby([C.VARIANT, C.DENSITY]))
        for number, ((variant, density), part) in enumerate(parts, 1):
            out.figure(
                section,
                partial(figures.overlap_trajectory_curves, part),
                _name("fig6b_overlap_trajectory", setup, number if len(parts) > 1 else None),
                f"{setup_label(setup)}{f' ({variant})' if variant else ''}, density {density:g}: overlap along "
                f"training. {BAND_CAPTION}",
            )
    out.table(section, tables.overlap_trajectory_table(trajectories))
    return section


# (why the study is missing when it returns None, the study)
STUDIES: list[tuple[str, Callable[[pd.DataFrame, _Output, Options], Section | None]]] = [
    ("Fig. 1 (accuracy vs density): no completed DST runs at two or more densities below 1", _accuracy),
    ("Claims (magnitude at low density, differences shrink, DST beats static): no DST density grid", _claims),
    ("FLOPs: no completed runs whose FLOPs are recorded or can be counted", _cost),
    (
        "Fig. 4 (update frequency): no DST runs at two or more update frequencies",
        _figure_study(
            "Update frequency (Fig. 4)",
            "fig4_update_frequency",
            grid.update_frequency_grids,
            lambda s, m: figures.accuracy_vs_update_frequency(s, m),
            _update_frequency_table,
        ),
    ),
    (
        "Fig. 7 (MEST gamma): no MEST runs with two or more values of gamma",
        _figure_study(
            "MEST γ (Fig. 7)",
            "fig7_mest_gamma",
            grid.gamma_grids,
            lambda s, m: figures.accuracy_vs_gamma(s, m),
            _gamma_table,
        ),
    ),
    (
        "Fig. 8 (sensitivity): no runs of the sensitivity criterion at two or more densities",
        _figure_study(
            "Sensitivity criterion (Fig. 8)",
            "fig8_sensitivity",
            grid.sensitivity_grids,
            _sensitivity_figure,
            _sensitivity_table,
        ),
    ),
    (
        "Fig. 13 (global pruning): no global-pruning runs at two or more densities",
        _figure_study(
            "Global vs layer-wise pruning (Fig. 13)",
            "fig13_global_pruning",
            grid.global_pruning_grids,
            lambda s, m: figures.global_vs_layerwise(s, m),
            _global_table,
        ),
    ),
    (
        "Fig. 5 (density 1.0 and dropout): no DST runs at density 1.0",
        _figure_study(
            "DST at density 1.0 as a regulariser, and dropout (Fig. 5)",
            "fig5_density_one",
            grid.density_one_grids,
            lambda s, m: figures.density_one(s, m),
            _density_one_table,
        ),
    ),
    ("Results per cell: no completed runs with the metric", _per_cell),
    ("Fig. 6a (overlap at initialisation): no completed overlap_init runs", _overlap_init),
    ("Fig. 6b (overlap along training): no completed DST runs with overlap_with", _overlap_trajectories),
]


# ------------------------------------------------------------------------ entry point
def build_report(
    runs: pd.DataFrame, out: str | Path, options: Options | None = None, sources: Sequence[str | Path] = ()
) -> Path:
    """Write every table and figure ``runs`` support under ``out``; returns index.html.

    The index opens with the results (figures, the accuracy table, the claims), then the
    warnings, one line per kind, then what is missing and how the numbers were made."""
    opt = options or Options()
    out = Path(out)
    output = _Output(out, _inputs_key(runs, opt))
    status = completeness(runs, opt.expected_seeds)
    sections, missing = [], []
    with grid.memoised():  # the studies share the density grids
        for why_not, study in STUDIES:
            try:
                section = study(runs, output, opt)
            except Exception as e:  # noqa: BLE001 (one study's failure must not cost the others)
                title = why_not.split(":", 1)[0]
                print(f"warning: {title} not produced: {type(e).__name__}: {e}", file=sys.stderr)
                missing.append(f"{title}: failed ({type(e).__name__}: {e})")
                continue
            if section is None:
                missing.append(why_not)
            else:
                sections.append(section)
    warnings = _collapsed_warnings(sections, status)
    bookkeeping = Section("Completeness", status.summary())
    for table in tables.completeness_tables(status):
        output.table(bookkeeping, table)
    bookkeeping.text += "".join(f"\n{note}" for s in sections for note in s.notes)
    header = {
        "sources": ", ".join(str(s) for s in sources) or "(runs table)",
        "metric": f"{opt.metric} ({C.metric_label(opt.metric)})",
        "uncertainty": "mean ± standard deviation over seeds (sample std, ddof 1) in tables and bands; "
        "differences between criteria with their 95 % confidence interval (Welch)",
        "significance": f"Welch's t-test ({'one' if opt.alternative == 'greater' else 'two'}-sided) against the "
        f"best criterion, Holm-corrected per density, alpha = {opt.alpha:g}",
        "verdicts": f"need ≥ {opt.min_seeds} completed seeds per cell on both sides of a test, and DST runs that "
        f"made topology updates",
        "runs used": "completed runs only (one per experiment and seed); every table says how many of a cell's "
        "runs its mean is over and what became of the others",
    }
    output.close()
    lead = f"{len(runs)} runs; {status.summary().splitlines()[0].split(': ', 1)[-1]}."
    (out / "index.md").write_text(_markdown_index(lead, header, sections, warnings, bookkeeping, missing))
    (out / "index.html").write_text(_html_index(lead, header, sections, warnings, bookkeeping, missing))
    return out / "index.html"


def _collapsed_warnings(sections: list[Section], status) -> list[str]:
    """One line per kind of warning: how many, which cells, and the advice (once when it is
    the same for all)."""
    kinds: dict[str, list[tuple[str, str]]] = {}
    for section in sections:
        for kind, where, advice in section.warnings:
            kinds.setdefault(kind, []).append((where, advice))
    if len(status.short):
        short = status.short
        kinds.setdefault("cells with fewer completed seeds than planned", []).extend(
            (_cell_words(row), "see the Completeness tables") for _, row in short.iterrows()
        )
    lines = []
    for kind, items in kinds.items():
        advices = list(dict.fromkeys(a for _, a in items if a))
        where = "; ".join(w for w, _ in items)
        line = f"{len(items)} × {kind}: {where}"
        if len(advices) == 1:
            line += f". {advices[0][0].upper()}{advices[0][1:]}"
        elif advices:
            line += ". " + " / ".join(advices)
        lines.append(line)
    return lines


def _cell_words(row: pd.Series) -> str:
    """A cell in words: its setup, kind and the axes it has (criterion, growth, density, variant)."""
    parts = [setup_label(row[C.SETUP]), label(C.KIND, row[C.KIND])]
    for name in (C.CRITERION, C.GROWTH, C.DENSITY, C.VARIANT):
        value = row.get(name)
        if value is not None and value == value and value != "":
            parts.append(f"{field_label(name)} {value:g}" if isinstance(value, float) else label(name, value))
    return " ".join(str(p) for p in parts) + f" ({int(row['n_seeds'])} of {int(row['expected'])})"


def _markdown_table(table: Table, inline: bool) -> list[str]:
    links = ", ".join(f"[{fmt}](tables/{table.name}.{fmt})" for fmt in ("md", "csv", "tex"))
    lines = [f"**{table.heading}.** {table.caption} ({links})"]
    if inline and len(table.shown()) <= _EMBED_MAX_ROWS:
        lines += ["", tables.to_markdown(table.shown(), table.marks).rstrip()]
        if table.notes:
            lines += ["", table.notes]
    return ["", *lines]


def _markdown_index(
    lead: str, header: dict, sections: list[Section], warnings: list[str], bookkeeping: Section, missing: list[str]
) -> str:
    lines = ["# DST analysis report", "", lead]
    for section in sections:
        lines += ["", f"## {section.title}"]
        for caption, stem in section.figures:
            lines += ["", f"![{caption}]({stem}.png)", "", f"*{caption}* ([PDF]({stem}.pdf))"]
        if section.text:
            lines += ["", *section.text.splitlines()]
        if section.summary:
            lines += [""] + [f"- {line}" for line in section.summary.splitlines()]
        for table in section.tables:
            lines += _markdown_table(table, table.name in _INLINE_MD)
    if warnings:
        lines += ["", "## Warnings", ""] + [f"- {w}" for w in warnings]
    lines += ["", f"## {bookkeeping.title}", "", *bookkeeping.text.splitlines()]
    for table in bookkeeping.tables:
        lines += _markdown_table(table, False)
    lines += ["", "## How the numbers were made", ""] + [f"- **{k}**: {v}" for k, v in header.items()]
    if missing:
        lines += ["", "## Not produced", ""] + [f"- {m}" for m in missing]
    return "\n".join(lines) + "\n"


_CSS = """
body{font-family:sans-serif;max-width:1400px;margin:1em auto;padding:0 1em}
p,li,figcaption,h1,h2,h3{overflow-wrap:anywhere}
img{max-width:100%;height:auto}figure{margin:1em 0}
.table{max-width:100%;overflow-x:auto;margin:.5em 0}
table{border-collapse:collapse;font-size:12px}
td,th{border:1px solid #ccc;padding:2px 6px;text-align:left;vertical-align:top;max-width:40em;overflow-wrap:break-word}
td.num{text-align:right;white-space:nowrap}
th{background:#f3f3f3}ul.warnings li{background:#fff4e0;padding:.2em .5em;margin:.2em 0}
p.tnote{font-size:12px;color:#444}
"""


def _html_table(table: Table) -> str:
    e = html.escape
    links = " ".join(f"<a href='tables/{table.name}.{fmt}'>{fmt}</a>" for fmt in ("md", "csv", "tex"))
    head = f"<h3>{e(table.heading)}</h3><p>{e(table.caption)} [{links}]</p>"
    shown = table.shown()
    if len(shown) > _EMBED_MAX_ROWS:
        return head + f"<p>({len(shown)} rows: see the linked files)</p>"
    body = table.html()
    numeric = [tables.is_numeric_column(shown.iloc[:, i]) for i in range(shown.shape[1])]
    if any(numeric) and "<tbody>" in body:  # right-aligned number columns: their decimals line up
        top, _, rest = body.partition("<tbody>")
        rows = rest.split("<tr>")
        for r in range(1, len(rows)):
            cells = rows[r].split("<td>")
            rows[r] = cells[0] + "".join(
                ("<td class='num'>" if i < len(numeric) and numeric[i] else "<td>") + c for i, c in enumerate(cells[1:])
            )
        body = top + "<tbody>" + "<tr>".join(rows)
    return head + f"<div class='table'>{body}</div>"


def _html_index(
    lead: str, header: dict, sections: list[Section], warnings: list[str], bookkeeping: Section, missing: list[str]
) -> str:
    """Tables sit in horizontally scrolling boxes and long cells wrap, so that nothing is
    wider than the window (checked in a real browser by the tests)."""
    e = html.escape
    parts = [
        "<!doctype html><html lang='en'><head><meta charset='utf-8'>",
        "<meta name='viewport' content='width=device-width, initial-scale=1'>",
        f"<title>DST analysis report</title><style>{_CSS}</style></head><body><h1>DST analysis report</h1>",
        f"<p>{e(lead)}</p>",
    ]
    for section in sections:
        parts.append(f"<h2>{e(section.title)}</h2>")
        for caption, stem in section.figures:
            parts.append(
                f"<figure><img src='{stem}.png' alt='{e(caption)}'><figcaption>{e(caption)} "
                f"(<a href='{stem}.pdf'>PDF</a>)</figcaption></figure>"
            )
        parts += [f"<p>{e(line)}</p>" for line in section.text.splitlines() if line.strip()]
        parts += [_html_table(table) for table in section.tables]
    if warnings:
        parts.append("<h2>Warnings</h2><ul class='warnings'>" + "".join(f"<li>{e(w)}</li>" for w in warnings) + "</ul>")
    parts.append(f"<h2>{e(bookkeeping.title)}</h2>")
    parts += [f"<p>{e(line)}</p>" for line in bookkeeping.text.splitlines() if line.strip()]
    parts += [_html_table(table) for table in bookkeeping.tables]
    parts.append("<h2>How the numbers were made</h2><ul>")
    parts += [f"<li><b>{e(k)}</b>: {e(v)}</li>" for k, v in header.items()]
    parts.append("</ul>")
    if missing:
        parts.append("<h2>Not produced</h2><ul>" + "".join(f"<li>{e(m)}</li>" for m in missing) + "</ul>")
    parts.append("</body></html>")
    return "\n".join(parts)

"""The report as a reviewer reads it: results first, every run accounted for, uncertainty
that says what it is, paper-ready LaTeX, and records that cannot be used shown as such."""

import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import stats as sps

import analysis
from analysis import columns as C
from analysis.__main__ import main as cli
from src.rundir import RunRecorder
from tests import analysis_fixtures as fx

DIVERGED_LR = 1e6


def write_reader_sweep(root: Path) -> Path:
    """The fixture's main grid (one failed, one stale and one missing run), a cell whose
    runs all diverged at lr 1e6, and a completed result.json without its final accuracy."""
    fx.write_sweep(root)
    for seed in fx.SEEDS:
        cfg = fx.config(
            **{
                "sparsity.density": 0.1,
                "sparsity.criterion": "magnitude",
                "sparsity.growth": "random",
                "train.seed": seed,
                "optim.lr": DIVERGED_LR,
            }
        )
        fx.write_run(root / "lr1e6" / f"s{seed}", cfg, status="diverged")
    edited = root / "dst" / "random" / "snip" / "d0.05" / "s1" / "result.json"
    result = json.loads(edited.read_text())
    del result["final"]["test_acc"]
    edited.write_text(json.dumps(result))
    return root


@pytest.fixture(scope="module")
def reader(tmp_path_factory) -> Path:
    root = write_reader_sweep(tmp_path_factory.mktemp("reader") / "sweep")
    assert cli(["report", str(root), "--out", str(root / "report")]) == 0
    return root


def md_rows(path: Path) -> list[str]:
    return [line for line in path.read_text().splitlines() if line.startswith("| ")]


# ------------------------------------------------------------------------ 4: every run accounted for
def test_the_headline_table_says_what_became_of_every_run(reader):
    rows = md_rows(reader / "report" / "tables" / "accuracy.md")
    header = rows[0]
    assert "variant" in header

    def row(growth, method, variant="lr=0.01"):
        [found] = [r for r in rows if f"| {variant} | {growth} | {method} |" in r]
        return found

    assert "(2 of 3; 1 failed)" in row("random", "SET")  # fx.FAILED
    assert "(2 of 3; 1 missing)" in row("gradient", "Magnitude")  # fx.MISSING: no record at all
    assert "(2 of 3; 1 stale)" in row("gradient", "SNIP")  # fx.STALE
    assert "(2 of 3; 1 damaged)" in row("random", "SNIP")  # the hand-edited result
    # The cell whose runs all diverged is a row of its own, told apart by its learning rate.
    assert "— (0 of 3; 3 diverged)" in row("random", "Magnitude", variant="lr=1e+06")
    # Complete cells say only their mean ± std; the seed count is in the caption.
    assert "3 seeds per cell" in (reader / "report" / "tables" / "accuracy.md").read_text().splitlines()[0]
    data = pd.read_csv(reader / "report" / "tables" / "accuracy.csv")
    lr = data[data[C.VARIANT] == "lr=1e+06"].iloc[0]
    assert (lr["n"], lr[C.RUNS], lr["diverged"]) == (0, 3, 3)


def test_the_per_cell_table_and_the_completeness_tables_tell_the_cells_apart(reader):
    text = (reader / "report" / "tables" / "cell_results.md").read_text()
    assert "| lr |" in md_rows(reader / "report" / "tables" / "cell_results.md")[0]
    assert "— (0 of 3; 3 diverged)" in text and "(2 of 3; 1 failed)" in text
    cells = pd.read_csv(reader / "report" / "tables" / "cells.csv")
    diverged = cells[cells[C.VARIANT].fillna("").str.contains("lr=1e+06", regex=False)]
    assert len(diverged) == 1 and diverged["diverged"].iloc[0] == 3 and bool(diverged["short"].iloc[0])


# ------------------------------------------------------------------------ records that cannot be used
def test_a_completed_result_without_its_metric_is_damaged_in_every_table(reader):
    runs = analysis.load_runs(reader)
    edited = runs.set_index(C.RUN_DIR).loc[str(reader / "dst" / "random" / "snip" / "d0.05" / "s1")]
    assert edited[C.STATUS] == C.DAMAGED and "completed but has no final.test_acc" in edited[C.DAMAGE]
    by_status = pd.read_csv(reader / "report" / "tables" / "runs_by_status.csv")
    dst = by_status[by_status[C.KIND] == "dst"].iloc[0]
    assert dst[C.DAMAGED] == 1
    problems = pd.read_csv(reader / "report" / "tables" / "not_completed.csv")
    assert "completed but has no final.test_acc" in problems[C.DAMAGE].dropna().str.cat()


def test_results_carry_their_format_and_a_newer_one_is_refused(tmp_path):
    from src.rundir import RESULT_FORMAT

    cfg = fx.config()
    recorder = RunRecorder(tmp_path / "new", cfg)
    recorder.write_result(fx._result(cfg, "completed", 80.0))
    recorder.close()
    assert json.loads((tmp_path / "new" / "result.json").read_text())["format"] == RESULT_FORMAT
    fx.write_run(tmp_path / "future", cfg, test_acc=80.0)
    path = tmp_path / "future" / "result.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), "format": RESULT_FORMAT + 1}))
    runs = analysis.load_runs(tmp_path, cache=False).set_index(C.RUN_DIR)
    assert runs.loc[str(tmp_path / "new"), C.STATUS] == C.COMPLETED
    future = runs.loc[str(tmp_path / "future")]
    assert future[C.STATUS] == C.DAMAGED and f"format {RESULT_FORMAT + 1}" in future[C.DAMAGE]


# ------------------------------------------------------------------------ --min-seeds reaches the ranking
def test_min_seeds_governs_the_ranking_and_the_marks(tmp_path):
    root = fx.write_sweep(tmp_path / "sweep")
    two = analysis.load_runs(root)
    two = two[two[C.SEED] < 2]  # two seeds per cell
    grid = analysis.main_grid(two, fx.SETUP)
    strict = analysis.ranking_tables([grid], min_seeds=3)[0]
    assert not strict.data["best_group"].any() and (strict.marks == "").all().all()
    loose = analysis.ranking_tables([grid], min_seeds=2)[0]
    assert loose.data["best_group"].any() and (loose.marks != "").any().any()
    assert "*" in "".join(md_rows(loose.write(tmp_path / "loose")["md"])[2:])
    marks = analysis.accuracy_table([grid], runs=two, min_seeds=3).data
    assert not marks["not_worse"].any()
    out = tmp_path / "report"
    build = analysis.build_report(two, out, analysis.Options(min_seeds=3))
    assert "*" not in "".join(md_rows(out / "tables" / "ranking.md")[2:]) and build.exists()


# ------------------------------------------------------------------------ 1: results first
def few_updates_sweep(root: Path) -> Path:
    """The main grid with an update every 2000 steps: 2 updates per run, fewer than the 3 a launch
    and a report ask for."""
    for seed in fx.SEEDS:
        for density in fx.DENSITIES:
            for criterion in fx.CRITERIA:
                cfg = fx.config(
                    **{
                        "sparsity.density": density,
                        "sparsity.criterion": criterion,
                        "sparsity.update_frequency": 2000,
                        "train.seed": seed,
                    }
                )
                fx.write_run(
                    root / criterion / f"d{density}" / f"s{seed}",
                    cfg,
                    test_acc=fx.dst_accuracy(criterion, density, seed),
                )
    return root


def test_the_report_opens_with_results_and_collapses_its_warnings(tmp_path):
    root = few_updates_sweep(tmp_path / "sweep")
    assert cli(["report", str(root), "--out", str(tmp_path / "report")]) == 0
    md = (tmp_path / "report" / "index.md").read_text()
    order = [
        md.index("![LeNet-5 on Fashion-MNIST"),  # Fig. 1 first
        md.index("**Accuracy.**"),
        md.index("## The paper's claims"),
        md.index("## Warnings"),
        md.index("## Completeness"),
        md.index("## How the numbers were made"),
    ]
    assert order == sorted(order), order
    assert md.index("| LeNet-5 on Fashion-MNIST | random | Magnitude |") < md.index("## Completeness")  # inline
    warnings = md[md.index("## Warnings") : md.index("## Completeness")]
    [line] = [w for w in warnings.splitlines() if "topology updates" in w]  # 12 cells, one line
    assert line.startswith("- 12 × fewer than 3 topology updates: ")
    assert line.count("(2)") == 12 and line.lower().count("for 3 updates set") == 1
    page = (tmp_path / "report" / "index.html").read_text()
    assert page.count("topology updates:") == 1 and "Warning —" not in page
    # display names, never raw ids or cell hashes, in what a reader sees
    visible = re.sub(r"<[^>]+>", " ", page)
    for raw in ("sparsity.criterion", "n_seeds", "runs_by_status", "missing_seeds", "lenet5/fashion_mnist"):
        assert raw not in visible, raw
    cells = pd.read_csv(tmp_path / "report" / "tables" / "cells.csv")
    assert not any(cell in visible for cell in cells[C.CELL])
    assert "runs_by_status" in (tmp_path / "report" / "tables" / "runs_by_status.csv").name  # ids stay in files


@pytest.mark.slow
def test_in_chromium_the_first_screen_shows_the_figure_and_results_come_before_bookkeeping(tmp_path):
    from tests.test_analysis_sweeps import CHROMIUM, in_chromium

    if CHROMIUM is None:
        pytest.skip("headless Chromium not installed (Debian: apt-get install chromium)")
    root = few_updates_sweep(tmp_path / "sweep")
    assert cli(["report", str(root), "--out", str(tmp_path / "report")]) == 0
    found = in_chromium(tmp_path / "report" / "index.html")
    assert found["errors"] == [] and found["wide"] == [], found
    [fig1] = [top for src, top in found["images"] if "fig1_accuracy_vs_density" in src]
    assert fig1 < 900  # the figure starts on the first screen of a 1280x900 window
    top = {text: y for text, y in found["headings"]}
    assert top["Accuracy"] < top["Claims"] < top["Warnings"] < top["Completeness"] < top["Runs by status"]
    assert fig1 < top["Accuracy"]


# ------------------------------------------------------------------------ 2: honest uncertainty
def test_welch_interval_is_the_t_interval_of_the_difference_of_means():
    a, b = np.array([85.1, 85.9, 84.7, 85.5]), np.array([84.0, 84.9, 83.1])
    diff, half = analysis.stats.welch_interval(a.mean(), a.var(ddof=1), len(a), b.mean(), b.var(ddof=1), len(b))
    ci = sps.ttest_ind(a, b, equal_var=False).confidence_interval(0.95)
    assert diff - half == pytest.approx(ci.low) and diff + half == pytest.approx(ci.high)


def test_fig1_bands_and_differences_say_what_they_are(reader):
    from matplotlib.container import ErrorbarContainer

    runs = analysis.load_runs(reader)
    fig = analysis.accuracy_vs_density(analysis.main_grid(runs, fx.SETUP))
    tops, bottoms = [fig.axes[0], fig.axes[1]], [fig.axes[2], fig.axes[3]]
    texts = [t.get_text() for t in fig.findobj(lambda a: hasattr(a, "get_text"))]
    assert any("±1 std over seeds" in t for t in texts)
    assert any("95% CI" in t for t in texts)
    for top, bottom in zip(tops, bottoms):
        bars = [c for c in bottom.containers if isinstance(c, ErrorbarContainer)]
        assert len(bars) == len(fx.CRITERIA) + 1  # every criterion and static carry their interval
        widths = [seg.get_segments() for c in bars for seg in c[2]]
        assert any(abs(s[1][1] - s[0][1]) > 0 for segs in widths for s in segs)
        static_top = [line for line in top.get_lines() if line.get_label().startswith("static")]
        static_bottom = [c[0] for c in bars if c[0].get_color() == analysis.figures.STATIC_COLOR]
        assert static_top[0].get_marker() == static_bottom[0].get_marker() == "s"
    index = (reader / "report" / "index.md").read_text()
    assert "shaded bands: ±1 standard deviation over seeds" in index
    assert "95 % confidence interval of the difference of means (Welch)" in index


# ------------------------------------------------------------------------ 3: paper tables
def test_latex_tables_are_aligned_bold_and_carry_their_constants_in_the_caption(reader):
    tex = (reader / "report" / "tables" / "accuracy.tex").read_text()
    spec = re.search(r"\\begin\{tabular\}\{([lrc]+)\}", tex).group(1)
    assert spec == "lll" + "r" * 5  # variant, growth, method | 0.05 0.1 0.2 0.5 1
    assert "\\textbf{" in tex and "\\toprule" in tex and "\\bottomrule" in tex
    caption = re.search(r"\\caption\{(.*)\}", tex).group(1)
    assert caption.startswith("Test accuracy (\\%) by density")  # a sentence
    assert "Setup: LeNet-5 on Fashion-MNIST." in caption  # constant column moved to the caption
    assert "3 seeds per cell" in caption and caption.rstrip().endswith(".")
    body = tex[tex.index("\\midrule") : tex.index("\\bottomrule")]
    assert "LeNet-5" not in body and not re.search(r"\d \(3\)", body)  # no seed count in every cell


# ------------------------------------------------------------------------ 6: the notebook
@pytest.fixture(scope="module")
def two_densities(tmp_path_factory) -> Path:
    """A real smoke sweep: two criteria x two densities, one seed, one epoch (5 updates)."""
    from tests.test_analysis_sweeps import train_sweep

    return train_sweep(
        tmp_path_factory.mktemp("dens"),
        "criterion=magnitude,set",
        "sparsity.density=0.3,0.6",
        "seed=1",
        "train.epochs=1",
        "sparsity.update_frequency=3",
    )


@pytest.mark.slow
def test_notebook_figures_tell_every_series_apart_and_show_topology_per_density(two_densities):
    runs = analysis.load_runs(two_densities)
    done = analysis.completed(runs)
    epochs = analysis.load_metrics(done, "epoch").drop(columns="kind")
    epochs = epochs.merge(done[[C.RUN_DIR, C.SETUP, C.CELL, C.KIND, C.CRITERION, C.GROWTH, C.DENSITY]], on=C.RUN_DIR)
    [fig] = analysis.figures.learning_curves(epochs)
    lines = [line for ax in fig.axes for line in ax.get_lines()]
    assert len(lines) == 4
    looks = {(line.get_color(), str(line.get_linestyle())) for line in lines}
    assert len(looks) == 4  # criterion by colour, density by line style: no two series alike
    assert len({line.get_color() for line in lines}) == 2 and len({str(line.get_linestyle()) for line in lines}) == 2

    updates = analysis.load_metrics(done, "update").merge(
        done[[C.RUN_DIR, C.SETUP, C.CRITERION, C.DENSITY, "sparsity.exclude_just_pruned"]], on=C.RUN_DIR
    )
    summary = (
        updates.groupby([C.SETUP, C.DENSITY, C.CRITERION, "step"])
        .agg(
            removed=("removed", "mean"),
            regrown_just_pruned_share=("regrown_just_pruned_share", "mean"),
            excluded=("sparsity.exclude_just_pruned", "all"),
        )
        .reset_index()
    )
    fig = analysis.figures.topology_update_curves(summary, runs[C.SETUP].iloc[0])
    titles = [ax.get_title() for ax in fig.axes]
    assert sum("density 0.3" in t for t in titles) == 2 and sum("density 0.6" in t for t in titles) == 2
    texts = [t.get_text() for t in fig.findobj(lambda a: hasattr(a, "get_text"))]
    assert any("0 by design: sparsity.exclude_just_pruned=true" in t for t in texts)


@pytest.mark.slow
def test_the_share_regrown_just_pruned_is_zero_by_design_not_by_a_bug(tmp_path):
    """With exclude_just_pruned (the default) growth skips what the update pruned; without it
    random growth regrows some of it, and the records say so."""
    from tests.test_analysis_sweeps import train_sweep

    def shares(*overrides) -> list[float]:
        where = tmp_path / ("included" if overrides else "excluded")
        root = train_sweep(
            where,
            "seed=1",
            "train.epochs=1",
            "sparsity.update_frequency=3",
            "sparsity.density=0.6",
            *overrides,
        )
        updates = analysis.load_metrics(analysis.load_runs(root), "update")
        return updates["regrown_just_pruned_share"].tolist()

    assert set(shares()) == {0.0}
    assert max(shares("sparsity.exclude_just_pruned=false")) > 0


@pytest.mark.slow
def test_the_notebook_command_runs_a_copy_from_any_directory(two_densities, tmp_path):
    import hashlib
    import os
    import subprocess
    import sys

    import nbformat

    repo = Path(analysis.__file__).resolve().parents[1]
    stored = repo / "analysis" / "notebooks" / "aggregate.ipynb"
    before = hashlib.sha256(stored.read_bytes()).hexdigest()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    relative = os.path.relpath(two_densities, elsewhere)  # a relative sweep path, from the caller's directory
    done = subprocess.run(
        [sys.executable, "-m", "analysis", "notebook", relative, "--out", "out"],
        cwd=elsewhere,
        env=dict(os.environ, PYTHONPATH=str(repo)),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr
    executed = nbformat.read(elsewhere / "out" / "aggregate.ipynb", as_version=4)
    outputs = [o for cell in executed.cells if cell.cell_type == "code" for o in cell.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    assert "4 runs: 4 completed" in "".join(o.get("text", "") for o in outputs)
    assert hashlib.sha256(stored.read_bytes()).hexdigest() == before  # the packaged notebook is only read


def test_study_tables_mark_the_best_of_each_row_and_say_their_seeds_once(tmp_path):
    root = fx.write_everything(tmp_path / "all")
    analysis.build_report(analysis.load_runs(root), tmp_path / "report")
    tex = (tmp_path / "report" / "tables" / "update_frequency.tex").read_text()
    usual = re.search(r"over (\d) seeds per cell unless the cell says otherwise", tex).group(1)
    assert "\\textbf{" in tex
    spec = re.search(r"\\begin\{tabular\}\{([lrc]+)\}", tex).group(1)
    assert spec.endswith("rrr")  # the update frequencies 100, 400, 800: numbers, right-aligned
    body = tex[tex.index("\\midrule") : tex.index("\\bottomrule")]
    assert not re.search(rf"\d \({usual}\)", body)  # the usual count is said once, in the caption
    md = (tmp_path / "report" / "tables" / "update_frequency.md").read_text()
    assert "**" in md and "Bold: the highest mean of its row" in md

"""The analysis package on synthetic run records with known answers (tests/analysis_fixtures.py)."""

import json
import os
from pathlib import Path

import nbclient
import nbformat
import numpy as np
import pandas as pd
import pytest
from matplotlib.figure import Figure

import analysis
import analysis.load
from analysis import columns as C
from analysis.__main__ import main as cli
from analysis.tables import latex_escape, to_markdown
from tests import analysis_fixtures as fx

NOTEBOOK = Path(__file__).resolve().parents[1] / "analysis" / "notebooks" / "aggregate.ipynb"


@pytest.fixture(scope="module")
def sweep(tmp_path_factory) -> Path:
    return fx.write_everything(tmp_path_factory.mktemp("sweep"))


@pytest.fixture(scope="module")
def runs(sweep) -> pd.DataFrame:
    return analysis.load_runs(sweep)


@pytest.fixture(scope="module")
def main_grid(runs) -> analysis.Selection:
    return analysis.main_grid(runs, fx.SETUP)


def run_of(runs, path: Path) -> pd.Series:
    return runs.set_index(C.RUN_DIR).loc[str(path)]


# ------------------------------------------------------------------------ loading
def test_one_row_per_run_with_the_flattened_config_and_result(runs, sweep):
    assert len(runs) == len(analysis.find_run_dirs(sweep)) == 142
    row = run_of(runs, sweep / "dst" / "random" / "snip" / "d0.1" / "s2")
    assert (row["model.name"], row[C.SETUP], row[C.KIND], row[C.SEED]) == ("lenet5", fx.SETUP, "dst", 2)
    assert row["final.test_acc"] == fx.dst_accuracy("snip", 0.1, 2)
    assert row["best_val.test_acc"] == fx.dst_accuracy("snip", 0.1, 2) + 0.25
    assert (row[C.STATUS], row["wall_time"], row["code_version"]) == ("completed", 2.0, "fixture")
    assert json.loads(row["sparsity.overlap_with"]) == []  # lists are JSON text
    assert runs[C.KIND].value_counts().to_dict() == {"dst": 117, "static": 12, "dense": 7, "overlap_init": 6}


def test_failed_and_unfinished_runs_are_kept_with_their_state(runs, sweep):
    failed = run_of(runs, sweep / "dst" / "random" / "set" / "d0.2" / "s1")
    assert (failed[C.STATUS], failed["error"]) == ("failed", "RuntimeError: boom")
    killed = run_of(runs, sweep / "dst" / "gradient" / "snip" / "d0.5" / "s2")  # config.json only, no process
    assert killed[C.STATUS] == "stale" and pd.isna(killed["final.test_acc"])
    assert "killed before its first heartbeat" in killed[C.DETAIL]
    assert killed["sparsity.criterion"] == "snip"  # the config is read even without a result


def test_an_unreadable_record_is_reported_not_dropped(tmp_path):
    fx.write_run(tmp_path / "ok", fx.config(), test_acc=50.0)
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text('{"model": ')
    runs = analysis.load_runs(tmp_path)
    assert sorted(runs[C.STATUS]) == ["completed", "damaged"]
    problems = analysis.completeness(runs).problems
    assert problems[C.STATUS].tolist() == ["damaged"] and "config.json" in problems["error"].iloc[0]
    assert problems[C.DETAIL].iloc[0] == problems["error"].iloc[0]  # what makes it damaged


def test_runs_of_one_cell_differ_only_in_their_seed(runs):
    per_cell = runs.groupby(C.CELL).agg(runs=(C.SEED, "size"), seeds=(C.SEED, "nunique"))
    assert (per_cell["runs"] == per_cell["seeds"]).all()
    # Overlap tracking does not change training, so a tracking run shares its cell's identity.
    assert "overlap_with" not in json.loads(runs[C.IDENTITY].iloc[0])


def test_cache_is_used_and_refreshed_when_a_record_changes(tmp_path, monkeypatch):
    first = fx.write_run(tmp_path / "a", fx.config(**{"train.seed": 0}), test_acc=50.0)
    loaded = analysis.load_runs(tmp_path)
    assert (tmp_path / analysis.load.CACHE_NAME).exists()

    def no_reading(run_dir):
        raise AssertionError(f"{run_dir} was read although the cache is current")

    with monkeypatch.context() as m:
        m.setattr(analysis.load, "read_run", no_reading)
        pd.testing.assert_frame_equal(analysis.load_runs(tmp_path), loaded)

    result_path = first / "result.json"
    result = json.loads(result_path.read_text())
    result["final"]["test_acc"] = 60.0
    result_path.write_text(json.dumps(result))
    stat = result_path.stat()
    os.utime(result_path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))  # even on coarse clocks
    assert analysis.load_runs(tmp_path)["final.test_acc"].tolist() == [60.0]

    fx.write_run(tmp_path / "b", fx.config(**{"train.seed": 1}), result=False)  # a run that just started
    assert sorted(analysis.load_runs(tmp_path)[C.STATUS]) == ["completed", "stale"]  # (no process holds it)


def test_a_run_recorded_twice_is_one_observation(tmp_path):
    cfg = fx.config(**{"sparsity.density": 0.1, "train.seed": 0})
    fx.write_run(tmp_path / "one" / "r", cfg, test_acc=50.0)
    relaunched = {**cfg, "logging": {**cfg["logging"], "tags": ["again"]}}  # launch-only fields differ
    fx.write_run(tmp_path / "two" / "r", relaunched, test_acc=51.0)
    runs = analysis.load_runs(tmp_path, tmp_path / "one")  # nested sweep directories
    assert len(runs) == 2 and runs[C.CELL].nunique() == 1
    assert len(analysis.completed(runs)) == 1
    assert analysis.completeness(runs).duplicates["runs"].tolist() == [2]


def test_load_metrics_skips_a_last_line_cut_short(tmp_path):
    run = fx.write_run(tmp_path / "r", fx.config(), test_acc=50.0, result=False)
    with open(run / "metrics.jsonl", "a") as f:
        f.write('{"kind": "epoch", "epo')
    with pytest.warns(UserWarning, match="not valid JSON"):
        epochs = analysis.load_metrics([run], "epoch")
    assert epochs["epoch"].tolist() == [1, 2] and (epochs[C.RUN_DIR] == str(run)).all()


# ------------------------------------------------------------------------ design
def test_the_main_grid_is_the_paper_grid_and_studies_are_split_off(runs, main_grid):
    grid = main_grid.runs
    assert set(grid[C.UPDATE_FREQUENCY]) == {800} and not grid[C.GLOBAL].any()
    assert set(grid["sparsity.prune_rate"]) == {0.5}  # not the trajectory runs (0.4)
    assert set(grid[C.CRITERION]) == set(fx.CRITERIA) and set(grid[C.DENSITY]) == set(fx.DENSITIES)
    assert len(grid) == 2 * 3 * 4 * 3 - 3  # less the missing, failed and stale runs
    assert len(main_grid.baselines["dense"].runs) == 3 and not main_grid.baselines["dense"].differences
    assert len(main_grid.baselines["static"].runs) == 12

    [uf] = analysis.update_frequency_grids(runs, fx.SETUP)
    assert set(uf.runs[C.UPDATE_FREQUENCY]) == {100, 400, 800} and set(uf.runs[C.CRITERION]) == {"magnitude", "snip"}
    [gamma] = analysis.gamma_grids(runs, fx.SETUP)
    assert set(gamma.runs[C.GAMMA]) == {0.1, 1.0, 10.0}
    [sensitivity] = analysis.sensitivity_grids(runs, fx.SETUP)
    assert set(sensitivity.runs[C.UPDATE_FREQUENCY]) == {100}
    [global_grid] = analysis.global_pruning_grids(runs, fx.SETUP)
    assert global_grid.baselines["layer-wise"].differences == {"sparsity.init": "erk"}
    [d1] = analysis.density_one_grids(runs, "mlp_cifar10/cifar10")
    assert d1.baselines["dense + dropout"].runs["model.name"].unique().tolist() == ["mlp_cifar10_dropout"]
    assert not d1.baselines["dense"].differences


def test_cell_means_and_stds_over_seeds(main_grid):
    stats = analysis.summarize(main_grid.runs, [C.GROWTH, C.CRITERION, C.DENSITY]).set_index(
        [C.GROWTH, C.CRITERION, C.DENSITY]
    )
    full = stats.loc[("random", "snip", 0.05)]
    assert (full["n"], full["seeds"]) == (3, "0,1,2")
    assert full["mean"] == pytest.approx(fx.BASE[0.05] + fx.OFFSET["snip"]) and full["std"] == pytest.approx(fx.STD)
    short = stats.loc[("random", "set", 0.2)]  # seed 1 failed
    assert (short["n"], short["seeds"]) == (2, "0,2")
    assert short["mean"] == pytest.approx(fx.BASE[0.2] + fx.OFFSET["set"])
    assert short["std"] == pytest.approx(np.sqrt(0.5))


def test_the_metric_is_chosen_by_name(main_grid):
    table = analysis.accuracy_table([main_grid], metric="best_val.test_acc").data.set_index(
        [C.GROWTH, "method", C.DENSITY]
    )
    assert table.loc[("random", "snip", 0.05), "mean"] == pytest.approx(fx.BASE[0.05] + fx.OFFSET["snip"] + 0.25)
    assert table.loc[("—", "dense", 1.0), "n"] == 3


# ------------------------------------------------------------------------ statistics
def test_welch_pvalue_matches_the_t_distribution():
    # t = 1 with 8 degrees of freedom: P(T > 1) = 0.1733.
    best, other = [2, 3, 4, 5, 6], [1, 2, 3, 4, 5]
    assert analysis.welch_pvalue(best, other) == pytest.approx(0.17330, abs=1e-4)
    assert analysis.welch_pvalue(best, other, "two-sided") == pytest.approx(0.34659, abs=1e-4)
    assert np.isnan(analysis.welch_pvalue(best, [1.0]))  # no variance estimate from one seed
    assert analysis.welch_pvalue([1, 1], [1, 1]) == 1.0 and analysis.welch_pvalue([2, 2], [1, 1]) == 0.0


def test_holm_adjusted_pvalues():
    adjusted = analysis.holm([0.01, 0.04, 0.03, np.nan])
    np.testing.assert_allclose(adjusted[:3], [0.03, 0.06, 0.06])
    assert np.isnan(adjusted[3])


def test_holm_correction_changes_a_decision():
    # Each comparison has Welch t = 2 with 8 degrees of freedom: one-sided p = 0.040 < 0.05.
    best = 10 + np.array([-2.0, -1.0, 0.0, 1.0, 2.0])
    alone = analysis.compare_to_best({"best": best, "a": best - 2}).set_index("item")
    assert alone.loc["a", "p_value"] == pytest.approx(0.0403, abs=1e-4) and alone.loc["a", "worse"]
    both = analysis.compare_to_best({"best": best, "a": best - 2, "b": best - 2}).set_index("item")
    assert both.loc["a", "p_holm"] == pytest.approx(0.0806, abs=1e-4)
    assert not both["worse"].any() and both["best_group"].all()


def test_ranks_and_significance_on_records(main_grid):
    ranking = analysis.rank_criteria(main_grid.runs, by=(C.GROWTH, C.DENSITY)).set_index(
        [C.GROWTH, C.DENSITY, C.CRITERION]
    )
    at = ranking.loc[("random", 0.05)]
    assert at["rank"].to_dict() == {"magnitude": 1.0, "set": 2.0, "snip": 3.0}
    assert at["worse"].to_dict() == {"magnitude": False, "set": False, "snip": True}  # set is tied, snip worse
    assert np.isnan(at.loc["magnitude", "p_value"])
    # Gradient growth at 0.1: magnitude lost seed 2 (+0.5), so its mean falls below set's.
    at = ranking.loc[("gradient", 0.1)]
    assert at["rank"].to_dict() == {"magnitude": 2.0, "set": 1.0, "snip": 3.0}
    assert at.loc["magnitude", "best_group"]

    summary = analysis.rank_summary(ranking.reset_index(), low_density=0.1, by=(C.GROWTH,)).set_index(
        [C.GROWTH, C.CRITERION]
    )
    magnitude = summary.loc[("gradient", "magnitude")]
    assert (magnitude["avg_rank"], magnitude["avg_rank_low"], magnitude["avg_rank_high"]) == (1.25, 1.5, 1.0)
    assert (magnitude["first"], magnitude["first_low"], magnitude["best_group"]) == (3, 1, 4)
    assert summary.loc[("random", "snip"), ["avg_rank", "best_group"]].tolist() == [3.0, 0]


# ------------------------------------------------------------------------ completeness
def test_completeness_reports_failed_stale_and_missing_runs(runs):
    report = analysis.completeness(runs)
    totals = report.status[["completed", "failed", "stale", "diverged"]].sum().to_dict()
    assert totals == {"completed": 140, "failed": 1, "stale": 1, "diverged": 0}
    assert sorted(report.problems[C.STATUS]) == ["failed", "stale"]
    short = report.short[report.short[C.KIND] == "dst"].set_index([C.CRITERION, C.GROWTH, C.DENSITY])
    expected = {
        (c["sparsity.criterion"], c["sparsity.growth"], c["sparsity.density"]): str(c["train.seed"])
        for c in (fx.MISSING, fx.FAILED, fx.STALE)
    }
    assert short["missing_seeds"].to_dict() == expected
    assert short.loc[("set", "random", 0.2), "failed"] == 1 and short.loc[("snip", "gradient", 0.5), "stale"] == 1
    # One probe criterion ran for seed 0 only.
    assert set(report.short[report.short[C.KIND] == "overlap_init"][C.CRITERION]) == {"snip"}
    assert report.summary().splitlines()[0] == "142 runs: 140 completed, 1 failed, 1 stale"
    # With an explicit expectation, the two-seed studies are short too.
    assert len(analysis.completeness(runs, expected_seeds=3).short) > len(report.short)


# ------------------------------------------------------------------------ overlap
def test_overlap_at_initialisation_averages_each_seed_once(runs):
    at_init = analysis.overlap_at_init(runs)
    assert "run" not in set(at_init["a"]) | set(at_init["b"])
    pair = at_init[(at_init["a"] == "magnitude") & (at_init["b"] == "snip") & (at_init["prune_rate"] == 0.5)].iloc[0]
    # Seed 0 has two probes (0.6 each), seed 1 one (0.8): 0.7, not (0.6 + 0.6 + 0.8) / 3.
    assert (pair["mean"], pair["n"]) == (pytest.approx(0.7), 2)
    assert pair["std"] == pytest.approx(np.std([0.6, 0.8], ddof=1))
    matrix = analysis.jaccard_matrix(at_init[at_init["prune_rate"] == 0.25])
    np.testing.assert_allclose(matrix.to_numpy(), matrix.to_numpy().T)
    np.testing.assert_allclose(np.diag(matrix.to_numpy()), 1.0)


def test_overlap_along_training_is_averaged_over_seeds_per_step(runs):
    trajectories = analysis.overlap_trajectories(runs)
    assert set(trajectories[C.CRITERION]) == {"magnitude"} and set(trajectories["reference"]) == set(fx.INIT_CRITERIA)
    point = trajectories.set_index(["reference", "step"]).loc[("snip", 20)]
    expected = np.mean([fx.trajectory_jaccard("snip", 20, seed) for seed in (0, 1)])
    assert (point["mean"], point["n"], point["prune_rate"]) == (pytest.approx(expected), 2, pytest.approx(0.3))
    assert analysis.random_expectation(0.5) == pytest.approx(1 / 3)


# ------------------------------------------------------------------------ figures and tables
def test_fig1_from_records(main_grid, tmp_path):
    fig = analysis.accuracy_vs_density(main_grid)
    assert isinstance(fig, Figure) and len(fig.axes) == 4  # accuracy above, difference to the best below
    for ax, diff, growth in zip(fig.axes[:2], fig.axes[2:], ("random", "gradient")):
        assert ax.get_xscale() == "log" and diff.get_xlabel() == "density"
        assert ax.get_title() == f"LeNet-5 on Fashion-MNIST — {growth} growth"  # display names, no raw ids
        if growth == "random":  # every seed of every cell there (the missing one is in gradient growth)
            curves = [c[0] for c in diff.containers[:3]]  # (each difference is an error bar: its data line)
            gaps = [{round(float(y), 6) for y in line.get_ydata()} for line in curves]
            assert gaps == [{0.0}, {fx.OFFSET["set"]}, {fx.OFFSET["snip"]}]  # magnitude, SET, SNIP vs the best
        labels = [line.get_label() for line in ax.get_lines()]
        for name in ("Magnitude", "SET", "SNIP", "static", "dense"):
            assert labels.count(name) == 1, (name, labels)
        [dense] = [line for line in ax.get_lines() if line.get_label() == "dense"]
        assert dense.get_linestyle() == "--" and set(dense.get_ydata()) == {fx.DENSE_ACC}
        [magnitude] = [line for line in ax.get_lines() if line.get_label() == "Magnitude"]
        assert list(magnitude.get_xdata()) == list(fx.DENSITIES)
    assert fig.axes[0].get_ylabel() == "test accuracy (%)"
    legend_texts = [t.get_text() for t in fig.legends[0].get_texts()]
    assert {"Magnitude", "SET", "SNIP", "static", "dense"} <= set(legend_texts)
    png, pdf = analysis.save_figure(fig, tmp_path / "fig1")
    assert png.read_bytes().startswith(b"\x89PNG") and pdf.read_bytes().startswith(b"%PDF")


def test_table_writers_escape_their_formats(tmp_path):
    frame = pd.DataFrame({"criterion": ["a|b", "snip_x"], "acc": ["1.00 ± 0.50 (3)", "50%"]})
    assert "a\\|b" in to_markdown(frame)
    assert latex_escape("snip_x & 50% ± 1") == r"snip\_x \& 50\% $\pm$ 1"
    paths = analysis.Table("t", "Caption_1", frame).write(tmp_path)
    assert pd.read_csv(paths["csv"]).equals(frame)
    assert r"\caption{Caption\_1}" in paths["tex"].read_text()


# ------------------------------------------------------------------------ interfaces
def test_report_cli_writes_every_supported_table_and_figure(sweep, tmp_path, capsys):
    out = tmp_path / "report"
    assert cli(["report", str(sweep), "--out", str(out), "--alpha", "0.05"]) == 0
    assert str(out / "index.html") in capsys.readouterr().out
    tables = [
        "accuracy",
        "ranking",
        "ranking_summary",
        "runs_by_status",
        "cells",
        "short_cells",
        "not_completed",
        "update_frequency",
        "mest_gamma",
        "sensitivity",
        "global_pruning",
        "density_one",
        "overlap_init",
        "overlap_trajectory",
        "claims",
    ]
    for name in tables:
        for fmt in ("md", "csv", "tex"):
            assert (out / "tables" / f"{name}.{fmt}").stat().st_size > 0, (name, fmt)
    figures = [
        "fig1_accuracy_vs_density",
        "fig4_update_frequency",
        "fig7_mest_gamma",
        "fig8_sensitivity",
        "fig13_global_pruning",
        "fig6a_overlap_init",
        "fig6b_overlap_trajectory",
    ]
    stems = [f"{f}__lenet5_fashion_mnist" for f in figures] + ["fig5_density_one__mlp_cifar10_cifar10"]
    for stem in stems:
        for ext in ("png", "pdf"):
            assert (out / "figures" / f"{stem}.{ext}").exists(), stem
    index, page = (out / "index.md").read_text(), (out / "index.html").read_text()
    for stem in stems:
        assert f"figures/{stem}.png" in index and f"figures/{stem}.png" in page
    assert all(f"tables/{name}.csv" in index for name in tables) and "Not produced" not in index
    ranking = pd.read_csv(out / "tables" / "ranking.csv")
    assert set(ranking[C.CRITERION]) == set(fx.CRITERIA) and ranking["rank"].between(1, 3).all()


def test_report_says_what_it_could_not_produce(runs, tmp_path):
    probes_only = runs[runs[C.KIND] == "overlap_init"]
    analysis.build_report(probes_only, tmp_path)
    index = (tmp_path / "index.md").read_text()
    assert "Fig. 1 (accuracy vs density): no completed DST runs" in index and "fig6a_overlap_init" in index


def test_report_cli_refuses_an_unknown_metric_or_no_runs(sweep, tmp_path, capsys):
    assert cli(["report", str(sweep), "--out", str(tmp_path), "--metric", "final.nope"]) == 2
    assert "final.nope" in capsys.readouterr().err
    empty = tmp_path / "empty"
    empty.mkdir()
    assert cli(["report", str(empty)]) == 1
    assert "no runs" in capsys.readouterr().err


def test_notebook_runs_on_records(sweep, monkeypatch):
    monkeypatch.setenv("ANALYSIS_SWEEP_DIRS", str(sweep))
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    nbclient.NotebookClient(
        notebook, timeout=120, kernel_name="python3", resources={"metadata": {"path": str(sweep)}}
    ).execute()
    outputs = [o for cell in notebook.cells if cell.cell_type == "code" for o in cell.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    assert any("image/png" in o.get("data", {}) for o in outputs)  # the Fig. 1 of the setup
    assert any("1 failed" in o.get("text", "") for o in outputs)  # the completeness summary


def test_reading_results_does_not_import_torch():
    # A notebook that only reads results must start without torch: the config schema
    # (src.config, src.sparse.config) imports its torch-backed registries only to validate.
    import subprocess
    import sys

    code = (
        "import sys, analysis, analysis.load, src.config, src.sparse.config; "
        "assert 'torch' not in sys.modules, 'torch imported'; "
        "src.config.RunConfig.from_dict({'sparsity': {'criterion': 'snip'}})"
    )
    subprocess.run([sys.executable, "-c", code], check=True, env=dict(os.environ, PYTHONPATH=os.getcwd()))

"""The analysis on real run records: a real `setup=smoke` sweep trained here, whatever its axes.

``criterion=magnitude,mest seed=1,2,3`` is the sweep a new user tries first: no density grid,
one axis. Its records are the trainer's own (config.json, metrics.jsonl, result.json).
"""

import json
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import stats as sps

import analysis
from analysis import cells
from analysis import columns as C
from analysis.__main__ import main as cli
from analysis.load import CACHE_NAME
from tests import analysis_fixtures as fx

CRITERIA = ("magnitude", "mest")
SEEDS = (1, 2, 3)


def train_sweep(root: Path, *overrides: str) -> Path:
    """A real sweep of smoke runs, trained in this process; returns its run directory root."""
    from src.plan import expand
    from src.train import train

    jobs = expand(["setup=smoke", f"runs_root={root}", "name=sweep", *overrides], check_data=False)
    for job in jobs:
        train(job.config, job.run_dir)
    return root / "sweep"


@pytest.fixture(scope="module")
def sweep(tmp_path_factory) -> Path:
    return train_sweep(
        tmp_path_factory.mktemp("crit"), f"criterion={','.join(CRITERIA)}", f"seed={','.join(map(str, SEEDS))}"
    )


@pytest.fixture(scope="module")
def no_updates(tmp_path_factory) -> Path:
    """Two runs whose update frequency exceeds their steps: DST that never updated its topology."""
    return train_sweep(
        tmp_path_factory.mktemp("noupd"),
        "criterion=magnitude,mest",
        "seed=1",
        "train.epochs=1",
        "sparsity.update_frequency=1000",
    )


def results(sweep: Path) -> pd.DataFrame:
    """Each run's result.json, read here without the analysis package."""
    rows = []
    for path in sorted(sweep.glob("*/result.json")):
        result = json.loads(path.read_text())
        updates = sum(json.loads(line)["kind"] == "update" for line in (path.parent / "metrics.jsonl").open())
        rows.append(
            {
                "criterion": result["config"]["sparsity"]["criterion"],
                "seed": result["seed"],
                "acc": result["final"]["test_acc"],
                "best_epoch": result["best_val"]["epoch"],
                "final_epoch": result["final"]["epoch"],
                "updates": updates,
            }
        )
    return pd.DataFrame(rows)


def copy(sweep: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(sweep, tmp_path / "copy", ignore=shutil.ignore_patterns(".analysis_cache*")))


# ------------------------------------------------------------------------ 1: any sweep
@pytest.mark.slow
def test_a_sweep_without_a_density_grid_gets_the_metric_per_cell_and_tests(sweep, tmp_path, capsys):
    assert cli(["report", str(sweep), "--out", str(tmp_path / "report")]) == 0
    printed = capsys.readouterr().out
    truth = results(sweep)
    per_cell = pd.read_csv(tmp_path / "report" / "tables" / "cell_results.csv").set_index(C.CRITERION)
    for criterion, runs in truth.groupby("criterion"):
        row = per_cell.loc[criterion]
        assert row["n"] == 3 and row["seeds"] == "1,2,3"
        assert row["mean"] == pytest.approx(runs["acc"].mean()) and row["std"] == pytest.approx(runs["acc"].std())
        assert (row["min"], row["max"]) == pytest.approx((runs["acc"].min(), runs["acc"].max()))
        assert row["best_epoch"] == runs["best_epoch"].median() and row["final_epoch"] == 2
        shown = f"{runs['acc'].mean():.2f} ± {runs['acc'].std():.2f} (3)"
        assert shown in printed  # the CLI prints the table
        assert shown in (tmp_path / "report" / "index.md").read_text()  # and the report shows it

    tests = pd.read_csv(tmp_path / "report" / "tables" / "axis_tests.csv")
    assert set(tests["axis"]) == {C.CRITERION}
    means = truth.groupby("criterion")["acc"].mean()
    best, other = means.idxmax(), means.idxmin()
    by_level = tests.set_index("level")
    assert by_level.loc[best, "verdict"] == cells.BEST
    expected = sps.ttest_ind(
        truth.loc[truth.criterion == best, "acc"],
        truth.loc[truth.criterion == other, "acc"],
        equal_var=False,
        alternative="greater",
    ).pvalue
    assert by_level.loc[other, "p_holm"] == pytest.approx(expected)  # one comparison: Holm leaves it
    assert by_level.loc[other, "verdict"] == (cells.WORSE if expected < 0.05 else cells.NOT_WORSE)
    assert "Along each axis, with the other axes fixed" in printed
    assert (tmp_path / "report" / "figures" / "by_criterion__lenet5_synthetic.png").exists()
    assert "Fig. 1 (accuracy vs density)" in (tmp_path / "report" / "index.md").read_text()  # said why not


# ------------------------------------------------------------------------ 2: verdicts need seeds and updates
@pytest.mark.slow
def test_two_seeds_are_not_enough_for_a_verdict(sweep):
    runs = analysis.load_runs(sweep)
    two = cells.axis_tests(cells.cell_table(runs[runs[C.SEED] < 3]))
    assert set(two["verdict"]) == {"not enough seeds for a verdict (n=2, need ≥ 3)"}
    assert two["p_holm"].isna().all()
    allowed = cells.axis_tests(cells.cell_table(runs[runs[C.SEED] < 3]), min_seeds=2)
    assert cells.BEST in set(allowed["verdict"]) and allowed["p_holm"].notna().sum() == 1


@pytest.mark.slow
def test_topology_updates_are_counted_and_too_few_are_warned_about(sweep, no_updates, capsys):
    runs = analysis.load_runs(sweep)
    truth = results(sweep)
    counted = runs.set_index([C.CRITERION, C.SEED])[C.TOPOLOGY_UPDATES]
    for row in truth.itertuples():
        assert counted[row.criterion, row.seed] == row.updates  # the update lines the run logged
    # 3 updates (2 epochs x 18 steps, one every 10): as many as a launch asks for, so neither warns
    assert truth["updates"].min() == cells.FEW_UPDATES == 3 and cells.topology_warnings(runs).empty

    idle = analysis.load_runs(no_updates)
    assert set(idle[C.TOPOLOGY_UPDATES]) == {0} and set(results(no_updates)["updates"]) == {0}
    [advice] = set(cells.topology_warnings(idle)["advice"])
    assert advice.startswith("no topology update (1 epoch x 18 steps; sparsity.update_frequency=1000)")
    assert advice.endswith("for 3 updates set sparsity.update_frequency<=5 or train.epochs>=167")
    # One threshold and one piece of advice: the launch says the same of the same cell before it runs.
    from src.checks import update_warnings
    from src.plan import expand

    jobs = expand(
        ["setup=smoke", "criterion=magnitude", "seed=1", "train.epochs=1", "sparsity.update_frequency=1000"],
        check_data=False,
    )
    [line] = update_warnings(jobs)
    assert line.endswith(advice), (line, advice)
    assert set(cells.axis_tests(cells.cell_table(idle), min_seeds=1)["verdict"]) == {cells.NO_UPDATES}
    assert cli(["report", str(no_updates), "--out", str(no_updates / "report")]) == 0
    assert "warning: 2 × fewer than 3 topology updates: LeNet-5 on synthetic data, criterion=Magnitude (0); " in (
        capsys.readouterr().out
    )


def test_verdict_readiness_before_launch():
    assert cells.verdict_readiness({"a": 3, "b": 5}) is None
    assert cells.verdict_readiness([2, 2, 3]) == (
        "this sweep cannot reach a verdict: 2 of 3 cells get fewer than 3 "
        "seeds (as few as 2; a verdict needs ≥ 3 per cell)"
    )
    assert cells.verdict_readiness([2], min_seeds=2) is None
    assert "no topology updates" in cells.verdict_readiness([3, 3], topology_updates=[4, 0])


# ------------------------------------------------------------------------ 3: one style table, no raw ids
def test_every_registered_name_has_a_style():
    from src.data.registry import DATASETS
    from src.models.registry import MODELS
    from src.sparse.criteria import CRITERIA as REGISTERED
    from src.sparse.growth import GROWTH_RULES

    for field, registry in ((C.CRITERION, REGISTERED), (C.GROWTH, GROWTH_RULES), (C.MODEL, MODELS), (C.DATA, DATASETS)):
        missing = set(registry) - set(analysis.style.STYLES[field])
        assert not missing, f"{field}: no display name, colour and marker for {sorted(missing)}"
        styles = [analysis.style.STYLES[field][name] for name in registry]
        assert len({s.label for s in styles}) == len(styles)  # no two names shown alike


@pytest.mark.slow
def test_figures_show_display_names_never_raw_ids(sweep):
    runs = analysis.load_runs(sweep)
    fig = analysis.figures.axis_figure(runs, "lenet5/synthetic", C.CRITERION)
    texts = [t.get_text() for t in fig.findobj(lambda a: hasattr(a, "get_text"))]
    assert "LeNet-5 on synthetic data — test accuracy (%) by criterion" in texts
    assert {"Magnitude", "MEST"} <= set(texts)
    assert not [t for t in texts if any(raw in t for raw in ("lenet5", "synthetic/", "mest", "magnitude"))]


# ------------------------------------------------------------------------ 4: the HTML report in a browser
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
PROBE = """<script>
window.__errors = [];
window.addEventListener('error', e => window.__errors.push('error: ' + (e.message || (e.target && e.target.src))),
                        true);
const consoleError = console.error;
console.error = (...args) => { window.__errors.push('console: ' + args.join(' ')); consoleError(...args); };
window.addEventListener('load', () => {
  const width = document.documentElement.clientWidth, wide = [];
  for (const el of document.body.querySelectorAll('*')) {
    const box = el.getBoundingClientRect();
    if (box.width && box.right > width + 0.5 && !el.closest('.table')) wide.push(el.tagName + ' ' + box.right);
  }
  for (const img of document.images) if (!img.naturalWidth) window.__errors.push('image not loaded: ' + img.src);
  const out = document.createElement('pre');
  out.id = 'probe';
  out.textContent = JSON.stringify({window: window.innerWidth, width, scroll: document.documentElement.scrollWidth,
                                    wide: wide.slice(0, 20),
                                    headings: Array.from(document.querySelectorAll('h2,h3')).map(
                                      h => [h.textContent, h.getBoundingClientRect().top]),
                                    images: Array.from(document.images).map(
                                      i => [i.getAttribute('src'), i.getBoundingClientRect().top]),
                                    errors: window.__errors});
  document.body.appendChild(out);
});
</script>"""


def in_chromium(index: Path) -> dict:
    """Load the report in headless Chromium at 1280 px; what the probe found."""
    probe = index.with_name("probe.html")
    probe.write_text(index.read_text().replace("<head>", "<head>" + PROBE, 1))
    out = subprocess.run(
        [
            CHROMIUM,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--window-size=1280,900",
            "--allow-file-access-from-files",
            "--virtual-time-budget=10000",
            "--dump-dom",
            probe.as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    dom = out.stdout
    start = dom.index('<pre id="probe">') + len('<pre id="probe">')
    import html

    return json.loads(html.unescape(dom[start : dom.index("</pre>", start)]))


@pytest.mark.slow
@pytest.mark.skipif(CHROMIUM is None, reason="headless Chromium not installed (Debian: apt-get install chromium)")
def test_the_html_report_fits_a_1280px_window_in_chromium(sweep, tmp_path):
    wide = fx.write_everything(tmp_path / "fixture")  # every study, with the widest tables
    for runs_dir in (sweep, wide):
        out = tmp_path / f"report_{runs_dir.name}"
        assert cli(["report", str(runs_dir), "--out", str(out)]) == 0
        page = (out / "index.html").read_text()
        assert "<pre>" not in page  # the claims (and every finding) are tables, not preformatted text
        found = in_chromium(out / "index.html")
        assert found["errors"] == [], found["errors"]
        assert found["window"] == 1280 and found["wide"] == [] and found["scroll"] <= found["width"], found
    assert "<th>verdict</th>" in (tmp_path / "report_fixture" / "index.html").read_text()  # claims table


# ------------------------------------------------------------------------ 5: damaged inputs
@pytest.mark.slow
def test_a_stray_or_broken_run_dir_is_reported_by_path_and_never_stops_the_report(sweep, tmp_path, capsys):
    root = copy(sweep, tmp_path)
    (root / "stray").mkdir()
    (root / "stray" / "config.json").write_text(json.dumps({"note": "not a run"}))  # no sparsity.mode
    (root / "odd").mkdir()
    (root / "odd" / "config.json").write_text(
        json.dumps({"sparsity": {"mode": "dst", "density": "most"}, "model": 5})
    )  # the config schema refuses it
    (root / "loop").mkdir()
    (root / "loop" / "result.json").symlink_to(root / "loop" / "result.json")  # a real symlink loop
    assert cli(["report", str(root), "--out", str(tmp_path / "report")]) == 0
    problems = pd.read_csv(tmp_path / "report" / "tables" / "not_completed.csv").set_index(C.RUN_DIR)
    assert problems.loc[str(root / "stray"), "error"] == "config.json: not a run config (no sparsity.mode)"
    assert problems.loc[str(root / "odd"), C.STATUS] == C.DAMAGED and problems.loc[str(root / "odd"), "error"]
    assert problems.loc[str(root / "stray"), C.STATUS] == problems.loc[str(root / "loop"), C.STATUS] == C.DAMAGED
    assert "result.json" in problems.loc[str(root / "loop"), "error"]
    per_cell = pd.read_csv(tmp_path / "report" / "tables" / "cell_results.csv")
    assert list(per_cell["n"]) == [3, 3]  # the good runs are all there


@pytest.mark.slow
def test_flipped_bytes_in_the_cache_are_detected_and_the_cache_rebuilt(sweep, tmp_path):
    root = copy(sweep, tmp_path)
    fresh = analysis.load_runs(root)
    cache = root / CACHE_NAME
    damaged = 0
    for offset in range(200, cache.stat().st_size - 200, 997):  # bytes all over the file, one at a time
        original = cache.read_bytes()
        data = bytearray(original)
        data[offset] ^= 0x5A
        cache.write_bytes(bytes(data))
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            again = analysis.load_runs(root)
        assert any("is damaged" in str(w.message) for w in caught), offset
        pd.testing.assert_frame_equal(again, fresh)
        assert cache.read_bytes() != bytes(data)  # rewritten
        damaged += 1
    assert damaged >= 3


@pytest.mark.slow
def test_no_finished_runs_yet_and_a_missing_sweep_dir_are_one_line(sweep, tmp_path):
    root = copy(sweep, tmp_path)
    for result in root.glob("*/result.json"):
        result.unlink()
    shutil.rmtree(next(root.glob("*mest*s3*")))  # a seed never started: missing
    out = subprocess.run([sys.executable, "-m", "analysis", "report", str(root)], capture_output=True, text=True)
    assert out.returncode == 1 and out.stderr.strip() == "no finished runs yet (5 stale, 1 missing)"
    out = subprocess.run(
        [sys.executable, "-m", "analysis", "report", str(tmp_path / "nowhere")], capture_output=True, text=True
    )
    assert out.returncode == 1 and out.stderr.strip() == f"error: no sweep directory {tmp_path / 'nowhere'}"


# ------------------------------------------------------------------------ the vectorised statistics
def test_vectorised_ranking_equals_the_per_group_tests(tmp_path):
    runs = analysis.load_runs(fx.write_sweep(tmp_path), cache=False)
    grid = analysis.main_grid(runs, fx.SETUP)
    fast = analysis.rank_criteria(grid.runs).set_index([C.SETUP, C.GROWTH, C.DENSITY, C.CRITERION])
    for (setup, growth, density), group in grid.runs.groupby([C.SETUP, C.GROWTH, C.DENSITY]):
        slow = analysis.compare_to_best({c: g[C.DEFAULT_METRIC].to_numpy() for c, g in group.groupby(C.CRITERION)})
        for row in slow.itertuples():
            mine = fast.loc[(setup, growth, density, row.item)]
            assert mine["rank"] == row.rank and mine["best_group"] == row.best_group
            np.testing.assert_allclose([mine["p_value"], mine["p_holm"]], [row.p_value, row.p_holm], equal_nan=True)


# ------------------------------------------------------------------------ 7: the notebook
NOTEBOOK = Path(analysis.__file__).parent / "notebooks" / "aggregate.ipynb"


@pytest.mark.slow
def test_the_notebook_runs_headless_on_a_sweep_given_as_a_parameter(sweep, tmp_path):
    import nbformat

    assert cli(["notebook", str(sweep), "--out", str(tmp_path / "executed.ipynb")]) == 0
    notebook = nbformat.read(tmp_path / "executed.ipynb", as_version=4)
    outputs = [o for cell in notebook.cells if cell.cell_type == "code" for o in cell.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    html = "".join(o.get("data", {}).get("text/html", "") for o in outputs)
    assert "mean ± std (n)" in html and "verdict" in html  # per cell, and along each axis
    assert "regrown_just_pruned_share" in html  # the topology diagnostics' table
    images = [o for o in outputs if "image/png" in o.get("data", {})]
    assert len(images) == 4  # the criterion axis, the learning curves, the topology updates, the FLOPs
    text = "".join(o.get("text", "") for o in outputs)
    assert "6 runs: 6 completed" in text  # (3 updates per run: as many as asked for, no warning printed)


def test_the_stored_notebook_has_its_outputs_and_stays_small():
    import nbformat

    notebook = nbformat.read(NOTEBOOK, as_version=4)
    code = [cell for cell in notebook.cells if cell.cell_type == "code"]
    assert all(cell.execution_count for cell in code)  # executed, so that it previews on a code host
    outputs = [o for cell in code for o in cell.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    # It shows the committed study (results/fmnist_fig1/: 168 runs), its Fig. 1 and its FLOPs figure (its
    # runs.csv keeps no per-epoch or per-update lines, so the notebook says so instead of drawing them).
    assert "168 runs: 168 completed" in "".join(o.get("text", "") for o in outputs)
    assert sum("image/png" in o.get("data", {}) for o in outputs) >= 2
    assert NOTEBOOK.stat().st_size < 1_000_000
    assert "dst-report notebook" in (Path(__file__).parents[1] / "README.md").read_text()


# ------------------------------------------------------------------------ 6: a repeated report
def test_a_repeated_report_reuses_its_figures_until_their_runs_change(tmp_path):
    import os

    root = fx.write_sweep(tmp_path / "runs")
    out = tmp_path / "report"
    analysis.build_report(analysis.load_runs(root), out)
    figure = out / "figures" / "fig1_accuracy_vs_density__lenet5_fashion_mnist.png"
    drawn = {p: p.stat().st_mtime_ns for p in (out / "figures").glob("*.png")}
    assert figure in drawn
    for path in drawn:
        os.utime(path, ns=(1, 1))  # so that a redraw shows, however coarse the clock
    analysis.build_report(analysis.load_runs(root), out)
    assert {p.stat().st_mtime_ns for p in drawn} == {1}  # nothing redrawn
    assert "layer-wise" not in pd.read_csv(out / "tables" / "accuracy.csv")["method"].tolist()

    result = next(root.glob("dst/random/snip/d0.05/s0")) / "result.json"
    record = json.loads(result.read_text())
    record["final"]["test_acc"] = 50.0
    result.write_text(json.dumps(record))
    analysis.build_report(analysis.load_runs(root), out)
    assert figure.stat().st_mtime_ns != 1  # its runs changed: drawn again

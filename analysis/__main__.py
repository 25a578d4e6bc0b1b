"""Command line: ``dst-report <sweep dirs...> [--out <dir>]`` (also ``dst-report report ...``
and ``python -m analysis report ...``), and ``dst-report notebook <sweep dirs...> [--out <file.ipynb>]``."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from src import resources
from src.rundir.files import atomic_write_text

from . import columns as C
from .verdict import ALTERNATIVES, MIN_SEEDS


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=program(), description=__doc__)
    commands = p.add_subparsers(dest="command", required=True)
    report = commands.add_parser("report", help="write every table and figure the runs support, with an index page")
    report.add_argument("sweep_dirs", nargs="+", type=Path, help="directories searched recursively for runs")
    report.add_argument("--out", type=Path, help="output directory (default: <first sweep dir>/report)")
    report.add_argument(
        "--metric",
        default=C.DEFAULT_METRIC,
        help="runs-table column compared, e.g. final.test_acc (default) or best_val.test_acc",
    )
    report.add_argument("--alpha", type=float, default=0.05, help="significance level (default 0.05)")
    report.add_argument(
        "--alternative",
        choices=ALTERNATIVES,
        default="greater",
        help="Welch's t-test against the best: one-sided 'greater' (default) or 'two-sided'",
    )
    report.add_argument(
        "--low-density",
        type=float,
        default=0.1,
        help="densities up to this are 'low' in the ranking summary (default 0.1)",
    )
    report.add_argument(
        "--high-density",
        type=float,
        default=0.3,
        help="densities from this up are 'high' in the paper's claims (default 0.3)",
    )
    report.add_argument(
        "--expected-seeds",
        type=int,
        help="seeds every cell should have (default: as many as the best-covered cell with the same "
        "setup, kind and variant)",
    )
    report.add_argument(
        "--min-seeds",
        type=int,
        default=MIN_SEEDS,
        help=f"completed seeds per cell a verdict needs (default {MIN_SEEDS})",
    )
    report.add_argument("--no-cache", action="store_true", help="do not read or write the sweep's parquet cache")
    notebook = commands.add_parser(
        "notebook", help="execute analysis/notebooks/aggregate.ipynb on the sweep dirs and save it with its outputs"
    )
    notebook.add_argument("sweep_dirs", nargs="+", type=Path, help="directories searched recursively for runs")
    notebook.add_argument(
        "--out",
        type=Path,
        help="where the executed copy goes: a .ipynb file, or a directory for aggregate.ipynb "
        "(default: <first sweep dir>/aggregate.ipynb); the packaged notebook is never modified",
    )
    notebook.add_argument("--metric", default=C.DEFAULT_METRIC, help="runs-table column compared")
    notebook.add_argument("--timeout", type=int, default=600, help="seconds per cell (default 600)")
    return p


NOTEBOOK = resources.notebook()  # shipped with the package


def run_notebook(sweep_dirs: list[Path], out: Path, metric: str = C.DEFAULT_METRIC, timeout: int = 600) -> Path:
    """A copy of the aggregate notebook executed headless on ``sweep_dirs`` (given to its
    kernel as ANALYSIS_SWEEP_DIRS, absolute: a relative one is from this process's working
    directory), written with its outputs to ``out``; the packaged notebook is only read."""
    import nbclient  # only for the notebook command (the notebook extra)
    import nbformat  # (as above)

    notebook = nbformat.read(NOTEBOOK, as_version=4)
    env = {"ANALYSIS_SWEEP_DIRS": os.pathsep.join(str(d.resolve()) for d in sweep_dirs), "ANALYSIS_METRIC": metric}
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)  # the kernel inherits this process's environment
    try:
        nbclient.NotebookClient(
            notebook,
            timeout=timeout,
            kernel_name="python3",
            resources={"metadata": {"path": str(sweep_dirs[0].resolve())}},
        ).execute()
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out, nbformat.writes(notebook))
    return out


def program() -> str:
    """The name this command was called by: `dst-report` (the installed script) or `python -m analysis`."""
    return "dst-report" if Path(sys.argv[0]).name == "dst-report" else "python -m analysis"


COMMANDS = ("report", "notebook")


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] not in COMMANDS and argv[0] not in ("-h", "--help"):
        argv.insert(0, "report")  # `dst-report DIR`: the report is the default command
    args = parser().parse_args(argv)
    absent = [str(d) for d in args.sweep_dirs if not d.is_dir()]
    if absent:
        print(f"error: no sweep directory {', '.join(absent)}", file=sys.stderr)
        return 1
    if args.command == "notebook":
        out = args.out or args.sweep_dirs[0]
        if out.suffix != ".ipynb":
            out = out / NOTEBOOK.name
        out = run_notebook(args.sweep_dirs, out, args.metric, args.timeout)
        print(f"notebook: {out}")
        return 0
    from . import load, report  # pandas: not on the --help path

    runs = load.load_runs(*args.sweep_dirs, cache=not args.no_cache)
    if runs.empty:
        where = ", ".join(map(str, args.sweep_dirs))
        print(f"error: no runs (config.json / result.json) under {where}", file=sys.stderr)
        return 1
    if not (runs[C.STATUS] == C.COMPLETED).any():
        print(f"no finished runs yet ({not_finished(runs)})", file=sys.stderr)
        return 1
    if args.metric not in runs:
        print(f"error: no column {args.metric!r} in the runs table", file=sys.stderr)
        return 2
    out = args.out or args.sweep_dirs[0] / "report"
    options = report.Options(
        metric=args.metric,
        alpha=args.alpha,
        alternative=args.alternative,
        low_density=args.low_density,
        high_density=args.high_density,
        expected_seeds=args.expected_seeds,
        min_seeds=args.min_seeds,
    )
    index = report.build_report(runs, out, options, sources=args.sweep_dirs)
    print(f"{len(runs)} runs from {', '.join(map(str, args.sweep_dirs))}")
    print(results_text(out))
    print(f"report: {index} (and {index.with_suffix('.md')})")
    return 0


def not_finished(runs) -> str:
    """``5 stale, 1 missing``: the runs in each state (`src.rundir.state`'s words, as `status`
    says them), the (cell, seed) pairs other cells of the same study have and these lack
    counted as missing."""
    from .completeness import ORDER  # (pandas, as `load`: not on the --help path)

    readable = runs[runs[C.CELL].notna()]
    family = [C.SETUP, C.KIND, C.VARIANT]
    expected = readable.groupby(family, dropna=False).agg(cells=(C.CELL, "nunique"), seeds=(C.SEED, "nunique"))
    present = len(readable.drop_duplicates([C.CELL, C.SEED]))
    counts = runs[C.STATUS].value_counts().to_dict()
    counts["missing"] = counts.get("missing", 0) + int((expected["cells"] * expected["seeds"]).sum()) - present
    return ", ".join(f"{int(counts[s])} {s}" for s in ORDER if counts.get(s))


def results_text(report_dir: Path, max_rows: int = 40) -> str:
    """The report's per-cell results, tests along each axis and warnings (one line per kind),
    for the terminal (at most ``max_rows`` rows of each table; the report has them all)."""
    lines = []
    for name in ("cell_results", "axis_tests"):
        path = report_dir / "tables" / f"{name}.md"
        if not path.exists():
            continue
        caption, _, table = path.read_text().partition("\n\n")
        rows = table.rstrip().splitlines()
        lines += ["", caption, *rows[: max_rows + 2]]
        if len(rows) > max_rows + 2:
            lines.append(f"... {len(rows) - max_rows - 2} more rows in {path}")
    index = report_dir / "index.md"  # its Warnings section: one line per kind, with the cells and the advice
    if index.exists():
        text = index.read_text()
        if "\n## Warnings\n" in text:
            section = text.split("\n## Warnings\n", 1)[1].split("\n## ", 1)[0]
            lines += [f"warning: {line[2:]}" for line in section.splitlines() if line.startswith("- ")]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())

"""Command line: ``python -m analysis report <sweep dirs...> --out <dir>``."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from . import columns as C
from .load import load_runs
from .report import Options, build_report
from .stats import ALTERNATIVES


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m analysis", description=__doc__)
    commands = p.add_subparsers(dest="command", required=True)
    report = commands.add_parser("report", help="write every table and figure the runs support, with an index page")
    report.add_argument("sweep_dirs", nargs="+", type=Path, help="directories searched recursively for runs")
    report.add_argument("--out", type=Path, help="output directory (default: <first sweep dir>/report)")
    report.add_argument("--metric", default=C.DEFAULT_METRIC,
                        help="runs-table column compared, e.g. final.test_acc (default) or best_val.test_acc")
    report.add_argument("--alpha", type=float, default=0.05, help="significance level (default 0.05)")
    report.add_argument("--alternative", choices=ALTERNATIVES, default="greater",
                        help="Welch's t-test against the best: one-sided 'greater' (default) or 'two-sided'")
    report.add_argument("--low-density", type=float, default=0.1,
                        help="densities up to this are 'low' in the ranking summary (default 0.1)")
    report.add_argument("--high-density", type=float, default=0.3,
                        help="densities from this up are 'high' in the paper's claims (default 0.3)")
    report.add_argument("--expected-seeds", type=int,
                        help="seeds every cell should have (default: as many as the best-covered cell with the same "
                             "setup, kind and variant)")
    report.add_argument("--no-cache", action="store_true", help="do not read or write the sweep's parquet cache")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    runs = load_runs(*args.sweep_dirs, cache=not args.no_cache)
    if runs.empty:
        where = ", ".join(map(str, args.sweep_dirs))
        print(f"error: no runs (config.json / result.json) under {where}", file=sys.stderr)
        return 1
    if args.metric not in runs:
        print(f"error: no column {args.metric!r} in the runs table", file=sys.stderr)
        return 2
    out = args.out or args.sweep_dirs[0] / "report"
    options = Options(metric=args.metric, alpha=args.alpha, alternative=args.alternative,
                      low_density=args.low_density, high_density=args.high_density,
                      expected_seeds=args.expected_seeds)
    index = build_report(runs, out, options, sources=args.sweep_dirs)
    print(f"{len(runs)} runs from {', '.join(map(str, args.sweep_dirs))}")
    print(f"report: {index} (and {index.with_suffix('.md')})")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""A study's reproduction record, from its run directories, for the repository:

    <out>/runs.csv        one row per run: mode, criterion, growth, density, seed, status,
                          final / best test accuracy, train time, steps, topology updates, host
    <out>/throughput.json wall time of the study and runs per hour on the machines it ran on
    <out>/report/         the report (`python -m analysis report`): tables, figures, claims

    python scripts/study_record.py runs/fmnist_fig1 --out results/fmnist_fig1

No run directories or checkpoints are copied: the record is small enough for git. When the
run directories are gone, ``--from-csv`` rebuilds the report from the committed runs.csv
(runs.csv and throughput.json are kept as they are):

    python scripts/study_record.py --from-csv results/fmnist_fig1/runs.csv --out results/fmnist_fig1

Each run's config.json is composed again from the study's sweep files (the run directory
names in runs.csv, which hash the experiment, must match) and its result.json holds what
runs.csv kept (status, accuracies, steps, times). Such a result has no record format, no
per-layer densities and no update lines: the report counts its FLOPs from the config and the
schedule (`analysis.flops`), and has no learning curves.
"""

from __future__ import annotations

import argparse
import json
import sys
from datetime import datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import pandas as pd  # noqa: E402

from analysis import columns as C  # noqa: E402
from analysis.__main__ import main as report_main  # noqa: E402
from analysis.load import load_metrics, load_runs  # noqa: E402

RUNS_CSV = {  # runs-table column -> runs.csv column
    C.MODE: "mode",
    C.CRITERION: "criterion",
    C.GROWTH: "growth",
    C.DENSITY: "density",
    C.SEED: "seed",
    C.STATUS: "status",
    "final.test_acc": "final_test_acc",
    "best_test_acc": "best_test_acc",
    "best_val.test_acc": "test_acc_at_best_val",
    "best_val.epoch": "best_val_epoch",
    "train_time": "train_time_s",
    "wall_time": "wall_time_s",
    "steps": "steps",
    "topology_updates": "topology_updates",
    "threads": "threads",
    "host": "host",
    "cpu_model": "cpu_model",
    "finished_at": "finished_at",
    C.RUN_DIR: "run",
}


def runs_table(sweep_dir: Path) -> pd.DataFrame:
    runs = load_runs(sweep_dir, cache=False)
    epochs = load_metrics(runs, "epoch")
    updates = load_metrics(runs, "update")
    best = epochs.groupby(C.RUN_DIR)["test_acc"].max() if len(epochs) else pd.Series(dtype=float)
    counts = updates.groupby(C.RUN_DIR).size() if len(updates) else pd.Series(dtype=int)
    runs["best_test_acc"] = runs[C.RUN_DIR].map(best)
    runs["topology_updates"] = runs[C.RUN_DIR].map(counts).fillna(0).astype(int)
    dense = runs[C.MODE] == "dense"
    runs.loc[dense, C.DENSITY] = 1.0  # (a dense run's density field is the unused default)
    for name in (C.CRITERION, C.GROWTH):
        runs.loc[runs[C.MODE] != "dst", name] = ""  # no update rule outside DST
    runs[C.RUN_DIR] = runs[C.RUN_DIR].map(lambda p: Path(p).name)
    table = runs.reindex(columns=list(RUNS_CSV)).rename(columns=RUNS_CSV)
    order = {"dense": 0, "static": 1, "dst": 2}
    return table.sort_values(
        ["mode", "criterion", "growth", "density", "seed"], key=lambda s: s.map(order) if s.name == "mode" else s
    ).reset_index(drop=True)


def throughput(table: pd.DataFrame) -> dict:
    """Runs per hour from the runs' own records: first start to last finish."""
    done = table[table["status"] == "completed"].copy()
    if done.empty:
        return {"completed": 0}
    finished = pd.to_datetime(done["finished_at"].map(lambda t: datetime.strptime(t, "%Y-%m-%dT%H:%M:%S%z")))
    started = finished - pd.to_timedelta(done["wall_time_s"], unit="s")
    span_h = (finished.max() - started.min()).total_seconds() / 3600
    busy_h = _union_hours(sorted(zip(started, finished)))
    return {
        "completed": int(len(done)),
        "runs": int(len(table)),
        "first_start": started.min().isoformat(),
        "last_finish": finished.max().isoformat(),
        "span_hours": round(span_h, 3),
        "runs_per_hour": round(len(done) / span_h, 2),
        # an interrupted and resumed study has idle gaps: the hours some run was running
        "busy_hours": round(busy_h, 3),
        "runs_per_busy_hour": round(len(done) / busy_h, 2),
        "median_run_wall_s": {m: round(float(g["wall_time_s"].median()), 1) for m, g in done.groupby("mode")},
        "median_train_time_s": {m: round(float(g["train_time_s"].median()), 1) for m, g in done.groupby("mode")},
        "threads_per_run": sorted(int(t) for t in done["threads"].dropna().unique()),
        "hosts": sorted(done["host"].dropna().unique()),
        "cpu_models": sorted(done["cpu_model"].dropna().unique()),
    }


def _union_hours(intervals) -> float:
    """The length of the union of sorted (start, end) intervals, in hours."""
    total, end = 0.0, None
    for start, finish in intervals:
        if end is None or start > end:
            total += (finish - start).total_seconds()
            end = finish
        elif finish > end:
            total += (finish - end).total_seconds()
            end = finish
    return total / 3600


STUDY_SWEEPS = ("fmnist_fig1_dense", "fmnist_fig1_static", "fmnist_fig1")


def records_from_csv(csv_path: Path, root: Path, sweeps=STUDY_SWEEPS) -> Path:
    """The study's run directories rebuilt under ``root`` from runs.csv (module docstring)."""
    from src.plan import expand
    from src.rundir import RunRecorder, config_hash
    from src.rundir.identity import run_identity

    table = pd.read_csv(csv_path).set_index("run")
    jobs = [job for sweep in sweeps for job in expand([f"+sweeps={sweep}", f"runs_root={root}"], check_data=False)]
    by_name = {job.run_dir.name: job for job in jobs}
    unknown = sorted(set(table.index) - set(by_name))
    if unknown:
        raise ValueError(f"{len(unknown)} runs of {csv_path} are not in the sweeps {', '.join(sweeps)}: {unknown[:3]}")
    for name, row in table.iterrows():
        job = by_name[name]
        config = job.config.to_dict()
        epochs = config["train"]["epochs"]
        recorder = RunRecorder(job.run_dir, config)
        result = {
            "status": row["status"],
            "config": config,
            "config_hash": config_hash(run_identity(config)),
            "seed": int(row["seed"]),
            "epochs_completed": epochs if row["status"] == "completed" else None,
            "steps": int(row["steps"]),
            "total_steps": int(row["steps"]) if row["status"] == "completed" else None,
            "final": {"epoch": epochs, "test_acc": float(row["final_test_acc"])},
            "best_val": {"epoch": int(row["best_val_epoch"]), "test_acc": float(row["test_acc_at_best_val"])},
            "wall_time": float(row["wall_time_s"]),
            "train_time": float(row["train_time_s"]),
            "threads": None if pd.isna(row["threads"]) else int(row["threads"]),
            "host": row["host"],
            "cpu_model": row["cpu_model"],
            "finished_at": row["finished_at"],
        }
        # (written as the records of that time were: without a format field)
        path = job.run_dir / "result.json"
        path.write_text(json.dumps(result, indent=2, sort_keys=True))
        recorder.close()
    return root / jobs[0].run_dir.parent.name


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("sweep_dir", type=Path, nargs="?", help="the study's run directories (runs_root/name)")
    p.add_argument("--from-csv", type=Path, help="rebuild the report from this runs.csv (no run directories)")
    p.add_argument("--notebook", type=Path, help="also execute the aggregate notebook on the study, to this .ipynb")
    p.add_argument("--out", type=Path, required=True, help="where the record goes, e.g. results/fmnist_fig1")
    p.add_argument("--expected-seeds", type=int, default=3, help="seeds every cell should have (default 3)")
    args = p.parse_args(argv)
    if args.from_csv is not None:
        import tempfile

        with tempfile.TemporaryDirectory() as tmp:
            sweep_dir = records_from_csv(args.from_csv, Path(tmp))
            code = report_main(
                ["report", str(sweep_dir), "--out", str(args.out / "report"), "--no-cache"]
                + ["--expected-seeds", str(args.expected_seeds)]
            )
            if args.notebook is not None:
                code = code or report_main(["notebook", str(sweep_dir), "--out", str(args.notebook)])
            return code
    if args.sweep_dir is None or not args.sweep_dir.is_dir():
        print(f"error: no study runs at {args.sweep_dir} (run `make study` first)", file=sys.stderr)
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    table = runs_table(args.sweep_dir)
    table.to_csv(args.out / "runs.csv", index=False, float_format="%.6g")
    stats = throughput(table)
    (args.out / "throughput.json").write_text(json.dumps(stats, indent=2) + "\n")
    print(f"{len(table)} runs ({stats['completed']} completed) -> {args.out / 'runs.csv'}")
    code = report_main(
        [
            "report",
            str(args.sweep_dir),
            "--out",
            str(args.out / "report"),
            "--no-cache",
            "--expected-seeds",
            str(args.expected_seeds),
        ]
    )
    if args.notebook is not None:
        code = code or report_main(["notebook", str(args.sweep_dir), "--out", str(args.notebook)])
    return code


if __name__ == "__main__":
    sys.exit(main())

"""Whole runs of the reference implementation and of this project, side by side, with statistics.

    python scripts/fidelity_stats.py run   --out runs/fidelity [--seeds 8] [--jobs 1] [--epochs 3]
    python scripts/fidelity_stats.py table --out runs/fidelity      # -> runs/fidelity/table.md

The cells are the LeNet-5 / Fashion-MNIST comparisons of the paper's training setup (SGD 0.01
Nesterov, weight decay 5e-4, x0.1 at 50 % / 75 % of the epochs, batch 128, ERK), `--epochs`
epochs (3 by default). Each cell is trained by three implementations:

- ``reference``: the paper's code (``main.main``), run from a private copy of its tree;
- ``compat``: this project with the reference's semantics (``SparsityConfig.reference()``,
  the reference's train / validation split);
- ``clean``: this project's defaults (the same cell otherwise).

The metric is the final model's test accuracy (the reference's ``eval_acc``). ``table``
compares each project variant with the reference per cell by Welch's t-test (two-sided) and
pools the sparse cells per seed: the cells of one seed share its initialisation and data order,
so their differences are not independent; the seed is the unit (for each seed, the mean over
the sparse cells of project - reference; a one-sample t-test over the seeds).

Every run is one subprocess writing ``<out>/<impl>/<cell>/s<seed>/result.json`` atomically;
``run`` skips runs that have one, so it resumes after an interruption. Runs go cell by cell
(seeds inner), so a partial sweep has whole cells. The reference reads Fashion-MNIST from
``$FASHION_MNIST_PYTORCH/FashionMNIST/raw`` (IDX files, not gzipped): ``run`` prepares that
from the project's dataset location unless the variable is set.
"""

from __future__ import annotations

import argparse
import gzip
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(1, str(ROOT))  # the project's `src`, also once a reference run has changed directory
REFERENCE = ROOT / ".." / "shared" / "reference" / "fantastic_weights_paper"

from src.rundir import atomic_write_text  # noqa: E402 (after the path above)

IMPLS = ("reference", "compat", "clean")

# name -> the cell's settings; order = the order they are run in.
CELLS = {
    "static_d0.2": {"mode": "static", "density": 0.2},
    "dst_d0.2_u800_random_magnitude": {
        "mode": "dst",
        "density": 0.2,
        "update_frequency": 800,
        "growth": "random",
        "criterion": "magnitude",
    },
    "dense": {"mode": "dense"},
    "dst_d0.1_u200_gradient_magnitude": {
        "mode": "dst",
        "density": 0.1,
        "update_frequency": 200,
        "growth": "gradient",
        "criterion": "magnitude",
    },
    "dst_d0.1_u200_gradient_snip": {
        "mode": "dst",
        "density": 0.1,
        "update_frequency": 200,
        "growth": "gradient",
        "criterion": "snip",
    },
    **{
        f"dst_d0.2_u800_random_{c}": {
            "mode": "dst",
            "density": 0.2,
            "update_frequency": 800,
            "growth": "random",
            "criterion": c,
        }
        for c in ("set", "mest", "snip", "reciprocal_sensitivity")
    },
}
# Rows that pool cells (all seeds of every member cell): the paper's five criteria at d 0.2.
POOLED = {"dst_d0.2_u800_random, 5 criteria pooled": [c for c in CELLS if c.startswith("dst_d0.2_u800_random_")]}
REF_DEATH = {
    "magnitude": "magnitude",
    "set": "SET",
    "mest": "MEST",
    "snip": "SNIP",
    "reciprocal_sensitivity": "ReciprocalSensitivity",
}
COMPAT = [
    "sparsity.compat=true",
    "sparsity.exclude_just_pruned=false",
    "sparsity.regrow_init=keep",
    "sparsity.optimizer_state=keep",
    "sparsity.update_order=reference",
    "data.reference_splits=true",
]


# ---------------------------------------------------------------------------- one run
def run_reference(cell: dict, seed: int, epochs: int, run_dir: Path, code: Path) -> dict:
    """``main.main`` of the reference with the paper's Fashion-MNIST spec, in ``run_dir``."""
    os.chdir(run_dir)
    sys.path.insert(0, str(code))
    import main as ref_main  # noqa: E402 (the reference's entry point)

    args = ref_main.parse_args_default([])
    spec = {
        "batch_size": 128,
        "test_batch_size": 128,
        "multiplier": 1,
        "epochs": epochs,
        "lr": 0.01,
        "seed": seed,
        "optimizer": "sgd",
        "data": "fashion_mnist",
        "model": "mlp_fmnist",
        "l2": 5e-4,
        "bench": False,
        "scaled": False,
        "sparse_init": "erk",
        "redistribution": "none",
        "death_rate": 0.5,
        "decay_schedule": "cosine",
        "use_wandb": False,
        "save_locally": True,
        "no_cuda": True,
        "verbose": False,
        "sparse": cell["mode"] != "dense",
        "fix": cell["mode"] != "dst",
        "density": cell.get("density", 0.05),
        "update_frequency": cell.get("update_frequency", 100),
        "growth": cell.get("growth", "random"),
        "death": REF_DEATH[cell.get("criterion", "magnitude")],
    }
    for key, value in spec.items():
        assert hasattr(args, key), key
        setattr(args, key, value)
    loggers = []
    make_logger = ref_main.setup_logger
    ref_main.setup_logger = lambda a: loggers.append(make_logger(a)) or loggers[-1]
    ref_main.main(args)
    data = loggers[0].data
    return {"final_test_acc": float(data["eval_acc"][-1]), "best_val_test_acc": float(data["test_acc"][-1])}


def run_project(impl: str, cell: dict, seed: int, epochs: int, run_dir: Path) -> dict:
    from omegaconf import OmegaConf

    from src.config import RunConfig
    from src.train import train

    dotlist = [
        "model.name=lenet5",
        "data.name=fashion_mnist",
        "data.batch_size=128",
        "optim.name=sgd",
        "optim.lr=0.01",
        "optim.momentum=0.9",
        "optim.nesterov=true",
        "optim.weight_decay=0.0005",
        "optim.milestones=[0.5,0.75]",
        f"train.epochs={epochs}",
        f"train.seed={seed}",
        "train.threads=1",
        "train.progress=false",
        f"sparsity.mode={cell['mode']}",
        f"sparsity.density={cell.get('density', 1.0)}",
        "sparsity.prune_rate=0.5",
        "sparsity.init=erk",
    ]
    for key in ("update_frequency", "growth", "criterion"):
        if key in cell:
            dotlist.append(f"sparsity.{key}={cell[key]}")
    if impl == "compat":
        dotlist += COMPAT
    merged = OmegaConf.merge(OmegaConf.structured(RunConfig), OmegaConf.from_dotlist(dotlist))
    cfg = RunConfig.from_dict(OmegaConf.to_container(merged, resolve=True))
    result = train(cfg, run_dir / "run")
    if result["status"] != "completed":
        raise RuntimeError(f"run {run_dir} ended {result['status']}: {result.get('error')}")
    return {"final_test_acc": result["final"]["test_acc"], "best_val_test_acc": result["best_val"]["test_acc"]}


def one(args) -> int:
    cell = json.loads(args.settings) if args.settings else CELLS[args.cell]
    run_dir = Path(args.run_dir).resolve()
    run_dir.mkdir(parents=True, exist_ok=True)
    started = time.time()
    if args.impl == "reference":
        out = run_reference(cell, args.seed, args.epochs, run_dir, Path(args.code).resolve())
    else:
        out = run_project(args.impl, cell, args.seed, args.epochs, run_dir)
    out.update(
        impl=args.impl,
        cell=args.cell or args.settings,
        seed=args.seed,
        epochs=args.epochs,
        seconds=time.time() - started,
    )
    atomic_write_text(run_dir / "result.json", json.dumps(out, indent=1))
    return 0


# ---------------------------------------------------------------------------- the sweep
def prepare_reference(out: Path) -> tuple[Path, dict]:
    """A private copy of the reference's code, and the environment its loader needs."""
    if not REFERENCE.is_dir():
        raise SystemExit(f"error: the reference implementation is not at {REFERENCE}")
    code = out / "reference_code"
    if not code.exists():
        out.mkdir(parents=True, exist_ok=True)  # (the staging directory is made inside it)
        staging = Path(tempfile.mkdtemp(prefix=".reference_code.tmp-", dir=out))  # (created exclusively)
        shutil.copytree(REFERENCE, staging, ignore=shutil.ignore_patterns("specs", "ImageNet"), dirs_exist_ok=True)
        staging.rename(code)
    env = dict(os.environ)
    if "FASHION_MNIST_PYTORCH" not in env:
        from src.data.sources.fashion_mnist import FashionMNIST

        location = Path(FashionMNIST().locate(None))
        raw = out / "fashion_mnist" / "FashionMNIST" / "raw"
        raw.mkdir(parents=True, exist_ok=True)
        for stem in (
            "train-images-idx3-ubyte",
            "train-labels-idx1-ubyte",
            "t10k-images-idx3-ubyte",
            "t10k-labels-idx1-ubyte",
        ):
            if (raw / stem).exists():
                continue
            source = location / stem if (location / stem).exists() else location / f"{stem}.gz"
            opener = gzip.open if source.suffix == ".gz" else open
            from src.rundir import atomic_write

            with opener(source, "rb") as f:
                atomic_write(raw / stem, f.read(), durable=False)
        env["FASHION_MNIST_PYTORCH"] = str(raw.parents[1])
    return code, env


def planned(args) -> list[tuple[str, str, int]]:
    cells = args.cells.split(",") if args.cells else list(CELLS)
    impls = args.impls.split(",") if args.impls else list(IMPLS)
    for name in cells:
        if name not in CELLS:
            raise SystemExit(f"error: --cells: {name!r} is not one of {list(CELLS)}")
    for name in impls:
        if name not in IMPLS:
            raise SystemExit(f"error: --impls: {name!r} is not one of {list(IMPLS)}")
    # (dense clean differs from dense compat only by its train / validation split)
    return [(impl, cell, seed) for cell in cells for seed in range(1, args.seeds + 1) for impl in impls]


def run_dir_of(out: Path, impl: str, cell: str, seed: int) -> Path:
    return out / impl / cell / f"s{seed}"


def sweep(args) -> int:
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    code, env = prepare_reference(out)
    env.setdefault("OMP_NUM_THREADS", "1")
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    todo = [(i, c, s) for i, c, s in planned(args) if not (run_dir_of(out, i, c, s) / "result.json").exists()]
    print(f"{len(todo)} runs to do ({len(planned(args)) - len(todo)} done) in {out}", flush=True)

    def launch(job) -> tuple:
        impl, cell, seed = job
        run_dir = run_dir_of(out, impl, cell, seed)
        if (run_dir / "result.json").exists():  # finished meanwhile (by another sweep on this directory)
            return job, 0
        if run_dir.exists():  # an interrupted attempt: start it again from scratch
            shutil.rmtree(run_dir)
        run_dir.mkdir(parents=True)
        cmd = [
            sys.executable,
            str(Path(__file__).resolve()),
            "one",
            "--impl",
            impl,
            "--cell",
            cell,
            "--seed",
            str(seed),
            "--epochs",
            str(args.epochs),
            "--run-dir",
            str(run_dir),
            "--code",
            str(code),
        ]
        with open(run_dir / "log.txt", "w") as log:
            rc = subprocess.call(cmd, env=env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
        return job, rc

    failed = 0
    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        for (impl, cell, seed), rc in pool.map(launch, todo):
            status = "ok" if rc == 0 else f"FAILED (rc {rc}, see {run_dir_of(out, impl, cell, seed) / 'log.txt'})"
            failed += rc != 0
            print(f"{time.strftime('%H:%M:%S')} {impl:9s} {cell} seed {seed}: {status}", flush=True)
    write_table(out)
    return 1 if failed else 0


# ---------------------------------------------------------------------------- statistics
def load(out: Path) -> dict:
    """(impl, cell) -> {seed: final test accuracy}."""
    values: dict = {}
    for path in sorted(out.glob("*/*/s*/result.json")):
        r = json.loads(path.read_text())
        values.setdefault((r["impl"], r["cell"]), {})[r["seed"]] = r["final_test_acc"]
    return values


def mean_sd(v: list[float]) -> tuple[float, float]:
    m = sum(v) / len(v)
    sd = math.sqrt(sum((x - m) ** 2 for x in v) / (len(v) - 1)) if len(v) > 1 else float("nan")
    return m, sd


def welch(a: list[float], b: list[float]) -> float:
    if len(a) < 2 or len(b) < 2:
        return float("nan")
    from scipy import stats

    return float(stats.ttest_ind(a, b, equal_var=False).pvalue)


def seed_pooled(values: dict, impl: str, cells: list[str]) -> tuple[float, float, float, int]:
    """Mean over seeds of (mean over ``cells`` of impl - reference), its standard error, the
    two-sided p of a one-sample t-test over the seeds, and the number of seeds. Only seeds
    present in every cell for both implementations count."""
    from scipy import stats

    seeds = (
        sorted(set.intersection(*[set(values.get((i, c), {})) for c in cells for i in (impl, "reference")]))
        if cells
        else []
    )
    per_seed = [sum(values[(impl, c)][s] - values[("reference", c)][s] for c in cells) / len(cells) for s in seeds]
    if len(per_seed) < 2:
        return float("nan"), float("nan"), float("nan"), len(per_seed)
    mean, sd = mean_sd(per_seed)
    p = float(stats.ttest_1samp(per_seed, 0.0).pvalue) if sd > 0 else (1.0 if mean == 0 else 0.0)
    return mean, sd / math.sqrt(len(per_seed)), p, len(per_seed)


def write_table(out: Path) -> str:
    by_seed = load(out)
    values = {key: list(accs.values()) for key, accs in by_seed.items()}
    lines = [
        "| cell | reference | compat | diff | p (Welch) | clean | diff | p (Welch) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    sparse_cells = {"compat": [], "clean": []}
    fmt = lambda v: "—" if not v else f"{mean_sd(v)[0]:.2f} ± {mean_sd(v)[1]:.2f} ({len(v)})"  # noqa: E731
    pooled_rows = {
        name: {impl: [v for c in cells for v in values.get((impl, c), [])] for impl in IMPLS}
        for name, cells in POOLED.items()
        if sum(("reference", c) in values for c in cells) > 1
    }
    for cell in [*CELLS, *pooled_rows]:
        of = pooled_rows[cell].get if cell in pooled_rows else (lambda impl, cell=cell: values.get((impl, cell), []))
        ref = of("reference")
        if not ref and not any(of(i) for i in IMPLS):
            continue
        row = [cell, fmt(ref)]
        for impl in ("compat", "clean"):
            other = of(impl)
            if ref and other:
                d = mean_sd(other)[0] - mean_sd(ref)[0]
                p = welch(other, ref)
                row += [fmt(other), f"{d:+.2f}", "—" if math.isnan(p) else f"{p:.3f}"]
                # pooled rows repeat their cells' runs: not counted again in the pooled difference
                if cell in CELLS and CELLS[cell]["mode"] != "dense":
                    sparse_cells[impl].append(cell)
            else:
                row += [fmt(other), "—", "—"]
        lines.append("| " + " | ".join(row) + " |")
    lines.append("")
    for impl in ("compat", "clean"):
        cells = sparse_cells[impl]
        mean, se, p, n = seed_pooled(by_seed, impl, cells)
        lines.append(
            f"Pooled {impl} - reference over {len(cells)} sparse cells, per seed ({n} seeds in all of "
            f"them; one-sample t over the seeds): "
            + ("—" if math.isnan(mean) else f"{mean:+.3f} ± {se:.3f} (SE), p = {p:.3f}")
        )
    text = "Final-model test accuracy (%), mean ± sd (seeds); diff = project - reference.\n\n" + "\n".join(lines) + "\n"
    atomic_write_text(out / "table.md", text)
    return text


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    r = sub.add_parser("run", help="train what is missing, then write the table")
    r.add_argument("--out", default="runs/fidelity")
    r.add_argument("--seeds", type=int, default=8, help="seeds 1..N per cell and implementation (default 8)")
    r.add_argument("--epochs", type=int, default=3)
    r.add_argument("--jobs", type=int, default=1, help="runs at a time (each uses one thread)")
    r.add_argument("--cells", help=f"comma-separated subset of {list(CELLS)}")
    r.add_argument("--impls", help=f"comma-separated subset of {list(IMPLS)}")
    t = sub.add_parser("table", help="write <out>/table.md from the finished runs")
    t.add_argument("--out", default="runs/fidelity")
    o = sub.add_parser("one", help=argparse.SUPPRESS)
    o.add_argument("--impl", choices=IMPLS, required=True)
    cell = o.add_mutually_exclusive_group(required=True)
    cell.add_argument("--cell", choices=list(CELLS))
    cell.add_argument("--settings", help="a cell's settings as JSON, for a cell not in the table (bench.train_speed)")
    o.add_argument("--seed", type=int, required=True)
    o.add_argument("--epochs", type=int, required=True)
    o.add_argument("--run-dir", required=True)
    o.add_argument("--code", required=True)
    args = p.parse_args(argv)
    if args.command == "run":
        return sweep(args)
    if args.command == "table":
        print(write_table(Path(args.out)))
        return 0
    return one(args)


if __name__ == "__main__":
    sys.exit(main())

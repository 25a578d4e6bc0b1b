"""Synthetic run records with known answers, written by the trainer's own record writer.

Configs are the real resolved `RunConfig` with a few fields overridden, and the records are
written with `src.rundir.RunRecorder`, so the files have exactly the on-disk format of
real runs; only the numbers are made up.

The main grid (`write_sweep`): LeNet-5 / Fashion-MNIST, criteria x growth x density x seeds,
with the accuracy of a run = BASE[density] + OFFSET[criterion] + NOISE[seed], so that every
cell has mean BASE + OFFSET and sample std exactly 0.5 (NOISE = -0.5, 0, +0.5):
magnitude is best everywhere, set is 0.1 below it (tied), snip 5 below (clearly worse).
"""

from __future__ import annotations

from pathlib import Path

from src.config import RunConfig
from src.rundir import RunRecorder, config_hash, run_identity

SETUP = "lenet5/fashion_mnist"
DENSITIES = (0.05, 0.1, 0.2, 0.5)
BASE = {0.05: 80.0, 0.1: 84.0, 0.2: 87.0, 0.5: 89.0}
CRITERIA = ("magnitude", "set", "snip")
OFFSET = {"magnitude": 0.0, "set": -0.1, "snip": -5.0}
GROWTHS = ("random", "gradient")
SEEDS = (0, 1, 2)
NOISE = {0: -0.5, 1: 0.0, 2: 0.5}
DENSE_ACC = 91.0
STATIC_OFFSET = -3.0
STD = 0.5
STEPS_PER_EPOCH = 2000  # 5 topology updates in 2 epochs at the default update frequency (800)

# Cells the sweep leaves short, and how.
FAILED = {"sparsity.criterion": "set", "sparsity.growth": "random", "sparsity.density": 0.2, "train.seed": 1}
STALE = {"sparsity.criterion": "snip", "sparsity.growth": "gradient", "sparsity.density": 0.5, "train.seed": 2}
MISSING = {"sparsity.criterion": "magnitude", "sparsity.growth": "gradient", "sparsity.density": 0.1, "train.seed": 2}

# Overlap at initialisation: criteria and, per seed, the pooled Jaccard of each pair.
INIT_CRITERIA = ("magnitude", "snip", "random")
INIT_RATES = (0.5, 0.25)
INIT_JACCARD = {  # (a, b) -> value for seed 0, seed 1
    ("magnitude", "snip"): (0.6, 0.8),
    ("magnitude", "random"): (0.3, 0.34),
    ("snip", "random"): (0.32, 0.36),
}
TRAJECTORY_STEPS = (10, 20, 30)


def config(**dotted) -> dict:
    """The default resolved run config with ``dotted`` overrides (``sparsity.density=0.1``)."""
    cfg = RunConfig().to_dict()
    cfg["model"]["name"], cfg["data"]["name"] = SETUP.split("/")
    cfg["train"]["epochs"] = 2
    for key, value in dotted.items():
        section, name = key.split(".", 1)
        cfg[section][name] = value
    return cfg


def write_run(
    run_dir: Path,
    cfg: dict,
    *,
    test_acc: float | None = None,
    status: str = "completed",
    updates: list[dict] = (),
    result: bool = True,
) -> Path:
    """One run's records: config.json, one epoch line per epoch, ``updates`` lines, and
    (with ``result``) a result.json like the trainer's."""
    recorder = RunRecorder(run_dir, cfg)
    epochs = cfg["train"]["epochs"]
    for epoch in range(1, epochs + 1):
        recorder.log(
            "epoch",
            epoch=epoch,
            step=STEPS_PER_EPOCH * epoch,
            lr=0.01,
            train_loss=0.5,
            train_acc=test_acc,
            val_loss=0.5,
            val_acc=test_acc,
            test_loss=0.5,
            test_acc=test_acc,
            prune_rate=0.5,
            density=cfg["sparsity"]["density"],
            layer_density={"fc3.weight": 0.1},
            epoch_time=1.0,
            train_time=0.9,
        )
    for update in updates:
        recorder.log("update", **update)
    if result:
        recorder.write_result(_result(cfg, status, test_acc))
    return Path(run_dir)


def _result(cfg: dict, status: str, test_acc: float | None) -> dict:
    epochs = cfg["train"]["epochs"]
    out = {
        "status": status,
        "config": cfg,
        "config_hash": config_hash(run_identity(cfg)),
        "code_version": "fixture",
        "seed": cfg["train"]["seed"],
        "epochs_completed": epochs if status == "completed" else 1,
        "steps": STEPS_PER_EPOCH * epochs,
        "total_steps": STEPS_PER_EPOCH * epochs,
        "final": {
            "epoch": epochs,
            "train_loss": 0.5,
            "train_acc": test_acc,
            "val_loss": 0.5,
            "val_acc": test_acc,
            "test_loss": 0.5,
            "test_acc": test_acc,
        },
        "best_val": {
            "epoch": epochs,
            "val_loss": 0.5,
            "val_acc": test_acc,
            "test_loss": 0.5,
            "test_acc": None if test_acc is None else test_acc + 0.25,
        },
        "achieved_density": cfg["sparsity"]["density"],
        "achieved_layer_density": {"fc3.weight": cfg["sparsity"]["density"]},
        "wall_time": 2.0,
        "train_time": 1.5,
        "steps_per_s": 10.0,
        "diverged": None,
    }
    if status == "diverged":
        out["diverged"] = {"step": 7, "reason": "non-finite training loss"}
    if status == "failed":
        out["error"] = "RuntimeError: boom"
        out["traceback"] = "Traceback (most recent call last): ..."
    return out


def dst_accuracy(criterion: str, density: float, seed: int) -> float:
    return BASE[density] + OFFSET[criterion] + NOISE[seed]


def _matches(cfg: dict, which: dict) -> bool:
    return all(cfg[k.split(".")[0]][k.split(".", 1)[1]] == v for k, v in which.items())


def write_sweep(root: Path) -> Path:
    """The main grid with its dense and static baselines, one failed run, one stale run
    (config.json only, no process: killed before its first heartbeat) and one missing run
    (see FAILED, STALE, MISSING)."""
    root = Path(root)
    for seed in SEEDS:
        write_run(
            root / "dense" / f"s{seed}",
            config(**{"sparsity.mode": "dense", "train.seed": seed}),
            test_acc=DENSE_ACC + NOISE[seed],
        )
        for density in DENSITIES:
            write_run(
                root / "static" / f"d{density}" / f"s{seed}",
                config(**{"sparsity.mode": "static", "sparsity.density": density, "train.seed": seed}),
                test_acc=BASE[density] + STATIC_OFFSET + NOISE[seed],
            )
            for growth in GROWTHS:
                for criterion in CRITERIA:
                    cfg = config(
                        **{
                            "sparsity.density": density,
                            "sparsity.criterion": criterion,
                            "sparsity.growth": growth,
                            "train.seed": seed,
                        }
                    )
                    run_dir = root / "dst" / growth / criterion / f"d{density}" / f"s{seed}"
                    if _matches(cfg, MISSING):
                        continue
                    if _matches(cfg, FAILED):
                        write_run(run_dir, cfg, status="failed")
                    elif _matches(cfg, STALE):
                        write_run(run_dir, cfg, test_acc=50.0, result=False)
                    else:
                        write_run(run_dir, cfg, test_acc=dst_accuracy(criterion, density, seed))
    return root


def init_update(seed: int, rate: float) -> dict:
    """The single update line of an overlap-at-initialisation run (``run`` = magnitude)."""
    names = ["run", *INIT_CRITERIA]
    value = {}
    for (a, b), per_seed in INIT_JACCARD.items():
        value[a, b] = value[b, a] = per_seed[seed]
    for c in INIT_CRITERIA:
        value[c, c] = 1.0
        value["run", c] = value[c, "run"] = value["magnitude", c]
    value["run", "run"] = 1.0
    matrix = [[value[a, b] for b in names] for a in names]
    return {
        "epoch": 0,
        "step": 10,
        "prune_rate": rate,
        "layers": [],
        "removed": 0,
        "regrown": 0,
        "regrown_just_pruned_share": 0.0,
        "overlap": {"criteria": names, "jaccard": matrix, "jaccard_per_layer": {"fc3.weight": matrix}},
    }


def write_overlap_init(root: Path) -> Path:
    """Overlap-at-initialisation probes at density 1.0 for INIT_RATES x seeds 0, 1; seed 0
    has two probes (two criteria), as in the paper's one-run-per-criterion design."""
    root = Path(root)
    for rate in INIT_RATES:
        for seed, criteria in ((0, ("magnitude", "snip")), (1, ("magnitude",))):
            for criterion in criteria:
                cfg = config(
                    **{
                        "sparsity.density": 1.0,
                        "sparsity.criterion": criterion,
                        "train.seed": seed,
                        "train.max_steps": 10,
                        "sparsity.update_frequency": 10,
                        "optim.lr": 0.0,
                        "sparsity.prune_rate": rate,
                        "sparsity.prune_rate_schedule": "constant",
                        "sparsity.overlap_with": list(INIT_CRITERIA),
                    }
                )
                write_run(
                    root / "init" / f"r{rate}" / criterion / f"s{seed}",
                    cfg,
                    test_acc=10.0,
                    updates=[init_update(seed, rate)],
                )
    return root


def trajectory_jaccard(reference: str, step: int, seed: int) -> float:
    return {"magnitude": 0.9, "snip": 0.5, "random": 0.2}[reference] - 0.01 * step / 10 + 0.02 * seed


def write_trajectories(root: Path) -> Path:
    """Two seeds of a magnitude DST run at density 0.2 (gradient growth, prune rate 0.4, so
    not a duplicate of the main grid's runs) tracking overlap."""
    root = Path(root)
    for seed in (0, 1):
        updates = []
        for step in TRAJECTORY_STEPS:
            names = ["run", *INIT_CRITERIA]
            matrix = [
                [
                    1.0
                    if a == b
                    else trajectory_jaccard(b if a == "run" else a, step, seed)
                    if "run" in (a, b)
                    else 0.4
                    for b in names
                ]
                for a in names
            ]
            updates.append(
                {
                    "epoch": 0,
                    "step": step,
                    "prune_rate": 0.5 - 0.1 * step / 10,
                    "layers": [],
                    "removed": 0,
                    "regrown": 0,
                    "regrown_just_pruned_share": 0.0,
                    "overlap": {"criteria": names, "jaccard": matrix, "jaccard_per_layer": {}},
                }
            )
        cfg = config(
            **{
                "sparsity.density": 0.2,
                "sparsity.criterion": "magnitude",
                "sparsity.growth": "gradient",
                "sparsity.prune_rate": 0.4,
                "train.seed": seed,
                "sparsity.overlap_with": list(INIT_CRITERIA),
            }
        )
        write_run(root / "trajectory" / f"s{seed}", cfg, test_acc=dst_accuracy("magnitude", 0.2, seed), updates=updates)
    return root


def write_studies(root: Path) -> Path:
    """Small versions of the other studies: update frequency (Fig. 4), MEST gamma (Fig. 7),
    sensitivity (Fig. 8), global pruning (Fig. 13), density 1.0 and dropout (Fig. 5)."""
    root = Path(root)
    for seed in (0, 1):
        for density in (0.1, 0.2):
            for u in (100, 400):  # 800 is the main grid's
                for criterion in ("magnitude", "snip"):
                    write_run(
                        root / "uf" / f"u{u}" / criterion / f"d{density}" / f"s{seed}",
                        config(
                            **{
                                "sparsity.update_frequency": u,
                                "sparsity.density": density,
                                "sparsity.criterion": criterion,
                                "train.seed": seed,
                            }
                        ),
                        test_acc=dst_accuracy(criterion, density, seed) - u / 400,
                    )
            for gamma in (0.1, 10.0):
                write_run(
                    root / "gamma" / f"g{gamma}" / f"d{density}" / f"s{seed}",
                    config(
                        **{
                            "sparsity.update_frequency": 100,
                            "sparsity.density": density,
                            "sparsity.criterion": "mest",
                            "sparsity.gamma": gamma,
                            "train.seed": seed,
                        }
                    ),
                    test_acc=BASE[density] - gamma / 10,
                )
            for criterion in ("sensitivity", "mest"):  # MEST at gamma 1 shares u=100 with sensitivity
                write_run(
                    root / "sens" / criterion / f"d{density}" / f"s{seed}",
                    config(
                        **{
                            "sparsity.update_frequency": 100,
                            "sparsity.density": density,
                            "sparsity.criterion": criterion,
                            "train.seed": seed,
                        }
                    ),
                    test_acc=BASE[density] - (2.0 if criterion == "sensitivity" else 0.0),
                )
            for criterion in ("magnitude", "snip"):
                write_run(
                    root / "global" / criterion / f"d{density}" / f"s{seed}",
                    config(
                        **{
                            "sparsity.global_pruning": True,
                            "sparsity.init": "uniform",
                            "sparsity.density": density,
                            "sparsity.criterion": criterion,
                            "train.seed": seed,
                        }
                    ),
                    test_acc=dst_accuracy(criterion, density, seed) - 1.0,
                )
        mlp = {"data.name": "cifar10"}
        for criterion in ("magnitude", "snip"):
            write_run(
                root / "d1" / criterion / f"s{seed}",
                config(
                    **mlp,
                    **{
                        "model.name": "mlp_cifar10",
                        "sparsity.density": 1.0,
                        "sparsity.criterion": criterion,
                        "sparsity.update_frequency": 100,
                        "train.seed": seed,
                    },
                ),
                test_acc=60.0 + seed,
            )
        write_run(
            root / "d1" / "dense" / f"s{seed}",
            config(**mlp, **{"model.name": "mlp_cifar10", "sparsity.mode": "dense", "train.seed": seed}),
            test_acc=59.0 + seed,
        )
        write_run(
            root / "d1" / "dropout" / f"s{seed}",
            config(
                **mlp,
                **{
                    "model.name": "mlp_cifar10_dropout",
                    "model.kwargs": {"dropout": 0.05},
                    "sparsity.mode": "dense",
                    "train.seed": seed,
                },
            ),
            test_acc=61.0 + seed,
        )
    return root


def write_everything(root: Path) -> Path:
    for writer in (write_sweep, write_overlap_init, write_trajectories, write_studies):
        writer(root)
    return Path(root)

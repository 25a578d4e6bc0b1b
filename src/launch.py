"""Launch runs and sweeps with Hydra: locally, or on SLURM through submitit.

    python -m src.launch setup=lenet5_fmnist criterion=snip sparsity.density=0.1
    python -m src.launch -m criterion=magnitude,mest seed=1,2,3
    python -m src.launch -m +sweeps=mlp_dst launcher=slurm hydra.launcher.partition=gpu
    python -m src.launch -m +sweeps=mlp_dst --dry-run      # count and show, launch nothing

The command line. A run's lifecycle, one module per floor:

    src/plan.py       planning: every job composed and validated once (one bad value stops the
                      sweep, naming the field), its run directory, whether it is skipped; the
                      plan saved once into the launch's sweep dir
    hydra_plugins/    the launchers, which run the saved plan (local processes, SLURM packs)
    src/execute/      running runs: the pool, the child entry, stop requests, the SLURM queue
    src/rundir/       a run directory: its identity and name, files, lock, heartbeat and state,
                      and the one exit-code rule

Each run's directory is `runs_root/name/<slug>-<hash of the run's identity>`, so launching a
sweep again skips completed runs, resumes interrupted ones from their checkpoints, and retries
failed ones. A failing run is recorded and never stops the others; the sweep ends with a
summary in `status`'s states and exits by `rundir.exit_code`.
"""

from __future__ import annotations

import gc
import os
import shlex
import sys
import textwrap
import time
from collections import Counter
from pathlib import Path

from analysis.verdict import verdict_readiness  # the analysis' rule, applied before launch

from .config_groups import CONF_DIR, GROUPS, REGISTRY_GROUPS, declared_names
from .execute.environment import available_cpus
from .execute.slurm_queue import SchedulerError
from .execute.stop import die_with_launcher
from .resources import SWEEPS_DIR
from .rundir import classify, exit_code, finished_status, run_dir_link


def run_job(cfg) -> dict:
    """Run one job that Hydra composed (for a launcher that runs Hydra's task function, as
    hydra-submitit's does for DDP) in its run directory; never raises for a failing run."""
    from .plan import job_of  # Hydra: only in a job Hydra composed

    run_cfg, run_dir = job_of(cfg)
    return run_unless_finished(run_cfg, run_dir, finished_status(run_dir, run_cfg.to_dict()))


def run_unless_finished(run_cfg, run_dir: Path, finished: str | None) -> dict:
    """One run in this process, unless it finished (`finished`: the skip decision); never
    raises for a failing run."""
    if finished is not None:
        print(f"skipped (already {finished}): {run_dir}", flush=True)
        return {"status": finished, "run_dir": str(run_dir)}
    from .execute.child import run_one  # torch: not on the --help / status paths

    return run_one(run_cfg, run_dir)


def summarize(jobs: list) -> dict[str, int]:
    """Count the launch's runs by state (`runstate`), the runs it skipped (finished before it)
    apart; failed runs' errors are printed."""
    counts: dict[str, int] = {}
    for job in jobs:
        if job.finished:
            outcome = "skipped"
        else:
            row = classify(job.run_dir, expected=job.config.to_dict())
            outcome = row.state
            if outcome in ("failed", "damaged", "stale"):
                print(f"  {outcome}: {job.run_dir}: {row.detail}", file=sys.stderr)
        counts[outcome] = counts.get(outcome, 0) + 1
    return counts


def help_page() -> str:
    """`python -m src.launch --help`: usage, flags, the config groups and their options, examples."""
    groups = {
        name: sorted(
            {q.stem for q in (CONF_DIR / name).glob("*.yaml")}
            | set(declared_names(name) if name in REGISTRY_GROUPS else ())
        )
        for name in sorted(GROUPS - {"sweeps", "hydra/launcher"})
    }
    groups["sweeps (add with +sweeps=NAME)"] = sorted(q.stem for q in SWEEPS_DIR.glob("*.yaml"))
    lines = [
        "usage: python -m src.launch [-m] [key=value | group=option ...] [--dry-run] [--detach]",
        "       python -m src.launch status [the same overrides | SWEEP_DIR | RUNS_DIR] [--watch [S]] [--stale-after S]",
        "",
        "Launch one run, or with -m a sweep over comma lists, range(a,b), choice(a,b), glob(pattern) and",
        "the +sweeps=NAME grids, on this machine (launcher=local) or on SLURM (launcher=slurm|slurm_gpu|",
        "slurm_ddp). Every run is validated before any starts; finished runs are skipped, interrupted",
        "ones resume from their checkpoints. Records: runs_root/name/<run>/ (see the README).",
        "",
        "flags:",
        "  -m, --multirun   launch a sweep (every combination of the overrides)",
        "  --dry-run        count, validate and list the runs; launch nothing",
        "  --detach         SLURM only: submit, write <sweep dir>/submission.json, print job ids, return",
        "  --cfg job        print the composed config of one run (and --info, --hydra-help: Hydra's own)",
        "  status           where a sweep stands: per cell and in total, running / queued / stale ...",
        "",
        "SLURM launchers: hydra.launcher.partition=P timeout_min=M cpus_per_task=C mem_gb=G, and",
        "  hydra.launcher.runs_per_job=K hydra.launcher.concurrent_runs=C  (K runs per job, C at a time)",
        "",
        "config groups (group=option):",
    ]
    lines += [
        textwrap.fill(", ".join(options), 100, initial_indent=f"  {name}: ", subsequent_indent="      ")
        for name, options in groups.items()
    ]
    lines += [
        "",
        "examples:",
        "  python -m src.launch setup=lenet5_fmnist criterion=snip sparsity.density=0.1",
        "  python -m src.launch -m setup=smoke criterion=magnitude,snip 'seed=range(1,4)'",
        "  python -m src.launch -m setup=smoke 'criterion=glob(snip*)' --dry-run",
        "  python -m src.launch -m +sweeps=mlp_dst launcher=slurm hydra.launcher.runs_per_job=10 \\",
        "      hydra.launcher.concurrent_runs=2 --detach",
        "  python -m src.launch status -m +sweeps=mlp_dst launcher=slurm --watch",
    ]
    return "\n".join(lines)


def hydra_message(error: Exception) -> str:
    """The error with its causes (Hydra wraps the useful one: `Error merging override
    sparsity.density=abc` <- `Value 'abc' ... could not be converted to Float`)."""
    parts: list[str] = []
    seen = set()
    cause: BaseException | None = error
    while cause is not None and id(cause) not in seen:
        seen.add(id(cause))
        text = str(cause).strip() if not parts else str(cause).strip().split("\n")[0]
        # (OmegaConf chains its message template, `Value '$VALUE' ...`: not worth showing)
        if text and not (parts and "$VALUE" in text) and not any(text in p for p in parts):
            parts.append(text)
        cause = cause.__cause__ or cause.__context__
    message = "\n  because: ".join(parts)
    if "INTERVAL_SWEEP" in message:
        message += (
            "\n  interval() needs a sampling sweeper (e.g. Optuna); this launcher sweeps discrete "
            "values: a,b,c / range(start, stop, step) / choice(a, b) / glob(pattern)"
        )
    return message


def _user_overrides(overrides: list[str]) -> list[str]:
    return [shlex.quote(o) for o in overrides if not o.startswith("hydra.launcher.detach")]


# ---------------------------------------------------------------------------- entry point
def _hydra_entry(argv: list[str]) -> None:
    """Hydra's own entry point with these command-line arguments: a sweep's launch (its
    launcher runs the planned jobs), or Hydra's flags (--cfg job, --info ...)."""
    import hydra  # not on the --help / status paths

    @hydra.main(config_path=str(CONF_DIR), config_name="config", version_base="1.3")
    def task(cfg) -> dict:  # for launchers that run Hydra's task (hydra-submitit's, for DDP)
        return run_job(cfg)

    saved, sys.argv = sys.argv, [sys.argv[0], *argv]  # (hydra.main reads its arguments there)
    try:
        task()
    finally:
        sys.argv = saved


def _sweep_dir(argv: list[str], jobs: list) -> Path | None:
    """Each launch logs to its own Hydra directory (time and pid), so that two launches in
    the same second never write each other's job logs; its plan is saved there. None when
    the command line names a directory with interpolations (`${now:...}`)."""
    for a in argv:
        if a.startswith("hydra.sweep.dir="):
            value = a.split("=", 1)[1]
            return None if "${" in value else Path(value)
    sweep = jobs[0].run_dir.parent
    return sweep.parent / ".hydra" / sweep.name / f"{time.strftime('%Y-%m-%d_%H-%M-%S')}-{os.getpid()}"


def _save_plan(sweep_dir: Path, jobs: list, overrides: list[str]) -> str | None:
    """Save the launch's plan in its sweep dir (the launchers and `status` read it); why it
    could not be, or None: the sweep dir is a symbolic link (the plan, multirun.yaml and the
    job logs go there), or a write failed (a full disk: each file is whole or absent)."""
    from .plan import write_plan  # (Hydra)

    link = run_dir_link(sweep_dir)
    if link:
        return f"{link} (hydra.sweep.dir)"
    try:
        write_plan(sweep_dir, jobs, overrides)
    except OSError as error:
        return f"could not save the launch's plan in {sweep_dir}: {error}"
    return None


def _print_cost(jobs: list, overrides: list[str], multirun: bool) -> None:
    """What the launch commits to (runs x epochs) and an estimate of its time, before anything starts."""
    from .cost import estimate  # (reads torch's thread count: not on the --help path)

    workers = _local_workers(overrides) if multirun else 1
    threads = int(dict(o.split("=", 1) for o in overrides if "=" in o).get("hydra.launcher.threads_per_job", 1))
    for line in estimate(jobs, workers=workers, threads=threads if multirun else available_cpus()):
        print(line)


def _print_dry_run(jobs: list) -> None:
    for job in jobs[:5]:
        print(f"  {job.run_dir}  <- {' '.join(job.overrides)}")
    if len(jobs) > 5:
        print(f"  ... and {len(jobs) - 5} more")
    print("note: dataset files were not checked (--dry-run); a launch checks them before starting")


def _local_workers(overrides: list[str]) -> int | None:
    """Runs at a time on this machine for a local launch (as the local launcher counts them);
    None for a SLURM one."""
    given = dict(o.lstrip("+").split("=", 1) for o in overrides if "=" in o)
    if given.get("launcher", "local") != "local":
        return None
    threads = int(given.get("hydra.launcher.threads_per_job", 1))
    workers = given.get("hydra.launcher.max_workers", "null")
    return int(workers) if workers.isdigit() else max(1, available_cpus() // threads)


def _sweep_of(overrides: list[str], saved: bool = True):
    """`status`'s planner (`plan.sweep_of`), imported only when a status names overrides."""
    from .plan import sweep_of  # Hydra: only for a sweep named by its overrides

    return sweep_of(overrides, saved)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    die_with_launcher()
    if argv[:1] == ["status"]:
        from .status import main as status_main  # (its own light path: no Hydra, no torch)

        return status_main(argv[1:], planner=_sweep_of)
    if argv[:1] == ["--run-config"] and argv[2:3] == ["--run-dir"] and len(argv) == 4:
        from .execute.child import run_config_file  # (torch, as in `run_unless_finished`)

        return run_config_file(Path(argv[1]), Path(argv[3]))
    if "--help" in argv or "-h" in argv:
        print(help_page())
        return 0
    dry_run = "--dry-run" in argv
    detach = "--detach" in argv
    argv = [a for a in argv if a not in ("--dry-run", "--detach")]
    if detach:  # a SLURM launcher's own option; a detached launch is always a sweep
        argv = ["-m", *[a for a in argv if a not in ("-m", "--multirun")], "hydra.launcher.detach=true"]
    multirun = any(a in ("-m", "--multirun") for a in argv)
    hydra_flags = [a for a in argv if a.startswith("-")]
    if any(f not in ("-m", "--multirun") for f in hydra_flags) and not dry_run:
        # --cfg job, --help, --info ...: plain Hydra behaviour, nothing to validate or launch
        _hydra_entry(argv)
        return 0
    overrides = [a for a in argv if not a.startswith("-")]
    from hydra.errors import HydraException  # Hydra: not on the --help / status paths

    from .checks import explain, update_warnings  # (beside the planner)
    from .plan import plan  # (Hydra)

    try:
        jobs = plan(overrides, check_data=not dry_run, detach=detach)
    except (ValueError, FileNotFoundError, HydraException) as error:
        print(f"error: {explain(error, overrides) or hydra_message(error)}", file=sys.stderr)
        return 2
    for line in update_warnings(jobs):
        print(line, file=sys.stderr)
    readiness = verdict_readiness(Counter(job.cell for job in jobs)) if multirun and len(jobs) > 1 else None
    if readiness:
        print(f"note: {readiness}", file=sys.stderr)
    if not jobs:
        print(
            "error: these overrides describe no run (a sweep with no values, or a glob() that matches no option?)",
            file=sys.stderr,
        )
        return 2
    if not multirun and len(jobs) > 1:
        print(f"error: these overrides describe {len(jobs)} runs; add -m to launch a sweep", file=sys.stderr)
        return 2
    _print_cost(jobs, overrides, multirun)
    if dry_run:
        _print_dry_run(jobs)
        return 0
    sweep_dir = _sweep_dir(argv, jobs)
    refused = _save_plan(sweep_dir, jobs, overrides) if sweep_dir is not None else None
    if refused:
        print(f"error: {refused}; no run was started", file=sys.stderr)
        return 2
    if multirun:
        given = any(a.startswith(("hydra.sweep.dir=", "hydra.run.dir=")) for a in argv)
        where = [] if given or sweep_dir is None else [f"hydra.sweep.dir={sweep_dir}", f"hydra.run.dir={sweep_dir}"]
        try:  # Hydra's sweep and launcher plugin, which run the planned jobs
            _hydra_entry(["-m", *overrides, *where])
        except SystemExit as exit_:
            if isinstance(exit_.code, str):  # a launch refused before any job (`error: ...`)
                print(exit_.code, file=sys.stderr)
                return 2
            if exit_.code not in (0, None):
                print(f"hydra exited with {exit_.code}", file=sys.stderr)
                if detach:  # nothing was submitted to follow
                    return 1
        except SchedulerError as error:  # sbatch refused, squeue did not answer: nothing to follow
            print(f"error: {error}", file=sys.stderr)
            return 1
        if detach:
            print(f"detached; follow with: python -m src.launch status {' '.join(_user_overrides(overrides))}")
            return 0
    else:
        (job,) = jobs
        run_unless_finished(job.config, job.run_dir, job.finished)
    counts = summarize(jobs)
    print("summary: " + ", ".join(f"{n} {k}" for k, n in sorted(counts.items())))
    print(f"run records under {jobs[0].run_dir.parent}" if jobs else "no runs")
    return exit_code(s for s, n in counts.items() if s != "skipped")


def _process_main() -> int:
    """`python -m src.launch` as a process of its own. Start-up creates ~340 000 long-lived
    objects that the cyclic collector tracks (torch, and torch._dynamo, which torch.optim
    imports with its first optimizer). Its full passes would scan them all several times
    while they are imported and once more at exit, freeing nothing: about 1.2 s of a LeNet-5
    run's process. So this process makes no automatic full passes (the young generations are
    collected as usual), and the exit's collection skips what is alive by then (`gc.freeze`)."""
    threshold0, threshold1, _ = gc.get_threshold()
    gc.set_threshold(threshold0, threshold1, 1 << 30)
    code = main()
    gc.freeze()
    return code


if __name__ == "__main__":
    sys.exit(_process_main())

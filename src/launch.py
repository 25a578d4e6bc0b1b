"""Launch runs and sweeps with Hydra: locally, or on SLURM through submitit.

    python -m src.launch setup=lenet5_fmnist criterion=snip sparsity.density=0.1
    python -m src.launch -m criterion=magnitude,mest seed=1,2,3
    python -m src.launch -m +sweeps=mlp_dst launcher=slurm hydra.launcher.partition=gpu
    python -m src.launch -m +sweeps=mlp_dst --dry-run      # count and show, launch nothing

Before anything is launched, every job of the sweep is composed and validated once (names,
ranges, dataset files): one bad value stops the sweep with a message naming the field. The
launchers run those resolved configs (a local job is `python -m src.launch --run-config
<its config.json> --run-dir <run dir>`; a SLURM job gets the config pickled): no job is
composed again.
Each run's directory is `runs_root/name/<slug>-<hash of the run's identity>`, so launching a
sweep again skips completed runs, resumes interrupted ones from their checkpoints, and retries
failed ones. A failing run is recorded and never stops the others; the sweep ends with a
summary and a non-zero exit status if any run failed.
"""

from __future__ import annotations

import contextlib
import copy
import gc
import itertools
import json
import os
import re
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from hydra.core.config_store import ConfigStore
from hydra.errors import HydraException
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from .config import LaunchConfig, RunConfig, run_identity
from .config_groups import REGISTRY_GROUPS, registry_names
from .records import FINISHED, RunLocked, config_hash, lock_holder, read_finished_result, read_result
from .runinfo import unrecorded_failure

REPO = Path(__file__).resolve().parent.parent
CONF_DIR = REPO / "conf"  # (hydra_plugins/dst_config adds REPO, so sweeps/ is the `sweeps` group)

ConfigStore.instance().store(name="launch_schema", node=LaunchConfig)


# ---------------------------------------------------------------------------- one job
def to_run_config(cfg: DictConfig) -> tuple[RunConfig, DictConfig]:
    """The RunConfig of a composed Hydra config, and the launch-level fields."""
    data = OmegaConf.to_container(OmegaConf.masked_copy(cfg, [k for k in cfg if k != "hydra"]), resolve=True)
    launch = OmegaConf.create({k: data.pop(k) for k in ("seed", "name", "runs_root")})
    return RunConfig.from_dict(data), launch


SAFE_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*")


def run_directory(runs_root: str, name: str, run_cfg: RunConfig) -> Path:
    """`runs_root/name/<slug>-<hash>`: readable, and unique per experiment identity."""
    if not isinstance(name, str) or not SAFE_NAME.fullmatch(name):
        raise ValueError(f"name: {name!r} must be one path component of letters, digits, '_', '.' and '-' "
                         f"(not starting with '.'), so that runs stay under runs_root")
    s = run_cfg.sparsity
    parts = [run_cfg.model.name, s.mode]
    if s.mode != "dense":
        parts.append(f"d{s.density:g}")
    if s.mode == "dst":
        parts += [s.criterion, s.growth]
    parts.append(f"s{run_cfg.train.seed}")
    return Path(runs_root) / name / ("-".join(parts) + "-" + config_hash(run_identity(run_cfg.to_dict()))[:10])


def job_of(cfg: DictConfig) -> tuple[RunConfig, Path]:
    """The run a composed Hydra config describes, and its directory."""
    run_cfg, launch = to_run_config(cfg)
    return run_cfg, run_directory(launch.runs_root, launch.name, run_cfg)


def run_job(cfg: DictConfig) -> dict:
    """Run one job that Hydra composed (for a launcher that runs Hydra's task function, as
    hydra-submitit's does for DDP) in its run directory; never raises for a failing run."""
    run_cfg, run_dir = job_of(cfg)
    status = finished_status(run_dir)
    if status is not None:
        print(f"skipped (already {status}): {run_dir}", flush=True)
        return {"status": "skipped", "run_dir": str(run_dir)}
    return run_one(run_cfg, run_dir)


def run_one(run_cfg: RunConfig, run_dir: Path, stop: "_PreemptionFlag | None" = None) -> dict:
    """Run or resume one run in its directory; never raises for a failing run. Its output
    also goes to `<run_dir>/train.log`. Whether to skip it was decided by the launch
    (`finished_status`); `train` only makes sure, under the run's lock, that no other
    launcher finished it meanwhile."""
    from .runinfo import LOG, tee_output

    with tee_output(run_dir / LOG, enabled=int(os.environ.get("RANK", "0")) == 0):
        return _run_job(run_cfg, run_dir, stop)


def _run_job(run_cfg: RunConfig, run_dir: Path, stop: "_PreemptionFlag | None") -> dict:
    from .train import StopOnSignal, train

    # On SLURM, submitit's preemption signal (or the pack's); elsewhere SIGTERM / SIGINT / SIGUSR2.
    on_slurm = os.environ.get("SUBMITIT_EXECUTOR") == "slurm"
    if stop is None:
        stop = _PreemptionFlag() if on_slurm else StopOnSignal()
    try:
        with contextlib.nullcontext() if isinstance(stop, _PreemptionFlag) else stop:
            result = train(run_cfg, run_dir, should_stop=stop)
    except RunLocked as error:  # another launcher runs it: not this one's to count
        print(f"skipped ({error})", flush=True)
        return {"status": "running elsewhere", "run_dir": str(run_dir)}
    except Exception as error:  # recorded in result.json by train(); the sweep goes on
        import traceback

        traceback.print_exc()
        print(f"failed: {run_dir}: {type(error).__name__}: {error}", file=sys.stderr, flush=True)
        return {"status": "failed", "run_dir": str(run_dir), "error": str(error)}
    if result["status"] == "interrupted":
        print(f"interrupted at step {result['steps']}, checkpointed: {run_dir}", flush=True)
        if isinstance(stop, _PreemptionFlag):
            stop.hand_over()  # submitit requeues the job, which then resumes
    print(f"{result['status']}: {run_dir}", flush=True)
    return {"status": result["status"], "run_dir": str(run_dir)}


class _PreemptionFlag:
    """Turns the SLURM time-limit / preemption signal into a request to stop at the next
    step boundary; the run then checkpoints and `hand_over` lets submitit requeue the job.

    Outside a submitit job this is a flag that is never set. With `requeue=False` (a run of a
    packed job) `hand_over` does nothing: the pack requeues the job once all its runs stopped.
    """

    def __init__(self, requeue: bool = True):
        self.requested = False
        self._submitit_handler = None
        if os.environ.get("SUBMITIT_EXECUTOR") == "slurm":
            sig = getattr(signal, "SIG" + os.environ.get("SUBMITIT_PREEMPT_SIGNAL", "USR2"))
            self._signal = sig
            handler = signal.getsignal(sig)
            self._submitit_handler = handler if requeue else None
            signal.signal(sig, self._request)

    def _request(self, signum, frame):
        self.requested = True

    def __call__(self) -> bool:
        return self.requested

    def hand_over(self) -> None:
        if self._submitit_handler is not None and callable(self._submitit_handler):
            self._submitit_handler(self._signal, None)


# ---------------------------------------------------------------------------- sweeps
@dataclass
class Job:
    overrides: list[str]
    config: RunConfig
    run_dir: Path
    finished: str | None = None  # "completed" / "diverged" when the launch skips it (`finished_status`)

    @property
    def key(self) -> tuple[str, ...]:
        """The job's overrides as Hydra's sweeper passes them to a launcher (no `hydra.*` ones)."""
        return tuple(o for o in self.overrides if not o.lstrip("+~").startswith(("hydra.", "hydra/")))


def finished_status(run_dir: Path) -> str | None:
    """The status of a run that is never run again (completed, diverged), else None: the one
    decision to skip a run. A launch takes it once for all its runs (`plan`), a SLURM pack
    again at each start of its job (a requeue)."""
    result = read_finished_result(run_dir)
    return result["status"] if result is not None else None


def plan(overrides: list[str], *, check_data: bool = True, detach: bool = False) -> list[Job]:
    """The launch's jobs, each composed and validated once, its launcher options checked and
    whether it is skipped decided; the launchers run these (`planned_job`)."""
    jobs = expand(overrides, check_data=check_data, detach=detach)
    for job in jobs:
        job.finished = finished_status(job.run_dir)
    return jobs


# The jobs of the launch in progress, by the overrides Hydra's sweeper gives the launcher.
_PLANNED: dict[tuple[str, ...], Job] = {}


def planned_job(overrides, compose) -> Job:
    """The job of a launcher's `overrides`, as `plan` composed it. A launch that did not go
    through `main` (Hydra flags such as --config-dir) has no plan: the launcher's `compose()`
    (Hydra's `load_sweep_config`) composes the job then."""
    if not _PLANNED:
        run_cfg, run_dir = job_of(compose())
        return Job(list(overrides), run_cfg.validate(), run_dir, finished_status(run_dir))
    job = _PLANNED.get(tuple(overrides))
    if job is None:
        raise RuntimeError(f"not a job of this launch's plan: {' '.join(overrides)}")
    return job


def expand(overrides: list[str], *, check_data: bool = True, detach: bool = False) -> list[Job]:
    """Compose and validate every job of the sweep that `overrides` (plus any
    `hydra.sweeper.params` of the selected configs) describes, each once. Raises ValueError
    with the field and the allowed values on the first invalid job or launcher option,
    FileNotFoundError for missing dataset files (unless `check_data` is false), and
    ValueError if two jobs are the same experiment (they would share a run directory)."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.override_parser.overrides_parser import OverridesParser

    from .data import check_dataset

    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        # with the config loader, as Hydra's sweeper has it: glob() lists a group's options
        parser = OverridesParser.create(config_loader=GlobalHydra.instance().config_loader())
        parsed = parser.parse_overrides(overrides)
        fixed = [o.input_line for o in parsed if not o.is_sweep_override()]
        # (without --detach's option: its absence from a local launcher is reported by _check_launcher)
        base = compose("config", overrides=[o for o in fixed if not o.startswith("hydra.launcher.detach")],
                       return_hydra_config=True)
        _check_launcher(base.hydra.launcher, detach)
        params = OmegaConf.select(base, "hydra.sweeper.params") or {}
        sweep_lines = [f"{k}={v}" for k, v in params.items()] + list(overrides)
        combinations = sweep_combinations(parser.parse_overrides(sweep_lines))
        composed: dict[tuple[str, ...], DictConfig] = {}
        if combinations == [fixed] and not any(o.startswith("hydra.launcher.detach") for o in fixed):
            composed[tuple(fixed)] = base  # no sweep: the one job is the launch's own composition
        jobs, checked = [], set()
        for combo in combinations:
            # Composing is slow (tens of ms), so each distinct choice of config groups is
            # composed once, and plain `key=value` overrides are applied to a copy by
            # `_apply`, as Hydra's composition applies them.
            groups = tuple(combo) if tuple(combo) in composed else tuple(o for o in combo if _is_group_choice(o))
            if groups not in composed:
                composed[groups] = compose("config", overrides=list(groups))
            try:
                cfg = copy.deepcopy(composed[groups])
                for line in combo:
                    if line not in groups:
                        _apply(cfg, parser.parse_override(line))
                run_cfg, run_dir = job_of(cfg)
                run_cfg.validate()
            except (ValueError, OmegaConfBaseException) as error:
                raise ValueError(f"{error}\n  (in the job with overrides: {' '.join(combo)})") from None
            key = (run_cfg.data.name, run_cfg.data.root)
            if check_data and key not in checked:  # the error says where it looked, how to get it
                check_dataset(*key)
                checked.add(key)
            jobs.append(Job(combo, run_cfg, run_dir))
    seen: dict[Path, Job] = {}
    for job in jobs:
        if job.run_dir in seen:
            raise ValueError(f"two jobs are the same experiment (a sweep axis has no effect on them):\n"
                             f"  {' '.join(seen[job.run_dir].overrides)}\n  {' '.join(job.overrides)}")
        seen[job.run_dir] = job
    return jobs


def sweep_combinations(overrides) -> list[list[str]]:
    """The jobs of a sweep (parsed overrides) as Hydra's basic sweeper forms them: one value
    per key (a later override of a key replaces an earlier one), the product over the keys in
    order. The app's sweeper (hydra_plugins/dst_config/sweeper.py) forms them with this too."""
    from hydra.errors import HydraException

    axes: dict[str, list[str]] = {}
    for override in overrides:
        key = override.get_key_element()
        if not override.is_sweep_override():
            axes[key] = [f"{key}={override.get_value_element_as_str()}"]
        elif override.is_discrete_sweep():
            axes[key] = [f"{key}={value}" for value in override.sweep_string_iterator()]
        else:
            raise HydraException(f"BasicSweeper does not support sweep type : {override.value_type.name}")
    return [list(combo) for combo in itertools.product(*axes.values())]


GROUPS = {p.name for p in CONF_DIR.iterdir() if p.is_dir()} | set(REGISTRY_GROUPS) | {"sweeps", "hydra/launcher"}


def _is_group_choice(line: str) -> bool:
    """`criterion=snip`, `+sweeps=mlp_dst`: a choice of config group (composed by Hydra)."""
    key = line.split("=", 1)[0].lstrip("+~")
    return key in GROUPS or key.startswith("hydra")


def _apply(cfg: DictConfig, override) -> None:
    """Apply a `key=value` / `+key=value` / `++key=value` override to a composed config by
    Hydra's rules for them (Hydra has no public API for this step of its composition)."""
    from omegaconf.errors import ConfigAttributeError, ConfigKeyError

    key, value = override.key_or_group, override.value()
    if override.is_delete():
        raise ValueError(f"{override.input_line}: deletions are not supported in sweeps")
    if override.is_add() and OmegaConf.select(cfg, key, throw_on_missing=False) is not None \
            and not isinstance(value, (dict, list)):
        raise ValueError(f"Could not append to config. An item is already at '{key}'.")
    try:
        OmegaConf.update(cfg, key, value, merge=True, force_add=override.is_add() or override.is_force_add())
    except (ConfigAttributeError, ConfigKeyError) as error:
        raise ValueError(f"Could not override '{key}'.\nTo append to your config use +{override.input_line}") \
            from error


def summarize(jobs: list[Job]) -> dict[str, int]:
    """Count the sweep's runs by outcome: skipped (finished before this launch), completed,
    diverged, failed, interrupted, running elsewhere (another process holds the run's lock),
    missing (no result: never ran, or killed). Failed runs' errors are printed."""
    counts: dict[str, int] = {}
    for job in jobs:
        if job.finished:
            outcome = "skipped"
        else:
            result = read_result(job.run_dir)
            lost = unrecorded_failure(job.run_dir) if result is None else None
            outcome = result["status"] if result else "failed" if lost else "missing"
            if outcome not in FINISHED and lock_holder(job.run_dir):
                outcome = "running elsewhere"
            elif lost:
                print(f"  failed: could not record (disk full?): {job.run_dir}: {lost['error']}", file=sys.stderr)
            elif outcome == "failed":
                print(f"  failed: {job.run_dir}: {result.get('error')}", file=sys.stderr)
        counts[outcome] = counts.get(outcome, 0) + 1
    return counts


def help_page() -> str:
    """`python -m src.launch --help`: usage, flags, the config groups and their options, examples."""
    import textwrap

    groups = {name: sorted({q.stem for q in (CONF_DIR / name).glob("*.yaml")}
                           | set(registry_names(name) if name in REGISTRY_GROUPS else ()))
              for name in sorted(GROUPS - {"sweeps", "hydra/launcher"})}
    groups["sweeps (add with +sweeps=NAME)"] = sorted(q.stem for q in (REPO / "sweeps").glob("*.yaml"))
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
    lines += [textwrap.fill(", ".join(options), 100, initial_indent=f"  {name}: ", subsequent_indent="      ")
              for name, options in groups.items()]
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
    parts, seen = [], set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        text = str(error).strip() if not parts else str(error).strip().split("\n")[0]
        # (OmegaConf chains its message template, `Value '$VALUE' ...`: not worth showing)
        if text and not (parts and "$VALUE" in text) and not any(text in p for p in parts):
            parts.append(text)
        error = error.__cause__ or error.__context__
    message = "\n  because: ".join(parts)
    if "INTERVAL_SWEEP" in message:
        message += ("\n  interval() needs a sampling sweeper (e.g. Optuna); this launcher sweeps discrete "
                    "values: a,b,c / range(start, stop, step) / choice(a, b) / glob(pattern)")
    return message


def _check_launcher(launcher: DictConfig, detach: bool) -> None:
    """The launcher's own options, checked before anything is submitted."""
    if detach and "detach" not in launcher:
        raise ValueError("--detach: needs a SLURM launcher that submits and returns "
                         "(launcher=slurm or launcher=slurm_gpu)")
    for key in ("runs_per_job", "concurrent_runs"):
        if key in launcher and not (isinstance(launcher[key], int) and launcher[key] >= 1):
            raise ValueError(f"hydra.launcher.{key}: must be an integer >= 1, got {launcher[key]}")


def _user_overrides(overrides: list[str]) -> list[str]:
    import shlex

    return [shlex.quote(o) for o in overrides if not o.startswith("hydra.launcher.detach")]


# ---------------------------------------------------------------------------- entry point
def _hydra_entry(argv: list[str]) -> None:
    """Hydra's own entry point with these command-line arguments: a sweep's launch (its
    launcher runs the planned jobs), or Hydra's flags (--cfg job, --info ...)."""
    import hydra

    @hydra.main(config_path=str(CONF_DIR), config_name="config", version_base="1.3")
    def task(cfg: DictConfig) -> dict:  # for launchers that run Hydra's task (hydra-submitit's, for DDP)
        return run_job(cfg)

    saved, sys.argv = sys.argv, [sys.argv[0], *argv]  # (hydra.main reads its arguments there)
    try:
        task()
    finally:
        sys.argv = saved


def run_config_file(config_file: Path, run_dir: Path) -> int:
    """`python -m src.launch --run-config FILE --run-dir DIR`: run a resolved run config (a
    local launcher's job); exit status 1 when the run failed or was interrupted."""
    result = run_one(RunConfig.from_dict(json.loads(Path(config_file).read_text())), Path(run_dir))
    return 1 if result["status"] in ("failed", "interrupted") else 0


def _die_with_launcher() -> None:
    """In a job started by the local launcher: get SIGTERM (checkpoint, record, exit) when the
    launcher dies, even by SIGKILL, so that no job trains on as an orphan (Linux only)."""
    launcher = os.environ.get("DST_LAUNCHER_PID")
    if not launcher or not sys.platform.startswith("linux"):
        return
    import ctypes

    PR_SET_PDEATHSIG = 1
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() != int(launcher):  # it died before the request took effect
        os.kill(os.getpid(), signal.SIGTERM)


def _sweep_dir_override(argv: list[str], jobs: list[Job]) -> list[str]:
    """Each launch logs to its own Hydra directory (time and pid), so that two launches in
    the same second never write each other's job logs."""
    if not jobs or any(a.startswith(("hydra.sweep.dir=", "hydra.run.dir=")) for a in argv):
        return []
    sweep = jobs[0].run_dir.parent
    stamp = f"{time.strftime('%Y-%m-%d_%H-%M-%S')}-{os.getpid()}"
    log_dir = sweep.parent / ".hydra" / sweep.name / stamp
    return [f"hydra.sweep.dir={log_dir}", f"hydra.run.dir={log_dir}"]


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    _die_with_launcher()
    if argv[:1] == ["status"]:
        from .status import main as status_main

        return status_main(argv[1:])
    if argv[:1] == ["--run-config"] and argv[2:3] == ["--run-dir"] and len(argv) == 4:
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
    try:
        jobs = plan(overrides, check_data=not dry_run, detach=detach)
    except (ValueError, FileNotFoundError, HydraException) as error:
        print(f"error: {hydra_message(error)}", file=sys.stderr)
        return 2
    if not jobs:
        print("error: these overrides describe no run (a sweep with no values, or a glob() that matches "
              "no option?)", file=sys.stderr)
        return 2
    if not multirun and len(jobs) > 1:
        print(f"error: these overrides describe {len(jobs)} runs; add -m to launch a sweep", file=sys.stderr)
        return 2
    done = sum(job.finished is not None for job in jobs)
    print(f"{len(jobs)} run(s); {done} already finished (will be skipped)")
    if dry_run:
        for job in jobs[:5]:
            print(f"  {job.run_dir}  <- {' '.join(job.overrides)}")
        if len(jobs) > 5:
            print(f"  ... and {len(jobs) - 5} more")
        print("note: dataset files were not checked (--dry-run); a launch checks them before starting")
        return 0
    if multirun:
        _PLANNED.update({job.key: job for job in jobs})
        try:  # Hydra's sweep and launcher plugin, which run the planned jobs
            _hydra_entry(["-m", *overrides, *_sweep_dir_override(argv, jobs)])
        except SystemExit as exit_:
            if exit_.code not in (0, None):
                print(f"hydra exited with {exit_.code}", file=sys.stderr)
        finally:
            _PLANNED.clear()
        if detach:
            print(f"detached; follow with: python -m src.launch status {' '.join(_user_overrides(overrides))}")
            return 0
    else:
        (job,) = jobs
        if job.finished:
            print(f"skipped (already {job.finished}): {job.run_dir}", flush=True)
        else:
            run_one(job.config, job.run_dir)
    counts = summarize(jobs)
    print("summary: " + ", ".join(f"{n} {k}" for k, n in sorted(counts.items())))
    print(f"run records under {jobs[0].run_dir.parent}" if jobs else "no runs")
    return 1 if counts.get("failed") or counts.get("missing") or counts.get("interrupted") else 0


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

"""The ``slurm_cluster`` pytest fixture: a real single-node SLURM cluster on loopback.

Use it from a test module with::

    from tests.slurm_cluster import slurm_cluster  # noqa: F401  (registers the fixture)

    @pytest.mark.slurm
    def test_something(slurm_cluster, tmp_path):
        executor = submitit.AutoExecutor(folder=tmp_path, cluster="slurm")
        executor.update_parameters(slurm_partition=slurm_cluster.partition, timeout_min=5)

or register it for every test module with ``pytest_plugins = ["tests.slurm_cluster"]`` in the
top-level ``tests/conftest.py``.

What the fixture does (once per session):

* If a SLURM controller already answers (``scontrol ping``), that cluster is used as it is and
  is left running afterwards.
* Otherwise, as root on Debian, it runs ``scripts/slurm/start.sh`` (installs the Debian packages
  if missing, ~15 s cold, ~4 s warm) and stops the cluster with ``scripts/slurm/stop.sh`` at the
  end of the session (set ``DST_SLURM_KEEP=1`` to leave it running for the next session).
* If neither is possible the tests are skipped with the reason -- except when ``CI=true``,
  where they fail instead: CI must really run the SLURM tests.

While the fixture is active, ``SLURM_CONF`` points at the cluster's config and the repository
root and ``tests/`` are prepended to ``PYTHONPATH``. Jobs inherit the submitting process's
environment (``sbatch --export=ALL``), so functions and classes defined in test modules, which
submitit pickles by reference, can be imported again inside the job.
"""

from __future__ import annotations

import dataclasses
import os
import shlex
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
TESTS_DIR = Path(__file__).resolve().parent
START_SCRIPT = REPO_ROOT / "scripts" / "slurm" / "start.sh"
STOP_SCRIPT = REPO_ROOT / "scripts" / "slurm" / "stop.sh"
# A cold start installs ~100 MB of Debian packages; allow for a slow mirror.
START_TIMEOUT_S = 900
STOP_TIMEOUT_S = 180


@dataclasses.dataclass(frozen=True)
class SlurmCluster:
    """What tests need to know about the cluster they submit to."""

    partition: str
    """Partition to submit to (the cluster's default one)."""
    slurm_conf: str | None
    """Config file clients use (``SLURM_CONF``), or None for the system default."""
    state_dir: Path | None
    """State dir of a cluster started by scripts/slurm/start.sh (logs in ``state_dir/log``)."""
    started_here: bool
    """True if this session started the cluster (and so stops it at the end)."""

    def logs(self, lines: int = 40) -> str:
        """Last lines of the daemons' logs, to attach to a failure message."""
        if self.state_dir is None:
            return "(cluster not started by scripts/slurm/start.sh: no logs known)"
        parts = []
        for log in sorted((self.state_dir / "log").glob("*.log")):
            tail = log.read_text(errors="replace").splitlines()[-lines:]
            parts.append(f"----- {log}\n" + "\n".join(tail))
        return "\n".join(parts)


def _truthy(value: str | None) -> bool:
    return (value or "").strip().lower() in {"1", "true", "yes", "on"}


def _unavailable(reason: str) -> None:
    """Skip, or fail when running in CI (CI=true), because no cluster can be had."""
    if _truthy(os.environ.get("CI")):
        pytest.fail(f"SLURM cluster required in CI but unavailable: {reason}", pytrace=False)
    pytest.skip(f"no SLURM cluster: {reason}")


def _run(cmd: list[str], timeout: float, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False, env=env)


def _running_cluster_partition(env: dict[str, str]) -> str | None:
    """Default partition of a cluster that answers clients run with ``env``, or None."""
    if shutil.which("scontrol") is None or shutil.which("sinfo") is None:
        return None
    try:
        ping = _run(["scontrol", "ping"], timeout=30, env=env)
        if ping.returncode != 0 or "is UP" not in ping.stdout:
            return None
        parts = _run(["sinfo", "-h", "-o", "%P"], timeout=30, env=env).stdout.split()
    except (OSError, subprocess.TimeoutExpired):
        return None
    defaults = [p.rstrip("*") for p in parts if p.endswith("*")]
    if defaults:
        return defaults[0]
    return parts[0] if parts else None


def _why_cannot_start() -> str | None:
    """Reason why scripts/slurm/start.sh cannot work on this machine, or None."""
    if not START_SCRIPT.is_file():
        return f"{START_SCRIPT} is missing"
    if not hasattr(os, "geteuid") or os.geteuid() != 0:
        return "starting a local cluster needs root (scripts/slurm/start.sh runs the daemons as root)"
    if not Path("/etc/debian_version").is_file():
        return "starting a local cluster needs Debian (it uses Debian's slurm packages)"
    if shutil.which("apt-get") is None and shutil.which("slurmctld") is None:
        return "neither apt-get nor an installed slurmctld found"
    return None


def _parse_exports(stdout: str) -> dict[str, str]:
    """The ``export NAME=value`` lines start.sh prints on stdout."""
    env = {}
    for line in stdout.splitlines():
        words = shlex.split(line)
        if len(words) == 2 and words[0] == "export" and "=" in words[1]:
            name, value = words[1].split("=", 1)
            env[name] = value
    return env


@pytest.fixture(scope="session")
def slurm_cluster() -> Iterator[SlurmCluster]:
    """A running SLURM cluster for the whole test session (see the module docstring)."""
    saved_env = {name: os.environ.get(name) for name in ("SLURM_CONF", "PYTHONPATH")}
    state_dir = Path(os.environ.get("DST_SLURM_DIR", "/tmp/dst-slurm"))
    started_here = False

    # Already running? Ask with the caller's config (SLURM_CONF or /etc/slurm/slurm.conf), then
    # with the one a still-running start.sh cluster left in its state dir.
    our_conf = state_dir / "etc" / "slurm.conf"
    candidates = [dict(os.environ)]
    if our_conf.is_file():
        candidates.append({**os.environ, "SLURM_CONF": str(our_conf)})
    partition = None
    for env in candidates:
        partition = _running_cluster_partition(env)
        if partition is not None:
            break
    if partition is not None:
        if env.get("SLURM_CONF"):
            os.environ["SLURM_CONF"] = env["SLURM_CONF"]
        cluster = SlurmCluster(
            partition=partition,
            slurm_conf=env.get("SLURM_CONF"),
            state_dir=state_dir if our_conf.is_file() else None,
            started_here=False,
        )
    else:
        reason = _why_cannot_start()
        if reason is not None:
            _unavailable(reason)
        try:
            proc = _run(["bash", str(START_SCRIPT)], timeout=START_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            # it may have started some daemons: stop whatever it started
            _run(["bash", str(STOP_SCRIPT)], timeout=STOP_TIMEOUT_S)
            _unavailable(f"{START_SCRIPT} did not finish within {START_TIMEOUT_S} s")
        if proc.returncode != 0:
            tail = "\n".join(proc.stderr.splitlines()[-60:])
            _run(["bash", str(STOP_SCRIPT)], timeout=STOP_TIMEOUT_S)
            _unavailable(f"{START_SCRIPT} failed with exit code {proc.returncode}:\n{tail}")
        exports = _parse_exports(proc.stdout)
        started_here = True
        os.environ["SLURM_CONF"] = exports["SLURM_CONF"]
        cluster = SlurmCluster(
            partition=exports.get("DST_SLURM_PARTITION", "debug"),
            slurm_conf=exports["SLURM_CONF"],
            state_dir=state_dir,
            started_here=True,
        )

    # Jobs inherit this environment: make test modules importable inside them.
    python_path = [str(REPO_ROOT), str(TESTS_DIR)]
    if saved_env["PYTHONPATH"]:
        python_path.append(saved_env["PYTHONPATH"])
    os.environ["PYTHONPATH"] = os.pathsep.join(python_path)
    try:
        yield cluster
    finally:
        for name, value in saved_env.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        if started_here and not _truthy(os.environ.get("DST_SLURM_KEEP")):
            _run(["bash", str(STOP_SCRIPT)], timeout=STOP_TIMEOUT_S)


def launch(*args, timeout=900):
    """`python -m src.launch ARGS` from the repository root, its output captured."""
    return subprocess.run(
        [sys.executable, "-m", "src.launch", *args], capture_output=True, text=True, timeout=timeout, cwd=REPO_ROOT
    )


def slurm_args(cluster, **launcher):
    """The overrides that send a sweep to this cluster through `launcher=slurm`."""
    params = {"partition": cluster.partition, "timeout_min": 5, "cpus_per_task": 1, "mem_gb": 1, **launcher}
    return ["launcher=slurm", *[f"hydra.launcher.{k}={v}" for k, v in params.items()]]

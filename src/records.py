"""Run records: one directory per run, written so that a crash never leaves a half file.

    <run_dir>/config.json     the resolved configuration
    <run_dir>/metrics.jsonl   one JSON object per line: {"kind": "epoch" | "update", ...}
    <run_dir>/checkpoint.pt   the latest checkpoint (while the run is unfinished)
    <run_dir>/result.json     written once, atomically, when the run ends (any status)

Everything the analysis needs is in these files; W&B is an optional mirror.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import subprocess
from pathlib import Path
from typing import Any

CONFIG, METRICS, CHECKPOINT, RESULT = "config.json", "metrics.jsonl", "checkpoint.pt", "result.json"
STATUSES = ("completed", "diverged", "failed", "interrupted")
FINISHED = ("completed", "diverged")  # never run again; failed runs are retried, interrupted resumed


def atomic_write_text(path: Path, text: str) -> None:
    """Write via a temporary file in the same directory and rename (atomic on POSIX)."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def atomic_torch_save(obj: Any, path: Path) -> None:
    import torch  # here, so that reading records (the analysis) does not need torch

    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def to_json(obj: Any) -> str:
    """JSON with non-finite floats as null (strict JSON readers reject NaN)."""
    return json.dumps(_finite(obj), sort_keys=True)


def _finite(obj):
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    return obj


def config_hash(config: dict) -> str:
    """A stable short hash of a resolved config (key order does not matter)."""
    return hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()[:16]


def code_version() -> str:
    """`git describe` of the source tree, or the package version outside a checkout."""
    here = Path(__file__).resolve().parent
    try:
        out = subprocess.run(["git", "describe", "--always", "--dirty", "--abbrev=12"], cwd=here,
                             capture_output=True, text=True, timeout=10)
        if out.returncode == 0 and out.stdout.strip():
            return out.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        pass
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("fantastic-dst")
    except PackageNotFoundError:
        return "unknown"


def read_result(run_dir: Path) -> dict | None:
    path = Path(run_dir) / RESULT
    if not path.exists():
        return None
    return json.loads(path.read_text())


def read_finished_result(run_dir: Path) -> dict | None:
    """The run's result if it finished (completed or diverged), else None."""
    result = read_result(run_dir)
    return result if result is not None and result.get("status") in FINISHED else None


def read_metrics(run_dir: Path, kind: str | None = None) -> list[dict]:
    path = Path(run_dir) / METRICS
    if not path.exists():
        return []
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [r for r in rows if kind is None or r.get("kind") == kind]


class RunRecorder:
    """Appends metrics lines and writes the config and the final result of one run.

    ``resume_offset`` truncates metrics.jsonl to the size it had at the checkpoint being
    resumed, so that lines logged after that checkpoint are not duplicated.
    """

    def __init__(self, run_dir: Path, config: dict, *, enabled: bool = True):
        self.run_dir = Path(run_dir)
        self.enabled = enabled
        if enabled:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            atomic_write_text(self.run_dir / CONFIG, json.dumps(config, indent=2, sort_keys=True))

    @property
    def checkpoint_path(self) -> Path:
        return self.run_dir / CHECKPOINT

    def metrics_offset(self) -> int:
        path = self.run_dir / METRICS
        return path.stat().st_size if path.exists() else 0

    def truncate_metrics(self, offset: int) -> None:
        path = self.run_dir / METRICS
        if self.enabled and path.exists():
            with open(path, "r+") as f:
                f.truncate(offset)

    def log(self, kind: str, **payload) -> None:
        if not self.enabled:
            return
        with open(self.run_dir / METRICS, "a") as f:
            f.write(to_json({"kind": kind, **payload}) + "\n")

    def write_result(self, result: dict) -> None:
        if self.enabled:
            atomic_write_text(self.run_dir / RESULT, json.dumps(_finite(result), indent=2, sort_keys=True))

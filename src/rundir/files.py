"""Run records: one directory per run, written so that a crash never leaves a half file.

    <run_dir>/config.json     the resolved configuration
    <run_dir>/metrics.jsonl   one JSON object per line: {"kind": "epoch" | "update", ...}
    <run_dir>/checkpoint.pt   the latest checkpoint (while the run is unfinished)
    <run_dir>/result.json     written atomically when the run ends or stops (any status)
    <run_dir>/.lock           held (flock) by the process running the run, with its host and pid
    <run_dir>/heartbeat.json  where and how far the run is (`heartbeat`)
    <run_dir>/train.log       the run's output (`log`)
    <run_dir>/checkpoint.pt.corrupt-*   an unreadable checkpoint, kept for inspection

Everything the analysis needs is in these files; W&B is an optional mirror.
"""

from __future__ import annotations

import contextlib
import errno
import json
import math
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

CONFIG, METRICS, CHECKPOINT, RESULT = "config.json", "metrics.jsonl", "checkpoint.pt", "result.json"
MODEL_FINAL, LOCK, HEARTBEAT, LOG = "model_final.pt", ".lock", "heartbeat.json", "train.log"
STATUSES = ("completed", "diverged", "failed", "interrupted")
FINISHED = ("completed", "diverged")  # never run again; failed runs are retried, interrupted resumed
# The layout of result.json, written into it as "format". 1 (no field): before FLOPs were
# recorded; 2: adds "flops". Readers refuse what is newer than they know.
RESULT_FORMAT = 2
_UMASK = os.umask(0o022)
os.umask(_UMASK)


class LinkRefused(OSError):
    """A run file's name is a symbolic link: writing through it would change a file elsewhere."""


def open_run_file(path: Path, flags: int, mode: int = 0o644) -> int:
    """`os.open` of a file a run writes, never through a symbolic link: on a shared file
    system anyone who may write the run directory could plant one pointing at another of
    the user's files. A link is refused with `LinkRefused` naming it."""
    try:
        return os.open(path, flags | os.O_NOFOLLOW | os.O_CLOEXEC, mode)
    except OSError as error:
        if error.errno == errno.ELOOP:
            raise LinkRefused(
                errno.ELOOP, f"refusing to write through a symbolic link: {path} -> {os.readlink(path)}"
            ) from None
        raise


def run_dir_link(run_dir: Path, *, sweep_dir: bool = False) -> str | None:
    """Why ``run_dir`` is refused as a place to write, or None: it is a symbolic link (and,
    with ``sweep_dir``, so is its parent, `runs_root/name`). A run creates and writes into
    its own directory; through a link it would truncate and replace another place's files.
    (Links further up, such as runs_root itself, are the user's own choice of place.)"""
    for path in (Path(run_dir), Path(run_dir).parent) if sweep_dir else (Path(run_dir),):
        if os.path.islink(path):
            return f"refusing a directory that is a symbolic link: {path} -> {os.readlink(path)}"
    return None


def open_in_directory(path: Path, flags: int) -> int:
    """`open_run_file` of ``path`` inside its directory, the directory itself opened without
    following a link: a run directory that is (or became) a symbolic link is refused with
    `LinkRefused` (`run_dir_link`)."""
    try:
        directory = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as error:
        if error.errno in (errno.ELOOP, errno.ENOTDIR) and os.path.islink(path.parent):
            raise LinkRefused(errno.ELOOP, run_dir_link(path.parent)) from None
        raise
    try:
        return os.open(path.name, flags | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644, dir_fd=directory)
    except OSError as error:
        if error.errno == errno.ELOOP:
            raise LinkRefused(
                errno.ELOOP, f"refusing to write through a symbolic link: {path} -> {os.readlink(path)}"
            ) from None
        raise
    finally:
        os.close(directory)


def write_all(fd: int, data) -> None:
    """Write all of ``data`` to ``fd``; a short write (a full disk) raises ENOSPC."""
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        if n == 0:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        view = view[n:]


def atomic_write_text(path: Path, text: str) -> None:
    """Write via a temporary file in the same directory and rename (atomic on POSIX)."""
    atomic_write(Path(path), text.encode())


def atomic_write(path: Path, data, *, durable: bool = True) -> None:
    """The file and its directory entry reach the disk before this returns (``durable``), so
    a node crash leaves the old file or the new one, never a half-written one under the final
    name; on failure (a full disk) the temporary file is removed.

    The temporary file has an unpredictable name and is created exclusively (`mkstemp`:
    O_EXCL, so never through a planted link); the rename replaces a link at the final name
    itself, never its target."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.tmp-", dir=path.parent)
    try:
        try:
            os.fchmod(fd, 0o666 & ~_UMASK)  # as open() would create it (mkstemp's is 0600)
            write_all(fd, data)
            if durable:
                os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    if durable:
        _fsync_directory(path.parent)


def _fsync_directory(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def remove_stale_temp_files(run_dir: Path) -> list[Path]:
    """Delete the temporary files of atomic writes that a killed run left behind (only the
    holder of the run's lock writes there, so any that exist now are stale). Every writer of
    the run directory names its temporary files `.<name>.tmp-<random>` (the heartbeat too)."""
    stale = list(Path(run_dir).glob(".*.tmp-*"))
    for path in stale:
        path.unlink(missing_ok=True)
    return stale


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


def unusable_result(result) -> str | None:
    """Why a result.json's content cannot be used as the run's result, or None: not a run
    result, a record format newer than this version reads, or a finished status without what
    it promises (a completed run's final test accuracy: an older format, a hand edit)."""
    if not isinstance(result, dict) or result.get("status") not in STATUSES:
        return f"not a run result (status must be one of {list(STATUSES)})"
    version = result.get("format", 1)
    if not isinstance(version, int) or isinstance(version, bool) or not 1 <= version <= RESULT_FORMAT:
        return f"record format {version!r}, which this version does not read (it reads 1 to {RESULT_FORMAT})"
    final = result.get("final")
    if result["status"] in FINISHED and not isinstance(final, dict):
        return f"says {result['status']} but has no final metrics ('final')"
    if result["status"] == "completed" and not isinstance((final or {}).get("test_acc"), (int, float)):
        return "says completed but has no final.test_acc (its final test accuracy)"
    return None


def read_result(run_dir: Path) -> dict | None:
    """The run's result, or None when it has none. A damaged result.json (cut short, not a
    result, unusable by `unusable_result`) is reported on stderr with its path and read as
    none, so the run is run again."""
    path = Path(run_dir) / RESULT
    if not path.exists():
        return None
    try:
        result = json.loads(path.read_text())
        problem = unusable_result(result)
        if problem:
            raise ValueError(problem)
    except (OSError, ValueError) as error:
        print(
            f"warning: unreadable run record {path}: {error}; the run counts as not finished",
            file=sys.stderr,
            flush=True,
        )
        return None
    return result


def read_finished_result(run_dir: Path) -> dict | None:
    """The run's result if it finished (completed or diverged), else None."""
    result = read_result(run_dir)
    return result if result is not None and result.get("status") in FINISHED else None


def recorded_config(run_dir: Path) -> dict | None:
    """The config a run directory was used for: config.json, or the copy inside result.json
    when config.json is damaged; None for a new directory."""
    found = recorded_configs(run_dir)
    return found[0][1] if found else None


def recorded_configs(run_dir: Path) -> list[tuple[str, dict]]:
    """(file name, config) of each record in ``run_dir`` that names the config it was written
    for: config.json, and the copy inside result.json (a result copied from another run names
    that run's config)."""
    found = []
    for name in (CONFIG, RESULT):
        try:
            content = json.loads((Path(run_dir) / name).read_text())
        except (OSError, ValueError):
            continue
        config = content.get("config") if name == RESULT and isinstance(content, dict) else content
        if isinstance(config, dict) and config:
            found.append((name, config))
    return found


def metrics_damage(run_dir: Path) -> str | None:
    """What is wrong with a run's metrics.jsonl (NUL bytes, a line that is not JSON, an epoch
    or update logged twice or out of order), or None when it is sound or absent."""
    path = Path(run_dir) / METRICS
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return None
    if b"\0" in data:  # a truncate past the end of the file pads it with NULs
        return f"{path}: NUL bytes from offset {data.index(0)}"
    epoch, step = 0, 0
    for number, line in enumerate(data.decode(errors="replace").splitlines(), 1):
        try:
            row = json.loads(line)
        except ValueError:
            return f"{path}:{number}: not valid JSON"
        if row.get("kind") == "epoch":
            if row.get("epoch") != epoch + 1:
                return f"{path}:{number}: epoch {row.get('epoch')} after epoch {epoch} (duplicated records)"
            epoch = row["epoch"]
        if row.get("kind") == "update":
            if not isinstance(row.get("step"), int) or row["step"] <= step:
                return f"{path}:{number}: update at step {row.get('step')} after step {step} (duplicated records)"
            step = row["step"]
    return None


def read_metrics(run_dir: Path, kind: str | None = None) -> list[dict]:
    path = Path(run_dir) / METRICS
    if not path.exists():
        return []
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [r for r in rows if kind is None or r.get("kind") == kind]


class RunRecorder:
    """Appends metrics lines and writes the config and the final result of one run.

    metrics.jsonl is opened once (at the first line) and kept open: a line is one write, no
    metadata operation. ``truncate_metrics`` cuts it back to the size it had at the
    checkpoint being resumed, so that lines logged after that checkpoint are not duplicated.
    """

    def __init__(self, run_dir: Path, config: dict, *, enabled: bool = True):
        self.run_dir = Path(run_dir)
        self.enabled = enabled
        self._metrics: Any = None  # the open metrics.jsonl (a raw file, closed when collected)
        self._size = 0  # its size (one writer: the lock's holder)
        if enabled:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            atomic_write_text(self.run_dir / CONFIG, json.dumps(config, indent=2, sort_keys=True))

    @property
    def checkpoint_path(self) -> Path:
        return self.run_dir / CHECKPOINT

    def metrics_offset(self) -> int:
        if self._metrics is not None:
            return self._size
        path = self.run_dir / METRICS
        return path.stat().st_size if path.exists() else 0

    def sync_metrics(self) -> None:
        """Flush metrics.jsonl to disk, so a checkpoint never points past what survives a crash."""
        if self._metrics is not None:
            os.fsync(self._metrics.fileno())

    def close(self) -> None:
        if self._metrics is not None:
            self._metrics.close()
            self._metrics = None

    def truncate_metrics(self, offset: int) -> bool:
        """Cut metrics.jsonl back to ``offset`` bytes (0: a fresh start). False, and nothing
        changed, when the file does not hold ``offset`` bytes of whole lines: it lost lines
        the checkpoint counts, so the checkpoint cannot be resumed without losing records."""
        path = self.run_dir / METRICS
        if not self.enabled:
            return True
        self.close()
        size = path.stat().st_size if path.exists() else 0
        if offset > size:
            return False
        if offset > 0:
            with open(path, "rb") as f:
                f.seek(offset - 1)
                if f.read(1) != b"\n":
                    return False
        if path.exists():
            fd = open_run_file(path, os.O_WRONLY)
            try:
                os.ftruncate(fd, offset)
            finally:
                os.close(fd)
        return True

    def log(self, kind: str, **payload) -> None:
        """Append one line, whole or not at all: a write cut short (a full disk) is cut back
        to the last complete line before the error is raised."""
        if not self.enabled:
            return
        line = (to_json({"kind": kind, **payload}) + "\n").encode()
        if self._metrics is None:
            fd = open_run_file(self.run_dir / METRICS, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
            self._metrics, self._size = os.fdopen(fd, "ab", buffering=0), os.fstat(fd).st_size
        try:
            write_all(self._metrics.fileno(), line)
        except OSError:
            with contextlib.suppress(OSError):  # shrinking needs no space
                os.ftruncate(self._metrics.fileno(), self._size)
            raise
        self._size += len(line)

    def write_result(self, result: dict) -> None:
        if self.enabled:
            result.setdefault("format", RESULT_FORMAT)  # (in the caller's dict too: it is what was recorded)
            atomic_write_text(self.run_dir / RESULT, json.dumps(_finite(result), indent=2, sort_keys=True))

"""Checkpoints: what the loop needs to resume bit-identically, written at the end of every
`train.checkpoint_every`-th epoch (to the node-local scratch directory if there is one, and to
the run directory once `train.checkpoint_interval_min` minutes have passed since the last
time), and always to the run directory when the run is stopped; deleted when it ends.

Loaded with ``weights_only=True``: a planted pickle cannot run code. A checkpoint that cannot
be read (cut short by a full disk, not a checkpoint) is moved aside as
``checkpoint.pt.corrupt-<time>`` and reported; so is one whose metrics lines were lost. One of
another experiment is an error (the run directory was reused).
"""

from __future__ import annotations

import hashlib
import io
import os
import stat
import sys
import time
from pathlib import Path

import torch

from ..rundir.files import CHECKPOINT, RunRecorder, atomic_write
from ..rundir.state import RunDirConflict
from .listeners import Listener
from .rng import rng_state, set_rng_state


def save_torch(obj, path: Path) -> None:
    """`torch.save` atomically. Serialised in memory first: a failing write (a full disk) then
    raises the plain OSError instead of an opaque error from inside torch's zip writer."""
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    atomic_write(path, buffer.getbuffer())


class Checkpoints(Listener):
    def __init__(self, train_cfg, run_dir: Path, recorder: RunRecorder, identity: str, *, main: bool):
        self.every, self.interval_min = train_cfg.checkpoint_every, train_cfg.checkpoint_interval_min
        self.recorder, self.identity, self.main = recorder, identity, main
        self.path = recorder.checkpoint_path
        self.scratch_dir = train_cfg.scratch_dir
        self.scratch = scratch_checkpoint(train_cfg.scratch_dir, Path(run_dir))
        self.last_shared = time.monotonic()

    # ------------------------------------------------------------------ resuming
    def resume(self, run) -> bool:
        """Restore the run from its newest readable checkpoint; False to start from scratch."""
        ckpt = self._read(run.device)
        if ckpt is None:
            self.recorder.truncate_metrics(0)  # a fresh start: no lines of an earlier attempt
            return False
        run.model.load_state_dict(ckpt["model"])
        run.optimizer.load_state_dict(ckpt["optimizer"])
        run.sparsifier.load_state_dict(ckpt["sparsifier"])
        run.loaders.train.load_state_dict(ckpt["loader"])
        set_rng_state(ckpt["rng"])
        run.progress = type(run.progress)(**ckpt["progress"])
        run.progress.resumed_at.append(run.progress.step)
        run.acc.load_state_dict(ckpt["accumulator"])
        return True

    def _read(self, device) -> dict | None:
        """The newer (by step) of the run directory's checkpoint and, on the node that wrote
        it, the scratch directory's; None when neither can be resumed."""
        if not self.recorder.enabled:  # other DDP ranks: the main rank vetted it (and wrote it here)
            return torch.load(self.path, map_location=device, weights_only=True) if self.path.exists() else None
        found = [c for c in (self._load(p, device) for p in (self.scratch, self.path) if p is not None) if c]
        for ckpt, where in sorted(found, key=lambda c: -c[0]["progress"]["step"]):
            if self.recorder.truncate_metrics(ckpt["metrics_offset"]):
                return ckpt
            set_aside(where, "metrics.jsonl lost lines written before this checkpoint")
        return None

    def _load(self, path: Path, device) -> tuple[dict, Path] | None:
        if not path.exists():
            return None
        try:
            ckpt = torch.load(path, map_location=device, weights_only=True)
            problem = None if isinstance(ckpt, dict) and "metrics_offset" in ckpt else "not a checkpoint"
        except Exception as error:  # torch raises many types for a damaged file
            problem = f"{type(error).__name__}: {(str(error).splitlines() or [''])[0]}"
        if problem is None and ckpt.get("config_hash", self.identity) != self.identity:
            raise RunDirConflict(
                f"{path} is the checkpoint of another experiment (config hash {ckpt['config_hash']}, this run's "
                f"is {self.identity}): copied here? refused, not resumed from; move it away to start this run"
            )
        if problem is None:
            return ckpt, path
        set_aside(path, problem)
        return None

    # ------------------------------------------------------------------ saving
    def on_start(self, run) -> None:
        self.last_shared = time.monotonic()

    def on_epoch(self, run, record: dict) -> None:
        if not run.reached_max_steps():  # (the run ends now: nothing to resume)
            self.save(run, stopping=False)

    def on_stop(self, run) -> None:
        self.save(run, stopping=True)

    def on_end(self, run, result: dict) -> None:
        if result["status"] != "interrupted" and self.main:
            for path in (self.path, self.scratch):
                if path is not None:
                    path.unlink(missing_ok=True)

    def save(self, run, *, stopping: bool) -> None:
        if not self.main or not (stopping or run.progress.epoch % self.every == 0):
            return
        shared = stopping or time.monotonic() - self.last_shared >= 60 * self.interval_min
        if not (shared or self.scratch):
            return
        self.recorder.sync_metrics()
        buffer = io.BytesIO()
        torch.save(
            {
                "config_hash": self.identity,
                "model": run.model.state_dict(),
                "optimizer": run.optimizer.state_dict(),
                "sparsifier": run.sparsifier.state_dict(),
                "loader": run.loaders.train.state_dict(),
                "rng": rng_state(),
                "progress": run.progress.__dict__,
                "accumulator": run.acc.state_dict(),
                "metrics_offset": self.recorder.metrics_offset(),
            },
            buffer,
        )
        if self.scratch and own_scratch_dir(self.scratch.parent, self.scratch_dir):  # (again: gone, or replaced?)
            atomic_write(self.scratch, buffer.getbuffer())
        if shared:
            atomic_write(self.path, buffer.getbuffer())
            self.last_shared = time.monotonic()


def scratch_checkpoint(scratch_dir: str | None, run_dir: Path) -> Path | None:
    """The run's checkpoint in the node-local scratch directory: one subdirectory per run
    directory (its name and a hash of its path), so runs sharing a node never mix."""
    if not scratch_dir:
        return None
    local = os.path.expandvars(scratch_dir)  # expanded in the job: `$SLURM_TMPDIR` is the node's
    if "$" in local:
        print(
            f"warning: train.scratch_dir {scratch_dir!r}: {local!r} is not set here; checkpoints go to the "
            f"run directory only",
            file=sys.stderr,
            flush=True,
        )
        return None
    where = hashlib.sha256(str(run_dir.resolve()).encode()).hexdigest()[:10]
    scratch = Path(local) / f"{run_dir.name}-{where}" / CHECKPOINT
    return scratch if own_scratch_dir(scratch.parent, scratch_dir) else None


def own_scratch_dir(directory: Path, scratch_dir: str) -> bool:
    """Make the run's node-local scratch directory, or make sure it is this user's own: a
    scratch space (`/tmp`) is shared, and a link or directory planted there by someone else
    would take the checkpoint elsewhere, or hand in theirs. Created exclusively (mode 0700);
    one that exists must be a real directory owned by this user and writable by no one else.
    Otherwise it is not used (reported), and checkpoints go to the run directory only."""
    try:
        directory.parent.mkdir(parents=True, exist_ok=True)  # the scratch space itself: the user's choice
        os.mkdir(directory, 0o700)
        return True
    except FileExistsError:
        st = os.lstat(directory)
        if stat.S_ISLNK(st.st_mode):
            problem = "is a symbolic link"
        elif not stat.S_ISDIR(st.st_mode):
            problem = "is not a directory"
        elif st.st_uid != os.geteuid():
            problem = f"belongs to another user (uid {st.st_uid})"
        elif st.st_mode & 0o022:
            problem = "is writable by other users"
        else:
            return True
    except OSError as error:
        problem = f"cannot be created ({error.strerror or error})"
    print(
        f"warning: train.scratch_dir {scratch_dir!r}: {directory} {problem}; not used, checkpoints go to the "
        f"run directory only",
        file=sys.stderr,
        flush=True,
    )
    return False


def set_aside(path: Path, problem: str) -> None:
    aside = path.with_name(f"{path.name}.corrupt-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}")
    os.replace(path, aside)
    print(
        f"warning: unreadable checkpoint {path} ({problem}); kept as {aside.name}, the run starts from scratch",
        file=sys.stderr,
        flush=True,
    )

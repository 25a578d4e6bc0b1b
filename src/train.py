"""Train one model, dense or sparse, and write its run records.

    python -m src.train model.name=lenet5 sparsity.mode=dst sparsity.density=0.05 \
        train.epochs=4 --run-dir runs/lenet5-dst

The loop is the whole story: batches -> loss -> backward -> `sparsifier.step()` (the optimizer
step, the masks, and every `update_frequency` steps a prune-and-regrow update) -> evaluate
each epoch -> checkpoint. A run resumes from `<run_dir>/checkpoint.pt` bit-identically.
"""

from __future__ import annotations

import hashlib
import io
import math
import os
import random
import signal
import sys
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from .config import RunConfig
from .data import build_dataset, make_loaders
from .execute.environment import available_cpus
from .models import build_model, model_info
from .rundir import (
    CHECKPOINT,
    LOG,
    Heartbeat,
    RunDirConflict,
    RunLock,
    RunLocked,
    RunRecorder,
    atomic_write,
    cell_hash,
    cell_of_name,
    claim_run_dir,
    exit_code,
    identity_hash,
    read_finished_result,
    read_metrics,
    run_dir_conflict,
    tee_output,
)
from .sparse import Sparsifier
from .trainer.provenance import code_version, provenance


# ---------------------------------------------------------------------------- set-up helpers
def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def rng_state() -> dict:
    """The global generators' states, as tensors and lists (what `torch.load(weights_only=True)` reads)."""
    version, internal, gauss_next = random.getstate()
    kind, keys, pos, has_gauss, cached_gaussian = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "python": [version, list(internal), gauss_next],
        "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, cached_gaussian],
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    version, internal, gauss_next = state["python"]
    random.setstate((version, tuple(internal), gauss_next))
    kind, keys, pos, has_gauss, cached_gaussian = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached_gaussian))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def make_optimizer(model: nn.Module, cfg) -> torch.optim.Optimizer:
    """SGD or Adam; with `decay_bias_and_norm=False`, biases and norm parameters (<= 1-D)
    get no weight decay."""
    params = [p for p in model.parameters() if p.requires_grad]
    if cfg.decay_bias_and_norm:
        groups = [{"params": params, "weight_decay": cfg.weight_decay}]
    else:
        groups = [
            {"params": [p for p in params if p.dim() > 1], "weight_decay": cfg.weight_decay},
            {"params": [p for p in params if p.dim() <= 1], "weight_decay": 0.0},
        ]
    if cfg.name == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov)
    return torch.optim.Adam(groups, lr=cfg.lr)


def learning_rate(cfg, epoch: int, step: int, epochs: int, steps_per_epoch: int) -> float:
    """LR at optimizer step ``step`` (0-based, global) of epoch ``epoch`` (0-based).

    Warm-up: lr * (e + 1) / (w + 1) for the first w epochs. ``multistep``: x lr_decay at each
    milestone epoch floor(m * epochs) (the paper's 50 % / 75 %); ``cosine``: per step to 0.
    """
    if epoch < cfg.warmup_epochs:
        return cfg.lr * (epoch + 1) / (cfg.warmup_epochs + 1)
    if cfg.lr_schedule == "multistep":
        boundaries = [math.floor(m * epochs) for m in cfg.milestones]
        passed = sum(0 < b <= epoch for b in boundaries)  # a milestone at epoch 0 would skip the base lr
        return cfg.lr * cfg.lr_decay**passed
    if cfg.lr_schedule == "cosine":
        start = cfg.warmup_epochs * steps_per_epoch
        progress = (step - start) / max(epochs * steps_per_epoch - start, 1)
        return cfg.lr * 0.5 * (1 + math.cos(math.pi * progress))
    return cfg.lr


@dataclass
class Task:
    """Loss and accuracy for the dataset's task (multiclass logits or one binary logit)."""

    binary: bool
    label_smoothing: float = 0.0

    def loss(self, out, y):
        if self.binary:
            return nn.functional.binary_cross_entropy_with_logits(out, y.float())
        return nn.functional.cross_entropy(out, y, label_smoothing=self.label_smoothing)

    def correct(self, out, y):
        pred = (out > 0).to(y.dtype) if self.binary else out.argmax(dim=1)
        return (pred == y).sum()


# On the CPU an evaluation batch is computed in chunks of this many samples: larger ones spill
# the activations out of the caches (LeNet-5, Fashion-MNIST's 16k evaluation samples, 2
# threads: 0.64 s in batches of 1000, 0.43 s in chunks of 256). A GPU takes whole batches.
CPU_EVAL_CHUNK = 256


@torch.no_grad()
def evaluate(model: nn.Module, loader, task: Task) -> dict:
    """Mean loss and accuracy (%) over a split; one host synchronisation at the end."""
    model.eval()
    device = next(model.parameters()).device
    loss_sum = torch.zeros((), device=device)
    correct = torch.zeros((), device=device, dtype=torch.long)
    n = 0
    chunk = CPU_EVAL_CHUNK if device.type == "cpu" else None
    for batch_x, batch_y in loader:
        chunks = zip(batch_x.split(chunk), batch_y.split(chunk)) if chunk else [(batch_x, batch_y)]
        for x, y in chunks:
            out = model(x)
            loss_sum += task.loss(out, y) * len(y)
            correct += task.correct(out, y)
            n += len(y)
    model.train()
    loss, acc = torch.stack([loss_sum, correct.float()]).tolist()
    return {"loss": loss / max(n, 1), "acc": 100.0 * acc / max(n, 1)}


# ---------------------------------------------------------------------------- distributed
@dataclass
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0


def init_distributed(device_kind: str) -> Dist:
    """Join the process group when launched by torchrun (WORLD_SIZE > 1) or as several SLURM
    tasks of a submitit job (the task environment is turned into torchrun's variables)."""
    if (
        "WORLD_SIZE" not in os.environ
        and int(os.environ.get("SLURM_NTASKS", "1")) > 1
        and os.environ.get("SUBMITIT_EXECUTOR") == "slurm"
    ):
        from submitit.helpers import TorchDistributedEnvironment

        TorchDistributedEnvironment().export(set_cuda_visible_devices=False)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Dist()
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device_kind == "cuda" else "gloo")
    return Dist(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))


# ---------------------------------------------------------------------------- the run
@dataclass
class Progress:
    """Where the run is; saved in checkpoints."""

    epoch: int = 0
    step: int = 0
    best_val_acc: float = -math.inf
    best: dict = field(default_factory=dict)  # the epoch record with the best val accuracy
    last: dict = field(default_factory=dict)  # the latest epoch record
    elapsed: float = 0.0  # seconds of training + evaluation, summed over resumes
    train_time: float = 0.0
    resumed_at: list = field(default_factory=list)  # the steps this run was resumed from


def train(
    cfg: RunConfig, run_dir: str | Path, *, should_stop: Callable[[], bool] | None = None, force: bool = False
) -> dict:
    """Run (or resume) one training run in ``run_dir`` and return its result dict.

    ``should_stop`` is polled between steps; when it returns True the run checkpoints and
    returns with status "interrupted" (a signal, SLURM preemption / time limits). An exception
    is recorded as a "failed" result (with the traceback) and re-raised; the last epoch
    checkpoint stays, so running again resumes from it.

    The run holds ``run_dir``'s lock throughout (`RunLocked` if another process runs it), and
    a directory holding another experiment's records is refused (`RunDirConflict`) unless
    ``force``, which starts it over.
    """
    cfg.validate()
    run_dir = Path(run_dir)
    # Before the process group exists: torchrun's RANK, or the task number of a SLURM DDP job.
    main_rank = int(os.environ.get("RANK", os.environ.get("SLURM_PROCID", "0"))) == 0
    if main_rank and not force:  # refused before anything in it is written (its lock included)
        conflict = run_dir_conflict(run_dir, cfg.to_dict())
        if conflict:
            raise RunDirConflict(conflict)
    with RunLock(run_dir, enabled=main_rank):
        if main_rank:
            claim_run_dir(run_dir, cfg.to_dict(), force=force)
        # From the start, so that a failure that cannot be recorded can still be marked in it.
        heartbeat = Heartbeat(run_dir, every_s=cfg.train.heartbeat_every_s, enabled=main_rank)
        try:
            heartbeat.beat(0, 0)
            return _train(cfg, run_dir, should_stop, heartbeat)
        except RunDirConflict:
            raise
        except Exception as error:
            failed = {
                "status": "failed",
                "error": f"{type(error).__name__}: {error}",
                "traceback": traceback.format_exc(),
                **provenance(cfg.to_dict(), run_dir),
            }
            if main_rank:
                try:
                    RunRecorder(run_dir, cfg.to_dict()).write_result(failed)
                except OSError as record_error:  # a full disk: the error must still be seen
                    print(
                        f"could not record the failure in {run_dir}: {record_error}\n{failed['traceback']}",
                        file=sys.stderr,
                        flush=True,
                    )
                    try:  # where `status` and the launcher's summary look for it
                        heartbeat.record_unrecorded_failure(failed["error"])
                    except OSError as mark_error:
                        print(
                            f"could not mark the failure in {heartbeat.path} either: {mark_error}",
                            file=sys.stderr,
                            flush=True,
                        )
            raise


def _train(cfg: RunConfig, run_dir: Path, should_stop, heartbeat: Heartbeat) -> dict:
    tc = cfg.train
    device_kind = (
        "cuda" if tc.device == "auto" and torch.cuda.is_available() else ("cpu" if tc.device == "auto" else tc.device)
    )
    ddp = init_distributed(device_kind)
    device = torch.device(device_kind, ddp.local_rank) if device_kind == "cuda" else torch.device("cpu")
    torch.set_num_threads(tc.threads or available_cpus())
    config = cfg.to_dict()
    done = read_finished_result(run_dir)
    if done is not None:
        return done
    recorder = RunRecorder(run_dir, config, enabled=ddp.main)
    started = time.perf_counter()
    seed_everything(tc.seed)

    # Data, model, optimizer, sparsifier: built in this order so the global RNG gives the
    # same model initialisation for every criterion with the same seed.
    info = model_info(cfg.model.name)
    channels_last = info.is_conv if tc.channels_last is None else tc.channels_last
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    splits = build_dataset(
        cfg.data.name,
        cfg.data.root,
        val_fraction=cfg.data.val_fraction,
        seed=tc.seed,
        device=device,
        reference_splits=cfg.data.reference_splits,
        download=cfg.data.download,
        **cfg.data.kwargs,
    )
    loaders = make_loaders(
        splits,
        cfg.data.batch_size,
        cfg.data.eval_batch_size,
        seed=tc.seed,
        device=device,
        memory_format=memory_format,
        num_workers=cfg.data.num_workers,
        distributed=ddp.world > 1,
    )
    task = Task(binary=splits.task == "binary", label_smoothing=cfg.optim.label_smoothing)
    num_classes = cfg.model.num_classes or splits.num_classes
    model = build_model(cfg.model.name, num_classes, **cfg.model.kwargs).to(device, memory_format=memory_format)
    optimizer = make_optimizer(model, cfg.optim)
    steps_per_epoch = len(loaders.train)
    total_steps = tc.epochs * steps_per_epoch
    current = {}  # the latest training batch: what data-scored criteria (grasp) score on
    sparsifier = Sparsifier(
        model, optimizer, cfg.sparsity, total_steps, seed=tc.seed, batches=lambda: current["batch"]
    ).prepare(splits.input_shape)
    net = nn.parallel.DistributedDataParallel(model) if ddp.world > 1 else model

    progress = Progress()
    acc = _EpochAccumulator(device)
    identity = identity_hash(config)
    scratch = _scratch_checkpoint(tc.scratch_dir, run_dir)
    ckpt = _read_checkpoint(recorder, identity, device, scratch)
    if ckpt is None:
        recorder.truncate_metrics(0)  # a fresh start: no lines of an earlier attempt
    else:
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        sparsifier.load_state_dict(ckpt["sparsifier"])
        loaders.train.load_state_dict(ckpt["loader"])
        set_rng_state(ckpt["rng"])
        progress = Progress(**ckpt["progress"])
        progress.resumed_at.append(progress.step)
        acc.load_state_dict(ckpt["accumulator"])
    latest = {f"{k}_acc": progress.last[f"{k}_acc"] for k in ("val", "test") if f"{k}_acc" in progress.last}
    heartbeat.beat(progress.step, progress.epoch, **latest)
    total_steps = min(tc.epochs * steps_per_epoch, tc.max_steps or tc.epochs * steps_per_epoch)
    heartbeat.training(epochs=tc.epochs, total_steps=total_steps, start_step=progress.step)

    last_shared = time.monotonic()

    def checkpoint(stopping: bool = False):
        """At the end of every `checkpoint_every`-th epoch: to the scratch directory if there
        is one, and to the run directory once `checkpoint_interval_min` minutes have passed
        since the last time; when the run stops, always to the run directory."""
        nonlocal last_shared
        if not ddp.main or not (stopping or progress.epoch % tc.checkpoint_every == 0):
            return
        shared = stopping or time.monotonic() - last_shared >= 60 * tc.checkpoint_interval_min
        if not (shared or scratch):
            return
        recorder.sync_metrics()
        buffer = io.BytesIO()
        torch.save(
            {
                "config_hash": identity,
                "model": model.state_dict(),
                "optimizer": optimizer.state_dict(),
                "sparsifier": sparsifier.state_dict(),
                "loader": loaders.train.state_dict(),
                "rng": rng_state(),
                "progress": progress.__dict__,
                "accumulator": acc.state_dict(),
                "metrics_offset": recorder.metrics_offset(),
            },
            buffer,
        )
        if scratch:
            scratch.parent.mkdir(parents=True, exist_ok=True)
            atomic_write(scratch, buffer.getbuffer())
        if shared:
            atomic_write(recorder.checkpoint_path, buffer.getbuffer())
            last_shared = time.monotonic()

    wandb_run = _start_wandb(cfg, config, run_dir) if ddp.main else None
    _wandb_replay(wandb_run, recorder)
    bar = _progress_bar(tc.progress, steps_per_epoch) if ddp.main else None
    status, diverged = "completed", None
    segment_start = time.perf_counter()
    while progress.epoch < tc.epochs:
        epoch_start = time.perf_counter()
        lr = learning_rate(cfg.optim, progress.epoch, progress.step, tc.epochs, steps_per_epoch)
        if bar is not None:
            bar.reset(total=steps_per_epoch)
            bar.n = loaders.train.state_dict().get("position", 0)
        for x, y in loaders.train:
            current["batch"] = (x, y)
            lr = learning_rate(cfg.optim, progress.epoch, progress.step, tc.epochs, steps_per_epoch)
            for group in optimizer.param_groups:
                group["lr"] = lr
            out = net(x)
            loss = task.loss(out, y)
            loss.backward()
            record = sparsifier.step()
            optimizer.zero_grad(set_to_none=True)
            progress.step += 1
            acc.add(loss.detach(), task.correct(out.detach(), y), len(y), progress.step)
            if record is not None:
                update = _update_metrics(record)
                recorder.log("update", epoch=progress.epoch + 1, **update)
                _wandb_log(wandb_run, "update", update, progress.step)
            if bar is not None:
                bar.update(1)
            heartbeat.maybe_beat(progress.step, progress.epoch)
            if progress.step % tc.log_every == 0:
                diverged = _divergence(acc, ddp, device)
                if diverged:
                    break
                if bar is None and ddp.main:
                    print(f"epoch {progress.epoch + 1} step {progress.step}/{total_steps} lr {lr:.4g}", flush=True)
            # Under DDP every rank must stop at the same step: agree every `log_every` steps.
            if (
                should_stop is not None
                and (ddp.world == 1 or progress.step % tc.log_every == 0)
                and _agree(should_stop(), ddp, device)
            ):
                status = "interrupted"
                break
            if tc.max_steps is not None and progress.step >= tc.max_steps:
                break
        if status == "interrupted" or diverged:
            break
        diverged = _divergence(acc, ddp, device)
        if diverged:
            break
        train_time = time.perf_counter() - epoch_start
        train_metrics = acc.summary()
        acc = _EpochAccumulator(device)
        val = evaluate(model, loaders.val, task)
        test = evaluate(model, loaders.test, task)
        progress.epoch += 1
        progress.train_time += train_time
        epoch_record = {
            "epoch": progress.epoch,
            "step": progress.step,
            "lr": lr,
            "train_loss": train_metrics["loss"],
            "train_acc": train_metrics["acc"],
            "val_loss": val["loss"],
            "val_acc": val["acc"],
            "test_loss": test["loss"],
            "test_acc": test["acc"],
            "prune_rate": sparsifier.prune_rate() if cfg.sparsity.mode == "dst" else 0.0,
            "density": sparsifier.overall_density(),
            "layer_density": sparsifier.densities(),
            "epoch_time": time.perf_counter() - epoch_start,
            "train_time": train_time,
        }
        progress.last = epoch_record
        if val["acc"] > progress.best_val_acc:  # ties keep the earlier epoch
            progress.best_val_acc, progress.best = val["acc"], epoch_record
        recorder.log("epoch", **epoch_record)
        heartbeat.epoch_end(progress.step, progress.epoch, val_acc=val["acc"], test_acc=test["acc"])
        _wandb_log(wandb_run, "epoch", epoch_record, progress.step)
        if ddp.main:
            print(_epoch_line(epoch_record, tc.epochs), flush=True)
        progress.elapsed += time.perf_counter() - segment_start
        segment_start = time.perf_counter()
        if tc.max_steps is not None and progress.step >= tc.max_steps:
            break
        checkpoint()
    if bar is not None:
        bar.close()
    progress.elapsed += time.perf_counter() - segment_start

    if diverged:
        status = "diverged"
    if status == "interrupted":
        checkpoint(stopping=True)
    result = _result(
        cfg,
        config,
        run_dir,
        status,
        progress,
        sparsifier,
        diverged,
        total_steps,
        setup_time=time.perf_counter() - started - progress.elapsed,
    )
    if status != "interrupted":
        if tc.save_model and ddp.main:
            masks = dict(zip(sparsifier.names, sparsifier.state_dict()["masks"]))
            _save_torch({"model": model.state_dict(), "masks": masks}, run_dir / "model_final.pt")
        recorder.write_result(result)
        if ddp.main:
            for path in (recorder.checkpoint_path, scratch):
                if path is not None:
                    path.unlink(missing_ok=True)
    else:  # recorded, so that a sweep counts it; running it again resumes from the checkpoint
        recorder.write_result(result)
    recorder.close()
    if wandb_run is not None:
        wandb_run.summary.update({k: v for k, v in result.items() if isinstance(v, (int, float, str))})
        wandb_run.finish()
    return result


def _save_torch(obj, path: Path) -> None:
    # Serialised in memory first: a failing write (a full disk) then raises the plain OSError
    # ("No space left on device") instead of an opaque error from inside torch's zip writer.
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    atomic_write(path, buffer.getbuffer())


def _scratch_checkpoint(scratch_dir: str | None, run_dir: Path) -> Path | None:
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
    return Path(local) / f"{run_dir.name}-{where}" / CHECKPOINT


def _read_checkpoint(recorder: RunRecorder, identity: str, device, scratch: Path | None = None) -> dict | None:
    """The run's checkpoint, or None to start from scratch: the newer (by step) of the run
    directory's and, on the node that wrote it, the scratch directory's.

    Loaded with ``weights_only=True``: a planted pickle cannot run code. A checkpoint that
    cannot be read (cut short by a full disk, not a checkpoint) is moved aside as
    ``checkpoint.pt.corrupt-<time>`` and reported; so is one whose metrics lines were lost.
    One of another experiment is an error (the run directory was reused).
    """
    path = recorder.checkpoint_path
    if not recorder.enabled:  # other DDP ranks: the main rank vetted it (and wrote it here)
        return torch.load(path, map_location=device, weights_only=True) if path.exists() else None
    found = [
        c for c in (_load_checkpoint(p, identity, device) for p in (scratch, path) if p is not None) if c is not None
    ]
    for ckpt, where in sorted(found, key=lambda c: -c[0]["progress"]["step"]):
        if recorder.truncate_metrics(ckpt["metrics_offset"]):
            return ckpt
        _set_aside(where, "metrics.jsonl lost lines written before this checkpoint")
    return None


def _load_checkpoint(path: Path, identity: str, device) -> tuple[dict, Path] | None:
    if not path.exists():
        return None
    try:
        ckpt = torch.load(path, map_location=device, weights_only=True)
        problem = None if isinstance(ckpt, dict) and "metrics_offset" in ckpt else "not a checkpoint"
    except Exception as error:  # torch raises many types for a damaged file
        problem = f"{type(error).__name__}: {(str(error).splitlines() or [''])[0]}"
    if problem is None and ckpt.get("config_hash", identity) != identity:
        raise RunDirConflict(
            f"{path} is of another experiment (config hash {ckpt['config_hash']}, this run's is {identity})"
        )
    if problem is None:
        return ckpt, path
    _set_aside(path, problem)
    return None


def _set_aside(path: Path, problem: str) -> None:
    aside = path.with_name(f"{path.name}.corrupt-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}")
    os.replace(path, aside)
    print(
        f"warning: unreadable checkpoint {path} ({problem}); kept as {aside.name}, the run starts from scratch",
        file=sys.stderr,
        flush=True,
    )


def _agree(flag: bool, ddp: Dist, device) -> bool:
    """True if any rank's flag is true (the flag itself in a single process)."""
    if ddp.world == 1:
        return flag
    t = torch.tensor([float(flag)], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


def _divergence(acc, ddp: Dist, device) -> dict | None:
    """The first non-finite loss of this rank, or of any rank (all ranks stop together)."""
    diverged = acc.divergence()
    if _agree(diverged is not None, ddp, device):
        return diverged or {"step": None, "reason": "non-finite training loss on another rank"}
    return None


class _EpochAccumulator:
    """Training loss / accuracy sums kept on the device (no per-step synchronisation), and
    the first step whose loss was not finite."""

    def __init__(self, device):
        self.loss_sum = torch.zeros((), device=device)
        self.correct = torch.zeros((), device=device, dtype=torch.long)
        self.first_bad_step = torch.full((), -1, device=device, dtype=torch.long)
        self.n = 0

    def add(self, loss, correct, n, step):
        self.loss_sum += loss * n
        self.correct += correct
        self.n += n
        bad = ~torch.isfinite(loss) & (self.first_bad_step < 0)
        self.first_bad_step = torch.where(bad, step, self.first_bad_step)

    def divergence(self) -> dict | None:
        step = int(self.first_bad_step)
        if step < 0:
            return None
        return {"step": step, "reason": "non-finite training loss"}

    def summary(self) -> dict:
        loss, correct = torch.stack([self.loss_sum, self.correct.float()]).tolist()
        return {"loss": loss / max(self.n, 1), "acc": 100.0 * correct / max(self.n, 1)}

    def state_dict(self) -> dict:
        return {"loss_sum": self.loss_sum, "correct": self.correct, "first_bad_step": self.first_bad_step, "n": self.n}

    def load_state_dict(self, state: dict) -> None:
        self.loss_sum, self.correct = state["loss_sum"], state["correct"]
        self.first_bad_step, self.n = state["first_bad_step"], state["n"]


def _update_metrics(record) -> dict:
    layers = [layer.__dict__ for layer in record.layers]
    regrown = sum(layer["regrown"] for layer in layers)
    just = sum(layer["regrown_just_pruned"] for layer in layers)
    out = {
        "step": record.step,
        "prune_rate": record.prune_rate,
        "layers": layers,
        "removed": sum(layer["removed"] for layer in layers),
        "regrown": regrown,
        "regrown_just_pruned_share": just / regrown if regrown else 0.0,
    }
    if record.overlap is not None:
        out["overlap"] = record.overlap
    return out


def _result(cfg, config, run_dir, status, progress, sparsifier, diverged, total_steps, setup_time) -> dict:
    last, best = progress.last, progress.best
    return {
        "status": status,
        **provenance(config, run_dir),
        "epochs_completed": progress.epoch,
        "steps": progress.step,
        "total_steps": total_steps,
        "final": {
            k: last.get(k) for k in ("epoch", "train_loss", "train_acc", "val_loss", "val_acc", "test_loss", "test_acc")
        },
        "best_val": {k: best.get(k) for k in ("epoch", "val_loss", "val_acc", "test_loss", "test_acc")},
        "achieved_density": sparsifier.overall_density(),
        "achieved_layer_density": sparsifier.densities(),
        "layer_backend": dict(zip(sparsifier.names, sparsifier.backends)),  # which layers ran sparse
        "wall_time": progress.elapsed + max(setup_time, 0.0),
        "train_time": progress.train_time,
        "steps_per_s": progress.step / progress.train_time if progress.train_time else None,
        "diverged": diverged,
        "resumed_at_steps": progress.resumed_at,
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def _epoch_line(r: dict, epochs: int) -> str:
    return (
        f"epoch {r['epoch']}/{epochs}  train {r['train_loss']:.4f} / {r['train_acc']:.2f}%  "
        f"val {r['val_loss']:.4f} / {r['val_acc']:.2f}%  test {r['test_acc']:.2f}%  "
        f"density {r['density']:.4f}  {r['epoch_time']:.1f}s"
    )


def _progress_bar(enabled: bool | None, total: int):
    if enabled is None:
        enabled = sys.stderr.isatty()
    if not enabled:
        return None
    from tqdm import tqdm

    return tqdm(total=total, leave=False, dynamic_ncols=True, unit="step")


def _start_wandb(cfg: RunConfig, config: dict, run_dir: Path):
    """The run's W&B mirror, or None. Its id is derived from the run directory's path and
    the experiment (unique per sweep and run, the same across requeues, so a resumed run
    continues its W&B run and a replication under another sweep name gets its own); it is
    grouped by sweep (`group`) and cell (`job_type`) and tagged with the paper's axes. W&B's
    local files go to `logging.wandb_dir` (default `<sweep dir>/.wandb`), not the run dir."""
    if cfg.logging.wandb == "off":
        return None
    from .config import require_wandb

    require_wandb(f"logging.wandb={cfg.logging.wandb}")
    import wandb

    where = run_dir.resolve()
    sweep, s = where.parent.name, cfg.sparsity  # runs_root/<sweep name>/<run slug>
    cell = cell_hash(config)[:8]
    axes = {
        "sweep": sweep,
        "cell": cell,
        "criterion": s.criterion if s.mode == "dst" else None,
        "growth": s.growth if s.mode == "dst" else None,
        "density": 1.0 if s.mode == "dense" else s.density,
        "seed": cfg.train.seed,
    }
    tags = [
        *cfg.logging.tags,
        *(f"{k}:{v:g}" if isinstance(v, float) else f"{k}:{v}" for k, v in axes.items() if v is not None),
        f"code:{code_version()}",
    ]
    slug = cell_of_name(run_dir)  # the run's name without seed and hash
    local = Path(cfg.logging.wandb_dir or where.parent / ".wandb")
    local.mkdir(parents=True, exist_ok=True)
    run_id = hashlib.sha256(f"{where}\0{identity_hash(config)}".encode()).hexdigest()[:20]
    return wandb.init(
        project=cfg.logging.wandb_project,
        entity=cfg.logging.wandb_entity,
        config={**config, "dst": axes},
        group=sweep,
        job_type=f"{slug}-{cell}"[-64:],
        name=run_dir.name,
        tags=[t[:64] for t in tags],
        dir=str(local),
        mode=cfg.logging.wandb,
        id=run_id,
        resume="allow",
    )


def _wandb_replay(wandb_run, recorder: RunRecorder) -> None:
    """Log the records this attempt starts from (those its checkpoint covers), from
    metrics.jsonl, at the steps W&B has not seen: an online run resumed by id has seen the
    steps before its `step`; an offline one starts empty (each attempt writes its own
    file), so its file then holds every record exactly once."""
    if wandb_run is None:
        return
    seen = wandb_run.step
    for row in read_metrics(recorder.run_dir):
        if row.get("step", -1) >= seen and row.get("kind") in ("epoch", "update"):
            _wandb_log(wandb_run, row["kind"], {k: v for k, v in row.items() if k != "kind"}, row["step"])


def _wandb_log(wandb_run, kind: str, record: dict, step: int) -> None:
    """Mirror an epoch or topology-update record's numbers to W&B as `kind/<key>`, at the
    optimizer step (one x-axis for both)."""
    if wandb_run is not None:
        wandb_run.log({f"{kind}/{k}": v for k, v in record.items() if isinstance(v, (int, float))}, step=step)


# ---------------------------------------------------------------------------- command line
class StopOnSignal:
    """SIGTERM, SIGINT (Ctrl-C) and SIGUSR2 ask the run to stop at the next step: it then
    checkpoints and records itself as interrupted. A second SIGINT aborts at once.

    Use as the ``should_stop`` of `train`, inside ``with``; handlers are only installed in
    the main thread (Python delivers signals there).
    """

    SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGUSR2)

    def __init__(self):
        self.received: int | None = None
        self._previous: dict = {}

    def __enter__(self) -> StopOnSignal:
        if threading.current_thread() is threading.main_thread():
            self._previous = {sig: signal.signal(sig, self._handle) for sig in self.SIGNALS}
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

    def _handle(self, signum, frame) -> None:
        if self.received is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        if self.received is None:
            try:  # os.write: print is not safe inside a signal handler
                os.write(
                    2,
                    f"received {signal.Signals(signum).name}: stopping at the next step with a "
                    f"checkpoint (Ctrl-C again to abort at once)\n".encode(),
                )
            except OSError:
                pass
        self.received = signum

    def __call__(self) -> bool:
        return self.received is not None


USAGE = """usage: python -m src.train [key=value ...] [--run-dir DIR] [--force]

Train one model and write its records to DIR (default runs/train): config.json, metrics.jsonl,
checkpoint.pt while running, result.json at the end, heartbeat.json, train.log. Running the
same command again resumes from the checkpoint; --force starts over in a directory that holds
another experiment's records. Keys are the fields of src/config.py RunConfig:
  model.name  data.name data.root data.batch_size  optim.name optim.lr optim.weight_decay
  sparsity.mode (dense|static|dst) sparsity.density sparsity.criterion sparsity.growth
  sparsity.update_frequency sparsity.prune_rate  train.epochs train.seed train.threads
  train.device  logging.wandb (off|offline|online)
No Hydra here (no config groups, no sweeps): for those use python -m src.launch.

example: python -m src.train model.name=lenet5 sparsity.mode=dst sparsity.density=0.05 \\
             sparsity.criterion=snip train.epochs=4 --run-dir runs/lenet5-snip"""


def main(argv: list[str] | None = None) -> int:
    """`python -m src.train [key=value ...] [--run-dir DIR] [--force]`: one run, no Hydra
    needed. ``--force`` starts over in a run directory that holds another experiment."""
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    argv = list(sys.argv[1:] if argv is None else argv)
    if "--help" in argv or "-h" in argv:
        print(USAGE)
        return 0
    run_dir = "runs/train"
    if "--run-dir" in argv:
        i = argv.index("--run-dir")
        if i + 1 >= len(argv):
            print("error: --run-dir needs a directory", file=sys.stderr)
            return 2
        run_dir = argv[i + 1]
        del argv[i : i + 2]
    force = "--force" in argv
    argv = [a for a in argv if a != "--force"]
    try:
        unknown = [a for a in argv if a.startswith("-") or "=" not in a]
        if unknown:
            raise ValueError(f"{unknown[0]}: not a key=value override (see --help)")
        base = OmegaConf.structured(RunConfig)
        merged = OmegaConf.merge(base, OmegaConf.from_dotlist(argv))
        cfg = RunConfig.from_dict(OmegaConf.to_container(merged, resolve=True))
        cfg.validate()
    except (ValueError, OmegaConfBaseException) as error:
        key = getattr(error, "full_key", None)  # OmegaConf's errors name the field apart
        from omegaconf.errors import ConfigKeyError

        from .checks import unknown_field_message  # the launch's close matches, for a misspelt field

        # (a section's field only: the top level of a run config is not the launch's)
        hint = unknown_field_message(key) if key and "." in key and isinstance(error, ConfigKeyError) else None
        print(f"error: {hint or (key + ': ' if key else '') + str(error).strip().splitlines()[0]}", file=sys.stderr)
        return 2
    conflict = None if force else run_dir_conflict(Path(run_dir), cfg.to_dict())
    if conflict:  # before the log is opened: a refused directory is left byte-identical
        print(f"error: {conflict}", file=sys.stderr)
        return 2
    try:
        with tee_output(Path(run_dir) / LOG), StopOnSignal() as stop:
            result = train(cfg, run_dir, should_stop=stop, force=force)
    except (RunDirConflict, RunLocked) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(
        f"{result['status']}: final test acc {result['final']['test_acc']}, "
        f"best-val test acc {result['best_val']['test_acc']}, records in {run_dir}"
    )
    return exit_code([result["status"]])


if __name__ == "__main__":
    sys.exit(main())

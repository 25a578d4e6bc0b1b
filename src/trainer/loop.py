"""Train one model, dense or sparse: the loop, top to bottom.

batches -> loss -> backward -> `sparsifier.step()` (the optimizer step, the masks, and every
`update_frequency` steps a prune-and-regrow update) -> evaluate each epoch -> result. What
happens around it (records, heartbeat, checkpoints, console, W&B) is attached as listeners
(`listeners.Listener`), each in its own file. A run resumes from its checkpoint bit-identically.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ..config import RunConfig
from ..data import build_dataset, make_loaders
from ..models import build_model, model_info
from ..rundir.files import RunRecorder, read_finished_result, read_metrics
from ..rundir.heartbeat import Heartbeat
from ..rundir.identity import identity_hash
from ..sparse.flops import record_flops
from ..sparse.sparsifier import Sparsifier
from .beat import HeartbeatListener
from .checkpoints import Checkpoints, save_torch
from .console import Console
from .distributed import Dist, agree, divergence, init_distributed
from .evaluation import EpochAccumulator, Task, evaluate
from .metrics import MetricsLog, update_record
from .optim import learning_rate, make_optimizer
from .provenance import provenance
from .rng import seed_everything
from .wandb_mirror import WandbMirror


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


@dataclass
class Training:
    """Everything the loop works on (what the listeners see)."""

    cfg: RunConfig
    config: dict  # cfg as a dict (what the records hold)
    device: torch.device
    ddp: Dist
    recorder: RunRecorder
    model: nn.Module
    net: nn.Module  # the model, wrapped for data-parallel training when there are several ranks
    optimizer: torch.optim.Optimizer
    sparsifier: Sparsifier
    loaders: Any  # (`data.Loaders`: train, val, test)
    task: Task
    progress: Progress = field(default_factory=Progress)
    acc: EpochAccumulator = field(default_factory=lambda: EpochAccumulator(torch.device("cpu")))
    lr: float = 0.0
    batch: tuple[Tensor, Tensor] | None = None  # the latest training batch: what data-scored criteria (grasp) score on
    input_shape: tuple = ()  # one sample's shape, and the classes: what the FLOPs count needs
    num_classes: int = 0
    train_samples: int = 0

    @property
    def steps_per_epoch(self) -> int:
        return len(self.loaders.train)

    @property
    def total_steps(self) -> int:
        return self.cfg.train.epochs * self.steps_per_epoch

    def latest_batch(self) -> tuple[Tensor, Tensor]:
        """The batch a data-scored criterion (grasp) scores on: the latest training batch."""
        assert self.batch is not None, "no training batch yet"
        return self.batch

    def reached_max_steps(self) -> bool:
        return self.cfg.train.max_steps is not None and self.progress.step >= self.cfg.train.max_steps


def build(cfg: RunConfig, device: torch.device, ddp: Dist, recorder: RunRecorder) -> Training:
    """Data, model, optimizer, sparsifier: built in this order so the global RNG gives the same
    model initialisation for every criterion with the same seed."""
    tc = cfg.train
    seed_everything(tc.seed)
    channels_last = model_info(cfg.model.name).is_conv if tc.channels_last is None else tc.channels_last
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
    model = build_model(cfg.model.name, cfg.model.num_classes or splits.num_classes, **cfg.model.kwargs)
    model = model.to(device, memory_format=memory_format)  # type: ignore[call-overload]  # (torch's stubs)
    optimizer = make_optimizer(model, cfg.optim)
    run = Training(cfg, cfg.to_dict(), device, ddp, recorder, model, model, optimizer, None, loaders, task)  # type: ignore[arg-type]
    run.sparsifier = Sparsifier(
        model, optimizer, cfg.sparsity, run.total_steps, seed=tc.seed, batches=run.latest_batch
    ).prepare(splits.input_shape, cfg.data.batch_size)
    run.net = nn.parallel.DistributedDataParallel(model) if ddp.world > 1 else model
    run.acc = EpochAccumulator(device)  # (on the run's device)
    run.input_shape, run.num_classes = tuple(splits.input_shape), cfg.model.num_classes or splits.num_classes
    run.train_samples = len(splits.train)
    return run


def fit(cfg: RunConfig, run_dir: Path, should_stop, heartbeat: Heartbeat) -> dict:
    """Run (or resume) the training of one run in `run_dir` and return its result."""
    tc = cfg.train
    device_kind = "cuda" if tc.device == "auto" and torch.cuda.is_available() else tc.device.replace("auto", "cpu")
    ddp = init_distributed(device_kind)
    device = torch.device(device_kind, ddp.local_rank) if device_kind == "cuda" else torch.device("cpu")
    if tc.threads:
        torch.set_num_threads(tc.threads)
    done = read_finished_result(run_dir)
    if done is not None:
        return done
    recorder = RunRecorder(run_dir, cfg.to_dict(), enabled=ddp.main)
    started = time.perf_counter()
    run = build(cfg, device, ddp, recorder)
    checkpoints = Checkpoints(tc, run_dir, recorder, identity_hash(run.config), main=ddp.main)
    checkpoints.resume(run)
    listeners = [MetricsLog(), HeartbeatListener(heartbeat)]
    if ddp.main:
        listeners += [WandbMirror(cfg, run_dir), Console(tc, run.steps_per_epoch)]
    listeners.append(checkpoints)
    for listener in listeners:
        listener.on_start(run)

    status, diverged = train_epochs(run, listeners, should_stop)
    if status == "interrupted":
        for listener in listeners:
            listener.on_stop(run)
    result = run_result(run, run_dir, status, diverged, setup_time=time.perf_counter() - started)
    if status != "interrupted" and tc.save_model and ddp.main:
        masks = dict(zip(run.sparsifier.names, run.sparsifier.state_dict()["masks"]))
        save_torch({"model": run.model.state_dict(), "masks": masks}, run_dir / "model_final.pt")
    recorder.write_result(result)  # (interrupted too, so that a sweep counts it; a launch resumes it)
    for listener in listeners:
        listener.on_end(run, result)
    return result


def train_epochs(run: Training, listeners: list, should_stop) -> tuple[str, dict | None]:
    """The epochs left: (status, the divergence if the loss stopped being finite)."""
    cfg, tc, progress = run.cfg, run.cfg.train, run.progress
    segment_start = time.perf_counter()
    try:
        while progress.epoch < tc.epochs:
            epoch_start = time.perf_counter()
            run.lr = learning_rate(cfg.optim, progress.epoch, progress.step, tc.epochs, run.steps_per_epoch)
            for listener in listeners:
                listener.on_epoch_start(run)
            for x, y in run.loaders.train:
                run.batch = (x, y)
                run.lr = learning_rate(cfg.optim, progress.epoch, progress.step, tc.epochs, run.steps_per_epoch)
                for group in run.optimizer.param_groups:
                    group["lr"] = run.lr
                out = run.net(x)
                loss = run.task.loss(out, y)
                loss.backward()
                change = run.sparsifier.step()  # the optimizer step, the masks, and the topology updates
                run.optimizer.zero_grad(set_to_none=True)
                progress.step += 1
                run.acc.add(loss.detach(), run.task.correct(out.detach(), y), len(y), progress.step)
                if change is not None:
                    update = update_record(change)
                    for listener in listeners:
                        listener.on_update(run, update)
                if progress.step % tc.log_every == 0:
                    diverged = divergence(run.acc, run.ddp, run.device)
                    if diverged:
                        return "diverged", diverged
                for listener in listeners:
                    listener.on_step(run)
                # Under DDP every rank must stop at the same step: agree every `log_every` steps.
                if (
                    should_stop is not None
                    and (run.ddp.world == 1 or progress.step % tc.log_every == 0)
                    and agree(should_stop(), run.ddp, run.device)
                ):
                    return "interrupted", None
                if run.reached_max_steps():
                    break
            diverged = divergence(run.acc, run.ddp, run.device)
            if diverged:
                return "diverged", diverged
            record = evaluate_epoch(run, epoch_start)
            progress.elapsed += time.perf_counter() - segment_start
            segment_start = time.perf_counter()
            for listener in listeners:
                listener.on_epoch(run, record)
            if run.reached_max_steps():
                break
        return "completed", None
    finally:
        progress.elapsed += time.perf_counter() - segment_start


def evaluate_epoch(run: Training, epoch_start: float) -> dict:
    """Close the epoch: its training metrics, validation and test; the epoch's record."""
    progress = run.progress
    train_time = time.perf_counter() - epoch_start
    train_metrics = run.acc.summary()
    run.acc = EpochAccumulator(run.device)
    val = evaluate(run.model, run.loaders.val, run.task)
    test = evaluate(run.model, run.loaders.test, run.task)
    progress.epoch += 1
    progress.train_time += train_time
    record = {
        "epoch": progress.epoch,
        "step": progress.step,
        "lr": run.lr,
        "train_loss": train_metrics["loss"],
        "train_acc": train_metrics["acc"],
        "val_loss": val["loss"],
        "val_acc": val["acc"],
        "test_loss": test["loss"],
        "test_acc": test["acc"],
        "prune_rate": run.sparsifier.prune_rate() if run.cfg.sparsity.mode == "dst" else 0.0,
        "density": run.sparsifier.overall_density(),
        "layer_density": run.sparsifier.densities(),
        "epoch_time": time.perf_counter() - epoch_start,
        "train_time": train_time,
    }
    progress.last = record
    if val["acc"] > progress.best_val_acc:  # ties keep the earlier epoch
        progress.best_val_acc, progress.best = val["acc"], record
    return record


def run_result(run: Training, run_dir: Path, status: str, diverged: dict | None, setup_time: float) -> dict:
    """result.json: how the run ended, its final and best-validation numbers, its densities,
    times, and where it came from."""
    progress, sparsifier = run.progress, run.sparsifier
    last, best = progress.last, progress.best
    return {
        "status": status,
        **provenance(run.config, run_dir),
        "epochs_completed": progress.epoch,
        "steps": progress.step,
        "total_steps": run.total_steps,
        "final": {
            k: last.get(k) for k in ("epoch", "train_loss", "train_acc", "val_loss", "val_acc", "test_loss", "test_acc")
        },
        "best_val": {k: best.get(k) for k in ("epoch", "val_loss", "val_acc", "test_loss", "test_acc")},
        "achieved_density": sparsifier.overall_density(),
        "achieved_layer_density": sparsifier.densities(),
        "layer_backend": dict(zip(sparsifier.names, sparsifier.backends)),  # which layers ran sparse
        "layer_kernels": sparsifier.kernel_choices(),  # what each sparse layer's operations ran on
        "wall_time": progress.elapsed + max(setup_time - progress.elapsed, 0.0),
        "train_time": progress.train_time,
        "steps_per_s": progress.step / progress.train_time if progress.train_time else None,
        "diverged": diverged,
        "flops": run_flops(run, run_dir),
        "resumed_at_steps": progress.resumed_at,
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def run_flops(run: Training, run_dir: Path) -> dict:
    """Training FLOPs from the densities each layer had, segment by segment between the
    recorded topology updates, and inference FLOPs at the end (`sparse.flops`)."""
    return record_flops(
        run.config,
        input_shape=run.input_shape,
        num_classes=run.num_classes,
        final_density=run.sparsifier.densities(),
        update_records=read_metrics(run_dir, "update"),
        steps=run.progress.step,
        steps_per_epoch=run.steps_per_epoch,
        samples_per_epoch=run.train_samples // run.ddp.world,
        ranks=run.ddp.world,
    )

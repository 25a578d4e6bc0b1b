"""The W&B mirror in offline mode (no network, no key), read back from the `.wandb` files W&B
wrote: one W&B run per sweep and run directory, resumed across requeues, tagged and grouped by
the paper's axes, and after a kill -9 and a resume every epoch in its history exactly once."""

import json
import os
import struct
from pathlib import Path

import pytest

from src.rundir import read_metrics
from src.train import train
from tests.test_faults import args, config, lines, start_train, stop_after, wait_for

pytestmark = pytest.mark.slow


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    import wandb

    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    yield
    wandb.teardown()  # this process's W&B service (its address is inherited by child processes)
    monkeypatch.delenv("WANDB_SERVICE", raising=False)


def wandb_records(path: Path) -> list:
    """The records of a `.wandb` file (W&B's LevelDB-style log: a 7-byte header, then 32 KiB
    blocks of chunks with a 7-byte header each), as W&B's own protobuf `Record`s."""
    from wandb.proto import wandb_internal_pb2 as pb

    data, block, at, chunk, records = path.read_bytes(), 32768, 7, b"", []
    assert data[:4] == b":W&B"
    while at + 7 <= len(data):
        if block - at % block < 7:  # a block's tail too short for a chunk header is padding
            at += block - at % block
            continue
        _, length, kind = struct.unpack("<IHB", data[at : at + 7])
        if kind == 0:
            break
        chunk += data[at + 7 : at + 7 + length]
        at += 7 + length
        if kind in (1, 4):  # a whole record, or its last chunk
            record = pb.Record()
            record.ParseFromString(chunk)
            records.append(record)
            chunk = b""
    return records


def wandb_run(path: Path):
    (run,) = [r.run for r in wandb_records(path) if r.WhichOneof("record_type") == "run"]
    return run


def wandb_history(path: Path) -> list[dict]:
    rows = []
    for record in wandb_records(path):
        if record.WhichOneof("record_type") == "history":
            rows.append(
                {(item.key or "/".join(item.nested_key)): json.loads(item.value_json) for item in record.history.item}
            )
    return rows


def wandb_files(sweep: Path) -> list[Path]:
    """The `.wandb` files of a sweep's runs, once W&B's service has written them out (its
    writer runs on after `finish` returns)."""
    import wandb

    wandb.teardown()
    return sorted(sweep.glob(".wandb/wandb/offline-run-*/*.wandb"), key=lambda p: p.parent.name)


def test_one_wandb_run_per_sweep_and_run_directory_resumed_across_requeues(tmp_path):
    cfg = config(args(**{"logging.wandb": "offline"}))
    first, replication = tmp_path / "sweep_a" / "mlp-run", tmp_path / "sweep_b" / "mlp-run"
    assert train(cfg, first, should_stop=stop_after(25))["status"] == "interrupted"
    assert train(cfg, first)["status"] == "completed"  # the requeue
    assert train(cfg, replication)["status"] == "completed"  # the same config under another sweep name
    attempts = [wandb_run(p).run_id for p in wandb_files(tmp_path / "sweep_a")]
    (other,) = [wandb_run(p).run_id for p in wandb_files(tmp_path / "sweep_b")]
    assert len(attempts) == 2 and attempts[0] == attempts[1] and other != attempts[0]
    assert not list(first.rglob("*wandb*")) and not list(replication.rglob("*wandb*"))  # outside the run dirs


def test_wandb_runs_are_tagged_and_grouped_by_sweep_and_cell(tmp_path):
    sweep = tmp_path / "update_frequency"
    for seed in (1, 2):
        cfg = config(
            args(
                **{
                    "logging.wandb": "offline",
                    "train.seed": seed,
                    "sparsity.criterion": "snip",
                    "sparsity.growth": "gradient",
                    "sparsity.density": 0.2,
                    "train.epochs": 1,
                }
            )
        )
        assert train(cfg, sweep / f"mlp-dst-d0.2-snip-gradient-s{seed}-abc{seed}")["status"] == "completed"
    runs = [wandb_run(p) for p in wandb_files(sweep)]
    assert {r.run_group for r in runs} == {"update_frequency"}
    assert len({r.job_type for r in runs}) == 1 and runs[0].job_type.startswith("mlp-dst-d0.2-snip-gradient-")
    for run, seed in zip(sorted(runs, key=lambda r: r.display_name), (1, 2)):
        tags = set(run.tags)
        assert {"sweep:update_frequency", "criterion:snip", "growth:gradient", "density:0.2", f"seed:{seed}"} <= tags
        assert any(t.startswith("cell:") for t in tags)
        config_items = {item.key: json.loads(item.value_json) for item in run.config.update}
        axes = config_items["dst"]["value"] if "value" in config_items["dst"] else config_items["dst"]
        assert axes["criterion"] == "snip" and axes["seed"] == seed and axes["density"] == 0.2


def test_after_kill_9_and_resume_every_epoch_is_in_the_wandb_history_exactly_once(tmp_path):
    argv = args(steps_per_epoch=400, epochs=3, **{"logging.wandb": "offline", "sparsity.update_frequency": 50})
    run = tmp_path / "sweep" / "run"
    env = {k: v for k, v in os.environ.items() if k != "WANDB_SERVICE"}  # a job of its own, as on a cluster
    process = start_train(argv, run, env=env)
    wait_for(lambda: [r for r in lines(run) if r["kind"] == "update" and r["step"] > 500], timeout=300, what="epoch 2")
    process.kill()  # kill -9, mid-epoch 2, after the epoch-1 checkpoint
    process.wait()
    assert (run / "checkpoint.pt").exists()
    assert train(config(argv), run)["status"] == "completed"
    final = wandb_files(tmp_path / "sweep")[-1]  # the resumed attempt's file
    history = wandb_history(final)
    epochs = [row["epoch/epoch"] for row in history if "epoch/epoch" in row]
    assert epochs == [1, 2, 3]
    recorded = {r["step"]: r["test_acc"] for r in read_metrics(run, "epoch")}
    assert {row["_step"]: row["epoch/test_acc"] for row in history if "epoch/epoch" in row} == recorded
    updates = [row["update/step"] for row in history if "update/step" in row]
    assert updates == [r["step"] for r in read_metrics(run, "update")]  # each once, in order

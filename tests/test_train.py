"""The trainer end to end on tiny configs: records, determinism, resume, divergence, CLI."""

import json
import subprocess
import sys

import pytest
import torch

from src.config import RunConfig
from src.rundir import read_metrics, read_result
from src.sparse import SparsityConfig
from src.train import train
from src.trainer.optim import learning_rate


def tiny(**sparsity) -> RunConfig:
    cfg = RunConfig()
    cfg.model.name = "lenet5"
    cfg.data.name = "synthetic"
    # Well-separated classes, so a few dozen steps of a half-dense LeNet-5 beat chance.
    cfg.data.kwargs = {
        "input_shape": [1, 28, 28],
        "num_classes": 10,
        "num_train": 640,
        "num_test": 200,
        "class_separation": 30.0,
    }
    cfg.data.batch_size = 32
    cfg.data.eval_batch_size = 100
    cfg.train.epochs = 3
    cfg.train.threads = 1
    cfg.train.log_every = 5
    cfg.train.checkpoint_interval_min = 0  # a checkpoint every epoch, as the resume tests need
    cfg.train.save_model = True
    cfg.optim.lr = 0.05
    cfg.sparsity = SparsityConfig(
        **{
            "density": 0.5,
            "update_frequency": 7,
            "criterion": "magnitude",
            "growth": "random",
            "prune_rate": 0.3,
            **sparsity,
        }
    )
    return cfg


def strip_times(rows):
    return [{k: v for k, v in r.items() if "time" not in k} for r in rows]


def final_state(run_dir):
    return torch.load(run_dir / "model_final.pt", weights_only=True)


def assert_same_model(a, b):
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    for k in a["masks"]:
        assert torch.equal(a["masks"][k], b["masks"][k]), k


def test_run_writes_complete_records(tmp_path):
    cfg = tiny(overlap_with=["magnitude", "snip"])
    result = train(cfg, tmp_path)
    assert result["status"] == "completed" and read_result(tmp_path) == json.loads(json.dumps(result))
    assert result["epochs_completed"] == 3 and result["steps"] == 54 == result["total_steps"]  # 576 / 32 * 3
    assert result["final"]["test_acc"] > 30  # well above chance (10 %) on the separable data
    assert result["best_val"]["epoch"] in (1, 2, 3)
    assert abs(result["achieved_density"] - 0.5) < 1e-3 and len(result["achieved_layer_density"]) == 4
    assert result["config"]["sparsity"]["criterion"] == "magnitude" and len(result["config_hash"]) == 16
    assert result["steps_per_s"] > 0 and result["wall_time"] >= result["train_time"] > 0
    epochs = read_metrics(tmp_path, "epoch")
    assert [e["epoch"] for e in epochs] == [1, 2, 3]
    for key in (
        "train_loss",
        "train_acc",
        "val_loss",
        "val_acc",
        "test_loss",
        "test_acc",
        "lr",
        "prune_rate",
        "density",
        "layer_density",
    ):
        assert key in epochs[0]
    updates = read_metrics(tmp_path, "update")
    assert [u["step"] for u in updates] == [7, 14, 21, 28, 35, 42, 49]
    u = updates[0]
    assert u["removed"] == u["regrown"] == sum(layer["removed"] for layer in u["layers"]) > 0
    assert u["regrown_just_pruned_share"] == 0.0
    assert u["overlap"]["criteria"] == ["run", "magnitude", "snip"]
    assert not (tmp_path / "checkpoint.pt").exists()
    assert json.loads((tmp_path / "config.json").read_text()) == cfg.to_dict()


@pytest.mark.slow
def test_same_config_and_seed_give_identical_results(tmp_path):
    a, b = tiny(criterion="random"), tiny(criterion="random")
    ra, rb = train(a, tmp_path / "a"), train(b, tmp_path / "b")
    assert strip_times(read_metrics(tmp_path / "a")) == strip_times(read_metrics(tmp_path / "b"))
    assert ra["final"] == rb["final"]
    assert_same_model(final_state(tmp_path / "a"), final_state(tmp_path / "b"))
    other = tiny(criterion="random")
    other.train.seed = 1
    assert train(other, tmp_path / "c")["final"] != ra["final"]


@pytest.mark.slow
@pytest.mark.parametrize("stop_at", [13, 20, 45])
def test_resume_after_interruption_is_bit_identical(tmp_path, stop_at):
    cfg = tiny(criterion="running_snip", growth="gradient", beta=0.7)
    cfg.model.name = "mlp_cifar10_dropout"  # dropout: the global RNG state must be restored
    cfg.data.kwargs = {**cfg.data.kwargs, "input_shape": [3, 32, 32]}
    train(cfg, tmp_path / "full")

    calls = {"n": 0}

    def stop():
        calls["n"] += 1
        return calls["n"] == stop_at

    partial = train(cfg, tmp_path / "resumed", should_stop=stop)
    assert partial["status"] == "interrupted" and partial["steps"] == stop_at
    assert (
        read_result(tmp_path / "resumed")["status"] == "interrupted"
        and (tmp_path / "resumed" / "checkpoint.pt").exists()
    )
    resumed = train(cfg, tmp_path / "resumed")
    assert resumed["status"] == "completed"
    assert strip_times(read_metrics(tmp_path / "resumed")) == strip_times(read_metrics(tmp_path / "full"))
    assert_same_model(final_state(tmp_path / "full"), final_state(tmp_path / "resumed"))


@pytest.mark.slow
def test_crash_is_recorded_as_failed_and_rerun_resumes_from_last_epoch(tmp_path):
    cfg = tiny()
    train(cfg, tmp_path / "full")
    calls = {"n": 0}

    def crash():
        calls["n"] += 1
        if calls["n"] == 50:  # in epoch 3, after the epoch-2 checkpoint and some update lines
            raise RuntimeError("node died")
        return False

    with pytest.raises(RuntimeError, match="node died"):
        train(cfg, tmp_path / "crashed", should_stop=crash)
    failed = read_result(tmp_path / "crashed")
    assert failed["status"] == "failed" and "node died" in failed["error"] and "Traceback" in failed["traceback"]
    resumed = train(cfg, tmp_path / "crashed")
    assert resumed["status"] == "completed"
    assert strip_times(read_metrics(tmp_path / "crashed")) == strip_times(read_metrics(tmp_path / "full"))
    assert_same_model(final_state(tmp_path / "full"), final_state(tmp_path / "crashed"))


def test_completed_run_is_not_rerun(tmp_path):
    cfg = tiny()
    first = train(cfg, tmp_path)
    assert train(cfg, tmp_path, should_stop=lambda: pytest.fail("trained again")) == json.loads(json.dumps(first))


def test_non_finite_loss_stops_run_as_diverged(tmp_path):
    cfg = tiny()
    cfg.optim.lr = 1e12
    result = train(cfg, tmp_path)
    assert result["status"] == "diverged"
    assert result["diverged"]["reason"] == "non-finite training loss"
    assert 1 <= result["diverged"]["step"] <= result["steps"] <= 20
    assert read_result(tmp_path)["status"] == "diverged"


def test_binary_task_and_dense_mode(tmp_path):
    cfg = tiny()
    cfg.model.name = "mlp_higgs"
    cfg.data.kwargs = {
        "input_shape": [24],
        "num_classes": 2,
        "binary": True,
        "num_train": 640,
        "num_test": 200,
        "class_separation": 6.0,
    }
    cfg.sparsity = SparsityConfig(mode="dense")
    result = train(cfg, tmp_path)
    assert result["status"] == "completed" and result["final"]["test_acc"] > 70 and result["achieved_density"] == 1.0


def test_learning_rate_schedules():
    from src.config import OptimConfig

    ms = OptimConfig(lr=0.1)
    assert [learning_rate(ms, e, 0, 100, 10) for e in (0, 49, 50, 74, 75, 99)] == pytest.approx(
        [0.1, 0.1, 0.01, 0.01, 0.001, 0.001]
    )
    assert learning_rate(ms, 0, 0, 1, 10) == 0.1  # milestones at epoch 0 are ignored
    warm = OptimConfig(lr=0.1, warmup_epochs=5, milestones=[0.3, 0.6])
    assert learning_rate(warm, 0, 0, 90, 10) == pytest.approx(0.1 / 6)
    assert learning_rate(warm, 4, 0, 90, 10) == pytest.approx(0.1 * 5 / 6)
    assert learning_rate(warm, 27, 0, 90, 10) == pytest.approx(0.01)
    cos = OptimConfig(lr=0.1, lr_schedule="cosine")
    assert learning_rate(cos, 0, 0, 10, 10) == pytest.approx(0.1)
    assert learning_rate(cos, 5, 50, 10, 10) == pytest.approx(0.05)


def test_invalid_config_names_field_and_choices(tmp_path):
    cfg = tiny()
    cfg.model.name = "resnet9000"
    with pytest.raises(ValueError, match=r"unknown model.name 'resnet9000'; choose from \[.*'lenet5'"):
        cfg.validate()  # (once, by the entry points: the trainer takes a validated config)
    with pytest.raises(ValueError, match=r"RunConfig: unknown field\(s\) \['modle'\]"):
        RunConfig.from_dict({"modle": {}})


@pytest.mark.slow
def test_cli_runs_tiny_config(tmp_path):
    args = [
        "model.name=mlp_higgs",
        "data.name=synthetic",
        "data.kwargs.input_shape=[24]",
        "data.kwargs.num_classes=2",
        "data.kwargs.binary=true",
        "train.epochs=1",
        "train.threads=1",
        "sparsity.density=0.2",
        "sparsity.update_frequency=5",
    ]
    out = subprocess.run(
        [sys.executable, "-m", "src.train", *args, "--run-dir", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr
    assert "completed" in out.stdout and read_result(tmp_path)["status"] == "completed"


@pytest.mark.slow
def test_lenet5_dense_reaches_86_percent_on_real_fashion_mnist(tmp_path):
    from src.data import check_dataset

    try:
        check_dataset("fashion_mnist")
    except FileNotFoundError as e:
        pytest.skip(f"Fashion-MNIST not installed: {e}")
    cfg = RunConfig()  # lenet5 / fashion_mnist, SGD lr 0.01 Nesterov, wd 5e-4, x0.1 at 50 % and 75 %
    cfg.train.epochs = 4
    cfg.sparsity = SparsityConfig(mode="dense")
    result = train(cfg, tmp_path)
    assert result["final"]["test_acc"] >= 86.0, result["final"]


def test_max_steps_measures_overlap_at_initialisation(tmp_path):
    # The paper's Fig. 6a set-up: no training (lr 0), one update at step u with a constant
    # prune fraction, every criterion's pruned set compared on the initial weights.
    # exclude_just_pruned=False: a full mask has nowhere else to regrow, and the run itself
    # should prune what the criteria are compared on.
    cfg = tiny(
        density=1.0,
        prune_rate=0.25,
        prune_rate_schedule="constant",
        update_frequency=5,
        exclude_just_pruned=False,
        overlap_with=["magnitude", "snip", "random", "set"],
    )
    cfg.optim.lr = 0.0
    cfg.train.max_steps = 5
    result = train(cfg, tmp_path)
    assert result["status"] == "completed" and result["steps"] == 5 and result["epochs_completed"] == 1
    (update,) = read_metrics(tmp_path, "update")
    matrix = update["overlap"]["jaccard"]
    assert update["overlap"]["criteria"] == ["run", "magnitude", "snip", "random", "set"]
    assert abs(matrix[1][3] - 0.25 / 1.75) < 0.05  # random vs magnitude: r / (2 - r)
    assert matrix[0][1] == 1.0 and update["removed"] == sum(-(-a // 4) for a in (500, 25000, 400000, 5000))


@pytest.mark.slow
def test_wandb_offline_mirror_is_optional(tmp_path, monkeypatch):
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("WANDB_SILENT", "true")
    cfg = tiny()
    cfg.train.epochs = 1
    cfg.logging.wandb = "offline"
    result = train(cfg, tmp_path)
    assert result["status"] == "completed"
    # written without network or key, next to the run directory (one place per sweep), not in it
    assert list((tmp_path.parent / ".wandb" / "wandb").glob("offline-run-*")) and not list(tmp_path.glob("*wandb*"))
    assert read_metrics(tmp_path, "epoch")  # the run records do not depend on it


@pytest.mark.slow
def test_wandb_run_is_grouped_by_sweep_and_logs_epochs_and_updates(tmp_path, monkeypatch):
    import wandb

    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("WANDB_SILENT", "true")
    runs, logged = [], []
    real_init = wandb.init

    def init(**kwargs):  # the real offline run, watched
        run = real_init(**kwargs)
        real_log = run.log
        monkeypatch.setattr(
            run, "log", lambda data, step=None: (logged.append((step, data)), real_log(data, step=step))
        )
        runs.append(run)
        return run

    monkeypatch.setattr(wandb, "init", init)
    cfg = tiny()
    cfg.train.epochs = 2
    cfg.sparsity.update_frequency = 7
    cfg.logging.wandb = "offline"
    run_dir = tmp_path / "my_sweep" / "lenet5-dst-s0-abc"
    assert train(cfg, run_dir)["status"] == "completed"
    (run,) = runs
    assert (run.group, run.name) == ("my_sweep", "lenet5-dst-s0-abc") and run.job_type.startswith("lenet5-dst-")
    assert "sweep:my_sweep" in run.tags and any(t.startswith("code:") for t in run.tags)
    epochs = [d for _, d in logged if "epoch/test_acc" in d]
    updates = [d for _, d in logged if "update/prune_rate" in d]
    assert len(epochs) == 2 and len(updates) == len(read_metrics(run_dir, "update")) > 0
    steps = [s for s, _ in logged]
    assert steps == sorted(steps)  # one x-axis (the optimizer step) for both


def test_evaluation_in_cpu_chunks_equals_whole_batches():
    from src.models import build_model
    from src.trainer.evaluation import CPU_EVAL_CHUNK, Task, evaluate

    torch.manual_seed(0)
    model = build_model("lenet5", 10)
    x, y = torch.randn(1100, 1, 28, 28), torch.randint(0, 10, (1100,))
    batches = [(x[:1000], y[:1000]), (x[1000:], y[1000:])]  # one batch larger than the chunk
    assert CPU_EVAL_CHUNK < 1000
    got = evaluate(model, batches, Task(binary=False))
    assert model.training  # left in training mode
    with torch.no_grad():
        out = model.eval()(x)
    expected_loss = torch.nn.functional.cross_entropy(out, y).item()
    assert got["acc"] == 100.0 * (out.argmax(1) == y).sum().item() / 1100
    assert got["loss"] == pytest.approx(expected_loss, rel=1e-5)

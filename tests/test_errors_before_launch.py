"""Every mistake a new user makes is caught before anything is launched, through the real
command line (`src.launch.main`, `src.train.main`), with a message that says how to fix it."""

import json
import os
import subprocess
from pathlib import Path

import pytest
import torch

from src import launch, train
from src.checks import steps_per_epoch, topology_updates
from src.data import build_dataset, make_loaders
from src.plan import expand
from src.sparse import Sparsifier


def cli(capsys, *args, runs_root):
    code = launch.main([*args, f"runs_root={runs_root}"])
    out = capsys.readouterr()
    return code, out.out, out.err


def refused(capsys, tmp_path, *args):
    """The launch's error line(s); asserts that it failed before anything was launched."""
    code, out, err = cli(capsys, *args, runs_root=tmp_path / "runs")
    assert code == 2, out + err
    assert err.startswith("error: ") and "Traceback" not in err, err
    assert not list(tmp_path.rglob("config.json"))
    return err


# ---------------------------------------------------------------------------- 1. model vs data
@pytest.mark.parametrize("dry", [["--dry-run"], []])
def test_a_model_that_does_not_fit_the_data_is_refused_naming_both_shapes(capsys, tmp_path, dry):
    err = refused(capsys, tmp_path, "setup=smoke", "model.name=mlp_cifar10", *dry)
    assert "model.name: mlp_cifar10 takes inputs of shape (3, 32, 32), but data.name=synthetic gives (1, 28, 28)" in err
    assert "setup=mlp_cifar10" in err and "model.name=lenet5 or mlp_fashion_mnist" in err
    assert "data.kwargs.input_shape=[3,32,32]" in err


def test_a_sweep_over_models_is_refused_at_its_first_misfit(capsys, tmp_path):
    err = refused(capsys, tmp_path, "-m", "setup=lenet5_fmnist", "model.name=resnet56,vgg16", "--dry-run")
    assert (
        "model.name: resnet56 takes inputs of shape (3, 32, 32), but data.name=fashion_mnist gives (1, 28, 28)" in err
    )
    assert (
        "setup=resnet56_cifar10" in err
        and "(in the job with overrides: setup=lenet5_fmnist model.name=resnet56 " in err
    )


def test_a_model_with_too_few_outputs_for_the_classes_is_refused(capsys, tmp_path):
    err = refused(capsys, tmp_path, "model=resnet56", "data=cifar100", "--dry-run")
    assert "model.num_classes: 10 outputs, but data.name=cifar100 has 100 classes; set model.num_classes=100" in err


def test_other_input_sizes_a_model_takes_pass_by_a_shape_only_forward_pass(capsys, tmp_path):
    # ResNet-56 pools globally: 64x64 images fit although it was registered for 32x32
    code, out, err = cli(
        capsys,
        "setup=smoke",
        "model.name=resnet56",
        "data.kwargs.input_shape=[3,64,64]",
        "--dry-run",
        runs_root=tmp_path,
    )
    assert code == 0, err
    err = refused(capsys, tmp_path, "setup=smoke", "model.name=lenet5", "data.kwargs.input_shape=[1,32,32]")
    assert "model.name: lenet5 takes inputs of shape (1, 28, 28), but data.name=synthetic gives (1, 32, 32)" in err


def test_the_training_cli_refuses_a_misfit_in_one_line(capsys, tmp_path):
    code = train.main(["data.name=synthetic", "model.name=mlp_cifar10", "--run-dir", str(tmp_path / "r")])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1
    assert err.startswith("error: model.name: mlp_cifar10 takes inputs of shape (3, 32, 32)")
    assert not (tmp_path / "r").exists()


# ---------------------------------------------------------------------------- 2. optimizer
def test_nesterov_without_momentum_is_refused(capsys, tmp_path):
    err = refused(capsys, tmp_path, "setup=smoke", "optim.momentum=0", "--dry-run")
    assert "optim.nesterov: Nesterov momentum needs a momentum, got optim.momentum=0; set optim.nesterov=false" in err
    code, _, err = cli(
        capsys, "setup=smoke", "optim.momentum=0", "optim.nesterov=false", "--dry-run", runs_root=tmp_path
    )
    assert code == 0, err


# ---------------------------------------------------------------------------- 3. topology updates
def test_a_dst_sweep_without_topology_updates_is_warned_about_per_cell(capsys, tmp_path):
    code, out, err = cli(
        capsys, "-m", "criterion=magnitude,mest", "seed=1,2,3", "train.epochs=1", "--dry-run", runs_root=tmp_path
    )
    assert code == 0, err
    lines = err.splitlines()
    assert len(lines) == 2, err  # one per cell, not per seed
    for line, cell in zip(lines, ("criterion=magnitude", "criterion=mest")):
        # Fashion-MNIST: 54 000 training samples in batches of 128 = 422 steps; updates every 800
        assert line.startswith(
            f"warning: {cell}: no topology update (1 epoch x 422 steps; sparsity.update_frequency=800)"
        ), line
        assert line.endswith("for 3 updates set sparsity.update_frequency<=140 or train.epochs>=6"), line
    assert "6 run(s)" in out


def test_a_sweep_with_too_few_seeds_per_cell_is_told_it_cannot_reach_a_verdict(capsys, tmp_path):
    base = ["-m", "setup=smoke", "criterion=magnitude,set", "--dry-run"]
    code, out, err = cli(capsys, *base, "seed=1,2", runs_root=tmp_path)
    assert code == 0 and err.splitlines() == [
        "note: this sweep cannot reach a verdict: 2 of 2 cells get fewer than 3 seeds (as few as 2; a verdict "
        "needs ≥ 3 per cell)"
    ], err
    code, out, err = cli(capsys, *base, "seed=1,2,3", runs_root=tmp_path)
    assert code == 0 and err == "", err


def test_few_topology_updates_are_warned_about_and_enough_are_not(capsys, tmp_path):
    code, out, err = cli(
        capsys, "-m", "setup=smoke", "train.epochs=1", "sparsity.update_frequency=10,5", "--dry-run", runs_root=tmp_path
    )
    assert code == 0, err
    # smoke: 640 samples, 64 held out, batches of 32 = 18 steps: an update at step 10 only
    assert err.splitlines() == [
        "warning: sparsity.update_frequency=10: only 1 topology update (1 epoch x 18 steps; "
        "sparsity.update_frequency=10): its criterion and growth barely act; for 3 updates set "
        "sparsity.update_frequency<=5 or train.epochs>=2",
        "note: this sweep cannot reach a verdict: 2 of 2 cells get fewer than 3 seeds (as few as 1; a verdict "
        "needs ≥ 3 per cell)",
    ]
    code, out, err = cli(capsys, "setup=smoke", "sparsity=static", "train.epochs=1", "--dry-run", runs_root=tmp_path)
    assert code == 0 and err == ""  # static runs make no updates by design


@pytest.mark.parametrize(
    "overrides",
    [[], ["data.batch_size=50", "data.val_fraction=0.3"], ["data.kwargs.num_train=100", "data.batch_size=7"]],
)
def test_the_counted_steps_per_epoch_are_the_loaders(overrides):
    job = expand(["setup=smoke", *overrides], check_data=False)[0]
    data = job.config.data
    splits = build_dataset("synthetic", val_fraction=data.val_fraction, **data.kwargs)
    assert steps_per_epoch(job.config) == len(make_loaders(splits, data.batch_size, data.eval_batch_size, seed=0).train)


@pytest.mark.parametrize(
    "overrides",
    [
        [],
        ["sparsity.update_frequency=6"],
        ["sparsity.update_frequency=9"],
        ["sparsity.end_fraction=0.5"],
        ["compat=reference", "sparsity.update_frequency=9"],
        ["train.max_steps=20"],
        ["sparsity.update_frequency=40"],
    ],
)
def test_the_counted_updates_are_the_sparsifiers(overrides):
    job = expand(["setup=smoke", "model.name=mlp_fashion_mnist", *overrides], check_data=False)[0]
    cfg, spe = job.config, 18  # smoke: 576 training samples in batches of 32
    assert steps_per_epoch(cfg) == spe
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Linear(8, 2))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    sparsifier = Sparsifier(model, optimizer, cfg.sparsity, cfg.train.epochs * spe, seed=0).prepare()
    updates = 0
    for _ in range(cfg.train.max_steps or cfg.train.epochs * spe):
        model(torch.randn(3, 4)).sum().backward()
        updates += sparsifier.step() is not None
    assert topology_updates(cfg, spe) == updates


@pytest.mark.slow
def test_the_counted_updates_are_a_real_runs(tmp_path):
    job = expand(["setup=smoke", "train.epochs=1", "sparsity.update_frequency=4"], check_data=False)[0]
    result = train.train(job.config, tmp_path / "run")
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert result["total_steps"] == steps_per_epoch(job.config) == 18
    assert sum(r["kind"] == "update" for r in records) == topology_updates(job.config, 18) == 4  # 4, 8, 12, 16


@pytest.mark.skipif(not Path("/usr/share/datasets/fashion-mnist").is_dir(), reason="needs dataset-fashion-mnist")
def test_steps_per_epoch_matches_the_real_loader_for_fashion_mnist():
    job = expand(["setup=lenet5_fmnist"], check_data=False)[0]
    splits = build_dataset("fashion_mnist")
    assert steps_per_epoch(job.config) == len(make_loaders(splits, 128, 1000, seed=0).train) == 422


# ---------------------------------------------------------------------------- 4. names and paths
def test_a_name_too_long_for_a_directory_is_refused(capsys, tmp_path):
    for dry in (["--dry-run"], []):
        err = refused(capsys, tmp_path, "setup=smoke", "name=" + "a" * 300, *dry)
        assert err.startswith("error: name: 300 characters; a name is one path component of ASCII letters, digits")
        assert "at most 255 bytes" in err and err.count("\n") == 1


def test_a_unicode_name_gets_the_naming_rule_not_a_lexer_error(capsys, tmp_path):
    err = refused(capsys, tmp_path, "setup=smoke", "name=résumé", "--dry-run")
    assert err == (
        "error: name: 'résumé' is not allowed; a name is one path component of ASCII letters, "
        "digits, '_', '.' and '-' (not starting with '.'), at most 255 bytes\n"
    )
    err = refused(capsys, tmp_path, "setup=smoke", "name='résumé'", "--dry-run")  # quoted: parsed, then refused
    assert err.startswith("error: name: 'résumé' must be one path component of letters, digits")
    err = refused(capsys, tmp_path, "setup=smoke", "logging.tags=[é]", "--dry-run")
    assert (
        "logging.tags=[é]: Hydra's override syntax takes characters outside ASCII only inside quotes: write 'é'" in err
    )


@pytest.fixture
def read_only_dir(tmp_path):
    """A directory nobody may write to: a read-only tmpfs as root, else one without write permission."""
    path = tmp_path / "ro"
    path.mkdir()
    if os.geteuid() == 0:
        mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(path)]).returncode == 0
        if not mounted:
            pytest.skip("cannot mount a read-only tmpfs")
        yield path
        subprocess.run(["umount", str(path)], check=True)
    else:
        path.chmod(0o555)
        yield path
        path.chmod(0o755)


@pytest.mark.parametrize("dry", [["--dry-run"], []])
def test_a_read_only_runs_root_is_refused_in_one_line(capsys, read_only_dir, dry):
    code = launch.main(["setup=smoke", f"runs_root={read_only_dir}/runs", *dry])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1, err
    assert err.startswith(f"error: runs_root: cannot write the runs under {read_only_dir}/runs/default (")
    assert err.endswith("choose a writable directory: runs_root=DIR\n")


def test_a_runs_root_under_a_file_is_refused(capsys, tmp_path):
    (tmp_path / "a_file").write_text("")
    for dry in (["--dry-run"], []):
        code = launch.main(["setup=smoke", f"runs_root={tmp_path}/a_file/runs", *dry])
        err = capsys.readouterr().err
        assert code == 2 and err == (
            f"error: runs_root: '{tmp_path}/a_file/runs' is not a directory "
            f"({tmp_path}/a_file is a file); choose a directory: runs_root=DIR\n"
        )


# ---------------------------------------------------------------------------- 5. hints
def test_a_misspelt_field_gets_a_close_match_not_a_plus_hint(capsys, tmp_path):
    err = refused(capsys, tmp_path, "setup=smoke", "train.epoch=3", "--dry-run")
    assert err.startswith("error: train.epoch: no such field; did you mean train.epochs?") and "+train" not in err
    err = refused(capsys, tmp_path, "setup=smoke", "+train.epoch=3", "--dry-run")
    assert "train.epoch: did you mean train.epochs?" in err
    err = refused(capsys, tmp_path, "setup=smoke", "trian.epochs=3", "--dry-run")
    assert err.startswith("error: trian: no such field or config group; did you mean train?")


def test_the_training_cli_gives_the_same_close_match(capsys, tmp_path):
    code = train.main(["train.epoch=3", "--run-dir", str(tmp_path / "run")])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error: train.epoch: no such field; did you mean train.epochs?"), err
    assert not (tmp_path / "run").exists()


def test_a_misspelt_group_option_or_sweep_gets_close_matches(capsys, tmp_path):
    err = refused(capsys, tmp_path, "criterion=mset", "--dry-run")
    assert err.startswith("error: criterion=mset: no such option of criterion; did you mean ")
    assert "criterion=mest" in err and "criterion=set" in err and err.count("\n") == 1
    err = refused(capsys, tmp_path, "-m", "+sweeps=mlp_dts", "--dry-run")
    assert err.startswith("error: +sweeps=mlp_dts: no such sweep; did you mean +sweeps=mlp_dst")


def test_missing_data_names_the_fields_that_fix_it(capsys, tmp_path):
    err = refused(capsys, tmp_path, "setup=mlp_cifar10", f"data.root={tmp_path}/nowhere")
    assert "pass data.root=DIR or set $CIFAR10_PYTORCH; or add data.download=true with data.root=DIR" in err


def test_download_is_a_field_that_does_not_change_the_run(capsys, tmp_path):
    plain = expand(["setup=smoke"], check_data=False)[0]
    downloading = expand(["setup=lenet5_fmnist", "data.download=true"], check_data=False)[0]
    assert downloading.config.data.download is True
    assert downloading.run_dir == expand(["setup=lenet5_fmnist"], check_data=False)[0].run_dir != plain.run_dir
    err = refused(capsys, tmp_path, "setup=smoke", "data.kwargs.download=true", "--dry-run")
    assert "did you mean data.download?" in err
    err = refused(capsys, tmp_path, "setup=mlp_higgs", "data.download=true", "--dry-run")
    assert (
        "data.download: automatic download is not available for 'higgs'; datasets that have it: "
        "['cifar10', 'cifar100', 'fashion_mnist']" in err
    )


def test_a_failed_download_is_one_error_before_launch(capsys, tmp_path):
    (tmp_path / "a_file").write_text("")  # a root that cannot become a directory: fails before any network
    err = refused(capsys, tmp_path, "setup=mlp_cifar10", "data.download=true", f"data.root={tmp_path}/a_file/data")
    assert err.startswith(f"error: data.download: cifar10 could not be downloaded into {tmp_path}/a_file/data")


def test_a_missing_space_in_a_dict_is_pointed_out(capsys, tmp_path):
    code = train.main(
        ["data.name=synthetic", "data.kwargs={num_train: 64,num_classes:10}", "--run-dir", str(tmp_path / "r")]
    )
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1
    assert "'num_classes:10' looks like a missing space after the colon: write {num_classes: 10}" in err

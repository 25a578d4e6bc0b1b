"""Training and inference FLOPs (src/sparse/flops.py): the per-layer costs against a hand
count, the schedule arithmetic against a hand count, density 1 against dense, and what a real
run records against a count from its own records."""

import json

import pytest

from src.sparse.flops import LayerCost, count_flops, model_costs, run_flops


def test_layer_costs_match_a_hand_count_for_lenet5_and_the_mlp():
    # LeNet-5 on 1x28x28: conv1 5x5, 1->20, 24x24 outputs; pool; conv2 5x5, 20->50, 8x8 outputs; pool;
    # fc3 800->500; fc4 500->10.
    lenet = model_costs("lenet5", 10)
    assert {n: c.macs for n, c in lenet.items()} == {
        "conv1.weight": 24 * 24 * 20 * (1 * 5 * 5),
        "conv2.weight": 8 * 8 * 50 * (20 * 5 * 5),
        "fc3.weight": 800 * 500,
        "fc4.weight": 500 * 10,
    }
    assert sum(c.macs for c in lenet.values()) == 2_293_000
    assert {n: c.numel for n, c in lenet.items()} == {
        "conv1.weight": 500,
        "conv2.weight": 25_000,
        "fc3.weight": 400_000,
        "fc4.weight": 5_000,
    }
    mlp = model_costs("mlp_fashion_mnist", 10)
    assert {n: c.macs for n, c in mlp.items()} == {
        "fc1.weight": 784 * 1024,
        "fc2.weight": 1024 * 512,
        "fc3.weight": 512 * 10,
    }


COSTS = {"a": LayerCost(macs=1000, numel=100), "b": LayerCost(macs=200, numel=50)}


def test_the_schedule_is_counted_segment_by_segment_with_the_dense_gradient_steps():
    # 10 steps of 4 samples (one epoch of 40), updates after steps 4 and 8; a at 0.5 then 0.3 then 0.2,
    # b at 0.2 throughout; gradient growth: the weight gradient is dense on steps 4 and 8.
    updates = [(4, {"a": 50, "b": 10}), (8, {"a": 30, "b": 10})]
    found = count_flops(
        COSTS,
        final_density={"a": 0.2, "b": 0.2},
        updates=updates,
        steps=10,
        batch_size=4,
        steps_per_epoch=10,
        dense_gradient="updates",
    )
    forward = {0: 1000 * 0.5 + 200 * 0.2, 1: 1000 * 0.3 + 200 * 0.2, 2: 1000 * 0.2 + 200 * 0.2}
    macs = 3 * (forward[0] * 16 + forward[1] * 16 + forward[2] * 8)
    macs += (1200 - forward[0]) * 4 + (1200 - forward[1]) * 4  # dense weight gradients at steps 4 and 8
    macs += 2 * (100 + 50)  # each update scores every weight
    assert found["train"] == pytest.approx(2 * macs)
    assert found["train_dense"] == 2 * 3 * 1200 * 40
    assert found["train_fraction"] == pytest.approx(macs / (3 * 1200 * 40))
    assert found["inference"] == pytest.approx(2 * forward[2]) and found["inference_dense"] == 2 * 1200
    # Without gradient reads the dense-gradient terms go; under momentum growth they are on every step.
    never = count_flops(
        COSTS, final_density={"a": 0.2, "b": 0.2}, updates=updates, steps=10, batch_size=4, steps_per_epoch=10
    )
    assert never["train"] == pytest.approx(2 * (macs - (1200 - forward[0]) * 4 - (1200 - forward[1]) * 4))
    every = count_flops(
        COSTS,
        final_density={"a": 0.2, "b": 0.2},
        updates=updates,
        steps=10,
        batch_size=4,
        steps_per_epoch=10,
        dense_gradient="every step",
    )
    assert every["train"] > found["train"]


def test_a_short_last_batch_counts_its_own_samples():
    # 3 steps per epoch over 10 samples: batches of 4, 4, 2.
    found = count_flops(
        COSTS, final_density={}, updates=[], steps=6, batch_size=4, steps_per_epoch=3, samples_per_epoch=10
    )
    assert found["samples"] == 20 and found["train"] == 2 * 3 * 1200 * 20


def test_density_one_costs_what_dense_costs():
    dense = count_flops(COSTS, final_density={}, updates=[], steps=10, batch_size=4, steps_per_epoch=10)
    full = count_flops(
        COSTS,
        final_density={"a": 1.0, "b": 1.0},
        updates=[(4, {"a": 100, "b": 50})],
        steps=10,
        batch_size=4,
        steps_per_epoch=10,
        dense_gradient="updates",
    )
    assert dense["train_fraction"] == 1.0 and dense["inference_fraction"] == 1.0
    # at density 1 only the update's scoring (150 weights) is added to the dense cost
    assert full["train"] == pytest.approx(dense["train"] + 2 * 150)
    assert full["inference"] == dense["inference"]


@pytest.mark.slow
@pytest.mark.parametrize(
    "overrides",
    [
        ["sparsity.growth=gradient", "sparsity.criterion=snip"],
        ["sparsity=dense"],
        ["sparsity.density=1.0", "sparsity.growth=gradient"],
    ],
)
def test_a_real_run_records_its_flops_and_they_match_its_own_records(tmp_path, overrides):
    from src.plan import expand
    from src.rundir import read_metrics
    from src.train import train

    [job] = expand(["setup=smoke", f"runs_root={tmp_path}", "name=f", *overrides], check_data=False)
    result = train(job.config, job.run_dir)
    flops = json.loads((job.run_dir / "result.json").read_text())["flops"]
    assert flops == result["flops"]
    config = json.loads((job.run_dir / "config.json").read_text())
    updates = read_metrics(job.run_dir, "update")
    again = run_flops(
        config,
        input_shape=(1, 28, 28),
        num_classes=10,
        final_density=result["achieved_layer_density"],
        update_records=updates,
        steps=result["steps"],
        steps_per_epoch=result["total_steps"] // config["train"]["epochs"],
        samples_per_epoch=flops["samples"] // config["train"]["epochs"],
    )
    assert again == flops
    mode, density = config["sparsity"]["mode"], config["sparsity"]["density"]
    if mode == "dense" or density == 1.0:
        assert flops["inference_fraction"] == 1.0
        # density 1 costs what dense costs, plus each update's scoring of every weight
        scoring = 2 * len(updates) * sum(c.numel for c in model_costs("lenet5", 10).values())
        assert flops["train"] == pytest.approx(flops["train_dense"] + scoring)
    else:
        assert len(updates) > 0
        # the weight gradient of each update step was dense: above 3 x the sparse forward, below dense
        assert flops["inference_fraction"] < flops["train_fraction"] < 1.0


def test_data_parallel_ranks_each_count_their_samples():
    one = count_flops(COSTS, final_density={"a": 0.5}, updates=[], steps=10, batch_size=4, steps_per_epoch=10)
    two = count_flops(COSTS, final_density={"a": 0.5}, updates=[], steps=10, batch_size=4, steps_per_epoch=10, ranks=2)
    assert two["train"] == 2 * one["train"] and two["train_fraction"] == one["train_fraction"]


@pytest.mark.slow
def test_the_analysis_shows_recorded_flops_and_counts_them_for_older_records(tmp_path):
    import analysis
    from analysis import flops as analysis_flops
    from analysis.__main__ import main as cli
    from tests.test_analysis_sweeps import train_sweep

    root = train_sweep(tmp_path, "criterion=snip", "growth=gradient", "seed=1", "train.epochs=1")
    [recorded] = analysis_flops.run_costs(analysis.load_runs(root, cache=False)).to_dict("records")
    assert recorded["flops_source"] == analysis_flops.RECORDED
    # the same run as an older record: no "flops", no format field
    [path] = root.glob("*/result.json")
    result = json.loads(path.read_text())
    del result["flops"], result["format"]
    path.write_text(json.dumps(result))
    [counted] = analysis_flops.run_costs(analysis.load_runs(root, cache=False)).to_dict("records")
    assert counted["flops_source"] == analysis_flops.FROM_RECORDS
    for name in ("flops.train_fraction", "flops.inference_fraction"):
        assert counted[name] == pytest.approx(recorded[name], rel=1e-3)  # (full batches assumed: the only gap)
    assert cli(["report", str(root), "--out", str(tmp_path / "report")]) == 0
    assert (tmp_path / "report" / "tables" / "flops.csv").exists()
    assert (tmp_path / "report" / "figures" / "accuracy_vs_training_flops__lenet5_synthetic.png").exists()


@pytest.mark.slow
def test_a_resumed_run_counts_what_an_uninterrupted_one_counts(tmp_path):
    from src.plan import expand
    from src.train import train

    def job(name):
        [found] = expand(
            [
                "setup=smoke",
                f"runs_root={tmp_path}",
                f"name={name}",
                "criterion=snip",
                "growth=gradient",
                "train.epochs=1",
                "sparsity.update_frequency=3",
            ],
            check_data=False,
        )
        return found

    full = job("full")
    whole = train(full.config, full.run_dir)["flops"]
    cut = job("cut")
    calls = {"n": 0}

    def stop():
        calls["n"] += 1
        return calls["n"] == 8  # after 8 of 18 steps, between two updates

    assert train(cut.config, cut.run_dir, should_stop=stop)["status"] == "interrupted"
    resumed = train(cut.config, cut.run_dir)
    assert resumed["status"] == "completed" and resumed["flops"] == whole

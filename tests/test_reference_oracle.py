"""The reference implementation as an oracle: `compat=reference` must train exactly as it does.

Both implementations get the same small model (same initial weights), the same initial masks
(the reference's ERK draws come from the global RNG, seeded here with the seed of the
`Sparsifier`'s mask generator), and the same batches. The reference is driven by its own
training loop (`trainer.train`) and its own `Masking`; between its steps the project's
`Sparsifier` takes the same step. After every step the weights must agree, after every
topology update the masks must agree exactly.

Where the reference's choice is arbitrary it is pinned: Bernoulli growth reads the global RNG,
which is set to the state of the `Sparsifier`'s growth generator before each reference step
(so both draw the same numbers); the model uses tanh and Gaussian inputs, so no gradient or
weight is exactly zero and no two scores tie (the reference sorts with an unstable sort).

The reference (../shared/reference/fantastic_weights_paper) is imported from a temporary copy,
because it writes ./save and ./logs and the shared tree is read-only.
"""

from __future__ import annotations

import importlib
import logging
import shutil
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from src.sparse import Sparsifier, SparsityConfig
from src.sparse.sparsifier import _GROW, _INIT

REFERENCE = Path(__file__).resolve().parents[1] / ".." / "shared" / "reference" / "fantastic_weights_paper"
pytestmark = [
    pytest.mark.skipif(
        not REFERENCE.is_dir(),
        reason=f"reference implementation not found at {REFERENCE} (only in the project's workspace)",
    ),
    pytest.mark.filterwarnings("ignore::UserWarning"),  # its schedulers step before the optimizer
]

SEED = 7
STEPS = 130  # updates at 40, 80, 120
EVERY = 40
BATCH = 16

# project name -> the reference's --death / --growth
REF_CRITERION = {
    "magnitude": "magnitude",
    "set": "SET",
    "mest": "MEST",
    "snip": "SNIP",
    "reciprocal_sensitivity": "ReciprocalSensitivity",
    "grasp": "GraSP",
}
REF_GROWTH = {"random": "random", "gradient": "gradient", "momentum": "momentum", "momentum_neuron": "momentum_neuron"}
# main.py forces `after` (topology update before the optimizer step) for all other criteria.
REF_STEP_FIRST = {"magnitude", "Random", "SET", "SETFixed", "RunningMagnitude"}
PAPER_CRITERIA = ("magnitude", "set", "mest", "snip", "reciprocal_sensitivity")


class Net(nn.Module):
    """Conv + two linear layers. tanh and Gaussian inputs keep every gradient entry non-zero."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 6, 3)
        self.fc1 = nn.Linear(6 * 6 * 6, 40)
        self.fc2 = nn.Linear(40, 10)
        self.last = "logits"  # the reference's trainer then uses cross-entropy

    def forward(self, x):
        x = torch.tanh(self.conv1(x))
        x = torch.tanh(self.fc1(x.flatten(1)))
        return self.fc2(x)


@pytest.fixture(scope="module")
def ref(tmp_path_factory):
    """The reference's modules, imported from a private copy, with its cwd for ./save."""
    root = tmp_path_factory.mktemp("reference") / "fantastic_weights_paper"
    shutil.copytree(REFERENCE, root, ignore=shutil.ignore_patterns("specs", "ImageNet", "singularity"))
    sys.path.insert(0, str(root))
    try:
        modules = {
            name: importlib.import_module(name)
            for name in ("main", "setup_utils", "trainer", "data_handling.logger", "sparselearning.core")
        }
    finally:
        sys.path.remove(str(root))
    modules["data_handling.logger"].logger = logging.getLogger("reference-oracle")  # its print_and_log needs one
    modules["root"] = root
    return modules


def batches(n: int, seed: int = 0) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(BATCH, 1, 8, 8, generator=g), torch.randint(0, 10, (BATCH,), generator=g)) for _ in range(n)]


def reference_args(ref, *, mode: str, criterion: str, growth: str, density: float, lr: float = 0.05):
    args = ref["main"].parse_args_default([])
    args.no_cuda, args.use_wandb, args.verbose, args.fp16 = True, False, False, False
    args.data, args.log_interval, args.epochs, args.multiplier = "synthetic", 10_000, 1, 1
    args.lr, args.momentum, args.l2, args.nesterov = lr, 0.9, 5e-4, True
    args.sparse, args.fix = mode != "dense", mode != "dst"
    args.density, args.update_frequency, args.death_rate = density, EVERY, 0.5
    args.death, args.growth, args.sparse_init = REF_CRITERION[criterion], REF_GROWTH[growth], "erk"
    args.batch_size = BATCH
    args.opt_order = "before" if args.death in REF_STEP_FIRST else "after"
    return args


def sgd(model, lr):
    return torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, weight_decay=5e-4, nesterov=True)


class Pair:
    """One model per implementation, same initial weights, same masks, same batches."""

    def __init__(
        self, ref, *, mode="dst", criterion="magnitude", growth="random", density=0.2, steps=STEPS, lr=0.05, **overrides
    ):
        torch.manual_seed(SEED)
        self.ref_model = Net()
        self.model = Net()
        self.model.load_state_dict(self.ref_model.state_dict())
        self.data = batches(steps)
        self.args = reference_args(ref, mode=mode, criterion=criterion, growth=growth, density=density, lr=lr)
        self.ref_opt, self.opt = sgd(self.ref_model, lr), sgd(self.model, lr)
        cfg = SparsityConfig.reference(
            mode=mode,
            density=density,
            criterion=criterion,
            growth=growth,
            update_frequency=EVERY,
            prune_rate=0.5,
            **overrides,
        )
        self.sparsifier = Sparsifier(self.model, self.opt, cfg, total_steps=steps, seed=SEED, batches=self._grasp_batch)
        self.sparsifier.prepare()
        # The reference draws its ERK masks from the global RNG: give it the same numbers.
        torch.set_rng_state(self._generator_state(_INIT, fresh=True))
        # Its train loader sets the prune-rate schedule's length (len) and GraSP's batch (the
        # first one); the batches of the run itself are fed by `run`.
        loader = [self._grasp_batch()] * steps
        self.mask = ref["setup_utils"].get_mask(self.args, self.ref_model, self.ref_opt, loader, "cpu")
        self.ref = ref

    def _generator_state(self, purpose, fresh=False):
        if fresh:  # the state the mask generator had before `prepare`
            return torch.Generator().manual_seed(SEED * 1000 + purpose).get_state()
        return self.sparsifier._generators[purpose].get_state()

    # GraSP scores one batch: the reference takes the first of a fresh pass over its train
    # loader, the project asks for one; both get the same.
    def _grasp_batch(self):
        return batches(1, seed=99)[0]

    def masks(self):
        return [m.bool() for m in self.sparsifier.masks]

    def ref_masks(self):
        return [self.mask.masks[n].bool() for n in self.sparsifier.names]

    def weights(self):
        return [p.detach() for p in self.model.parameters()]

    def ref_weights(self):
        return [p.detach() for p in self.ref_model.parameters()]

    def project_step(self, x, y):
        loss = nn.functional.cross_entropy(self.model(x), y)
        loss.backward()
        record = self.sparsifier.step()
        self.opt.zero_grad(set_to_none=True)
        return record

    def run(self, check_step):
        """Step both through `self.data`; ``check_step(i, record)`` after each pair of steps."""
        pair = self

        class Loader:  # the reference's own loop pulls batches; the project steps in between
            def __len__(self):
                return len(pair.data)

            def __iter__(self):
                for i, (x, y) in enumerate(pair.data):
                    grow_state = pair._generator_state(_GROW)
                    record = pair.project_step(x, y)
                    torch.set_rng_state(grow_state)  # the reference's Bernoulli growth draws
                    yield x, y  # the reference takes its step i
                    check_step(i, record)

        self.ref["trainer"].train(self.args, self.ref_model, "cpu", Loader(), self.ref_opt, 1, self.mask)


def assert_same(pair: Pair, step: int, masks_too: bool) -> None:
    for (name, p), q in zip(pair.model.named_parameters(), pair.ref_weights()):
        assert torch.allclose(p.detach(), q, rtol=1e-5, atol=1e-7), (
            f"step {step + 1}: {name} differs by {(p.detach() - q).abs().max().item():.3g}"
        )
    if masks_too:
        for name, m, r in zip(pair.sparsifier.names, pair.masks(), pair.ref_masks()):
            assert torch.equal(m, r), f"step {step + 1}: mask of {name} differs at {int((m != r).sum())} positions"


def run_and_compare(ref, **kwargs) -> Pair:
    pair = Pair(ref, **kwargs)
    assert_same(pair, -1, masks_too=True)
    updates = []

    def check(i, record):
        assert_same(pair, i, masks_too=record is not None)
        if record is not None:
            updates.append(record)
            assert record.prune_rate == pytest.approx(pair.mask.death_rate, rel=1e-9, abs=1e-12)

    pair.run(check)
    expected = 0 if kwargs.get("mode") == "static" else kwargs.get("steps", STEPS) // EVERY
    assert len(updates) == expected
    if expected:  # the topology really changed, so the comparison is not vacuous
        assert sum(layer.removed for r in updates for layer in r.layers) > 0
        assert sum(layer.regrown for r in updates for layer in r.layers) > 0
    return pair


# ---------------------------------------------------------------------------- trajectories
def test_static_trajectory_matches_reference(ref):
    run_and_compare(ref, mode="static")


@pytest.mark.parametrize("growth", ["random", "gradient"])
@pytest.mark.parametrize("criterion", PAPER_CRITERIA)
def test_dst_trajectory_matches_reference(ref, criterion, growth):
    run_and_compare(ref, criterion=criterion, growth=growth)


def test_update_on_the_last_step_as_the_reference(ref):
    run_and_compare(ref, criterion="snip", growth="gradient", steps=3 * EVERY)


def test_grasp_trajectory_matches_reference(ref):
    run_and_compare(ref, criterion="grasp", growth="gradient")


def test_momentum_neuron_growth_trajectory_matches_reference(ref):
    # Dense-ish layers so that neurons get quotas of >= 10 (the reference skips smaller ones).
    run_and_compare(ref, criterion="magnitude", growth="momentum_neuron", density=0.5, lr=0.2)


# ---------------------------------------------------------------------------- initialisation
@pytest.mark.parametrize("density", [0.05, 0.2, 0.5])
def test_initial_masks_and_first_logits_match_reference(ref, density):
    pair = Pair(ref, mode="static", density=density, steps=1)
    for name, m, r in zip(pair.sparsifier.names, pair.masks(), pair.ref_masks()):
        assert torch.equal(m, r), name
    # which weights survive and their scale: the masked weights are the initial ones, unscaled
    for p, q in zip(pair.weights(), pair.ref_weights()):
        assert torch.equal(p, q)
    x, _ = pair.data[0]
    assert torch.equal(pair.model(x), pair.ref_model(x))
    # and the per-layer ERK densities are the reference's
    densities = pair.ref["sparselearning.core"].ERK_initializer(pair.mask)
    from src.sparse import layer_densities

    ours = layer_densities([p.shape for p in pair.sparsifier.params], density, "erk")
    assert ours == pytest.approx([densities[n] for n in pair.sparsifier.names], rel=1e-12)


def test_lenet5_initialisation_matches_reference(ref):
    """The paper's Fashion-MNIST model: same default init for the same seed, same ERK masks and
    first logits (the masked weights are not rescaled in either)."""
    from src.models import build_model

    sys.path.insert(0, str(ref["root"]))
    try:
        lenet = importlib.import_module("models.lenet")
    finally:
        sys.path.remove(str(ref["root"]))
    torch.manual_seed(SEED)
    ref_model = lenet.LeNet_5_Caffe(last="logits")
    torch.manual_seed(SEED)
    model = build_model("lenet5", 10)
    for (n, p), (m, q) in zip(model.named_parameters(), ref_model.named_parameters()):
        assert n == m and torch.equal(p, q), n
    args = reference_args(ref, mode="static", criterion="magnitude", growth="random", density=0.1)
    sparsifier = Sparsifier(
        model, sgd(model, 0.01), SparsityConfig.reference(mode="static", density=0.1), total_steps=10, seed=SEED
    ).prepare()
    torch.set_rng_state(torch.Generator().manual_seed(SEED * 1000 + _INIT).get_state())
    mask = ref["setup_utils"].get_mask(args, ref_model, sgd(ref_model, 0.01), [None] * 10, "cpu")
    for name, m in zip(sparsifier.names, sparsifier.masks):
        assert torch.equal(m.bool(), mask.masks[name].bool()), name
    x = torch.randn(4, 1, 28, 28, generator=torch.Generator().manual_seed(1))
    assert torch.equal(model(x), ref_model(x))


def test_learning_rate_schedule_matches_reference():
    """The paper's MultiStepLR (x0.1 at int(E/2) and int(3E/4), stepped per epoch)."""
    from src.config import RunConfig
    from src.trainer.optim import learning_rate

    cfg = RunConfig().optim
    cfg.lr, cfg.lr_schedule, cfg.warmup_epochs = 0.01, "multistep", 0
    for epochs in (3, 4, 10, 100):
        p = nn.Parameter(torch.zeros(1))
        opt = torch.optim.SGD([p], lr=cfg.lr)
        sched = torch.optim.lr_scheduler.MultiStepLR(opt, milestones=[int(epochs / 2), int(epochs * 3 / 4)])
        for epoch in range(epochs):
            assert learning_rate(cfg, epoch, 0, epochs, 1) == pytest.approx(opt.param_groups[0]["lr"]), (epochs, epoch)
            opt.step()
            sched.step()


def test_gradient_growth_ranks_like_the_reference_below_its_epsilon(ref):
    """The reference grows by |G| + 1e-6: gradients far below 1e-6 all tie (and its sort,
    stable on so few entries, then takes the first); compat does the same."""
    from src.sparse import grow
    from src.sparse.reference import REFERENCE as reference_policy

    growers = importlib.import_module("sparselearning.growers")
    grad = torch.tensor([0.5, 1e-15, 3e-15, 0.0])
    weight = torch.nn.Parameter(torch.zeros(4))
    weight.grad = grad
    mask = torch.tensor([True, False, False, False])

    class Masking:  # what gradient_growth_fixed reads from its Masking
        @staticmethod
        def get_gradient_for_weights(w):
            return w.grad.clone()

    expected = growers.gradient_growth_fixed(Masking, "w", mask.clone().byte(), 1, weight).bool()
    assert expected.tolist() == [True, True, False, False]
    assert grow("gradient", weight.detach(), grad, mask, 1, policy=reference_policy).equal(expected)
    assert grow("gradient", weight.detach(), grad, mask, 1).tolist() == [True, False, True, False]

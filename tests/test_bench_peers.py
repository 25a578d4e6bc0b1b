"""The peer comparison of bench/sparse_backend.py: its check of a peer's training step, and how
it reports a peer it cannot use."""

import sys

import pytest
import torch
from torch import nn

from bench import sparse_backend as sb


class MaskedLinear(nn.Module):
    """A stand-in peer layer: a dense weight that is zero off a random pattern."""

    def __init__(self, linear: nn.Linear, density: float, respect_mask: bool):
        super().__init__()
        self.mask = torch.rand(linear.weight.shape) < density
        self.weight = nn.Parameter(linear.weight.detach() * self.mask)
        self.bias = linear.bias
        self.respect_mask = respect_mask

    def forward(self, x):
        # Without the mask in the graph, a step moves every weight: not a sparse training step.
        weight = self.weight * self.mask if self.respect_mask else self.weight
        return nn.functional.linear(x, weight, self.bias)


def _stand_in(respect_mask: bool, stored_density: float | None = None) -> sb.Peer:
    return sb.Peer(
        "torch",
        lambda linear, d: MaskedLinear(linear, stored_density or d, respect_mask),
        lambda m: int(m.mask.sum()),
        lambda m: m.weight.detach(),
    )


DENSITIES = {"fc1.weight": 0.04, "fc2.weight": 0.09}


@pytest.mark.parametrize(
    "peer, ok",
    [(_stand_in(True), True), (_stand_in(False), False), (_stand_in(True, stored_density=0.2), False)],
    ids=["sparse step", "dense step", "wrong density"],
)
def test_check_peer_accepts_only_a_sparse_training_step_at_the_density(peer, ok):
    x, y = sb._batch()
    check = sb.check_peer(peer, sb._peer_model(peer, DENSITIES), DENSITIES, x, y, steps=3)
    assert check["ok"] is ok
    assert check["loss"][-1] < check["loss"][0]  # all three train; only one is the right step


def test_a_peer_that_is_absent_or_crashes_on_import_is_named_with_the_reason(tmp_path, monkeypatch):
    # A real extension built for another CPU dies of SIGILL on import; so does this module.
    (tmp_path / "crashing_peer.py").write_text("import os, signal\nos.kill(os.getpid(), signal.SIGILL)\n")
    (tmp_path / "broken_peer.py").write_text("raise ImportError('undefined symbol: _ZN3c10')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv("PYTHONPATH", f"{tmp_path}:{':'.join(sys.path)}")
    sb._import_problem.cache_clear()
    assert sb._import_problem("no_such_peer_module").startswith("not installed")
    assert sb._import_problem("crashing_peer") == "import crashing_peer killed by SIGILL"
    assert sb._import_problem("broken_peer") == "import broken_peer failed: ImportError: undefined symbol: _ZN3c10"
    assert sb._import_problem("json") is None
    monkeypatch.setattr(sb, "PEERS", {"crashing": sb.Peer("crashing_peer", None, None, None)})
    steps, checks, absent = sb.peer_steps(DENSITIES)
    assert not steps and not checks and absent == {"crashing": "import crashing_peer killed by SIGILL"}
    sb._import_problem.cache_clear()


@pytest.mark.filterwarnings("ignore::UserWarning")  # the peers' own (torch's CSR is "beta", numpy views)
@pytest.mark.parametrize("name", list(sb.PEERS))
def test_installed_peer_trains_at_the_density(name):
    pytest.importorskip(sb.PEERS[name].module)
    x, y = sb._batch()
    peer = sb.PEERS[name]
    check = sb.check_peer(peer, sb._peer_model(peer, DENSITIES), DENSITIES, x, y, steps=3)
    assert check["ok"], check

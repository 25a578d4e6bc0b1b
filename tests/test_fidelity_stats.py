"""The side-by-side statistics script on a tiny Fashion-MNIST: real runs of the reference and
of the project, a resumed sweep, and the table."""

import json
import struct
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "fidelity_stats.py"
REFERENCE = ROOT / ".." / "shared" / "reference" / "fantastic_weights_paper"


def write_idx(raw: Path, n_train: int = 640, n_test: int = 200) -> None:
    """Tiny IDX files (random images; the label is readable from the image, so it can learn)."""
    raw.mkdir(parents=True, exist_ok=True)
    g = torch.Generator().manual_seed(0)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        labels = torch.randint(0, 10, (n,), generator=g, dtype=torch.uint8)
        images = torch.randint(0, 60, (n, 28, 28), generator=g, dtype=torch.uint8)
        for i, label in enumerate(labels.tolist()):
            images[i, label * 2 : label * 2 + 4, 4:24] = 255
        (raw / f"{prefix}-images-idx3-ubyte").write_bytes(
            struct.pack(">IIII", 2051, n, 28, 28) + images.numpy().tobytes()
        )
        (raw / f"{prefix}-labels-idx1-ubyte").write_bytes(struct.pack(">II", 2049, n) + labels.numpy().tobytes())


def test_table_statistics(tmp_path):
    sys.path.insert(0, str(ROOT / "scripts"))
    try:
        import fidelity_stats as fs
    finally:
        sys.path.remove(str(ROOT / "scripts"))
    for impl, values in {"reference": [80.0, 81.0, 82.0], "compat": [79.0, 80.0, 81.0]}.items():
        for seed, v in enumerate(values, 1):
            d = tmp_path / impl / "static_d0.2" / f"s{seed}"
            d.mkdir(parents=True)
            (d / "result.json").write_text(
                json.dumps({"impl": impl, "cell": "static_d0.2", "seed": seed, "final_test_acc": v})
            )
    text = fs.write_table(tmp_path)
    # equal variances, difference -1, sd 1, n 3: Welch t = -1.2247, df 4, p = 0.2879
    assert "| static_d0.2 | 81.00 ± 1.00 (3) | 80.00 ± 1.00 (3) | -1.00 | 0.288 |" in text
    assert "Pooled compat - reference over 1 sparse cells, per seed (3 seeds" in text and "-1.000 ± 0.000" in text
    assert "5 criteria pooled" not in text  # no member cell yet
    for cell, values in {"dst_d0.2_u800_random_set": [70.0, 72.0], "dst_d0.2_u800_random_snip": [74.0, 76.0]}.items():
        for impl in ("reference", "clean"):
            for seed, v in enumerate(values, 1):
                d = tmp_path / impl / cell / f"s{seed}"
                d.mkdir(parents=True)
                (d / "result.json").write_text(
                    json.dumps({"impl": impl, "cell": cell, "seed": seed, "final_test_acc": v + (impl == "clean")})
                )
    text = fs.write_table(tmp_path)
    # the pooled row: 4 runs each side (70, 72, 74, 76 vs +1), every member's seeds
    assert (
        "| dst_d0.2_u800_random, 5 criteria pooled | 73.00 ± 2.58 (4) | — | — | — | 74.00 ± 2.58 (4) | +1.00 |" in text
    )
    assert "Pooled clean - reference over 2 sparse cells, per seed (2 seeds" in text  # pooled row not counted twice
    # the seed is the unit: per seed the mean difference over the cells; seeds missing in a cell drop out
    values = {
        ("clean", "a"): {1: 1.0, 2: 2.0, 3: 4.0},
        ("reference", "a"): {1: 0.0, 2: 0.0, 3: 0.0, 4: 0.0},
        ("clean", "b"): {1: 1.0, 2: 2.0, 3: 2.0, 4: 9.0},
        ("reference", "b"): {1: 0.0, 2: 0.0, 3: 0.0},
    }
    mean, se, p, n = fs.seed_pooled(values, "clean", ["a", "b"])
    # per seed 1, 2, 3: mean 2, sd 1, t = 2 / (1 / sqrt 3) = 3.464 with 2 df: p = 0.0742
    assert (mean, n) == (2.0, 3) and se == pytest.approx(3**-0.5) and p == pytest.approx(0.0742, abs=1e-4)


@pytest.mark.slow
@pytest.mark.skipif(not REFERENCE.is_dir(), reason=f"reference implementation not found at {REFERENCE}")
def test_tiny_sweep_runs_resumes_and_tabulates(tmp_path):
    data = tmp_path / "data"
    write_idx(data / "FashionMNIST" / "raw")
    out = tmp_path / "out"
    env = {"FASHION_MNIST_PYTORCH": str(data), "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"}
    cmd = [
        sys.executable,
        str(SCRIPT),
        "run",
        "--out",
        str(out),
        "--seeds",
        "2",
        "--epochs",
        "1",
        "--cells",
        "dst_d0.1_u200_gradient_snip",
        "--jobs",
        "2",
    ]
    done = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    results = sorted(out.glob("*/*/s*/result.json"))
    assert len(results) == 6  # reference, compat, clean x 2 seeds
    for path in results:
        r = json.loads(path.read_text())
        assert 0 <= r["final_test_acc"] <= 100 and r["epochs"] == 1
    table = (out / "table.md").read_text()
    assert "| dst_d0.1_u200_gradient_snip |" in table and "Pooled compat - reference" in table
    # resumable: a second call has nothing to do
    again = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0 and "0 runs to do (6 done)" in again.stdout

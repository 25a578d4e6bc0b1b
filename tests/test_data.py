"""Data layer: registry, real on-disk formats, splits, batched augmentation, resumable loaders."""

from __future__ import annotations

import dataclasses
import io
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch.utils.data import TensorDataset

from src.data import (
    DATASETS,
    BatchAugment,
    DatasetNotFoundError,
    Holdout,
    InMemoryLoader,
    Normalize,
    StreamedSplit,
    StreamLoader,
    TensorSplit,
    ValidationPolicy,
    build_dataset,
    check_dataset,
    make_loader,
    make_loaders,
)
from src.data.sources.fashion_mnist import FashionMNIST, read_idx
from tests.data_fixtures import (
    CLASS_COLOURS,
    higgs_table,
    sample_ids,
    write_cifar10,
    write_cifar100,
    write_fashion_mnist,
    write_image_folder,
    write_openml_cache,
    write_tiny_imagenet,
)

REAL_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")
DATA_ENV_VARS = (
    "FASHION_MNIST_PYTORCH",
    "CIFAR10_PYTORCH",
    "CIFAR100_PYTORCH",
    "TINY_IMAGENET",
    "IMAGENET_PYTORCH",
    "TABULAR_DATA_DIR",
)


@pytest.fixture(autouse=True)
def _isolated(monkeypatch, tmp_path):
    """No dataset is found through the machine's environment, system dirs or home cache."""
    for name in DATA_ENV_VARS:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setattr(FashionMNIST, "layout", dataclasses.replace(FashionMNIST.layout, system_dirs=()))


def collect(loader, limit: int | None = None) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Batches of one pass over ``loader`` (stopping after ``limit`` batches)."""
    batches = []
    for batch in loader:
        batches.append(batch)
        if len(batches) == limit:
            break
    return batches


def assert_same_batches(a, b) -> None:
    assert len(a) == len(b)
    for (xa, ya), (xb, yb) in zip(a, b):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)


def roundtrip(state: dict) -> dict:
    """``state`` through torch.save / torch.load, as a checkpoint would carry it."""
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    return torch.load(buffer)


def counter_split(n: int = 50, shape: tuple[int, ...] = (3, 8, 8)) -> TensorSplit:
    """uint8 images plus targets ``arange(n)``, so a batch's targets say which samples it holds."""
    images = torch.randint(0, 256, (n, *shape), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    return TensorSplit(images, torch.arange(n), Normalize((0.5,) * shape[0], (0.25,) * shape[0]))


# --------------------------------------------------------------------------- registry


def test_registry_lists_every_dataset():
    assert {"fashion_mnist", "cifar10", "cifar100", "tiny_imagenet", "imagenet", "higgs", "synthetic"} <= set(DATASETS)


def test_unknown_name_names_the_field_and_the_valid_names():
    with pytest.raises(ValueError, match=r"unknown dataset 'mnist9'; choose from \[.*cifar10.*fashion_mnist"):
        build_dataset("mnist9")
    with pytest.raises(ValueError, match="unknown dataset"):
        check_dataset("mnist9")


def test_unknown_option_is_a_type_error():
    with pytest.raises(TypeError):
        build_dataset("synthetic", num_trian=10)


# --------------------------------------------------------------------------- missing files


def test_missing_fashion_mnist_says_where_it_looked_and_how_to_get_it(tmp_path):
    with pytest.raises(DatasetNotFoundError) as error:
        check_dataset("fashion_mnist", tmp_path / "nowhere")
    message = str(error.value)
    assert isinstance(error.value, FileNotFoundError)
    assert str(tmp_path / "nowhere") in message
    assert str(tmp_path / "nowhere" / "FashionMNIST" / "raw") in message
    assert "train-images-idx3-ubyte.gz" in message
    assert "$FASHION_MNIST_PYTORCH is not set" in message
    assert "apt-get install dataset-fashion-mnist" in message


def test_missing_fashion_mnist_lists_the_debian_location(tmp_path, monkeypatch):
    monkeypatch.setattr(FashionMNIST, "layout", dataclasses.replace(FashionMNIST.layout, system_dirs=(str(tmp_path),)))
    with pytest.raises(DatasetNotFoundError, match="default location"):
        build_dataset("fashion_mnist")


def test_missing_cifar_names_the_folder_and_the_official_site(tmp_path, monkeypatch):
    monkeypatch.setenv("CIFAR10_PYTORCH", str(tmp_path / "env"))
    with pytest.raises(DatasetNotFoundError) as error:
        build_dataset("cifar10", tmp_path)
    message = str(error.value)
    assert str(tmp_path / "cifar-10-batches-py") in message
    assert str(tmp_path / "env" / "cifar-10-batches-py") in message
    assert "data_batch_1" in message
    assert "https://www.cs.toronto.edu/~kriz/cifar.html" in message


@pytest.mark.parametrize("name", ["cifar100", "tiny_imagenet", "imagenet", "higgs"])
def test_every_file_dataset_reports_missing_files(name, tmp_path):
    with pytest.raises(DatasetNotFoundError, match=f"{name}: dataset files not found"):
        check_dataset(name, tmp_path)


def test_incomplete_copy_is_not_found(tmp_path):
    write_cifar10(tmp_path)
    (tmp_path / "cifar-10-batches-py" / "data_batch_3").unlink()
    with pytest.raises(DatasetNotFoundError):
        check_dataset("cifar10", tmp_path)


def test_download_without_a_downloader_keeps_the_not_found_error(tmp_path):
    with pytest.raises(DatasetNotFoundError, match="automatic download is not available"):
        build_dataset("tiny_imagenet", tmp_path, download=True)


def test_check_dataset_returns_the_location(tmp_path):
    write_cifar10(tmp_path)
    assert check_dataset("cifar10", tmp_path) == tmp_path / "cifar-10-batches-py"
    assert check_dataset("synthetic") is None


# --------------------------------------------------------------------------- fashion_mnist


def test_fashion_mnist_from_idx_gz(tmp_path):
    written = write_fashion_mnist(tmp_path, n_train=100, n_test=30)
    splits = build_dataset("fashion_mnist", tmp_path)
    assert (len(splits.train), len(splits.val), len(splits.test)) == (90, 10, 30)
    assert splits.input_shape == (1, 28, 28) and splits.num_classes == 10 and splits.task == "multiclass"
    assert splits.train.inputs.dtype == torch.uint8 and splits.train.inputs.shape == (90, 1, 28, 28)
    assert splits.train.targets.dtype == torch.int64
    test_images, test_labels = written["test"]
    assert np.array_equal(splits.test.inputs[:, 0].numpy(), test_images)
    assert np.array_equal(splits.test.targets.numpy(), test_labels)
    # Labels stay attached to their images through the held-out draw.
    train_images, train_labels = written["train"]
    for split in (splits.train, splits.val):
        ids = sample_ids(split.inputs.numpy())
        assert np.array_equal(split.targets.numpy(), train_labels[ids])
    x, _ = next(iter(make_loaders(splits, 16).test))
    assert x.dtype == torch.float32
    expected = (torch.from_numpy(test_images[:16]).float()[:, None] / 255 - 0.5) / 0.5
    torch.testing.assert_close(x, expected)


def test_fashion_mnist_search_order(tmp_path, monkeypatch):
    write_fashion_mnist(tmp_path / "env" / "FashionMNIST" / "raw")  # torchvision layout under the env var
    monkeypatch.setenv("FASHION_MNIST_PYTORCH", str(tmp_path / "env"))
    assert check_dataset("fashion_mnist") == tmp_path / "env" / "FashionMNIST" / "raw"
    write_fashion_mnist(tmp_path / "root", compressed=False)  # raw files under root win
    assert check_dataset("fashion_mnist", tmp_path / "root") == tmp_path / "root"
    assert len(build_dataset("fashion_mnist", tmp_path / "root").test) == 30


def test_idx_reader_rejects_other_files(tmp_path):
    path = tmp_path / "bad"
    path.write_bytes(b"\x00\x00\x0d\x01" + b"\x00" * 8)  # element type float, not unsigned byte
    with pytest.raises(ValueError, match="not an IDX file"):
        read_idx(path)


def test_fashion_mnist_reference_splits_hold_out_the_last_tenth(tmp_path):
    write_fashion_mnist(tmp_path, n_train=100)
    splits = build_dataset("fashion_mnist", tmp_path, reference_splits=True)
    assert np.array_equal(sample_ids(splits.train.inputs.numpy()), np.arange(90))
    assert np.array_equal(sample_ids(splits.val.inputs.numpy()), np.arange(90, 100))


@pytest.mark.skipif(
    not REAL_FASHION_MNIST.is_dir(),
    reason="real Fashion-MNIST not installed "
    "(apt-get install dataset-fashion-mnist puts it in /usr/share/datasets/fashion-mnist)",
)
def test_real_fashion_mnist():
    splits = build_dataset("fashion_mnist", REAL_FASHION_MNIST)
    assert len(splits.train) + len(splits.val) == 60000 and len(splits.test) == 10000
    assert (len(splits.train), len(splits.val)) == (54000, 6000)
    for split in (splits.train, splits.val, splits.test):
        assert split.targets.min() == 0 and split.targets.max() == 9
    assert torch.bincount(splits.test.targets).tolist() == [1000] * 10
    loader = make_loaders(splits, 128).train
    assert len(loader) == 422  # spec §7.2: iterations per epoch at batch 128
    assert sum(len(y) for _, y in loader) == 54000


# --------------------------------------------------------------------------- cifar


def test_cifar10_pickles_shapes_labels_and_pixel_layout(tmp_path):
    written = write_cifar10(tmp_path, per_batch=20, n_test=20)
    splits = build_dataset("cifar10", tmp_path, seed=3)
    assert (len(splits.train), len(splits.val), len(splits.test)) == (90, 10, 20)
    assert splits.input_shape == (3, 32, 32) and splits.num_classes == 10
    images, labels = written["train"]
    ids = sample_ids(splits.train.inputs.numpy())
    assert np.array_equal(splits.train.inputs.numpy(), images[ids])  # CHW order preserved
    assert np.array_equal(splits.train.targets.numpy(), labels[ids])
    assert splits.train_augment == BatchAugment(padding=4, pad_mode="reflect", hflip=True)


def test_cifar10_reference_splits_are_the_last_5000_in_index_order(tmp_path):
    write_cifar10(tmp_path, per_batch=20)
    splits = build_dataset("cifar10", tmp_path, reference_splits=True)
    assert np.array_equal(sample_ids(splits.train.inputs.numpy()), np.arange(90))
    assert np.array_equal(sample_ids(splits.val.inputs.numpy()), np.arange(90, 100))


def test_cifar100_fine_labels_zero_padding_and_reference_val_is_test(tmp_path):
    written = write_cifar100(tmp_path, n_train=60, n_test=20)
    splits = build_dataset("cifar100", tmp_path)
    assert splits.num_classes == 100 and (len(splits.train), len(splits.val)) == (54, 6)
    ids = sample_ids(splits.val.inputs.numpy())
    assert np.array_equal(splits.val.targets.numpy(), written["train"][1][ids])
    assert splits.train_augment.pad_mode == "constant"
    reference = build_dataset("cifar100", tmp_path, reference_splits=True)
    assert reference.val is reference.test and len(reference.train) == 60


def test_env_var_points_at_a_torchvision_root(tmp_path, monkeypatch):
    write_cifar100(tmp_path)
    monkeypatch.setenv("CIFAR100_PYTORCH", str(tmp_path))
    assert check_dataset("cifar100") == tmp_path / "cifar-100-python"


# --------------------------------------------------------------------------- held-out split


def test_validation_split_is_seeded_disjoint_and_not_the_tail():
    policy = ValidationPolicy(Holdout.RANDOM, 0.1, seed=0)
    train, val = policy.indices(1000)
    assert len(val) == 100 and len(train) == 900
    assert set(train.tolist()).isdisjoint(val.tolist())
    assert sorted(train.tolist() + val.tolist()) == list(range(1000))
    assert not torch.equal(val, torch.arange(900, 1000))
    assert torch.equal(val, ValidationPolicy(Holdout.RANDOM, 0.1, seed=0).indices(1000)[1])
    assert not torch.equal(val, ValidationPolicy(Holdout.RANDOM, 0.1, seed=1).indices(1000)[1])


@pytest.mark.parametrize("fraction", [0.0, 1.0, -0.1])
def test_validation_fraction_must_leave_both_splits_non_empty(fraction):
    with pytest.raises(ValueError, match="val_fraction"):
        build_dataset("synthetic", val_fraction=fraction)


def test_dataset_splits_are_deterministic_for_a_seed(tmp_path):
    write_cifar10(tmp_path)
    a, b = build_dataset("cifar10", tmp_path, seed=5), build_dataset("cifar10", tmp_path, seed=5)
    c = build_dataset("cifar10", tmp_path, seed=6)
    assert torch.equal(a.val.inputs, b.val.inputs)
    assert not torch.equal(a.val.inputs, c.val.inputs)
    ids = set(sample_ids(a.train.inputs.numpy()))
    assert ids.isdisjoint(sample_ids(a.val.inputs.numpy()))
    assert len(ids) + len(a.val) == 100


# --------------------------------------------------------------------------- batched augmentation


def _images(n: int = 16, size: int = 6) -> torch.Tensor:
    return torch.randint(0, 256, (n, 3, size, size), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))


def test_flip_really_flips():
    x = _images(32)
    out = BatchAugment(hflip=True)(x, torch.Generator().manual_seed(0))
    flipped = [torch.equal(o, xi.flip(-1)) for o, xi in zip(out, x)]
    kept = [torch.equal(o, xi) for o, xi in zip(out, x)]
    assert all(f or k for f, k in zip(flipped, kept))
    assert any(flipped) and any(kept)


@pytest.mark.parametrize("pad_mode", ["reflect", "constant"])
def test_crop_is_a_window_of_the_padded_image_and_keeps_the_shape(pad_mode):
    x, p = _images(24), 2
    out = BatchAugment(padding=p, pad_mode=pad_mode, hflip=True)(x, torch.Generator().manual_seed(0))
    assert out.shape == x.shape and out.dtype == torch.uint8
    padded = F.pad(x, (p,) * 4, mode=pad_mode)
    offsets = set()
    for o, image in zip(out, padded):
        windows = [
            (dy, dx)
            for dy in range(2 * p + 1)
            for dx in range(2 * p + 1)
            for candidate in (o, o.flip(-1))
            if torch.equal(candidate, image[:, dy : dy + 6, dx : dx + 6])
        ]
        assert windows, "output is not a (possibly flipped) crop of the padded image"
        offsets.update(windows)
    assert len(offsets) > 3  # offsets really vary


def test_augmentation_is_reproducible_per_seed():
    x, augment = _images(), BatchAugment(padding=2, pad_mode="reflect", hflip=True)
    a = augment(x, torch.Generator().manual_seed(0))
    assert torch.equal(a, augment(x, torch.Generator().manual_seed(0)))
    assert not torch.equal(a, augment(x, torch.Generator().manual_seed(1)))


def test_normalize_matches_to_tensor_then_normalize():
    x = _images()
    mean, std = (0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010)
    expected = (x.float() / 255 - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    torch.testing.assert_close(Normalize(mean, std)(x), expected)


# --------------------------------------------------------------------------- in-memory loader


def test_loader_length_and_drop_last():
    split = counter_split(50)
    assert len(InMemoryLoader(split, 16)) == 4
    assert len(InMemoryLoader(split, 16, drop_last=True)) == 3
    assert [len(y) for _, y in InMemoryLoader(split, 16)] == [16, 16, 16, 2]
    assert [len(y) for _, y in InMemoryLoader(split, 16, drop_last=True)] == [16, 16, 16]


def test_each_epoch_is_a_fresh_permutation_of_every_sample():
    loader = InMemoryLoader(counter_split(50), 16, shuffle=True, seed=0)
    first = torch.cat([y for _, y in loader])
    second = torch.cat([y for _, y in loader])
    assert sorted(first.tolist()) == sorted(second.tolist()) == list(range(50))
    assert not torch.equal(first, second) and not torch.equal(first, torch.arange(50))
    assert loader.epoch == 2


def test_unshuffled_loader_keeps_order_and_applies_the_transform():
    split = counter_split(20)
    (x, y), *_ = collect(InMemoryLoader(split, 8))
    assert torch.equal(y, torch.arange(8))
    assert torch.equal(x, split.transform(split.inputs[:8]))


def test_loader_is_deterministic_for_a_seed():
    augment = BatchAugment(padding=2, pad_mode="reflect", hflip=True)
    runs = [collect(InMemoryLoader(counter_split(), 8, shuffle=True, seed=s, augment=augment)) for s in (0, 0, 1)]
    assert_same_batches(runs[0], runs[1])
    assert not torch.equal(runs[0][0][1], runs[2][0][1])


@pytest.mark.parametrize("stop_after", [3, 7, 10])  # mid-epoch, end of epoch 1 (7 batches), mid-epoch 2
def test_resumed_loader_yields_bit_identical_batches(stop_after):
    def loader(seed: int) -> InMemoryLoader:
        augment = BatchAugment(padding=2, pad_mode="reflect", hflip=True)
        return InMemoryLoader(counter_split(50), 8, shuffle=True, seed=seed, augment=augment)

    reference = loader(0)
    expected = collect(reference) + collect(reference) + collect(reference)

    interrupted, seen = loader(0), []
    while len(seen) < stop_after:
        seen += collect(interrupted, limit=stop_after - len(seen))
    state = roundtrip(interrupted.state_dict())

    resumed = loader(seed=123)  # the state, not the constructor seed, decides
    resumed.load_state_dict(state)
    while resumed.epoch < 3:
        seen += collect(resumed)
    assert_same_batches(seen, expected)


def test_channels_last_batches():
    loader = InMemoryLoader(counter_split(10, shape=(3, 8, 8)), 4, memory_format=torch.channels_last)
    x, _ = next(iter(loader))
    assert x.is_contiguous(memory_format=torch.channels_last)


def test_val_loader_uses_eval_transforms(tmp_path):
    write_cifar10(tmp_path)
    splits = build_dataset("cifar10", tmp_path)
    loaders = make_loaders(splits, 16, eval_batch_size=5, seed=0)
    assert len(loaders.val) == 2 and loaders["val"] is loaders.val
    val = torch.cat([x for x, _ in loaders.val])
    assert torch.equal(val, splits.val.transform(splits.val.inputs))
    # Same seed, same permutation, no augmentation: the training batch differs only by it.
    plain = InMemoryLoader(splits.train, 16, shuffle=True, seed=0)
    (x_train, y_train), (x_plain, y_plain) = next(iter(loaders.train)), next(iter(plain))
    assert torch.equal(y_train, y_plain) and not torch.equal(x_train, x_plain)


# --------------------------------------------------------------------------- synthetic


def test_synthetic_is_learnable_by_a_linear_model():
    torch.manual_seed(0)
    splits = build_dataset("synthetic", num_train=1024, num_classes=4, input_shape=(1, 8, 8))
    assert splits.train.inputs.dtype == torch.float32 and splits.input_shape == (1, 8, 8)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 4))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    loaders = make_loaders(splits, 64, seed=0)
    for _ in range(2):
        for x, y in loaders.train:
            optimizer.zero_grad()
            F.cross_entropy(model(x), y).backward()
            optimizer.step()
    with torch.no_grad():
        correct = sum((model(x).argmax(1) == y).sum().item() for x, y in loaders.val)
    assert correct / len(splits.val) > 0.8  # chance is 0.25


def test_synthetic_content_depends_on_data_seed_not_split_seed():
    a = build_dataset("synthetic", seed=0)
    b = build_dataset("synthetic", seed=1)
    assert torch.equal(a.test.inputs, b.test.inputs)
    assert not torch.equal(a.val.inputs, b.val.inputs)
    assert not torch.equal(a.test.inputs, build_dataset("synthetic", data_seed=1).test.inputs)


def test_synthetic_binary_task():
    splits = build_dataset("synthetic", num_classes=2, binary=True, input_shape=(6,))
    assert splits.task == "binary" and splits.num_classes == 1 and splits.input_shape == (6,)
    assert splits.train.targets.dtype == torch.float32
    assert set(splits.train.targets.unique().tolist()) == {0.0, 1.0}


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_in_memory_splits_and_batches_live_on_the_device():
    splits = build_dataset("synthetic", device="cuda")
    assert splits.train.inputs.is_cuda
    x, y = next(iter(make_loaders(splits, 8).train))
    assert x.is_cuda and y.is_cuda


# --------------------------------------------------------------------------- higgs


@pytest.mark.parametrize("file_name", ["higgs.csv", "higgs.parquet"])
def test_higgs_table_file_stratified_70_15_15(tmp_path, file_name):
    table = higgs_table(n=1000, positive_share=0.3)
    path = tmp_path / file_name
    table.to_csv(path, index=False) if path.suffix == ".csv" else table.to_parquet(path)
    splits = build_dataset("higgs", path)
    assert (len(splits.train), len(splits.val), len(splits.test)) == (700, 150, 150)
    assert splits.task == "binary" and splits.num_classes == 1 and splits.input_shape == (5,)
    for split in (splits.train, splits.val, splits.test):
        assert split.inputs.dtype == torch.float32 and split.targets.dtype == torch.float32
        assert split.targets.mean().item() == pytest.approx(0.3)  # class ratio kept in every split
    rows = [{tuple(r) for r in s.inputs.tolist()} for s in (splits.train, splits.val, splits.test)]
    assert not (rows[0] & rows[1] or rows[0] & rows[2] or rows[1] & rows[2])
    x, _ = next(iter(make_loaders(splits, 700).train))
    assert sorted(x.tolist()) == sorted(splits.train.inputs.tolist())  # unscaled by default


def test_higgs_split_depends_on_the_seed_only(tmp_path):
    higgs_table(n=400).to_parquet(tmp_path / "h.pq")
    a, b, c = (build_dataset("higgs", tmp_path / "h.pq", seed=s) for s in (0, 0, 1))
    assert torch.equal(a.val.inputs, b.val.inputs) and not torch.equal(a.val.inputs, c.val.inputs)


def test_higgs_label_column_choice(tmp_path):
    table = higgs_table(n=200).rename(columns={"target": "signal"})
    table["signal"] = table["signal"].map({0: "b", 1: "s"})
    table = table[["signal"] + [c for c in table.columns if c != "signal"]]
    table.to_csv(tmp_path / "h.csv", index=False)
    with pytest.raises(ValueError, match=r"non-numeric feature columns \['signal'\]"):
        build_dataset("higgs", tmp_path / "h.csv")  # default: the last column, a feature
    splits = build_dataset("higgs", tmp_path / "h.csv", label_column="signal")
    assert splits.input_shape == (5,) and set(splits.train.targets.tolist()) == {0.0, 1.0}
    with pytest.raises(ValueError, match="label column 'nope'"):
        build_dataset("higgs", tmp_path / "h.csv", label_column="nope")


def test_higgs_from_an_openml_cache(tmp_path, monkeypatch):
    table = higgs_table(n=200).rename(columns={"target": "class"})
    write_openml_cache(tmp_path / "openml", table, task_id=361069, dataset_id=44129, target="class")
    monkeypatch.setenv("TABULAR_DATA_DIR", str(tmp_path / "openml"))
    location = check_dataset("higgs")
    assert location == tmp_path / "openml/org/openml/www/tasks/361069/task.xml"
    splits = build_dataset("higgs")
    assert splits.input_shape == (5,) and len(splits.train) == 140


def test_higgs_standardize_uses_training_statistics(tmp_path):
    higgs_table(n=1000).to_parquet(tmp_path / "h.pq")
    splits = build_dataset("higgs", tmp_path / "h.pq", standardize=True)
    x, _ = next(iter(make_loaders(splits, len(splits.train)).train))
    torch.testing.assert_close(x.mean(0), torch.zeros(5), atol=1e-4, rtol=0)
    torch.testing.assert_close(x.std(0), torch.ones(5), atol=1e-4, rtol=0)


# --------------------------------------------------------------------------- image folders


def _colour_labels(x: torch.Tensor) -> list[int]:
    """Class of each decoded solid-colour image (nearest fixture colour of its mean pixel)."""
    colours = torch.tensor(CLASS_COLOURS, dtype=torch.float32)
    means = x.float().mean(dim=(2, 3))
    return torch.cdist(means, colours).argmin(1).tolist()


@pytest.mark.parametrize("official_val", [True, False])
def test_tiny_imagenet_layouts_and_label_mapping(tmp_path, official_val):
    classes = ["n01443537", "n01629819", "n01641577"]
    base = write_tiny_imagenet(tmp_path, classes, per_class=6, val_per_class=2, official_val=official_val)
    assert check_dataset("tiny_imagenet", tmp_path) == base
    splits = build_dataset("tiny_imagenet", tmp_path)
    assert splits.num_classes == 3 and splits.input_shape == (3, 64, 64)
    assert (len(splits.train), len(splits.val), len(splits.test)) == (16, 2, 6)
    assert isinstance(splits.test, StreamedSplit) and splits.train_augment == BatchAugment(hflip=True)
    for split in (splits.train, splits.val, splits.test):
        raw = [split.dataset[i] for i in range(len(split))]
        images = torch.stack([image for image, _ in raw])
        assert images.dtype == torch.uint8 and images.shape[1:] == (3, 64, 64)
        assert _colour_labels(images) == [label for _, label in raw]
    loaders = make_loaders(splits, 4, num_workers=0)
    x, y = next(iter(loaders.test))
    assert x.dtype == torch.float32 and x.shape == (4, 3, 64, 64) and y.dtype == torch.int64


def test_tiny_imagenet_reference_splits_validate_on_the_test_set(tmp_path):
    write_tiny_imagenet(tmp_path, ["a", "b"], per_class=3)
    splits = build_dataset("tiny_imagenet", tmp_path, reference_splits=True)
    assert splits.val is splits.test and len(splits.train) == 6


def test_stream_loader_resumes_with_identical_batches(tmp_path):
    write_tiny_imagenet(tmp_path, ["a", "b", "c"], per_class=6)
    splits = build_dataset("tiny_imagenet", tmp_path)

    def loader() -> StreamLoader:
        return make_loaders(splits, 3, seed=7, num_workers=0).train

    reference = loader()
    expected = collect(reference) + collect(reference)
    assert len(reference) == 6 and sum(len(y) for _, y in expected[:6]) == 16
    interrupted = loader()
    seen = collect(interrupted, limit=4)
    resumed = loader()
    resumed.load_state_dict(roundtrip(interrupted.state_dict()))
    seen += collect(resumed) + collect(resumed)
    assert_same_batches(seen, expected)
    assert not torch.equal(torch.cat([y for _, y in expected[:6]]), torch.cat([y for _, y in expected[6:]]))


def test_stream_loader_with_workers(tmp_path):
    write_tiny_imagenet(tmp_path, ["a", "b"], per_class=4)
    splits = build_dataset("tiny_imagenet", tmp_path, reference_splits=True)
    batches = collect(make_loaders(splits, 4, num_workers=2).train)
    assert sorted(torch.cat([y for _, y in batches]).tolist()) == [0] * 4 + [1] * 4


def test_imagenet_folders_transforms_and_sharding(tmp_path):
    classes = ["n01440764", "n01443537"]
    write_image_folder(tmp_path / "train", classes, per_class=5, size=(40, 30))
    write_image_folder(tmp_path / "val", classes, per_class=2, size=(50, 60))
    splits = build_dataset("imagenet", tmp_path, val_fraction=0.2)
    assert splits.num_classes == 2 and splits.input_shape == (3, 224, 224)
    assert (len(splits.train), len(splits.val), len(splits.test)) == (8, 2, 4)
    loaders = make_loaders(splits, 4, num_workers=0, drop_last=True)
    x, y = next(iter(loaders.train))
    assert x.shape == (4, 3, 224, 224) and x.dtype == torch.float32
    assert len(loaders.train) == 2 and len(loaders.test) == 1
    # Validation images come through the eval pipeline (Resize 256 -> CenterCrop 224).
    image, label = splits.val.dataset[0]
    assert image.shape == (3, 224, 224) and image.dtype == torch.uint8
    assert _colour_labels(image[None]) == [label]
    with pytest.raises(RuntimeError, match="process group"):
        make_loaders(splits, 4, distributed=True)


@pytest.mark.parametrize(
    "make",
    [
        lambda split, rank: InMemoryLoader(split, 2, shuffle=True, seed=0, num_replicas=3, rank=rank),
        lambda split, rank: StreamLoader(
            StreamedSplit(TensorDataset(split.inputs, split.targets)),
            2,
            shuffle=True,
            seed=0,
            num_replicas=3,
            rank=rank,
        ),
    ],
    ids=["in_memory", "streamed"],
)
def test_loaders_shard_an_epoch_over_ranks(make):
    split = counter_split(10)
    shards = [make(split, rank) for rank in range(3)]
    seen = [torch.cat([y for _, y in shard]).tolist() for shard in shards]
    assert [len(s) for s in seen] == [4, 4, 4] and [len(shard) for shard in shards] == [2, 2, 2]
    assert set(sum(seen, [])) == set(range(10))  # two samples repeated to even out the ranks
    with pytest.raises(RuntimeError, match="process group"):
        make_loader(split, 8, distributed=True)

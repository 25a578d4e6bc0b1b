"""Higgs (OpenML task 361069, from the Grinsztajn et al. tabular benchmark): binary, tabular.

The table is found, in order, under the ``root`` argument, ``$TABULAR_DATA_DIR`` and
OpenML's default cache ``~/.cache/openml``. Each may be

* a CSV or parquet file, or
* an OpenML cache directory (what ``openml.config.set_root_cache_directory`` points at):
  ``org/openml/www/tasks/361069/task.xml`` names the dataset id and target column, and the
  table is ``org/openml/www/datasets/<id>/dataset_<id>.pq``.

The label column is, in order: the ``label_column`` option, the task's target feature,
a column named ``target``, the last column. Its two values are mapped to 0/1 in sorted
order. Rows are split 70 / 15 / 15 (train / val / test), stratified by label and seeded.
Features are used unscaled, as in the reference; ``standardize=True`` instead normalises
each feature with the training split's mean and standard deviation.

The reference drew its split with scikit-learn (``random_state=42``); ``reference_splits``
keeps the proportions but not those exact rows.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from ..locate import DatasetNotFoundError, not_found_message, search_bases
from ..registry import DatasetInfo, DatasetSource, PathLike, register_dataset
from ..splits import DataSplits, Normalize, TensorSplit, ValidationPolicy, stratified_indices

if TYPE_CHECKING:
    import pandas as pd

OPENML_TASK_ID = 361069
OPENML_DEFAULT_CACHE = "~/.cache/openml"
_OPENML_FILES = Path("org/openml/www")
_TABLE_SUFFIXES = (".csv", ".parquet", ".pq")


@dataclass(frozen=True)
class OpenMLTask:
    """What a cached ``task.xml`` says: the dataset id and its target column."""

    dataset_id: int
    target: str | None

    @classmethod
    def read(cls, path: Path) -> OpenMLTask:
        # Tags are namespaced (oml:...); match on the local name.
        fields = {element.tag.rsplit("}", 1)[-1]: element.text for element in ET.parse(path).iter()}
        dataset_id = fields["data_set_id"]
        if dataset_id is None:
            raise ValueError(f"{path}: data_set_id is empty")
        return cls(int(dataset_id), fields.get("target_feature"))


def _task_xml(cache_dir: Path) -> Path:
    return cache_dir / _OPENML_FILES / "tasks" / str(OPENML_TASK_ID) / "task.xml"


def _openml_table(task_xml: Path) -> Path | None:
    """The cached parquet table of the task's dataset, if present."""
    dataset_id = OpenMLTask.read(task_xml).dataset_id
    dataset_dir = task_xml.parents[2] / "datasets" / str(dataset_id)
    # Older openml-python versions named the file dataset.pq.
    for name in (f"dataset_{dataset_id}.pq", "dataset.pq"):
        if (dataset_dir / name).is_file():
            return dataset_dir / name
    return None


def _resolve(base: Path) -> Path | None:
    """The table file (or the task.xml leading to it) that ``base`` provides, if any."""
    if base.is_file():
        return base if base.suffix in _TABLE_SUFFIXES else None
    task_xml = _task_xml(base)
    if task_xml.is_file() and _openml_table(task_xml) is not None:
        return task_xml
    return None


def _read_table(location: Path) -> tuple[pd.DataFrame, str | None]:
    import pandas as pd  # lazy: 0.2 s of every run's start-up otherwise

    """The table at ``location`` and the label column its OpenML task names (if any)."""
    if location.name == "task.xml":
        return pd.read_parquet(_openml_table(location)), OpenMLTask.read(location).target
    if location.suffix == ".csv":
        return pd.read_csv(location), None
    return pd.read_parquet(location), None


def _label_column(table: pd.DataFrame, requested: str | None, task_target: str | None) -> str:
    for candidate in (requested, task_target):
        if candidate is not None:
            if candidate not in table.columns:
                raise ValueError(f"label column {candidate!r} not in the table's columns {list(table.columns)}")
            return candidate
    return "target" if "target" in table.columns else table.columns[-1]


def _numeric_features(table: pd.DataFrame) -> np.ndarray:
    from pandas.api.types import is_numeric_dtype  # pandas: only for the CSV source

    non_numeric = [column for column in table.columns if not is_numeric_dtype(table[column])]
    if non_numeric:
        raise ValueError(f"non-numeric feature columns {non_numeric}; is label_column right?")
    # A fresh writable array (pandas may hand out read-only views).
    return table.to_numpy(dtype=np.float32, copy=True)


def binary_targets(labels: pd.Series) -> np.ndarray:
    """float32 0/1 targets from a two-valued column (smaller value -> 0)."""
    values = np.sort(labels.unique())
    if len(values) != 2:
        raise ValueError(f"column {labels.name!r} is not binary: {len(values)} distinct values")
    return (labels.to_numpy() == values[1]).astype(np.float32)


def standardizer(features: torch.Tensor) -> Normalize:
    """Batch transform standardising each feature column with these rows' statistics."""
    std = features.std(dim=0)
    # A constant feature keeps its (zero) centred value instead of dividing by zero.
    std = torch.where(std > 0, std, torch.ones_like(std))
    return Normalize(tuple(features.mean(dim=0).tolist()), tuple(std.tolist()), scale=1.0)


@register_dataset("higgs")
class Higgs(DatasetSource):
    """Higgs: ~940k rows of 24 numeric features, binary target (one logit)."""

    default_val_fraction = 0.15
    # the benchmark's table (another CSV only changes the step count a launch warns with)
    info = DatasetInfo(input_shape=(24,), num_classes=1, train_samples=940_160)

    def train_split_size(self, policy: ValidationPolicy, *, test_fraction: float = 0.15, **options) -> int:
        """Validation and test are shares of all rows (stratified: this is within a few rows)."""
        n = self.info.train_samples
        return n - round(n * policy.fraction) - round(n * test_fraction)

    def locate(self, root: PathLike | None) -> Path:
        bases, notes = search_bases(root, "TABULAR_DATA_DIR")
        bases.append((Path(OPENML_DEFAULT_CACHE).expanduser(), "OpenML default cache"))
        for base, _ in bases:
            found = _resolve(base)
            if found is not None:
                return found
        expected = (
            f"a CSV/parquet file, or an OpenML cache directory holding {_task_xml(Path('<dir>'))} "
            "and the parquet table of the dataset it names"
        )
        how_to_get = (
            f"with network access, `pip install openml` and run "
            f"`openml.config.set_root_cache_directory(DIR); openml.tasks.get_task({OPENML_TASK_ID}, "
            "download_data=True)` then set $TABULAR_DATA_DIR=DIR; or pass a CSV/parquet "
            "export as data.root=FILE."
        )
        raise DatasetNotFoundError(not_found_message(self.name, bases, notes, expected, how_to_get))

    def load(
        self,
        location: Path | None,
        policy: ValidationPolicy,
        *,
        label_column: str | None = None,
        test_fraction: float = 0.15,
        standardize: bool = False,
    ) -> DataSplits:
        """``policy.fraction`` and ``test_fraction`` are shares of all rows."""
        assert location is not None  # locate() found the files: this source has a layout
        table, task_target = _read_table(location)
        label = _label_column(table, label_column, task_target)
        features = torch.from_numpy(_numeric_features(table.drop(columns=[label])))
        targets = torch.from_numpy(binary_targets(table[label]))
        val_idx, test_idx, train_idx = stratified_indices(targets, [policy.fraction, test_fraction], policy.seed)
        transform = standardizer(features[train_idx]) if standardize else None

        def split(indices: torch.Tensor) -> TensorSplit:
            return TensorSplit(features[indices], targets[indices], transform)

        return DataSplits(
            name=self.name,
            train=split(train_idx),
            val=split(val_idx),
            test=split(test_idx),
            num_classes=1,
            input_shape=(features.shape[1],),
            task="binary",
            location=location,
        )

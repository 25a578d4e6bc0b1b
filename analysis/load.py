"""Reading run records into pandas: one row per run, and the per-epoch / per-update metrics.

A run directory holds ``config.json`` (written at the start), ``metrics.jsonl`` and, once
the run has ended in any way, ``result.json`` (see `src.rundir.files`). Runs are found by
searching sweep directories recursively, so any launcher layout works. Every run's
``status`` is one of the states of `src.rundir.state` (the words `status` shows): a run that
finished (completed, diverged) has its result's; any other is in the state `classify`
finds it in now (running, starting, stale, failed, interrupted, damaged ...; ``detail``
says more), asked at each load, never cached. A run whose records the analysis cannot use
is ``damaged`` (unless a process holds it): a record that cannot be parsed, a config of
another schema, a result that cannot be used as what it says
(`src.rundir.files.unusable_result`: a completed run without its final test accuracy, a
format newer than this code) or whose metrics are damaged (NUL bytes, duplicated lines); the
``damage`` or ``error`` column says why. A damaged config.json is recovered from the copy in
result.json (the ``damage`` column says so). Nothing is dropped here, the analyses choose
what they use.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import warnings
from collections.abc import Iterable
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from src.rundir.files import CONFIG, FINISHED, METRICS, RESULT, STATUSES, atomic_write, metrics_damage, unusable_result
from src.rundir.identity import cell_identity, config_hash
from src.rundir.state import ACTIVE, classify

from . import columns as C
from .grid import variant_labels

CACHE_NAME = ".analysis_cache.parquet"
# Bump when the rows built by `read_run` change, so that old caches are rebuilt.
CACHE_VERSION = "5"
_FINGERPRINT_KEY = b"analysis.fingerprint"

# Present in every runs table, even one of unreadable or no records, so analyses need no guards.
_BASE_COLUMNS = [
    C.RUN_DIR,
    C.STATUS,
    C.SETUP,
    C.KIND,
    C.IDENTITY,
    C.CELL,
    C.RESULT_MTIME,
    C.MODEL,
    C.DATA,
    C.MODE,
    C.CRITERION,
    C.GROWTH,
    C.DENSITY,
    C.SEED,
]


def find_run_dirs(root: str | Path) -> list[Path]:
    """Every directory under ``root`` (itself included) holding a config.json or result.json.

    Hidden directories (.hydra, .submitit, caches) are skipped, and so is everything below a
    run directory: runs do not nest.
    """
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        if CONFIG in filenames or RESULT in filenames:
            found.append(Path(dirpath))
            dirnames.clear()
        else:
            dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
    return sorted(found)


def load_runs(*sweep_dirs: str | Path, cache: bool = True) -> pd.DataFrame:
    """One row per run found under ``sweep_dirs``.

    Columns: the flattened config (``model.name``, ``sparsity.density``, ``train.seed``, ...;
    lists as JSON text), the result (``status``, ``final.test_acc``, ``best_val.test_acc``,
    ``wall_time``, ``density`` = realised density, ``diverged.step``, ``error``, ...), and the
    derived ``run_dir``, ``setup``, ``kind``, ``identity``, ``cell``, ``variant`` (see
    `analysis.columns`). With ``cache``, each sweep directory's rows are kept in
    ``<sweep_dir>/.analysis_cache.parquet`` and rebuilt when any config.json or result.json
    appears, disappears or changes (modification time or size).
    """
    if not sweep_dirs:
        raise ValueError("load_runs: give at least one sweep directory")
    frames = []
    for root in sweep_dirs:
        root = Path(root).resolve()  # run_dir is absolute, whatever the working directory
        if not root.is_dir():
            raise FileNotFoundError(f"load_runs: {root} is not a directory")
        frames.append(_load_sweep(root, cache))
    runs = pd.concat(frames, ignore_index=True) if len(frames) > 1 else frames[0]
    # A run reachable from two of the given directories (nested sweeps) is one run.
    runs = runs.drop_duplicates(C.RUN_DIR, ignore_index=True)
    runs[C.VARIANT] = variant_labels(runs)
    runs = _with_states(runs)
    first = [C.RUN_DIR, C.STATUS, C.SETUP, C.KIND, C.VARIANT, C.CELL]
    return runs[first + [c for c in runs.columns if c not in first]]


def load_metrics(runs: pd.DataFrame | Iterable[str | Path], kind: str) -> pd.DataFrame:
    """The ``kind`` ("epoch" or "update") lines of the runs' metrics.jsonl, one row per line.

    ``runs`` is a runs table (its ``run_dir`` column is used) or run directories. Nested
    fields stay Python objects (``layer_density``, ``layers``, ``overlap``); join with the
    runs table on ``run_dir`` for the config. A line that cannot be parsed (the last line
    of a killed run can be cut short) is skipped with a warning.
    """
    run_dirs = runs[C.RUN_DIR] if isinstance(runs, pd.DataFrame) else runs
    rows = []
    for run_dir in run_dirs:
        path = Path(run_dir) / METRICS
        if not path.exists():
            continue
        for number, line in enumerate(path.read_text().splitlines(), 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except ValueError:
                warnings.warn(f"{path}:{number}: not valid JSON, skipped", stacklevel=2)
                continue
            if record.get("kind") == kind:
                rows.append({C.RUN_DIR: str(run_dir), **record})
    return pd.DataFrame(rows, columns=None if rows else [C.RUN_DIR, "kind", "epoch", "step"])


def read_run(run_dir: Path) -> dict:
    """The runs-table row of one run directory as its records say (``status``: a usable
    result's, ``damaged``, or None: no result, `_with_states` asks); a directory whose records
    cannot be made sense of is a row saying why (``error``), never an exception."""
    try:
        return _read_run(run_dir)
    except Exception as e:  # noqa: BLE001 (one bad run dir must not stop the loading of the others)
        return {C.RUN_DIR: str(run_dir), C.RESULT_MTIME: None, C.STATUS: None, "error": f"{type(e).__name__}: {e}"}


def _with_states(runs: pd.DataFrame) -> pd.DataFrame:
    """``status`` and ``detail`` of the runs without a finished result, from
    `src.rundir.state.classify` (the state `status` shows); records that cannot be used make a
    run ``damaged`` unless a process holds it. Asked at each load: it changes as runs start,
    beat and die without a record file changing."""
    status = runs[C.STATUS].copy()
    detail = pd.Series(None, index=runs.index, dtype=object)
    why = pd.Series(None, index=runs.index, dtype=object)  # what the analysis found wrong with the records
    for name in (C.DAMAGE, "error"):
        if name in runs:
            why = runs[name].where(runs[name].notna(), why)
    for i in runs.index[~runs[C.STATUS].isin([*FINISHED, C.DAMAGED])]:
        found = classify(Path(runs.at[i, C.RUN_DIR]))
        status[i], detail[i] = found.state, found.detail
        if pd.isna(runs.at[i, C.STATUS]) and pd.notna(why[i]) and found.state not in ACTIVE:
            status[i], detail[i] = C.DAMAGED, why[i]
    return runs.assign(**{C.STATUS: status, C.DETAIL: detail})


def _read_run(run_dir: Path) -> dict:
    row: dict = {C.RUN_DIR: str(run_dir), C.RESULT_MTIME: None}
    config, result, errors = None, None, []
    for name in (CONFIG, RESULT):
        path = run_dir / name
        if not os.path.lexists(path):  # (a broken link or a link loop is a record that cannot be read)
            continue
        try:
            content = json.loads(path.read_text())
        except (OSError, ValueError) as e:
            errors.append(f"{name}: {e}")
            continue
        if name == CONFIG:
            if _is_config(content):
                config = content
            else:
                errors.append(f"{name}: not a run config ({_what(content)})")
        elif isinstance(content, dict) and content.get("status") in STATUSES:
            result = content
            row[C.RESULT_MTIME] = path.stat().st_mtime
        else:
            row[C.DAMAGE] = f"{name}: not a run result ({type(content).__name__})"
    if config is None and result is not None and _is_config(result.get("config")):
        config = result["config"]
        errors = [e for e in errors if not e.startswith(CONFIG)]  # recovered: flagged, not lost
        row[C.DAMAGE] = f"{CONFIG} unreadable; config taken from {RESULT}"
    if config:
        flat = flatten(config)
        wrong = _wrong_types(flat)
        if wrong:  # kept out of the table's columns: one such value would turn a column into text
            errors.append(f"{CONFIG}: {wrong}")
            config = None
        else:
            row.update(flat)
            row.update(_derived(config))
    if result:
        row.update(_result_columns(result))
        if config:
            row.update(_schedule(config, result))
        # A result that cannot be what it says (a completed run without its final metric, a
        # newer format) is damaged, in every table: never a completed run left out of the statistics.
        damage = unusable_result(result) or metrics_damage(run_dir)
        if damage:
            row[C.STATUS], row[C.DAMAGE] = C.DAMAGED, damage
    if errors:
        row["error"] = "; ".join(errors)
        if result:  # a result the analyses cannot place: its config unreadable
            row[C.STATUS] = C.DAMAGED
    if result is None:
        row[C.STATUS] = None  # no result: its state now (`_with_states`)
    return row


def _is_config(content) -> bool:
    return isinstance(content, dict) and isinstance(content.get("sparsity"), dict) and "mode" in content["sparsity"]


# The fields every analysis groups or compares by, and the types they must have.
_TYPES = {
    C.MODE: (str,),
    C.MODEL: (str,),
    C.DATA: (str,),
    C.CRITERION: (str,),
    C.GROWTH: (str,),
    C.DENSITY: (int, float),
    C.SEED: (int,),
    C.UPDATE_FREQUENCY: (int,),
    "train.epochs": (int,),
}


def _wrong_types(flat: dict) -> str:
    """What is wrong with the types of the fields the analyses rely on ("" if nothing)."""
    wrong = [
        f"{name} is {flat[name]!r} ({' or '.join(t.__name__ for t in types)} expected)"
        for name, types in _TYPES.items()
        if name in flat and (not isinstance(flat[name], types) or isinstance(flat[name], bool))
    ]
    if flat.get(C.MODE) not in (None, "dense", "static", "dst"):
        wrong.append(f"{C.MODE} is {flat[C.MODE]!r} (dense, static or dst expected)")
    return "; ".join(wrong)


def _what(content) -> str:
    if isinstance(content, dict):
        return "no sparsity.mode"
    return type(content).__name__


def _schedule(config: dict, result: dict) -> dict:
    """Steps per epoch and the topology updates the run's schedule made in the steps it ran
    (every ``update_frequency`` steps up to ``end_fraction`` of training)."""
    steps, total = result.get("steps"), result.get("total_steps")
    epochs = config.get("train", {}).get("epochs")
    out = {C.STEPS_PER_EPOCH: total / epochs if total and epochs else None, C.TOPOLOGY_UPDATES: None}
    sparsity = config["sparsity"]
    if sparsity.get("mode") == "dst" and isinstance(steps, int) and total:
        last = min(steps, math.floor(sparsity.get("end_fraction", 1.0) * total))
        out[C.TOPOLOGY_UPDATES] = last // max(int(sparsity.get("update_frequency") or 1), 1)
    return out


def flatten(d: dict, prefix: str = "") -> dict:
    """Nested dicts to dotted keys; lists become JSON text (hashable, and one parquet type)."""
    out = {}
    for key, value in d.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flatten(value, f"{name}."))
        elif isinstance(value, (list, tuple)):
            out[name] = json.dumps(value)
        else:
            out[name] = value
    return out


def _derived(config: dict) -> dict:
    flat = flatten(config)
    identity = flatten(cell_identity(config))
    identity_json = json.dumps(identity, sort_keys=True)
    return {
        C.SETUP: f"{flat.get(C.MODEL)}/{flat.get(C.DATA)}",
        C.KIND: _kind(flat),
        C.IDENTITY: identity_json,
        C.CELL: config_hash(identity),
    }


def _kind(flat: dict) -> str | None:
    """dense, static, dst, or overlap_init: a DST run stopped before it trained (learning
    rate 0, a step limit) to compare the criteria's pruned sets at initialisation."""
    mode = flat.get(C.MODE)
    if mode == "dst" and flat.get("optim.lr") == 0 and flat.get("train.max_steps") is not None:
        return "overlap_init"
    return mode


def _result_columns(result: dict) -> dict:
    result = {k: v for k, v in result.items() if k != "config"}
    diverged = result.pop("diverged", None) or {}
    row = flatten({k: v for k, v in result.items() if k != "achieved_layer_density"})
    row["achieved_layer_density"] = json.dumps(result.get("achieved_layer_density"), sort_keys=True)
    row["diverged.step"] = diverged.get("step")
    row["diverged.reason"] = diverged.get("reason")
    return row


# ---------------------------------------------------------------------------- cache
def _load_sweep(root: Path, cache: bool) -> pd.DataFrame:
    run_dirs = find_run_dirs(root)
    fingerprint = _fingerprint(root, run_dirs)
    path = root / CACHE_NAME
    if cache:
        cached = _read_cache(path, fingerprint)
        if cached is not None:
            return cached
    runs = pd.DataFrame([read_run(d) for d in run_dirs])
    runs = runs.reindex(columns=[*runs.columns, *(c for c in _BASE_COLUMNS if c not in runs)])
    # Through Arrow either way, so that a fresh load and a cached one have the same dtypes.
    table = pa.Table.from_pandas(_arrow_safe(runs), preserve_index=False)
    if cache:
        _write_cache(path, table, fingerprint)
    return table.to_pandas()


def _fingerprint(root: Path, run_dirs: list[Path]) -> str:
    """Changes whenever a config.json, result.json or metrics.jsonl is added, removed or rewritten, and
    when the sweep directory moves (the rows hold absolute run directories)."""
    entries = [CACHE_VERSION, str(root)]
    for run_dir in run_dirs:
        for name in (CONFIG, RESULT, METRICS):
            try:
                st = (run_dir / name).stat()
                entries.append(f"{run_dir.relative_to(root)}/{name}:{st.st_mtime_ns}:{st.st_size}")
            except FileNotFoundError:
                pass
            except OSError as e:  # a link loop: its own entry, so that fixing it refreshes the cache
                entries.append(f"{run_dir.relative_to(root)}/{name}:{e.errno}")
    return hashlib.sha256("\n".join(entries).encode()).hexdigest()


def _read_cache(path: Path, fingerprint: str) -> pd.DataFrame | None:
    """The cached rows, or None when there is no cache, it is of other records, or it is
    damaged: its bytes do not match the checksum written beside them, or do not parse."""
    if not path.exists() or not _checksum_path(path).exists():  # none, or one from before checksums
        return None
    try:
        data = path.read_bytes()
        expected = _checksum_path(path).read_text().strip()
        if hashlib.sha256(data).hexdigest() != expected:
            raise ValueError("its content does not match its checksum")
        table = pq.read_table(pa.BufferReader(data))
    except Exception as e:  # noqa: BLE001 (any damage: rebuilt from the run records)
        warnings.warn(
            f"analysis cache {path} is damaged ({type(e).__name__}: {e}); rebuilt from the run records", stacklevel=4
        )
        return None
    if (table.schema.metadata or {}).get(_FINGERPRINT_KEY) != fingerprint.encode():
        return None
    return table.to_pandas()


def _checksum_path(path: Path) -> Path:
    return path.with_name(path.name + ".sha256")


def _write_cache(path: Path, table: pa.Table, fingerprint: str) -> None:
    """The parquet file, then the SHA-256 of its bytes beside it, each replaced atomically
    (a crash between the two leaves a mismatch: the cache is rebuilt)."""
    table = table.replace_schema_metadata({**(table.schema.metadata or {}), _FINGERPRINT_KEY: fingerprint.encode()})
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink)
    data = sink.getvalue().to_pybytes()
    try:  # (temporary files with unpredictable names, never written through a planted link)
        for target, content in ((path, data), (_checksum_path(path), hashlib.sha256(data).hexdigest().encode())):
            atomic_write(target, content, durable=False)
    except OSError as e:  # a read-only sweep directory still loads, just without a cache
        warnings.warn(f"could not write the analysis cache {path}: {e}", stacklevel=3)


def _arrow_safe(runs: pd.DataFrame) -> pd.DataFrame:
    """Columns whose values mix Python types (a field that changed type between code
    versions) become text, so that the table can be stored as parquet."""
    for name in runs.columns[runs.dtypes == object]:  # noqa: E721 (a dtype, not a type)
        values = runs[name].dropna()
        types = {type(v) for v in values if not (isinstance(v, float) and math.isnan(v))}
        if len(types) > 1:
            runs[name] = runs[name].map(lambda v: v if v is None or v != v else str(v))
    return runs

"""One home for a run directory: what identifies a run and names its directory, the files in
it and how they are written, its lock and heartbeat, and what state it is in.

    identity   which config fields count, their hash, the directory's name (and parsing it)
    files      the record files: atomic, link-refusing writes; result.json, metrics.jsonl
    lock       the run's lock (held by its runner) and the read-only probe
    heartbeat  heartbeat.json: where and how far the run is
    log        train.log: the run's output, teed
    state      the one classifier and status vocabulary, the skip decision, the exit-code rule

The planner, the launchers and packs, `status`, the trainer and the analysis all go through
this package; none of it imports torch or Hydra.
"""

from .files import (
    CHECKPOINT,
    CONFIG,
    FINISHED,
    HEARTBEAT,
    LOCK,
    LOG,
    METRICS,
    MODEL_FINAL,
    RESULT,
    RESULT_FORMAT,
    STATUSES,
    LinkRefused,
    RunRecorder,
    atomic_write,
    atomic_write_text,
    metrics_damage,
    open_in_directory,
    open_run_file,
    read_finished_result,
    read_metrics,
    read_result,
    recorded_config,
    recorded_configs,
    run_dir_link,
    unusable_result,
)
from .heartbeat import Heartbeat, read_heartbeat, unrecorded_failure, whereabouts
from .identity import (
    cell_hash,
    cell_identity,
    cell_of_name,
    cells_of_directories,
    config_hash,
    identity_hash,
    run_directory,
    run_identity,
    sweep_of,
)
from .lock import FREE, NO_FLOCK, RunLock, RunLocked, lock_probe
from .log import tee_output
from .state import (
    ACTIVE,
    STATES,
    RunDirConflict,
    RunState,
    claim_run_dir,
    classify,
    exit_code,
    finished_status,
    record_death,
    refused_link,
    run_dir_conflict,
)

__all__ = [
    "ACTIVE",
    "CHECKPOINT",
    "CONFIG",
    "FINISHED",
    "FREE",
    "HEARTBEAT",
    "LOCK",
    "LOG",
    "METRICS",
    "MODEL_FINAL",
    "NO_FLOCK",
    "RESULT_FORMAT",
    "RESULT",
    "STATES",
    "STATUSES",
    "Heartbeat",
    "LinkRefused",
    "RunDirConflict",
    "RunLock",
    "RunLocked",
    "RunRecorder",
    "RunState",
    "atomic_write",
    "atomic_write_text",
    "cell_hash",
    "cell_identity",
    "cell_of_name",
    "cells_of_directories",
    "claim_run_dir",
    "classify",
    "config_hash",
    "exit_code",
    "finished_status",
    "identity_hash",
    "lock_probe",
    "metrics_damage",
    "open_in_directory",
    "open_run_file",
    "read_finished_result",
    "read_heartbeat",
    "read_metrics",
    "read_result",
    "recorded_config",
    "recorded_configs",
    "refused_link",
    "run_dir_link",
    "unusable_result",
    "record_death",
    "run_dir_conflict",
    "run_directory",
    "run_identity",
    "sweep_of",
    "tee_output",
    "unrecorded_failure",
    "whereabouts",
]

"""Tracking: one schema for every run, in MLflow.

The engine talks to a :class:`Tracker` only; :func:`start_run` picks the implementation. This module
is import-light (no mlflow at import time): mlflow loads inside the MLflow tracker.

Contract used by the steps (train, evaluate, bench):

    tracker = start_run("train", config=cfg, run_dir=out, parent_run_id=None, require=False)
    tracker.log_params({...}); tracker.set_tags({...})
    tracker.log_metrics({"loss": 0.7, "lr": 1e-3}, step=12)      # buffered, never blocks training
    tracker.log_train_result(result, run_dir)                    # result.json: summary figures, artifacts
    tracker.log_eval_result(eval_result, eval_dir)               # eval.json
    tracker.log_model(model, input_example=batch)                # loadable back
    tracker.log_artifact(path)                                   # any other file
    tracker.log_dataset(data_dir)                                # the prepared dataset as a run input
    tracker.close("FINISHED" | "FAILED" | "KILLED")

    with tracked(tracker): ...          # closes FINISHED / FAILED / KILLED (SIGTERM -> Terminated)
    close_running_runs(tag, value)      # pipeline exit handlers: runs of SIGKILLed steps -> FAILED

Public names: :func:`start_run`, :class:`Tracker`, :class:`NullTracker`, :data:`Status`,
:func:`tracked`, :class:`Terminated`, :func:`close_running_runs`; and, loaded on first use (they
need mlflow), ``MlflowTracker``, ``TrackingUnavailable``, ``tracking_uri``, ``experiment_name``.

The package's modules, one job each: ``tracker`` (the MLflow run: creation, what it logs),
``writer`` (the writer thread, sending, HTTP defaults, transient errors), ``spool`` (the on-disk
queue), ``lifecycle`` (SIGTERM, exit, closing runs), ``model`` (model export), ``schema`` (tag and
metric names), ``queries`` (MLflow reads), ``server`` (a local MLflow server).
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path
from typing import Any, Protocol

from ampflow.tracking.lifecycle import Status, Terminated, close_running_runs, tracked

__all__ = [
    "NullTracker",
    "Status",
    "Terminated",
    "Tracker",
    "close_running_runs",
    "start_run",
    "tracked",
]

# MLflow's set-up of a fresh SQLite store logs at INFO ("Creating initial MLflow database tables...",
# "Updating database tables", alembic's "Context impl SQLiteImpl." / "Will assume non-transactional
# DDL." and its migration steps): noise in ampflow's output on every first run. Warnings and errors
# still show. Every module that opens a store (tracker, queries, sweeps, lifecycle, model; register
# and sync through them) imports this package first.
STORE_LOGGERS = ("alembic", "mlflow.store.db.utils", "mlflow.store.db_migrations")


def quiet_store_logs() -> None:
    """Raise :data:`STORE_LOGGERS` to WARNING (those set lower or not at all), unless
    ``MLFLOW_LOGGING_LEVEL`` asks for DEBUG or INFO. Needs no mlflow; idempotent."""
    if os.environ.get("MLFLOW_LOGGING_LEVEL", "").strip().upper() in ("DEBUG", "INFO"):
        return
    for name in STORE_LOGGERS:
        logger = logging.getLogger(name)
        if logger.level < logging.WARNING:  # NOTSET (0) included: MLflow's own "mlflow" logger is INFO
            logger.setLevel(logging.WARNING)


quiet_store_logs()

# loaded on first use, from ampflow.tracking.tracker: importing this package must not import mlflow
_LAZY = {"MlflowTracker", "TrackingUnavailable", "tracking_uri", "experiment_name"}


class Tracker(Protocol):
    """What the engine and the steps may call on a run (see the module docstring)."""

    run_id: str | None

    def log_params(self, params: dict[str, Any]) -> None: ...
    def set_tags(self, tags: dict[str, str]) -> None: ...
    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None: ...
    def log_train_result(self, result: dict[str, Any], run_dir: str | Path) -> None: ...
    def log_eval_result(self, result: dict[str, Any], out_dir: str | Path) -> None: ...
    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None: ...
    def where(self) -> str | None: ...
    def log_model(self, model: Any, *, input_example: Any = None, name: str = "model") -> None: ...
    def log_dataset(self, data_dir: str | Path, context: str = "train") -> None: ...
    def close(self, status: Status = "FINISHED") -> None: ...


class NullTracker:
    """Tracks nothing: ranks other than 0, and runs with tracking switched off."""

    run_id: str | None = None

    def log_params(self, params: dict[str, Any]) -> None:
        pass

    def set_tags(self, tags: dict[str, str]) -> None:
        pass

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        pass

    def log_train_result(self, result: dict[str, Any], run_dir: str | Path) -> None:
        pass

    def log_eval_result(self, result: dict[str, Any], out_dir: str | Path) -> None:
        pass

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        pass

    def log_model(self, model: Any, *, input_example: Any = None, name: str = "model") -> None:
        pass

    def where(self) -> str | None:
        return None

    def log_dataset(self, data_dir: str | Path, context: str = "train") -> None:
        pass

    def close(self, status: Status = "FINISHED") -> None:
        pass

    def __enter__(self) -> NullTracker:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close("FAILED" if exc[0] else "FINISHED")


def start_run(
    kind: str,
    *,
    config: Any = None,
    run_dir: str | Path | None = None,
    parent_run_id: str | None = None,
    require: bool = False,
    rank: int = 0,
    tags: dict[str, str] | None = None,
    attach_to: str | Path | None = None,
    resume: bool = False,
) -> Tracker:
    """Open a tracked run of ``kind`` (train, evaluate, sweep). Rank != 0 gets a NullTracker.

    The store is ``MLFLOW_TRACKING_URI`` when set, else ``sqlite:///./mlruns.db``; the experiment is
    ``ampflow/<recipe>`` unless ``AMPFLOW_EXPERIMENT`` names one. ``parent_run_id`` makes this run a
    child of a sweep run created by another process. ``attach_to`` (a train run directory) makes
    this run continue that directory's MLflow run instead of creating one; ``evaluate`` does so by
    itself when its output directory lies inside the train run directory. ``resume`` (a train
    run continuing from its checkpoint) continues the MLflow run its directory records, so one
    training is one run however often it was stopped. ``AMPFLOW_TRACKING=off`` switches tracking off.
    With ``require=True`` an unreachable server raises
    :class:`TrackingUnavailable` here, before any training.
    """
    import os

    off = os.environ.get("AMPFLOW_TRACKING", "").strip().lower() in {"off", "0", "false", "no"}
    # a multi-node training: rank 0 hands its run id to every rank (a collective, so the condition is
    # the same environment on every rank), and each other node logs its system metrics there
    share = kind == "train" and not off and multi_node()
    if rank != 0 or off:
        return _node_metrics(_share_run_id(None)) if share else NullTracker()
    tracker: Tracker | None = None
    try:
        tracker = _open_run(kind, config, run_dir, parent_run_id, require, tags, attach_to, resume)
    finally:
        if share:  # also when opening failed: the other ranks wait for this
            _share_run_id(getattr(tracker, "run_id", None))
    return tracker


def multi_node() -> bool:
    """Whether this process is one of a job spanning several nodes (torchrun's WORLD_SIZE exceeds
    LOCAL_WORLD_SIZE; both are set in every process torchrun starts)."""
    import os

    try:
        return int(os.environ.get("WORLD_SIZE", "1")) > int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    except ValueError:
        return False


def _share_run_id(run_id: str | None) -> str | None:
    from ampflow.engine import parallel

    return parallel.broadcast_object(run_id)


def _node_metrics(run_id: str | None) -> Tracker:
    """The first process of a node other than rank 0's: its system metrics on rank 0's run."""
    import os

    try:
        from ampflow.tracking.tracker import NodeSystemMetrics, system_metrics_enabled
    except ImportError:  # no mlflow on this node: nothing to log with
        return NullTracker()

    if run_id and os.environ.get("LOCAL_RANK", "0") == "0" and system_metrics_enabled():
        return _WithNodeMetrics(NodeSystemMetrics(run_id))
    return NullTracker()


class _WithNodeMetrics(NullTracker):
    def __init__(self, node: Any) -> None:
        self.node = node

    def close(self, status: Status = "FINISHED") -> None:
        self.node.close(status)


def _open_run(
    kind: str,
    config: Any,
    run_dir: str | Path | None,
    parent_run_id: str | None,
    require: bool,
    tags: dict[str, str] | None,
    attach_to: str | Path | None,
    resume: bool,
) -> Tracker:
    try:
        from ampflow.tracking.tracker import MlflowTracker
    except ImportError as exc:  # the tracking extra is not installed
        if require:
            raise RuntimeError(f"--require-tracking: mlflow is not installed ({exc})") from None
        return NullTracker()
    from ampflow.tracking.writer import TrackingRefused

    try:
        return MlflowTracker(
            kind,
            config=config,
            run_dir=run_dir,
            parent_run_id=parent_run_id,
            require=require,
            tags=tags,
            attach_to=attach_to,
            resume=resume,
        )
    except TrackingRefused as exc:
        if require:
            raise  # a ConfigError: exit 2, before any training
        # a refusal is not an outage: say why once, train untracked, spool nothing that cannot replay
        print(f"ampflow tracking: {exc}; this run is not tracked", file=sys.stderr, flush=True)
        return NullTracker()


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        from ampflow.tracking import tracker

        return getattr(tracker, name)
    raise AttributeError(name)

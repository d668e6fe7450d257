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
    tracker.close("FINISHED" | "FAILED" | "KILLED")
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal, Protocol

Status = Literal["FINISHED", "FAILED", "KILLED"]


class Tracker(Protocol):
    run_id: str | None

    def log_params(self, params: dict[str, Any]) -> None: ...
    def set_tags(self, tags: dict[str, str]) -> None: ...
    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None: ...
    def log_train_result(self, result: dict[str, Any], run_dir: str | Path) -> None: ...
    def log_eval_result(self, result: dict[str, Any], out_dir: str | Path) -> None: ...
    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None: ...
    def log_model(self, model: Any, *, input_example: Any = None, name: str = "model") -> None: ...
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
) -> Tracker:
    """Open a tracked run of ``kind`` (train, evaluate, sweep). Rank != 0 gets a NullTracker.

    Until the MLflow tracker lands this returns a NullTracker for every call.
    """
    return NullTracker()

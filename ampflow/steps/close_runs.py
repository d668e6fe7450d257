"""``ampflow close-runs``: mark FAILED the MLflow runs a killed step left RUNNING.

    ampflow close-runs --tag ampflow.airflow_run_id=manual__2026-11-23T10:00:00+00:00 --run-root /work/r
    ampflow close-runs --tag ampflow.pipeline_run_id=5f0c2d1e --tracking-uri http://mlflow:5000

A step killed by SIGKILL (the OOM killer, a lost node or pod) cannot close its own run. A pipeline's
clean-up task runs this step: it closes every RUNNING run tagged ``KEY=VALUE`` and every RUNNING run
recorded under ``--run-root`` (each run directory's ``tracking/state.json``), through
:func:`ampflow.tracking.close_running_runs`. Without a tracking server (``--tracking-uri``, else
``MLFLOW_TRACKING_URI``) there is nothing to check and it exits 0. Prints the ids it closed.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from ampflow.config import ConfigError

HELP = "mark FAILED the MLflow runs of a pipeline run that a killed step left RUNNING"


def add_arguments(p: Any) -> None:
    p.add_argument("--tag", required=True, help="KEY=VALUE: the tag the pipeline run's MLflow runs carry")
    p.add_argument(
        "--run-root",
        default=None,
        help="also close the runs recorded in run directories under this folder (tracking/state.json)",
    )
    p.add_argument(
        "--tracking-uri", default=None, help="the MLflow server (default: MLFLOW_TRACKING_URI; none: skip)"
    )


def cli(args: Any) -> int:
    result = run(args.tag, run_root=args.run_root, uri=args.tracking_uri)
    if result["skipped"]:
        print(f"ampflow close-runs: {result['skipped']}; nothing checked")
        return 0
    for run_id in result["closed"]:
        print(f"marked MLflow run {run_id} FAILED (left RUNNING by a killed step)")
    print(f"closed {len(result['closed'])} run(s); {len(result['recorded'])} recorded under --run-root")
    return 0


def recorded_run_ids(root: str | Path) -> list[str]:
    """The MLflow run ids the steps recorded under ``root`` (every ``tracking/state.json``)."""
    from ampflow.tracking.spool import FOLDER, STATE

    ids = set()
    for state in Path(root).glob(f"**/{FOLDER}/{STATE}"):
        try:
            run_id = json.loads(state.read_text()).get("run_id")
        except (OSError, ValueError, AttributeError):
            continue
        if run_id:
            ids.add(str(run_id))
    return sorted(ids)


def run(tag: str, *, run_root: str | Path | None = None, uri: str | None = None) -> dict[str, Any]:
    """Close the RUNNING runs tagged ``tag`` (``KEY=VALUE``) or recorded under ``run_root``.

    Returns ``{"closed": [...], "recorded": [...], "skipped": reason or None}``.
    """
    key, sep, value = tag.partition("=")
    if not sep or not key or not value:
        raise ConfigError(f"--tag expects KEY=VALUE, got {tag!r}")
    recorded = recorded_run_ids(run_root) if run_root else []
    target = uri or os.environ.get("MLFLOW_TRACKING_URI", "").strip()
    if not target:
        return {"closed": [], "recorded": recorded, "skipped": "no tracking server (MLFLOW_TRACKING_URI)"}
    from ampflow.tracking import close_running_runs

    closed = close_running_runs(key, value, status="FAILED", uri=target, run_ids=recorded)
    return {"closed": closed, "recorded": recorded, "skipped": None}

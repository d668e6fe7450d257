"""KFP exit-handler component: when a pipeline run fails, mark its MLflow runs still RUNNING as FAILED.

    from components.mark_failed import mark_failed
    exit_task = mark_failed(pipeline_run_id=dsl.PIPELINE_JOB_ID_PLACEHOLDER)
    with dsl.ExitHandler(exit_task): ...

A step killed from outside (OOM kill, evicted pod, deadline) cannot close its own MLflow run; this task
runs after the pipeline body whatever happened and closes what the body left open. Every component
tags the runs its step starts with ``ampflow.integrations.kfp.PIPELINE_RUN_TAG`` through MLflow's
``MLFLOW_RUN_CONTEXT``.
"""

# No `from __future__ import annotations` here: KFP reads the annotations as types.
from kfp import dsl

from components import TRAINING_IMAGE


@dsl.component(base_image=TRAINING_IMAGE, install_kfp_package=False)
def mark_failed(pipeline_run_id: str, status: dsl.PipelineTaskFinalStatus) -> int:
    """Return how many runs were marked FAILED (0 when the pipeline body succeeded)."""
    import os

    print(
        f"pipeline body finished {status.state}; failed task: {status.pipeline_task_name or '-'}"
        f" {status.error_message or ''}",
        flush=True,
    )
    if status.state == "SUCCEEDED":
        return 0
    if not os.environ.get("MLFLOW_TRACKING_URI"):
        print("MLFLOW_TRACKING_URI is not set: no MLflow runs to close", flush=True)
        return 0

    from ampflow.integrations.kfp import PIPELINE_RUN_TAG
    from ampflow.tracking import close_running_runs

    closed = close_running_runs(PIPELINE_RUN_TAG, pipeline_run_id, status="FAILED")
    for run_id in closed:
        print(f"marked MLflow run {run_id} FAILED", flush=True)
    return len(closed)

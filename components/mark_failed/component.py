"""KFP exit-handler component: when a pipeline run fails, mark its MLflow runs still RUNNING as FAILED.

    from components.mark_failed import mark_failed
    exit_task = mark_failed(pipeline_run_id=dsl.PIPELINE_JOB_ID_PLACEHOLDER)
    with dsl.ExitHandler(exit_task): ...

A step killed from outside (OOM kill, evicted pod, deadline) cannot close its own MLflow run; this task
runs after the pipeline body whatever happened and closes what the body left open. Every component
tags the runs its step starts with ``ampflow.pipeline_run_id`` through MLflow's ``MLFLOW_RUN_CONTEXT``.
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

    from mlflow.entities import ViewType
    from mlflow.tracking import MlflowClient

    client = MlflowClient()
    experiment_ids = [e.experiment_id for e in client.search_experiments(view_type=ViewType.ACTIVE_ONLY)]
    if not experiment_ids:
        return 0
    # the run id comes from KFP, never from user input; quote it anyway for the filter grammar
    tag_value = pipeline_run_id.replace("'", "")
    query = f"tags.`ampflow.pipeline_run_id` = '{tag_value}' and attributes.status = 'RUNNING'"
    closed = 0
    for run in client.search_runs(experiment_ids, filter_string=query, max_results=1000):
        client.set_terminated(run.info.run_id, status="FAILED")
        print(f"marked MLflow run {run.info.run_id} ({run.info.run_name}) FAILED", flush=True)
        closed += 1
    return closed

"""KFP component: ``ampflow launch``: train on several nodes/GPUs as a Kubeflow TrainJob (or PyTorchJob) and watch it.

    from components.train_distributed import train_distributed
    train_distributed(recipe="tweets-minilm", data=prep_task.outputs["data"], nodes=2, gpus_per_node=8,
                      image="ghcr.io/ampflow/ampflow-train:0.1.0-cuda12.8", strategy="fsdp",
                      cache_pvc="ampflow-cache", cache_dir="/mnt/ampflow-cache")

The task's pod only stages, submits and watches; training runs in the job's pods. They cannot see this
pod's artifacts, so the dataset is staged on the shared PVC (`cache_pvc`, ReadWriteMany, mounted at
`cache_dir` here and in every job pod), the job writes its run directory there, and the run directory is
copied back into the `model` artifact when the job succeeded. The pipeline's service account needs RBAC
to create TrainJobs (or PyTorchJobs).
"""

# No `from __future__ import annotations` here: KFP reads the annotations as types.
from typing import List, Optional  # noqa: UP035 - KFP reads these annotations

from kfp import dsl
from kfp.dsl import Dataset, Input, Model, Output

from components import TRAINING_IMAGE


@dsl.component(base_image=TRAINING_IMAGE, install_kfp_package=False)
def train_distributed(
    recipe: str,
    data: Input[Dataset],
    model: Output[Model],
    image: str,
    cache_pvc: str,
    cache_dir: str,
    nodes: int = 1,
    gpus_per_node: int = 1,
    precision: str = "bf16-mixed",
    compile: bool = False,
    strategy: str = "ddp",
    settings: Optional[List[str]] = None,  # noqa: UP006, UP045
    name: str = "",
    name_suffix: str = "",
    api: str = "trainjob",
    namespace: str = "",
    queue: str = "",
    priority_class: str = "",
    workload_priority: str = "",
    queue_timeout: float = 0.0,
    run_deadline: float = 0.0,
    mlflow_secret: str = "",
    node_selector: Optional[dict] = None,  # noqa: UP045
    tolerations: Optional[list] = None,  # noqa: UP045
    dry_run: bool = False,
    pipeline_run_id: str = "",
) -> str:
    """Launch `ampflow train --strategy ddp|fsdp` as a TrainJob (or a PyTorchJob, `api="pytorchjob"`).

    name: the job name ("" = derived from the pipeline run, so that a retried task reattaches to its
    job instead of submitting another); name_suffix: appended to the derived name, so that the jobs of
    one run differ (the benchmark's configuration id). node_selector ({label: value}) and tolerations (Kubernetes
    toleration objects) apply to the job's pods. queue: Kueue LocalQueue; priority_class: the pods'
    PriorityClass (PyTorchJob); workload_priority: Kueue WorkloadPriorityClass ("" = none of them).
    queue_timeout / run_deadline: seconds the job may wait to start / run once started (0 = no limit /
    the active deadline + 300 s). Returns the job name. A Failed job or a deadline fails the task (the
    launcher's exit code).
    """
    import json
    import os
    import shutil

    from ampflow.config import config_id
    from ampflow.integrations.kfp import run_step

    job_name = name or "-".join(filter(None, ("ampflow", recipe, pipeline_run_id or "run", name_suffix)))
    staging = os.path.join(cache_dir, "pipelines", pipeline_run_id or "run", job_name)
    pod_data, pod_out = os.path.join(staging, "data"), os.path.join(staging, "run")
    if not dry_run:
        if not os.path.isdir(cache_dir):
            raise RuntimeError(f"cache_dir {cache_dir} is not mounted: the job's pods read the data from it")
        shutil.copytree(data.path, pod_data, dirs_exist_ok=True)

    launch = dict(
        nodes=nodes, gpus_per_node=gpus_per_node, image=image, name=job_name, api=api, namespace=namespace,
        volume=[f"{cache_pvc}:{cache_dir}"], mlflow_secret=mlflow_secret,
        node_selector=[f"{k}={v}" for k, v in sorted((node_selector or {}).items())],
        # Kubernetes toleration objects pass through as JSON, exactly as the pipeline parameter gives them
        tolerations=[json.dumps(t, sort_keys=True) for t in tolerations or []], dry_run=dry_run,
        queue=queue or None, priority_class=priority_class or None, workload_priority=workload_priority or None,
        queue_timeout=queue_timeout or None, run_deadline=run_deadline or None,
    )  # fmt: skip
    run_step(
        "train",
        distributed=True,
        launch=launch,
        recipe=recipe,
        data=pod_data,
        out=pod_out,
        precision=precision,
        strategy=strategy,
        compile=compile,
        settings=settings,
        pipeline_run_id=pipeline_run_id,
    )
    if not dry_run:
        shutil.copytree(pod_out, model.path, dirs_exist_ok=True)
    model.metadata.update(
        precision=precision,
        compile=compile,
        strategy=strategy,
        config_id=config_id(precision, compile, strategy),
        world_size=nodes * gpus_per_node,
    )
    return job_name

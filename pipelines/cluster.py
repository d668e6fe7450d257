"""Cluster settings applied to pipeline tasks from pipeline parameters.

kfp.local ignores every setting here (resources, node selector, tolerations, secrets, volumes);
tests/test_pipelines_compile.py checks them in the compiled YAML instead. Node selector and
tolerations go through the ``*_json`` variants of kfp.kubernetes because only those accept a
pipeline parameter (``add_node_selector`` and ``add_toleration`` take compile-time strings).
"""

from __future__ import annotations

from typing import Any

from kfp import kubernetes
from kfp.dsl import PipelineTask
from kfp.dsl.pipeline_channel import PipelineChannel

from components import CACHE_MOUNT

# The MLflow Secret's keys are the environment variables' names, the same Secret that `ampflow launch
# --mlflow-secret` hands to PyTorchJob pods. The tracking URI must be there; credentials are optional
# (a server without authentication). Nothing of the Secret is written into the compiled pipeline.
MLFLOW_REQUIRED_KEYS = ("MLFLOW_TRACKING_URI",)
MLFLOW_OPTIONAL_KEYS = ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_TOKEN")

# A retried train step on a preempted or OOM-killed node; bad input (exit 2) fails again quickly.
TRAIN_RETRIES = 2
TRAIN_BACKOFF = "60s"

# A pipeline parameter's default cannot name a task placeholder; these are the tolerations of the
# usual GPU node taint.
GPU_TOLERATIONS = [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]


def on_image(task: PipelineTask, image: Any) -> PipelineTask:
    return task.set_container_image(image)


def with_accelerator(
    task: PipelineTask,
    *,
    accelerator_type: Any,
    accelerator_count: Any,
    cpu_request: Any,
    cpu_limit: Any,
    memory_request: Any,
    memory_limit: Any,
    node_selector: Any,
    tolerations: Any,
) -> PipelineTask:
    """GPU type and count, CPU and memory, node selector and tolerations, all from parameters."""
    # kfp 2.17's resource setters do not register their channels with the task, so a task inside a
    # control-flow group (ExitHandler, ParallelFor, If) would reference parameters its group never
    # receives: kfp.local fails on it, and so would the cluster
    _register(task, accelerator_type, accelerator_count, cpu_request, cpu_limit, memory_request, memory_limit)
    task.set_accelerator_type(accelerator_type)
    task.set_accelerator_limit(accelerator_count)
    task.set_cpu_request(cpu_request).set_cpu_limit(cpu_limit)
    task.set_memory_request(memory_request).set_memory_limit(memory_limit)
    kubernetes.add_node_selector_json(task, node_selector)
    kubernetes.add_toleration_json(task, tolerations)
    return task


def with_resources(
    task: PipelineTask, *, cpu_request: Any, memory_request: Any, memory_limit: Any
) -> PipelineTask:
    """CPU and memory from parameters, no accelerator (prep)."""
    _register(task, cpu_request, memory_request, memory_limit)
    return task.set_cpu_request(cpu_request).set_memory_request(memory_request).set_memory_limit(memory_limit)


def _register(task: PipelineTask, *values: Any) -> None:
    task.register_pipeline_channels([v for v in values if isinstance(v, PipelineChannel)])


def with_small_resources(task: PipelineTask) -> PipelineTask:
    """Bookkeeping tasks (plan, compare, register, exit handler, launcher): a small CPU pod."""
    return task.set_cpu_request("500m").set_cpu_limit("2").set_memory_request("1Gi").set_memory_limit("4Gi")


def with_mlflow(task: PipelineTask, secret_name: Any) -> PipelineTask:
    kubernetes.use_secret_as_env(
        task, secret_name=secret_name, secret_key_to_env={k: k for k in MLFLOW_REQUIRED_KEYS}
    )
    return kubernetes.use_secret_as_env(
        task, secret_name=secret_name, secret_key_to_env={k: k for k in MLFLOW_OPTIONAL_KEYS}, optional=True
    )


def with_cache(task: PipelineTask, pvc_name: Any) -> PipelineTask:
    return kubernetes.mount_pvc(task, pvc_name=pvc_name, mount_path=CACHE_MOUNT)


def with_train_retries(
    task: PipelineTask, retries: int = TRAIN_RETRIES, backoff: str = TRAIN_BACKOFF
) -> PipelineTask:
    if retries <= 0:
        return task
    return task.set_retry(num_retries=retries, backoff_duration=backoff, backoff_factor=2.0)

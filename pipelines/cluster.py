"""The cluster side of both pipelines: the shared cluster parameters and how they reach each task.

:data:`CLUSTER_PARAMETERS` is the one definition of the parameters that place a pipeline on a cluster
(image, GPU type, CPU and memory, node selector, tolerations, MLflow Secret, cache PVC).
:func:`cluster_parameters` appends them to a pipeline function's signature, so that the benchmark, the
retrain pipeline and retrain's evaluate-and-promote sub-pipeline all take them without restating
them, and hands them to the function as one :class:`Cluster`, whose methods apply them to a task.

kfp.local ignores every setting here (resources, node selector, tolerations, secrets, volumes);
tests/test_pipelines_compile.py checks them in the compiled YAML instead. Node selector and
tolerations go through the ``*_json`` variants of kfp.kubernetes because only those accept a
pipeline parameter (``add_node_selector`` and ``add_toleration`` take compile-time strings).
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
from collections.abc import Callable
from typing import Any

from kfp import kubernetes
from kfp.dsl import PipelineTask
from kfp.dsl.pipeline_channel import PipelineChannel

from components import CACHE_MOUNT, TRAINING_IMAGE

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

# name -> (type KFP reads, default). The GPU count is not here: the benchmark takes
# `accelerator_count`, retrain derives it from `gpus_per_node`.
CLUSTER_PARAMETERS: dict[str, tuple[type, Any]] = {
    "image": (str, TRAINING_IMAGE),
    "accelerator_type": (str, "nvidia.com/gpu"),
    "cpu_request": (str, "4"),
    "cpu_limit": (str, "8"),
    "memory_request": (str, "16Gi"),
    "memory_limit": (str, "32Gi"),
    "node_selector": (dict, {}),
    "tolerations": (list, GPU_TOLERATIONS),
    "mlflow_secret": (str, "ampflow-mlflow"),
    "cache_pvc": (str, "ampflow-cache"),
}


@dataclasses.dataclass(frozen=True)
class Cluster:
    """A pipeline's cluster parameters (pipeline channels at compile time) and the task settings they make."""

    image: Any
    accelerator_type: Any
    cpu_request: Any
    cpu_limit: Any
    memory_request: Any
    memory_limit: Any
    node_selector: Any
    tolerations: Any
    mlflow_secret: Any
    cache_pvc: Any

    def parameters(self) -> dict[str, Any]:
        """The parameters by name, to pass on to a sub-pipeline (no copy: they are channels)."""
        return {name: getattr(self, name) for name in CLUSTER_PARAMETERS}

    def gpu(self, task: PipelineTask, count: Any, *, cache: bool = False) -> PipelineTask:
        """A step that trains or evaluates: `count` accelerators, CPU, memory, placement, MLflow."""
        with_accelerator(
            on_image(task, self.image),
            accelerator_type=self.accelerator_type,
            accelerator_count=count,
            cpu_request=self.cpu_request,
            cpu_limit=self.cpu_limit,
            memory_request=self.memory_request,
            memory_limit=self.memory_limit,
            node_selector=self.node_selector,
            tolerations=self.tolerations,
        )
        with_mlflow(task, self.mlflow_secret)
        return with_cache(task, self.cache_pvc) if cache else task

    def cpu(self, task: PipelineTask) -> PipelineTask:
        """Data preparation: CPU and memory from the parameters, the cache PVC, no accelerator."""
        with_resources(
            on_image(task, self.image),
            cpu_request=self.cpu_request,
            memory_request=self.memory_request,
            memory_limit=self.memory_limit,
        )
        return with_cache(task, self.cache_pvc)

    def small(self, task: PipelineTask, *, mlflow: bool = True, cache: bool = False) -> PipelineTask:
        """Bookkeeping (plan, compare, register, exit handler, launcher): a small CPU pod."""
        with_small_resources(on_image(task, self.image))
        if mlflow:
            with_mlflow(task, self.mlflow_secret)
        return with_cache(task, self.cache_pvc) if cache else task


def cluster_parameters(func: Callable[..., Any] | None = None, *, defaults: bool = True) -> Any:
    """Give a pipeline function the :data:`CLUSTER_PARAMETERS`; it receives them as ``cluster``.

    ``func`` declares ``cluster: Cluster = None`` as its last parameter. KFP reads a pipeline's inputs
    from its signature, so the returned function advertises ``func``'s other parameters followed by
    the cluster parameters, and builds the :class:`Cluster` from them when KFP calls it (positionally,
    in signature order). ``defaults=False`` (a sub-pipeline, whose caller passes every parameter)
    leaves the defaults out of the signature, so the compiled sub-pipeline does not repeat them.
    """
    if func is None:
        return functools.partial(cluster_parameters, defaults=defaults)
    own = [p for name, p in inspect.signature(func).parameters.items() if name != "cluster"]
    empty = inspect.Parameter.empty
    extra = [
        inspect.Parameter(
            name,
            inspect.Parameter.POSITIONAL_OR_KEYWORD,
            default=default if defaults else empty,
            annotation=kind,
        )
        for name, (kind, default) in CLUSTER_PARAMETERS.items()
    ]
    names = [p.name for p in own + extra]

    @functools.wraps(func)
    def pipeline(*args: Any, **kwargs: Any) -> Any:
        kwargs.update(zip(names, args, strict=False))
        settings = {n: kwargs.pop(n, default) for n, (_, default) in CLUSTER_PARAMETERS.items()}
        return func(**kwargs, cluster=Cluster(**settings))

    # raises ValueError when required cluster parameters would follow an optional one of func's
    pipeline.__signature__ = inspect.signature(func).replace(parameters=own + extra)  # type: ignore[attr-defined]
    return pipeline


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
    """Bookkeeping tasks: a small CPU pod (fixed sizes, not parameters)."""
    return task.set_cpu_request("500m").set_cpu_limit("2").set_memory_request("1Gi").set_memory_limit("4Gi")


def with_mlflow(task: PipelineTask, secret_name: Any) -> PipelineTask:
    """The MLflow Secret's keys as environment variables (the tracking URI required, credentials not)."""
    kubernetes.use_secret_as_env(
        task, secret_name=secret_name, secret_key_to_env={k: k for k in MLFLOW_REQUIRED_KEYS}
    )
    return kubernetes.use_secret_as_env(
        task, secret_name=secret_name, secret_key_to_env={k: k for k in MLFLOW_OPTIONAL_KEYS}, optional=True
    )


def with_cache(task: PipelineTask, pvc_name: Any) -> PipelineTask:
    """The data-cache PVC at :data:`components.CACHE_MOUNT`."""
    return kubernetes.mount_pvc(task, pvc_name=pvc_name, mount_path=CACHE_MOUNT)


def with_train_retries(
    task: PipelineTask, retries: int = TRAIN_RETRIES, backoff: str = TRAIN_BACKOFF
) -> PipelineTask:
    """Retry a training task ``retries`` times, the backoff doubling; 0 sets no policy (local runs)."""
    if retries <= 0:
        return task
    return task.set_retry(num_retries=retries, backoff_duration=backoff, backoff_factor=2.0)

"""Kubernetes mode: cluster settings, the PyTorchJob options of a distributed ``train``, and the
KubernetesPodOperator pod a task runs its step in.

Task pods run on the training image with the PVC at ``mount_path`` and MLflow credentials from a
Secret (``envFrom``, never inline); GPU steps get GPU limits, the node selector and tolerations. A
distributed ``train`` runs ``ampflow launch`` in a small CPU pod under the launcher's service account;
the PyTorchJob it submits gets the same placement, volume and Secret through ``launch``'s flags
(spelled by :mod:`ampflow.kube.manifests`). Pods are ``durable``: a retry reattaches to its pod, and
the job name depends on dag_id/run_id/task/map_index only, so a retried launcher reattaches to its job.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from airflow.providers.cncf.kubernetes.operators.pod import KubernetesPodOperator
from kubernetes.client import models as k8s

from ampflow.kube.manifests import GPU_RESOURCE, toleration_flag
from ampflow.kube.names import dns1035_name, max_job_name_len

# Cluster settings; the Variable ``ampflow_kubernetes`` (a JSON object) overrides any of them.
KUBE_DEFAULTS: dict[str, Any] = {
    "namespace": "ampflow",
    "image": "ghcr.io/ampflow/ampflow-train:0.1.0",
    "kubernetes_conn_id": "kubernetes_default",
    "in_cluster": None,
    "gpu_resource": GPU_RESOURCE,
    "gpus": 1,
    "cpu": "4",
    "memory": "16Gi",
    "cpu_step_cpu": "1",
    "cpu_step_memory": "4Gi",
    "node_selector": {"nvidia.com/gpu.present": "true"},
    "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
    # a Secret with MLFLOW_TRACKING_URI (and MLFLOW_TRACKING_USERNAME/PASSWORD or _TOKEN) keys
    "mlflow_secret": "ampflow-mlflow",
    # shared storage for data/, runs/ and reports, mounted in every pod at mount_path
    "pvc": "ampflow-data",
    "mount_path": "/mnt/ampflow",
    "service_account": "ampflow",
    # may create, get and delete PyTorchJobs and read pod logs in the namespace
    "launcher_service_account": "ampflow-launcher",
    "startup_timeout_seconds": 900,
}

# the pod operator's XCom sidecar reads /airflow/xcom/return.json; the worker cannot read the PVC
_COPY_RESULT = 'set -e; "$@"; cp "$0" /airflow/xcom/return.json'


def job_name(context: Any, nodes: int = 1) -> str:
    """A DNS-1035 name fixed by dag_id/run_id/task/map_index and nothing else (not the try): a retry
    submits the same name, and ``ampflow launch`` reattaches to the job that already exists."""
    ti = context["ti"]
    digest = hashlib.sha256(f"{ti.dag_id}/{ti.run_id}/{ti.task_id}/{ti.map_index}".encode()).hexdigest()[:10]
    return dns1035_name(f"{ti.dag_id}-{ti.task_id}-{digest}", max_job_name_len("pytorchjob", nodes))


def is_distributed(params: Any) -> bool:
    """More than one training process: ``nodes`` x ``gpus_per_node`` > 1."""
    return int(params.get("nodes") or 1) * int(params.get("gpus_per_node") or 1) > 1


def launch_options(context: Any, settings: dict[str, Any]) -> dict[str, Any]:
    """``ampflow launch``'s cluster options for a distributed ``train``: the job's name, topology and
    image, and the task pods' placement, storage and credentials."""
    params = context["params"]
    nodes = int(params.get("nodes") or 1)
    return {
        "name": job_name(context, nodes),
        "nodes": nodes,
        "gpus_per_node": int(params.get("gpus_per_node") or 1),
        "image": settings["image"],
        "namespace": settings["namespace"],
        "mlflow_secret": settings["mlflow_secret"],
        "service_account": settings["service_account"],
        "node_selector": [f"{k}={v}" for k, v in settings["node_selector"].items()] or None,
        "tolerations": [toleration_flag(t) for t in settings["tolerations"]] or None,
        "volume": f"{settings['pvc']}:{settings['mount_path']}",
        "cpu": settings["cpu"],
        "memory": settings["memory"],
    }


def _resources(settings: dict[str, Any], gpus: int | None) -> k8s.V1ResourceRequirements:
    if gpus is not None:
        limits = {settings["gpu_resource"]: str(gpus), "cpu": settings["cpu"], "memory": settings["memory"]}
    else:
        limits = {"cpu": settings["cpu_step_cpu"], "memory": settings["cpu_step_memory"]}
    return k8s.V1ResourceRequirements(limits=limits, requests=dict(limits))


def step_pod(
    context: Any,
    *,
    task_id: str,
    step: str,
    argv: list[str],
    settings: dict[str, Any],
    gpu: bool,
    launcher: bool = False,
    result: str | None = None,
    run_context: dict[str, str] | None = None,
) -> KubernetesPodOperator:
    """The pod that runs ``argv`` for task ``task_id`` of step ``step`` (its label).

    ``gpu``: GPU limits (``gpus_per_node`` param, else ``gpus``), node selector and tolerations.
    ``launcher``: ``argv`` is ``ampflow launch``; it runs in a CPU pod under
    ``launcher_service_account``, and the job it submits holds the GPUs.
    ``result``: a file the step writes, handed to XCom through the pod operator's sidecar.
    """
    gpu = gpu and not launcher
    cmds, arguments = argv[:1], argv[1:]
    if result and not launcher:
        # /bin/sh only sequences the step and the copy; the argv travels as positional arguments
        cmds, arguments = ["/bin/sh", "-c", _COPY_RESULT, result], argv
    gpus = int(context["params"].get("gpus_per_node") or settings["gpus"]) if gpu else None
    s = settings
    return KubernetesPodOperator(
        task_id=task_id,
        name=job_name(context),
        namespace=s["namespace"],
        image=s["image"],
        cmds=cmds,
        arguments=arguments,
        env_vars=[
            k8s.V1EnvVar(name="MLFLOW_RUN_CONTEXT", value=json.dumps(run_context or {})),
            k8s.V1EnvVar(name="PYTHONUNBUFFERED", value="1"),
        ],
        # credentials reach the pod from the Secret, never through the manifest or a log line
        env_from=[k8s.V1EnvFromSource(secret_ref=k8s.V1SecretEnvSource(name=s["mlflow_secret"]))],
        container_resources=_resources(s, gpus),
        node_selector=dict(s["node_selector"]) if gpu else {},
        tolerations=[k8s.V1Toleration(**t) for t in s["tolerations"]] if gpu else [],
        volumes=[
            k8s.V1Volume(
                name="ampflow-data",
                persistent_volume_claim=k8s.V1PersistentVolumeClaimVolumeSource(claim_name=s["pvc"]),
            )
        ],
        volume_mounts=[k8s.V1VolumeMount(name="ampflow-data", mount_path=s["mount_path"])],
        service_account_name=s["launcher_service_account"] if launcher else s["service_account"],
        security_context=k8s.V1PodSecurityContext(run_as_non_root=True),
        labels={"app.kubernetes.io/part-of": "ampflow", "ampflow/step": step},
        kubernetes_conn_id=s["kubernetes_conn_id"],
        in_cluster=s["in_cluster"],
        # a retry after a worker crash reattaches to the running pod (task state store, 3.3+)
        durable=True,
        on_finish_action="delete_succeeded_pod",
        get_logs=True,
        do_xcom_push=bool(result and not launcher),
        startup_timeout_seconds=int(s["startup_timeout_seconds"]),
        retries=0,
    )

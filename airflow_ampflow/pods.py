"""Kubernetes mode: cluster settings, the TrainJob/PyTorchJob options of a distributed ``train``, and
the pod a task runs its step in (the attributes of the operator, a deferrable KubernetesPodOperator).

Task pods run on the training image with the PVC at ``mount_path`` and MLflow credentials from a
Secret (``envFrom``, never inline); GPU steps get GPU limits, the node selector and tolerations. A
distributed ``train`` runs ``ampflow launch`` in a small CPU pod under the launcher's service account;
the PyTorchJob it submits gets the same placement, volume and Secret through ``launch``'s flags
(spelled by :mod:`ampflow.kube.manifests`). Pods are ``durable``: a retry reattaches to its pod, and
the job name depends on dag_id/run_id/task/map_index only, so a retried launcher reattaches to its job.
The params ``queue`` and ``priority_class`` reach both the task pods (Kueue's queue label,
``priorityClassName``) and the job (``launch --queue/--priority-class``).
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from kubernetes.client import models as k8s

from airflow_ampflow.connections import NOT_SECRET
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
# Kueue admits a pod (its plain-Pod integration) or a job by this label: the LocalQueue's name
KUEUE_QUEUE_LABEL = "kueue.x-k8s.io/queue-name"


def job_name(context: Any, nodes: int = 1) -> str:
    """A DNS-1035 name fixed by dag_id/run_id/task/map_index and nothing else (not the try): a retry
    submits the same name, and ``ampflow launch`` reattaches to the job that already exists."""
    ti = context["ti"]
    digest = hashlib.sha256(f"{ti.dag_id}/{ti.run_id}/{ti.task_id}/{ti.map_index}".encode()).hexdigest()[:10]
    # short enough for either API, so the name does not depend on the api param either
    limit = min(max_job_name_len("pytorchjob", nodes), max_job_name_len("trainjob", nodes))
    return dns1035_name(f"{ti.dag_id}-{ti.task_id}-{digest}", limit)


def is_distributed(params: Any) -> bool:
    """More than one training process: ``nodes`` x ``gpus_per_node`` > 1."""
    return int(params.get("nodes") or 1) * int(params.get("gpus_per_node") or 1) > 1


def launch_options(context: Any, settings: dict[str, Any], tracking_uri: str | None = None) -> dict[str, Any]:
    """``ampflow launch``'s cluster options for a distributed ``train``: the job's name, topology,
    image and API, its Kueue queue, priority class and deadlines (params ``api``, ``queue``,
    ``priority_class``, ``queue_timeout``, ``run_deadline``), and the task pods' placement, storage
    and credentials (``tracking_uri``: the MLflow Connection's server; credentials stay in the Secret)."""
    params = context["params"]
    nodes = int(params.get("nodes") or 1)
    return {
        **cluster_options(params),
        "tracking_uri": tracking_uri,
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


def cluster_options(params: Any) -> dict[str, Any]:
    """The launch options that come straight from the DAG's params (``None``: launch's default)."""
    return {
        "api": params.get("api") or None,
        "queue": params.get("queue") or None,
        "priority_class": params.get("priority_class") or None,
        "workload_priority": params.get("workload_priority") or None,
        "queue_timeout": params.get("queue_timeout"),
        "run_deadline": params.get("run_deadline"),
    }


def _resources(settings: dict[str, Any], gpus: int | None) -> k8s.V1ResourceRequirements:
    if gpus is not None:
        limits = {settings["gpu_resource"]: str(gpus), "cpu": settings["cpu"], "memory": settings["memory"]}
    else:
        limits = {"cpu": settings["cpu_step_cpu"], "memory": settings["cpu_step_memory"]}
    return k8s.V1ResourceRequirements(limits=limits, requests=dict(limits))


def pod_settings(
    context: Any,
    *,
    step: str,
    argv: list[str],
    settings: dict[str, Any],
    gpu: bool,
    launcher: bool = False,
    result: str | None = None,
    run_context: dict[str, str] | None = None,
    mlflow_env: dict[str, str] | None = None,
) -> dict[str, Any]:
    """The KubernetesPodOperator attributes of the pod that runs ``argv`` for step ``step``.

    ``gpu``: GPU limits (``gpus_per_node`` param, else ``gpus``), node selector and tolerations.
    ``launcher``: ``argv`` is ``ampflow launch``; it runs in a CPU pod under
    ``launcher_service_account``, and the job it submits holds the GPUs.
    ``result``: a file the step writes, handed to XCom through the pod operator's sidecar.
    ``mlflow_env``: the MLflow Connection's environment; only its non-secret part (the URI, TLS
    settings) goes into the manifest, credentials stay in the Secret ``mlflow_secret``.
    The ``queue`` param adds Kueue's queue label, ``priority_class`` the pod's priorityClassName.
    """
    gpu = gpu and not launcher
    cmds, arguments = argv[:1], argv[1:]
    if result and not launcher:
        # /bin/sh only sequences the step and the copy; the argv travels as positional arguments
        cmds, arguments = ["/bin/sh", "-c", _COPY_RESULT, result], argv
    params = context["params"]
    gpus = int(params.get("gpus_per_node") or settings["gpus"]) if gpu else None
    s = settings
    env = {"MLFLOW_RUN_CONTEXT": json.dumps(run_context or {}), "PYTHONUNBUFFERED": "1"}
    # the Connection's server wins over the Secret's (env beats envFrom); never its credentials
    env.update({k: v for k, v in (mlflow_env or {}).items() if k in NOT_SECRET})
    labels = {"app.kubernetes.io/part-of": "ampflow", "ampflow/step": step}
    if params.get("queue"):
        labels[KUEUE_QUEUE_LABEL] = params["queue"]
    return {
        "name": job_name(context),
        "namespace": s["namespace"],
        "image": s["image"],
        "cmds": cmds,
        "arguments": arguments,
        "env_vars": [k8s.V1EnvVar(name=k, value=v) for k, v in env.items()],
        # credentials reach the pod from the Secret, never through the manifest or a log line
        "env_from": [k8s.V1EnvFromSource(secret_ref=k8s.V1SecretEnvSource(name=s["mlflow_secret"]))],
        "container_resources": _resources(s, gpus),
        "node_selector": dict(s["node_selector"]) if gpu else {},
        "tolerations": [k8s.V1Toleration(**t) for t in s["tolerations"]] if gpu else [],
        "volumes": [
            k8s.V1Volume(
                name="ampflow-data",
                persistent_volume_claim=k8s.V1PersistentVolumeClaimVolumeSource(claim_name=s["pvc"]),
            )
        ],
        "volume_mounts": [k8s.V1VolumeMount(name="ampflow-data", mount_path=s["mount_path"])],
        "service_account_name": s["launcher_service_account"] if launcher else s["service_account"],
        "security_context": k8s.V1PodSecurityContext(run_as_non_root=True),
        "priority_class_name": params.get("priority_class") or None,
        "labels": labels,
        "kubernetes_conn_id": s["kubernetes_conn_id"],
        "in_cluster": s["in_cluster"],
        "get_logs": True,
        "do_xcom_push": bool(result and not launcher),
        "startup_timeout_seconds": int(s["startup_timeout_seconds"]),
        "schedule_timeout_seconds": int(s["startup_timeout_seconds"]),
    }

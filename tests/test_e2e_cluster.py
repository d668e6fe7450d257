"""``ampflow launch`` against a real cluster: opt-in, skipped without ``KUBECONFIG``.

    make e2e-cluster          # or: KUBECONFIG=~/.kube/config .venv/bin/python -m pytest -m cluster tests/test_e2e_cluster.py

Needs a cluster with the Kubeflow training operator (PyTorchJob v1) and/or Kubeflow Trainer v2 (the
TrainJob tests skip when its CRD is not served) and the ampflow CPU image where the nodes can pull it
(kind: ``kind load docker-image``). The README's ``kube`` section sets one up with kind.

Knobs: ``AMPFLOW_E2E_IMAGE`` (default ghcr.io/ampflow/ampflow-cpu:0.1.0), ``AMPFLOW_E2E_NAMESPACE``
(default ``default``), ``AMPFLOW_E2E_STORAGE_CLASS`` (default: the cluster's default class).

1. server-side dry run: every manifest shape is admitted by the real API server and webhooks;
2. a prepared dataset on a PVC (``ampflow prep`` in a pod), then a 2-pod CPU DDP training launched
   through the CLI: exit 0, the master's log streamed;
3. a launch on a missing dataset: exit 1 with the operator's reason and the master's log tail.
"""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

pytestmark = [
    pytest.mark.cluster,
    pytest.mark.skipif(not os.environ.get("KUBECONFIG"), reason="needs KUBECONFIG (make e2e-cluster)"),
]

IMAGE = os.environ.get("AMPFLOW_E2E_IMAGE", "ghcr.io/ampflow/ampflow-cpu:0.1.0")
NAMESPACE = os.environ.get("AMPFLOW_E2E_NAMESPACE", "default")
RUN_ID = uuid.uuid4().hex[:6]
CLAIM = f"ampflow-e2e-{RUN_ID}"


@pytest.fixture(scope="module")
def api() -> Any:
    from ampflow.kube.client import api_client_from_config

    return api_client_from_config()


def _served(api: Any, group: str, version: str, plural: str) -> bool:
    from kubernetes import client as k8s
    from kubernetes.client.exceptions import ApiException

    try:
        k8s.CustomObjectsApi(api).list_namespaced_custom_object(group, version, NAMESPACE, plural, limit=1)
    except ApiException as exc:
        if exc.status == 404:
            return False
        raise
    return True


def _require(api: Any, kind: str) -> None:
    from ampflow.kube.manifests import RESOURCES

    group, version, plural, _ = RESOURCES[kind]
    if not _served(api, group, version, plural):
        pytest.skip(f"{group}/{version} {plural} is not served by this cluster")


@pytest.mark.parametrize("kind", ["pytorchjob", "trainjob"])
def test_server_side_dry_run_admits_every_shape(api: Any, kind: str) -> None:
    from kubernetes import client as k8s

    from ampflow.kube import LaunchSpec, build_manifest
    from ampflow.kube.manifests import RESOURCES, parse_toleration

    _require(api, kind)
    group, version, plural, _ = RESOURCES[kind]
    custom = k8s.CustomObjectsApi(api)
    for nodes in (1, 2, 3):
        for gpus in (0, 1, 8):
            spec = LaunchSpec(
                recipe="tweets-bow",
                data="/data/t",
                nodes=nodes,
                gpus_per_node=gpus,
                image=IMAGE,
                api=kind,
                namespace=NAMESPACE,
                name=f"e2e-dry-{RUN_ID}-{nodes}-{gpus}",
                mlflow_secret="mlflow-credentials",
                node_selector={"kubernetes.io/os": "linux"},
                tolerations=(parse_toleration("nvidia.com/gpu:NoSchedule"),),
                memory="1Gi",
            )
            custom.create_namespaced_custom_object(
                group, version, NAMESPACE, plural, build_manifest(spec), dry_run="All"
            )


@pytest.fixture(scope="module")
def dataset(api: Any) -> Iterator[str]:
    """A PVC holding a prepared tweets-bow subset, written by ``ampflow prep`` in a pod."""
    from kubernetes import client as k8s

    core = k8s.CoreV1Api(api)
    pvc: dict[str, Any] = {
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": {"name": CLAIM},
        "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}},
    }
    if os.environ.get("AMPFLOW_E2E_STORAGE_CLASS"):
        pvc["spec"]["storageClassName"] = os.environ["AMPFLOW_E2E_STORAGE_CLASS"]
    core.create_namespaced_persistent_volume_claim(NAMESPACE, pvc)
    pod_name = f"{CLAIM}-prep"
    core.create_namespaced_pod(
        NAMESPACE,
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": pod_name},
            "spec": {
                "restartPolicy": "Never",
                "volumes": [{"name": "data", "persistentVolumeClaim": {"claimName": CLAIM}}],
                "containers": [
                    {
                        "name": "prep",
                        "image": IMAGE,
                        "volumeMounts": [{"name": "data", "mountPath": "/data"}],
                        "command": [
                            "ampflow",
                            "prep",
                            "--recipe",
                            "tweets-bow",
                            "--limit",
                            "300",
                            "--out",
                            "/data/tweets",
                        ],
                    }
                ],
            },
        },
    )
    try:
        deadline = time.monotonic() + 600
        phase = None
        while time.monotonic() < deadline:
            phase = core.read_namespaced_pod(pod_name, NAMESPACE).status.phase
            if phase in ("Succeeded", "Failed"):
                break
            time.sleep(3)
        assert phase == "Succeeded", core.read_namespaced_pod_log(pod_name, NAMESPACE, tail_lines=30)
        yield "/data/tweets"
    finally:
        core.delete_namespaced_pod(pod_name, NAMESPACE)
        core.delete_namespaced_persistent_volume_claim(CLAIM, NAMESPACE)


def _launch(kind: str, name: str, *extra: str) -> list[str]:
    return [
        "launch",
        "--recipe",
        "tweets-bow",
        "--nodes",
        "2",
        "--gpus-per-node",
        "0",
        "--image",
        IMAGE,
        "--api",
        kind,
        "--namespace",
        NAMESPACE,
        "--name",
        name,
        "--volume",
        f"{CLAIM}:/data",
        "--poll-interval",
        "3",
        "--timeout",
        "900",
        *extra,
    ]


def _cleanup(api: Any, kind: str, name: str) -> None:
    from kubernetes import client as k8s
    from kubernetes.client.exceptions import ApiException

    from ampflow.kube.manifests import RESOURCES

    group, version, plural, _ = RESOURCES[kind]
    try:
        k8s.CustomObjectsApi(api).delete_namespaced_custom_object(
            group, version, NAMESPACE, plural, name, propagation_policy="Background"
        )
    except ApiException as exc:
        if exc.status != 404:
            raise


@pytest.mark.parametrize("kind", ["pytorchjob", "trainjob"])
def test_launch_trains_on_the_cluster(
    api: Any, dataset: str, kind: str, capsys: pytest.CaptureFixture[str]
) -> None:
    from ampflow.cli import main

    _require(api, kind)
    name = f"e2e-{kind}-{RUN_ID}"
    try:
        code = main(
            _launch(
                kind,
                name,
                "--data",
                dataset,
                "--out",
                f"/data/runs/{name}",
                "--set",
                "max_steps=5",
                "--set",
                "device=cpu",
            )
        )
        captured = capsys.readouterr()
        assert code == 0, captured.err[-3000:]
        assert "samples/s" in captured.out  # rank 0's summary line, streamed from the master's log
    finally:
        _cleanup(api, kind, name)


def test_launch_failure_is_reported(api: Any, dataset: str, capsys: pytest.CaptureFixture[str]) -> None:
    from ampflow.cli import main

    _require(api, "pytorchjob")
    name = f"e2e-fail-{RUN_ID}"
    try:
        code = main(_launch("pytorchjob", name, "--data", "/data/missing", "--backoff-limit", "0"))
        err = capsys.readouterr().err
        assert code == 1
        assert (
            "Failed" in err and "not a prepared dataset" in err
        )  # the operator's verdict + the master's tail
    finally:
        _cleanup(api, "pytorchjob", name)

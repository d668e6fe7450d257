"""Kubernetes mode without a cluster: the pod each task would create and the PyTorchJob it would submit.

    .venv-airflow/bin/python -m pytest -q tests/airflow/test_kubernetes_mode.py

No Kubernetes API server can run here (no docker engine, no kube-apiserver binary). The pods come from the provider's own
``KubernetesPodOperator.build_pod_request_obj()``, exactly the object it would send; the task context
is reduced to the fields the pod builder reads (ti identity, run_id, dag, params). The PyTorchJob is
what the real ``ampflow launch --dry-run`` prints for the task's argv, validated against the real CRD
in tests/data/crds plus the webhook rules, as the launcher's own tests do.
"""

from __future__ import annotations

import copy
import json
import os
import subprocess
from dataclasses import dataclass

import pytest

from tests.airflow.conftest import ROOT, ampflow_steps_missing

pytestmark = pytest.mark.airflow

CRDS = ROOT / "tests" / "data" / "crds"
IMAGE = "registry.example.com/ampflow/train:1.2.3"


@dataclass
class TI:
    dag_id: str
    task_id: str
    run_id: str
    map_index: int = -1
    try_number: int = 1


@pytest.fixture(scope="module")
def dags():
    import ampflow_benchmark
    import ampflow_retrain

    return {"retrain": ampflow_retrain.dag, "benchmark": ampflow_benchmark.dag}


@pytest.fixture(autouse=True)
def kube_variable(monkeypatch):
    # Airflow's environment spelling of the Variable ampflow_kubernetes
    monkeypatch.setenv(
        "AIRFLOW_VAR_AMPFLOW_KUBERNETES",
        json.dumps(
            {
                "namespace": "ml-train",
                "mlflow_secret": "mlflow-creds",
                "pvc": "ampflow-cache",
                "node_selector": {"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"},
            }
        ),
    )


def context(
    dag, task_id, *, conf=None, run_id="scheduled__2026-11-23T03:00:00+00:00", map_index=-1, try_number=1
):
    params = copy.deepcopy(dag.params)
    for key, value in {"execution_mode": "kubernetes", "image": IMAGE, **(conf or {})}.items():
        params[key] = value
    params = params.validate()
    return {
        "ti": TI(dag.dag_id, task_id, run_id, map_index, try_number),
        "run_id": run_id,
        "dag": dag,
        "params": params,
    }


def step_op(dag, task_id, step_options):
    op = copy.copy(dag.task_dict[task_id])
    op.step_options = step_options
    op.overrides = {"max_steps": 500}
    return op


TRAIN_OPTS = {
    "recipe": "tweets-minilm",
    "data": "/mnt/ampflow/r/data",
    "out": "/mnt/ampflow/r/runs/candidate",
    "precision": "bf16-mixed",
    "strategy": "single",
    "compile": False,
}


def test_train_pod_has_gpu_placement_secret_and_the_step_argv(dags):
    from ampflow.commands import step_argv

    dag = dags["retrain"]
    ctx = context(dag, "train")
    op = step_op(dag, "train", TRAIN_OPTS)
    kpo = op.configure_pod(ctx)
    pod = kpo.build_pod_request_obj(ctx)
    c = pod.spec.containers[0]
    assert c.image == IMAGE
    assert pod.metadata.namespace == "ml-train"
    # the argv is step_argv's, not one built by hand; /bin/sh only copies result.json to the XCom
    assert c.command[:2] == ["/bin/sh", "-c"] and c.command[3] == "/mnt/ampflow/r/runs/candidate/result.json"
    assert c.args == step_argv("train", **TRAIN_OPTS, overrides={"max_steps": 500})
    assert c.resources.limits["nvidia.com/gpu"] == "1" and c.resources.requests["nvidia.com/gpu"] == "1"
    assert pod.spec.node_selector == {"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"}
    assert [(t.key, t.operator, t.effect) for t in pod.spec.tolerations] == [
        ("nvidia.com/gpu", "Exists", "NoSchedule")
    ]
    # MLflow credentials come from the Secret; nothing secret is inline in the manifest
    assert [e.secret_ref.name for e in c.env_from] == ["mlflow-creds"]
    env = {e.name: e.value for e in c.env}
    assert not any("PASSWORD" in k or "TOKEN" in k for k in env)
    assert json.loads(env["MLFLOW_RUN_CONTEXT"])["ampflow.airflow_run_id"] == ctx["run_id"]
    assert [v.persistent_volume_claim.claim_name for v in pod.spec.volumes if v.persistent_volume_claim] == [
        "ampflow-cache"
    ]
    assert "/mnt/ampflow" in [m.mount_path for m in c.volume_mounts]
    assert pod.spec.security_context.run_as_non_root is True
    labels = pod.metadata.labels
    assert labels["dag_id"] == "ampflow_retrain" and labels["task_id"] == "train"
    # the provider reattaches to this pod on a retry instead of creating a second one
    assert kpo.durable is True and kpo.reattach_on_restart is True
    assert kpo.on_finish_action.value == "delete_succeeded_pod"


def test_a_retried_train_resumes_from_its_checkpoint(dags):
    dag = dags["retrain"]
    first = step_op(dag, "train", TRAIN_OPTS).configure_pod(context(dag, "train", try_number=1))
    second = step_op(dag, "train", TRAIN_OPTS).configure_pod(context(dag, "train", try_number=2))
    assert "--resume" not in first.arguments
    assert "--resume" in second.arguments


def test_cpu_steps_get_no_gpu_and_compare_hands_its_summary_to_xcom(dags):
    dag = dags["retrain"]
    ctx = context(dag, "prep")
    prep = step_op(dag, "prep", {"recipe": "tweets-bow", "out": "/mnt/ampflow/r/data"}).configure_pod(ctx)
    pod = prep.build_pod_request_obj(ctx)
    c = pod.spec.containers[0]
    assert "nvidia.com/gpu" not in (c.resources.limits or {})
    assert not pod.spec.tolerations and not pod.spec.node_selector
    assert c.command == ["ampflow"] and c.args[:1] == ["prep"]

    ctx = context(dag, "compare")
    opts = {
        "recipe": "tweets-bow",
        "runs": ["/mnt/ampflow/r/runs/candidate"],
        "out": "/mnt/ampflow/r/compare",
    }
    kpo = step_op(dag, "compare", opts).configure_pod(ctx)
    pod = kpo.build_pod_request_obj(ctx)
    c = pod.spec.containers[0]
    assert kpo.do_xcom_push is True
    assert [x.name for x in pod.spec.containers] == ["base", "airflow-xcom-sidecar"]
    # /bin/sh only sequences the step and the copy; the step's argv travels as positional arguments
    assert c.command[:2] == ["/bin/sh", "-c"] and c.command[3] == "/mnt/ampflow/r/compare/summary.json"
    assert c.args[:4] == ["ampflow", "compare", "--runs", "/mnt/ampflow/r/runs/candidate"]


def test_job_name_is_fixed_by_run_and_task_not_by_try(dags):
    from airflow_ampflow.pods import job_name
    from ampflow.kube.names import is_dns1035

    dag = dags["benchmark"]
    a1 = job_name(context(dag, "train", map_index=3, try_number=1))
    a2 = job_name(context(dag, "train", map_index=3, try_number=4))
    other_map = job_name(context(dag, "train", map_index=2))
    other_run = job_name(context(dag, "train", map_index=3, run_id="manual__2026-11-24T00:00:00+00:00"))
    assert a1 == a2
    assert len({a1, other_map, other_run}) == 3
    assert all(is_dns1035(n) for n in (a1, other_map, other_run))


def test_multi_gpu_training_runs_the_launcher_in_a_small_pod(dags):
    dag = dags["retrain"]
    ctx = context(dag, "train", conf={"nodes": 2, "gpus_per_node": 4})
    kpo = step_op(dag, "train", TRAIN_OPTS).configure_pod(ctx)
    pod = kpo.build_pod_request_obj(ctx)
    c = pod.spec.containers[0]
    argv = c.command + c.args
    assert argv[:2] == ["ampflow", "launch"]
    flags = dict(zip(argv[2::2], argv[3::2], strict=False))
    assert flags["--nodes"] == "2" and flags["--gpus-per-node"] == "4" and flags["--image"] == IMAGE
    assert flags["--name"] == job_name_for(ctx) and flags["--namespace"] == "ml-train"
    # the job's pods get the same placement, storage and credentials as the task pods
    assert flags["--node-selector"] == "nvidia.com/gpu.product=NVIDIA-H100-80GB-HBM3"
    assert flags["--tolerations"] == "nvidia.com/gpu:NoSchedule"
    assert flags["--volume"] == "ampflow-cache:/mnt/ampflow" and flags["--mlflow-secret"] == "mlflow-creds"
    assert "nvidia.com/gpu" not in (c.resources.limits or {})  # the GPUs belong to the PyTorchJob
    assert pod.spec.service_account_name == "ampflow-launcher"
    assert kpo.do_xcom_push is False


def job_name_for(ctx):
    from airflow_ampflow.pods import job_name

    return job_name(ctx, int(ctx["params"]["nodes"]))


def _crd_schema():
    import yaml

    crd = yaml.safe_load((CRDS / "kubeflow.org_pytorchjobs.yaml").read_text())
    return crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]


def test_the_pytorchjob_the_launcher_pod_would_submit_is_valid(dags, tmp_path):
    """Runs the real `ampflow launch --dry-run` with the argv the launcher pod would run."""
    missing = ampflow_steps_missing("launch")
    if missing:
        pytest.skip("`ampflow launch` is not in this checkout yet")
    import jsonschema
    import yaml

    from ampflow.kube import validate_admission

    dag = dags["retrain"]
    # the legacy Training Operator's API, chosen by the DAG's api param (a TrainJob is the default)
    ctx = context(dag, "train", conf={"nodes": 2, "gpus_per_node": 4, "api": "pytorchjob"})
    argv = step_op(dag, "train", TRAIN_OPTS).argv(ctx, (os.environ["AMPFLOW_BIN"],), "kubernetes") + [
        "--dry-run"
    ]
    assert argv[argv.index("--api") + 1] == "pytorchjob"
    proc = subprocess.run(argv, capture_output=True, text=True, check=False, cwd=tmp_path)  # noqa: S603
    assert proc.returncode == 0, proc.stderr[-2000:]
    manifest = yaml.safe_load(proc.stdout)
    assert manifest["kind"] == "PyTorchJob"
    assert manifest["metadata"]["name"] == job_name_for(ctx)
    from tests.test_kube_manifests import pruned_fields  # the launcher's own check, reused

    schema = _crd_schema()
    jsonschema.Draft7Validator(schema).validate(manifest)
    assert pruned_fields(manifest, schema) == []
    assert validate_admission(manifest) == []
    specs = manifest["spec"]["pytorchReplicaSpecs"]
    assert specs["Master"]["replicas"] == 1 and specs["Worker"]["replicas"] == 1
    pod = specs["Master"]["template"]["spec"]
    master = pod["containers"][0]
    assert master["image"] == IMAGE and master["resources"]["limits"]["nvidia.com/gpu"] in (4, "4")
    assert pod["nodeSelector"] == {"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"}
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod["tolerations"]
    # credentials by reference to the Secret, never as values in the manifest
    env = {e["name"]: e for e in master["env"]}
    for name in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"):
        assert "value" not in env[name] and env[name]["valueFrom"]["secretKeyRef"]["name"] == "mlflow-creds"


def test_the_clean_up_task_runs_ampflow_close_runs_in_a_cpu_pod(dags):
    from airflow_ampflow.runtime import close_runs_options, run_root
    from ampflow.tracking.schema import TAG_AIRFLOW_RUN_ID

    dag = dags["benchmark"]
    ctx = context(dag, "close_mlflow_runs")
    root = run_root(ctx)
    op = copy.copy(dag.task_dict["close_mlflow_runs"])
    op.step_options = close_runs_options(ctx, root)
    pod = op.configure_pod(ctx).build_pod_request_obj(ctx)
    c = pod.spec.containers[0]
    assert c.command + c.args == [
        *("ampflow", "close-runs", "--tag", f"{TAG_AIRFLOW_RUN_ID}={ctx['run_id']}", "--run-root", root)
    ]
    assert root.startswith("/mnt/ampflow/")  # the run directories on the PVC the pod mounts
    assert "nvidia.com/gpu" not in (c.resources.limits or {})
    assert [e.secret_ref.name for e in c.env_from] == ["mlflow-creds"]


def test_shared_cluster_params_reach_the_task_pods_and_the_launch_argv(dags):
    """queue/priority_class label and prioritise the task pods; with workload_priority, api and the
    two deadlines they become the launcher's flags (spelled by step_argv)."""
    dag = dags["retrain"]
    conf = {
        "queue": "team-a",
        "priority_class": "high",
        "workload_priority": "batch",
        "api": "pytorchjob",
        "queue_timeout": 3600,
        "run_deadline": 7200,
    }
    ctx = context(dag, "evaluate", conf=conf)
    pod = step_op(dag, "evaluate", {"recipe": "tweets-bow", "data": "/d", "checkpoint": "/c", "out": "/o"})
    pod = pod.configure_pod(ctx).build_pod_request_obj(ctx)
    assert pod.metadata.labels["kueue.x-k8s.io/queue-name"] == "team-a"
    assert pod.spec.priority_class_name == "high"

    ctx = context(dag, "train", conf={**conf, "nodes": 2, "gpus_per_node": 4})
    launcher = step_op(dag, "train", TRAIN_OPTS).configure_pod(ctx)
    argv = launcher.cmds + launcher.arguments
    flags = dict(zip(argv[2::2], argv[3::2], strict=False))
    assert argv[:2] == ["ampflow", "launch"]
    assert flags["--queue"] == "team-a" and flags["--priority-class"] == "high"
    assert flags["--workload-priority"] == "batch" and flags["--api"] == "pytorchjob"
    assert flags["--queue-timeout"] == "3600" and flags["--run-deadline"] == "7200"

    # the defaults: a TrainJob, no queue, launch's own deadlines
    ctx = context(dag, "train", conf={"nodes": 2, "gpus_per_node": 4})
    argv = step_op(dag, "train", TRAIN_OPTS).configure_pod(ctx).arguments
    assert argv[argv.index("--api") + 1] == "trainjob"
    assert not {"--queue", "--priority-class", "--queue-timeout", "--run-deadline"} & set(argv)


def test_cluster_params_are_validated_at_trigger_time(dags):
    from airflow.sdk.exceptions import ParamValidationError

    dag = dags["benchmark"]
    for bad in ({"queue": "Team_A"}, {"api": "mpijob"}, {"run_deadline": 0}, {"priority_class": "x" * 64}):
        with pytest.raises(ParamValidationError):
            context(dag, "train", conf=bad)


def test_the_mlflow_connection_reaches_the_pod_without_its_credentials(dags, monkeypatch):
    """The Connection (AIRFLOW_CONN_MLFLOW_DEFAULT, JSON form) names the server in the pod and in the
    job; its login and password appear nowhere in the manifest: the pod reads them from the Secret."""
    monkeypatch.setenv(
        "AIRFLOW_CONN_MLFLOW_DEFAULT",
        json.dumps(
            {
                "conn_type": "http",
                "host": "mlflow.ml.svc",
                "port": 5000,
                "login": "bot",
                "password": "hunter2-not-in-pods",
                "extra": {"insecure_tls": True},
            }
        ),
    )
    dag = dags["retrain"]
    ctx = context(dag, "evaluate")
    op = step_op(dag, "evaluate", {"recipe": "tweets-bow", "data": "/d", "checkpoint": "/c", "out": "/o"})
    pod = op.configure_pod(ctx).build_pod_request_obj(ctx)
    env = {e.name: e.value for e in pod.spec.containers[0].env}
    assert env["MLFLOW_TRACKING_URI"] == "http://mlflow.ml.svc:5000"
    assert env["MLFLOW_TRACKING_INSECURE_TLS"] == "true"
    manifest = json.dumps(pod.to_dict(), default=str)
    assert "hunter2-not-in-pods" not in manifest and "MLFLOW_TRACKING_USERNAME" not in manifest
    assert [e.secret_ref.name for e in pod.spec.containers[0].env_from] == ["mlflow-creds"]

    ctx = context(dag, "train", conf={"nodes": 2, "gpus_per_node": 4})
    argv = step_op(dag, "train", TRAIN_OPTS).configure_pod(ctx).arguments
    assert argv[argv.index("--tracking-uri") + 1] == "http://mlflow.ml.svc:5000"
    assert "hunter2-not-in-pods" not in " ".join(argv)


class RunningTI(TI):
    """What the pod operator's deferral reads from the task instance besides its identity."""

    start_date = None

    def xcom_push(self, key, value):
        pass


def test_kubernetes_mode_defers_to_the_providers_pod_trigger(dags, monkeypatch):
    """The task is itself the provider's deferrable pod operator: execute creates the pod (the API
    server replaced by a stand-in that accepts it as requested) and defers to KubernetesPodTrigger; the
    resumed task sets its pod settings again before the provider collects, then trims the XCom."""
    from airflow.providers.cncf.kubernetes.operators.pod import KubernetesPodOperator
    from airflow.sdk.exceptions import TaskDeferred

    dag = dags["retrain"]
    ctx = context(dag, "compare")
    ctx["ti"] = RunningTI(dag.dag_id, "compare", ctx["run_id"])
    opts = {
        "recipe": "tweets-bow",
        "runs": ["/mnt/ampflow/r/runs/candidate"],
        "out": "/mnt/ampflow/r/compare",
    }
    op = step_op(dag, "compare", opts)
    op.get_or_create_pod = lambda pod_request_obj, context: pod_request_obj  # the API server's stand-in
    with pytest.raises(TaskDeferred) as deferred:
        op.execute(ctx)
    classpath, kwargs = deferred.value.trigger.serialize()
    assert classpath.endswith("KubernetesPodTrigger")
    assert deferred.value.method_name == "trigger_reentry"
    assert kwargs["pod_namespace"] == "ml-train" and kwargs["pod_name"].startswith("ampflow-retrain-compare-")

    fresh = step_op(dag, "compare", opts)  # a resumed task is a new operator object
    seen = {}

    def provider_reentry(self, context, event):
        seen.update(namespace=self.namespace, xcom=self.do_xcom_push, conn=self.kubernetes_conn_id)
        return {"verdict": "ok", "loss_curve": [1.0, 0.5]}

    monkeypatch.setattr(KubernetesPodOperator, "trigger_reentry", provider_reentry)
    value = fresh.trigger_reentry(ctx, {"status": "success", "name": "p", "namespace": "ml-train"})
    assert seen == {"namespace": "ml-train", "xcom": True, "conn": "kubernetes_default"}
    assert value == {"verdict": "ok"}


def test_a_distributed_benchmark_configuration_is_launched_as_its_own_job(dags):
    """Kubernetes mode: the benchmark's ddp configuration launches a job of nodes x nproc_per_node GPUs
    named after its map index; its single configuration stays one GPU pod whatever `nodes` says."""
    import ampflow_benchmark

    dag = dags["benchmark"]
    sweep = {
        "recipe": "tweets-minilm",
        "data": "/mnt/ampflow/r/data",
        "root": "/mnt/ampflow/r",
        "topology": [2, 4],
    }
    single, ddp = (
        ampflow_benchmark.train_options(
            sweep, {"id": i, "precision": "bf16-mixed", "compile": False, **extra}
        )
        for i, extra in (("bf16-mixed", {}), ("bf16-mixed-ddp", {"strategy": "ddp"}))
    )
    conf = {"strategies": ["single", "ddp"], "nodes": 2, "nproc_per_node": 4, "api": "pytorchjob"}

    def train(options):  # the mapped task's operator, one configuration's options
        from airflow_ampflow.operator import AmpflowStepOperator

        return AmpflowStepOperator(task_id="train", step="train", step_options=options, gpu=True)

    ctx = context(dag, "train", conf=conf, map_index=1)
    launcher = train(ddp).configure_pod(ctx)
    argv = launcher.cmds + launcher.arguments
    assert argv[:2] == ["ampflow", "launch"]
    flags = dict(zip(argv[2::2], argv[3::2], strict=False))
    assert flags["--strategy"] == "ddp" and flags["--nodes"] == "2" and flags["--gpus-per-node"] == "4"
    assert flags["--api"] == "pytorchjob" and flags["--out"] == "/mnt/ampflow/r/runs/bf16-mixed-ddp"
    from airflow_ampflow.pods import job_name

    assert flags["--name"] == job_name(ctx, 2) != job_name(context(dag, "train", conf=conf, map_index=0), 2)
    assert "_topology" not in " ".join(argv)

    ctx = context(dag, "train", conf=conf, map_index=0)
    pod = train(single).configure_pod(ctx).build_pod_request_obj(ctx)
    c = pod.spec.containers[0]
    assert (c.command + c.args)[:2] == ["ampflow", "train"] and "--strategy" not in c.args
    assert c.resources.limits["nvidia.com/gpu"] == "1"

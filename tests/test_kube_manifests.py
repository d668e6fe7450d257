"""Every manifest ``ampflow launch`` can build, checked as a cluster would check it.

No API server runs here, so the checks are the closest faithful stand-ins: the real CRDs in
``tests/data/crds`` (vendored) (their ``openAPIV3Schema`` through jsonschema, plus the structural pruning an API
server does, which would silently drop a misspelt field), the admission rules of the CRD README
(``ampflow.kube.validate_admission``), and the stock ``torch-distributed`` ClusterTrainingRuntime a
TrainJob patches. Then the CLI: ``--dry-run`` output and bad input.

    .venv/bin/python -m pytest tests/test_kube_manifests.py -q
"""

from __future__ import annotations

import copy
import itertools
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from ampflow.cli import main
from ampflow.config import ConfigError
from ampflow.kube import LaunchSpec, build_manifest, container_command, dns1035_name, is_dns1035, spec_hash
from ampflow.kube.manifests import (
    MLFLOW_SECRET_KEYS,
    SPEC_HASH_ANNOTATION,
    TORCHRUN_RESERVED_ENV,
    parse_toleration,
    validate_admission,
)
from ampflow.kube.names import max_job_name_len

CRDS = Path(__file__).resolve().parent / "data" / "crds"
CRD_FILES = {"PyTorchJob": "kubeflow.org_pytorchjobs.yaml", "TrainJob": "trainer.kubeflow.org_trainjobs.yaml"}


def _schema(kind: str) -> dict[str, Any]:
    crd = yaml.safe_load((CRDS / CRD_FILES[kind]).read_text(encoding="utf-8"))
    return crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]


@pytest.fixture(scope="module")
def validators() -> dict[str, jsonschema.Draft7Validator]:
    out = {}
    for kind in CRD_FILES:
        schema = _schema(kind)
        jsonschema.Draft7Validator.check_schema(schema)
        out[kind] = jsonschema.Draft7Validator(schema)
    return out


@pytest.fixture(scope="module")
def runtime() -> dict[str, Any]:
    return yaml.safe_load(
        (CRDS / "clustertrainingruntime_torch-distributed.yaml").read_text(encoding="utf-8")
    )


def pruned_fields(instance: Any, schema: dict[str, Any], path: str = "") -> list[str]:
    """Fields the API server's structural pruning would drop (not in ``properties``, no escape hatch)."""
    out: list[str] = []
    if isinstance(instance, dict) and schema.get("type") == "object":
        if schema.get("x-kubernetes-preserve-unknown-fields"):
            return out
        props = schema.get("properties")
        extra = schema.get("additionalProperties")
        for key, value in instance.items():
            if props is not None and key in props:
                out += pruned_fields(value, props[key], f"{path}.{key}")
            elif isinstance(extra, dict):
                out += pruned_fields(value, extra, f"{path}.{key}")
            elif props is not None and path != ".metadata":  # ObjectMeta is checked by the server itself
                out.append(f"{path}.{key}")
    elif isinstance(instance, list) and isinstance(schema.get("items"), dict):
        for i, item in enumerate(instance):
            out += pruned_fields(item, schema["items"], f"{path}[{i}]")
    return out


EXTRAS: dict[str, dict[str, Any]] = {
    "plain": {},
    "scheduled": {
        "node_selector": {"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3", "pool": "training"},
        "tolerations": (
            parse_toleration("nvidia.com/gpu:NoSchedule"),
            parse_toleration("spot=true:NoExecute"),
        ),
        "cpu": "8",
        "memory": "64Gi",
        # Kueue: the LocalQueue and a WorkloadPriorityClass (labels on the job)
        "queue": "team-a.gpu",
        "workload_priority": "high",
    },
    "tracked": {
        "mlflow_secret": "mlflow-credentials",
        "out": "/data/runs/r1",
        "volumes": (("training-data", "/data"),),
        "service_account": "trainer",
        "precision": "bf16-mixed",
        "compile": True,
        "overrides": {"max_steps": 500, "batch_size": "auto"},
    },
    "uri-and-secret": {
        "mlflow_secret": "mlflow",
        "tracking_uri": "http://mlflow.mlops.svc:5000",
        "active_deadline_seconds": None,
    },
}


def _specs() -> list[tuple[str, LaunchSpec]]:
    out = []
    for api, nodes, gpus, extra in itertools.product(
        ("pytorchjob", "trainjob"), (1, 2, 3), (0, 1, 8), EXTRAS
    ):
        kw = dict(EXTRAS[extra])
        if api == "pytorchjob" and extra == "scheduled":
            kw.update(clean_pod_policy="All", backoff_limit=0, ttl_seconds_after_finished=600)
            kw.update(priority_class="training-high")  # pods' priorityClassName: v1 only
        out.append(
            (
                f"{api}-n{nodes}-g{gpus}-{extra}",
                LaunchSpec(
                    recipe="tweets-bow",
                    data="/data/tweets",
                    nodes=nodes,
                    gpus_per_node=gpus,
                    image="registry.example.com/ampflow:0.1.0",
                    api=api,
                    namespace="ml-team",
                    **kw,
                ),
            )
        )
    # a FSDP run and a user recipe named module:function, on both APIs
    for api in ("pytorchjob", "trainjob"):
        out.append(
            (
                f"{api}-fsdp",
                LaunchSpec(
                    recipe="mypkg.recipes:bert",
                    data="/d",
                    nodes=2,
                    gpus_per_node=4,
                    image="img@sha256:" + "a" * 64,
                    api=api,
                    strategy="fsdp",
                ),
            )
        )
        out.append(
            (
                f"{api}-long-name",
                LaunchSpec(
                    recipe="tweets-bow",
                    data="/d",
                    nodes=3,
                    gpus_per_node=1,
                    image="img:1",
                    api=api,
                    name="Nightly_Retrain." + "x" * 80,
                ),
            )
        )
    return out


SPECS = _specs()


@pytest.mark.parametrize("spec", [s for _, s in SPECS], ids=[i for i, _ in SPECS])
def test_manifest_is_admitted(spec: LaunchSpec, validators: dict[str, Any], runtime: dict[str, Any]) -> None:
    m = build_manifest(spec)
    errors = [f"{list(e.path)}: {e.message}" for e in validators[m["kind"]].iter_errors(m)]
    assert errors == []
    assert pruned_fields(m, _schema_cached(m["kind"])) == []
    assert validate_admission(m) == []
    name = m["metadata"]["name"]
    assert is_dns1035(name) and name == spec.job_name
    assert m["metadata"]["annotations"][SPEC_HASH_ANNOTATION] == spec_hash(m)
    labels = m["metadata"]["labels"]
    assert labels.get("kueue.x-k8s.io/queue-name") == spec.queue
    assert labels.get("kueue.x-k8s.io/priority-class") == spec.workload_priority
    # Kueue's webhook suspends a labelled job on create; ampflow leaves suspend alone
    assert "suspend" not in m["spec"] and "suspend" not in m["spec"].get("runPolicy", {})
    gpus, procs = spec.gpus_per_node, max(spec.gpus_per_node, 1)
    if m["kind"] == "PyTorchJob":
        replicas = m["spec"]["pytorchReplicaSpecs"]
        assert replicas["Master"]["replicas"] == 1
        assert replicas.get("Worker", {}).get("replicas", 0) == spec.nodes - 1
        assert "Worker" in replicas or spec.nodes == 1  # the webhook refuses Worker.replicas 0
        assert m["spec"]["nprocPerNode"] == str(procs)
        pods = [r["template"]["spec"] for r in replicas.values()]
        containers = [p["containers"][0] for p in pods]
        assert all(c["name"] == "pytorch" for c in containers)
        resources = [c.get("resources", {}) for c in containers]
        env = containers[0]["env"]
        for pod in pods:
            assert pod.get("nodeSelector", {}) == spec.node_selector
            assert pod.get("tolerations", []) == list(spec.tolerations)
            assert pod.get("priorityClassName") == spec.priority_class
        policy = m["spec"]["runPolicy"]
        assert policy["cleanPodPolicy"] in ("All", "Running", "None")
        assert policy.get("activeDeadlineSeconds") == spec.active_deadline_seconds
    else:
        trainer = m["spec"]["trainer"]
        assert trainer["numNodes"] == spec.nodes and trainer["numProcPerNode"] == procs
        assert m["spec"]["runtimeRef"] == {
            "name": "torch-distributed",
            "apiGroup": "trainer.kubeflow.org",
            "kind": "ClusterTrainingRuntime",
        }
        containers = [trainer]
        resources = [trainer.get("resourcesPerNode", {})]
        env = trainer["env"]
        assert not {e["name"] for e in env} & set(TORCHRUN_RESERVED_ENV)
        # the patch must name a replicated job and a container the runtime really has
        assert (
            runtime["metadata"]["name"] == m["spec"]["runtimeRef"]["name"]
            and "torch" in runtime["spec"]["mlPolicy"]
        )
        rt_jobs = {j["name"]: j for j in runtime["spec"]["template"]["spec"]["replicatedJobs"]}
        for patch in m["spec"]["runtimePatches"][0]["trainingRuntimeSpec"]["template"]["spec"][
            "replicatedJobs"
        ]:
            assert patch["name"] in rt_jobs
            rt_containers = {
                c["name"]
                for c in rt_jobs[patch["name"]]["template"]["spec"]["template"]["spec"]["containers"]
            }
            pod = patch["template"]["spec"]["template"]["spec"]
            assert {c["name"] for c in pod["containers"]} <= rt_containers
            assert pod.get("nodeSelector", {}) == spec.node_selector
            assert pod.get("tolerations", []) == list(spec.tolerations)
            assert "priorityClassName" not in pod  # not in runtimePatches' schema: it would be pruned
            mounts = {v["name"] for v in pod["volumes"]}
            assert {vm["name"] for c in pod["containers"] for vm in c["volumeMounts"]} <= mounts
        assert m["spec"].get("activeDeadlineSeconds") == spec.active_deadline_seconds
    for c in containers:
        assert c["image"] == spec.image
        assert c["command"] == container_command(spec)
    for r in resources:
        if gpus:
            assert r["requests"]["nvidia.com/gpu"] == r["limits"]["nvidia.com/gpu"] == str(gpus)
        else:
            assert "nvidia.com/gpu" not in r.get("requests", {}) and "limits" not in r
        assert r.get("requests", {}).get("memory") == spec.memory
    _check_env(env, spec)


_SCHEMAS: dict[str, Any] = {}


def _schema_cached(kind: str) -> dict[str, Any]:
    if kind not in _SCHEMAS:
        _SCHEMAS[kind] = _schema(kind)
    return _SCHEMAS[kind]


def _check_env(env: list[dict[str, Any]], spec: LaunchSpec) -> None:
    by_name = {e["name"]: e for e in env}
    assert len(by_name) == len(env)
    for key in MLFLOW_SECRET_KEYS:
        if key == "MLFLOW_TRACKING_URI" and spec.tracking_uri:
            assert by_name[key] == {"name": key, "value": spec.tracking_uri}
        elif spec.mlflow_secret:
            # credentials only by reference to the Secret, never a value in the manifest
            assert by_name[key] == {
                "name": key,
                "valueFrom": {"secretKeyRef": {"name": spec.mlflow_secret, "key": key, "optional": True}},
            }
        else:
            assert key not in by_name


@pytest.mark.parametrize("api", ["pytorchjob", "trainjob"])
@pytest.mark.parametrize("nodes,gpus", [(1, 0), (1, 1), (1, 2), (2, 0), (3, 8)])
def test_command_topology(api: str, nodes: int, gpus: int) -> None:
    spec = LaunchSpec(recipe="tweets-bow", data="/d", nodes=nodes, gpus_per_node=gpus, image="i:1", api=api)
    cmd = container_command(spec)
    if nodes * max(gpus, 1) == 1:
        assert cmd[:2] == ["ampflow", "train"] and cmd[cmd.index("--strategy") + 1] == "single"
    else:
        procs = max(gpus, 1)
        assert cmd[:6] == [
            "torchrun",
            f"--nnodes={nodes}",
            f"--nproc-per-node={procs}",
            "-m",
            "ampflow",
            "train",
        ]
        assert cmd[cmd.index("--strategy") + 1] == "ddp"
        # per-pod facts come from the operator's PET_* environment, never baked into a shared template
        assert not any(a.startswith(("--node-rank", "--master-addr", "--master-port")) for a in cmd)
    assert "--resume" in cmd  # a pod the operator recreates continues from its checkpoint


def test_command_parses_with_the_train_cli() -> None:
    """The argv in the manifest is accepted by the real ``ampflow train`` parser."""
    from ampflow.cli import build_parser

    spec = LaunchSpec(
        recipe="tweets-bow",
        data="/d",
        out="/r",
        nodes=2,
        gpus_per_node=8,
        image="i:1",
        precision="bf16-mixed",
        strategy="fsdp",
        compile=True,
        mlflow_secret="s",
        overrides={"max_steps": 7, "batch_size": "auto", "allow_16_true": False},
    )
    cmd = container_command(spec)
    argv = cmd[cmd.index("ampflow", 1) + 1 :]
    args = build_parser().parse_args(argv)
    assert (args.step, args.recipe, args.data, args.out, args.precision, args.strategy) == (
        "train",
        "tweets-bow",
        "/d",
        "/r",
        "bf16-mixed",
        "fsdp",
    )
    assert args.compile and args.resume and args.require_tracking
    # two nodes, --out on no shared volume: one gathered checkpoint file instead of per-pod shards
    assert sorted(args.overrides) == [
        "allow_16_true=false",
        "batch_size=auto",
        "checkpoint_format=full",
        "max_steps=7",
    ]


def _sets(spec: LaunchSpec) -> list[str]:
    cmd = container_command(spec)
    return [cmd[i + 1] for i, word in enumerate(cmd) if word == "--set"]


@pytest.mark.parametrize(
    "nodes, strategy, out, volumes, expect",
    [
        (2, "fsdp", "/r", (), ["checkpoint_format=full"]),  # each pod's disk: no shards
        (2, "fsdp", None, (), ["checkpoint_format=full"]),  # the default --out is in the pod
        (2, "fsdp", "/v/runs/a", (("pvc", "/v"),), []),  # a shared volume: auto writes shards
        (2, "fsdp", "/v", (("pvc", "/v/"),), []),
        (2, "fsdp", "/vv/a", (("pvc", "/v"),), ["checkpoint_format=full"]),  # a sibling path, not /v
        (2, "fsdp", "/v/../scratch/a", (("pvc", "/v"),), ["checkpoint_format=full"]),  # leaves /v
        (2, "fsdp", "/v/./runs//a", (("pvc", "/v"),), []),
        (1, "fsdp", "/r", (), []),  # one node: every rank writes to the same disk
        (2, "ddp", "/r", (), []),  # ddp writes one file anyway
    ],
)
def test_sharded_checkpoints_only_where_every_pod_writes_to_the_same_out(
    nodes, strategy, out, volumes, expect
):
    """Per-rank DCP shards on pods of several nodes need one ``--out`` they all mount: without it each
    pod's shards would land on its own disk and rank 0 could not read the whole model back."""
    spec = LaunchSpec(
        recipe="tweets-bow",
        data="/d",
        out=out,
        nodes=nodes,
        gpus_per_node=2,
        image="i:1",
        strategy=strategy,
        volumes=volumes,
    )
    assert _sets(spec) == expect


def test_sharded_checkpoints_asked_for_without_a_shared_out_are_refused() -> None:
    common = {
        "recipe": "tweets-bow",
        "data": "/d",
        "nodes": 2,
        "gpus_per_node": 2,
        "image": "i:1",
        "strategy": "fsdp",
    }
    with pytest.raises(
        ConfigError, match=r"checkpoint_format=sharded with --nodes 2: .*--volume.* /r is not"
    ):
        LaunchSpec(**common, out="/r", overrides={"checkpoint_format": "sharded"})
    spec = LaunchSpec(
        **common, out="/v/r", volumes=(("pvc", "/v"),), overrides={"checkpoint_format": "sharded"}
    )
    assert _sets(spec) == ["checkpoint_format=sharded"]
    # a full format asked for stays as asked
    assert _sets(LaunchSpec(**common, out="/r", overrides={"checkpoint_format": "full"})) == [
        "checkpoint_format=full"
    ]


def test_names() -> None:
    assert dns1035_name("My_Job.v2") == "my-job-v2"
    assert dns1035_name("9lives") == "j-9lives"
    assert dns1035_name("--a--b--") == "a-b"
    long_a, long_b = "retrain-" + "a" * 80 + "-1", "retrain-" + "a" * 80 + "-2"
    na, nb = dns1035_name(long_a), dns1035_name(long_b)
    assert len(na) == len(nb) == 63 and na != nb and is_dns1035(na) and is_dns1035(nb)
    assert dns1035_name(long_a) == na  # deterministic: a retry derives the same name
    assert len(dns1035_name(long_a, 40)) == 40
    for bad in ("", "---", "_._", "ü"):
        with pytest.raises(ConfigError):
            dns1035_name(bad)
    # pods and services of the job must be valid names too
    for api, nodes in itertools.product(("pytorchjob", "trainjob"), (1, 2, 12, 100)):
        limit = max_job_name_len(api, nodes)
        name = "j" * limit
        longest = (
            f"{name}-node-0-{nodes - 1}"
            if api == "trainjob"
            else (f"{name}-worker-{nodes - 2}" if nodes > 1 else f"{name}-master-0")
        )
        assert len(longest) == 63


def test_default_name_is_stable_and_distinct() -> None:
    base = dict(recipe="tweets-bow", data="/d", out="/runs/r1", nodes=2, gpus_per_node=8, image="i:1")
    a, b = LaunchSpec(**base), LaunchSpec(**base)
    c = LaunchSpec(**base, overrides={"max_steps": 10})
    assert a.job_name == b.job_name and a.job_name != c.job_name
    assert spec_hash(build_manifest(a)) == spec_hash(build_manifest(b)) != spec_hash(build_manifest(c))
    # the name is metadata, not spec: the same run under another name hashes the same (the default
    # --out, derived from the name, would differ; here --out is given)
    named = LaunchSpec(**base, name="nightly")
    assert named.job_name == "nightly"
    assert spec_hash(build_manifest(named)) == spec_hash(build_manifest(a))


def _valid(api: str) -> dict[str, Any]:
    return build_manifest(
        LaunchSpec(recipe="r", data="/d", nodes=2, gpus_per_node=1, image="i:1", api=api, name="good")
    )


def _v1_container(m: dict[str, Any], role: str = "Worker") -> dict[str, Any]:
    return m["spec"]["pytorchReplicaSpecs"][role]["template"]["spec"]["containers"][0]


V1_BREAKS = {
    "name upper case": lambda m: m["metadata"].update(name="Bad"),
    "name too long": lambda m: m["metadata"].update(name="a" * 64),
    "pods too long": lambda m: m["metadata"].update(name="a" * 60),
    "master replicas": lambda m: m["spec"]["pytorchReplicaSpecs"]["Master"].update(replicas=2),
    "worker replicas 0": lambda m: m["spec"]["pytorchReplicaSpecs"]["Worker"].update(replicas=0),
    "replica type": lambda m: m["spec"]["pytorchReplicaSpecs"].update(
        PS=m["spec"]["pytorchReplicaSpecs"]["Worker"]
    ),
    "container name": lambda m: _v1_container(m).update(name="trainer"),
    "no image": lambda m: _v1_container(m, "Master").update(image=""),
    "clean pod policy": lambda m: m["spec"]["runPolicy"].update(cleanPodPolicy="Sometimes"),
    "restart policy": lambda m: m["spec"]["pytorchReplicaSpecs"]["Master"].update(restartPolicy="Maybe"),
    "elastic without worker": lambda m: (
        m["spec"]["pytorchReplicaSpecs"].pop("Worker"),
        m["spec"].update(elasticPolicy={"maxReplicas": 2}),
    ),
    "elastic nproc twice": lambda m: m["spec"].update(elasticPolicy={"nProcPerNode": 2}),
    "duplicate env": lambda m: _v1_container(m)["env"].append(dict(_v1_container(m)["env"][0])),
}
V2_BREAKS = {
    "reserved env": lambda m: m["spec"]["trainer"]["env"].append({"name": "PET_NNODES", "value": "2"}),
    "zero nodes": lambda m: m["spec"]["trainer"].update(numNodes=0),
    "bad nproc": lambda m: m["spec"]["trainer"].update(numProcPerNode="many"),
    "no runtime": lambda m: m["spec"]["runtimeRef"].pop("name"),
    "name underscore": lambda m: m["metadata"].update(name="a_b"),
    "managedBy": lambda m: m["spec"].update(managedBy="me"),
}


@pytest.mark.parametrize(
    "api,rule", [("pytorchjob", r) for r in V1_BREAKS] + [("trainjob", r) for r in V2_BREAKS]
)
def test_admission_rules_catch_each_violation(api: str, rule: str) -> None:
    m = _valid(api)
    assert validate_admission(m) == []
    (V1_BREAKS if api == "pytorchjob" else V2_BREAKS)[rule](m)
    assert validate_admission(m), f"{rule} not caught"


def test_schema_and_pruning_checks_are_live(validators: dict[str, Any]) -> None:
    m = _valid("pytorchjob")
    bad = copy.deepcopy(m)
    bad["spec"]["pytorchReplicaSpecs"]["Master"]["replicas"] = "one"
    assert list(validators["PyTorchJob"].iter_errors(bad))
    typo = copy.deepcopy(m)
    typo["spec"]["pytorchReplicaSpecs"]["Master"]["template"]["spec"]["nodeselector"] = {"a": "b"}
    assert pruned_fields(typo, _schema_cached("PyTorchJob")) == [
        ".spec.pytorchReplicaSpecs.Master.template.spec.nodeselector"
    ]
    t = _valid("trainjob")
    t["spec"]["trainer"]["numNodes"] = "2"
    assert list(validators["TrainJob"].iter_errors(t))


def _launch_args(*extra: str) -> list[str]:
    return [
        "launch",
        "--recipe",
        "tweets-bow",
        "--data",
        "/data/t",
        "--nodes",
        "2",
        "--gpus-per-node",
        "4",
        "--image",
        "reg/ampflow:0.1",
        *extra,
    ]


@pytest.mark.parametrize("api", ["pytorchjob", "trainjob"])
def test_dry_run_prints_the_manifest(api: str, capsys: pytest.CaptureFixture[str]) -> None:
    argv = _launch_args(
        "--api",
        api,
        "--dry-run",
        "--mlflow-secret",
        "mlflow",
        "--set",
        "max_steps=50",
        "--node-selector",
        "pool=gpu",
        "--toleration",
        "nvidia.com/gpu:NoSchedule",
        "--volume",
        "data:/data",
        "--namespace",
        "ml",
    )
    assert main(argv) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    expected = build_manifest(
        LaunchSpec(
            recipe="tweets-bow",
            data="/data/t",
            nodes=2,
            gpus_per_node=4,
            image="reg/ampflow:0.1",
            api=api,
            namespace="ml",
            mlflow_secret="mlflow",
            overrides={"max_steps": 50},
            node_selector={"pool": "gpu"},
            tolerations=(parse_toleration("nvidia.com/gpu:NoSchedule"),),
            volumes=(("data", "/data"),),
        )
    )
    assert printed == expected
    assert validate_admission(printed) == []


def test_dry_run_names_and_keeps_secrets_out(capsys: pytest.CaptureFixture[str]) -> None:
    argv = _launch_args(
        "--api", "pytorchjob", "--dry-run", "--name", "Nightly_Retrain", "--mlflow-secret", "mlflow"
    )
    assert main(argv) == 0
    captured = capsys.readouterr()
    m = yaml.safe_load(captured.out)
    assert m["metadata"]["name"] == "nightly-retrain"
    assert "nightly-retrain" in captured.err  # the user is told the name changed
    env = m["spec"]["pytorchReplicaSpecs"]["Master"]["template"]["spec"]["containers"][0]["env"]
    assert all("value" not in e for e in env if e["name"] != "PYTHONUNBUFFERED")


def test_launch_argv_from_step_argv_and_list_forms(capsys: pytest.CaptureFixture[str]) -> None:
    """KFP and Airflow build ``ampflow launch`` with the lead's ``step_argv``; lists arrive comma-joined."""
    import json

    from ampflow.commands import step_argv

    argv = step_argv(
        "launch",
        recipe="tweets-bow",
        data="/d",
        out="/r",
        precision="bf16-mixed",
        strategy="fsdp",
        nodes=3,
        gpus_per_node=8,
        image="i:1",
        name="Retrain_1",
        api="trainjob",
        namespace="ml",
        compile=True,
        dry_run=True,
        overrides={"max_steps": 9},
    )
    tolerations = [
        {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"},
        {"key": "spot", "operator": "Equal", "value": "true", "effect": "NoExecute"},
    ]
    argv += [
        "--tolerations",
        ",".join(json.dumps(t) for t in tolerations),
        "--node-selector",
        "a=1,b=2",
        "--volume",
        "cache:/cache,data:/data",
    ]
    assert main(argv[1:]) == 0
    m = yaml.safe_load(capsys.readouterr().out)
    pod = m["spec"]["runtimePatches"][0]["trainingRuntimeSpec"]["template"]["spec"]["replicatedJobs"][0][
        "template"
    ]["spec"]["template"]["spec"]
    assert pod["tolerations"] == tolerations and pod["nodeSelector"] == {"a": "1", "b": "2"}
    assert [v["persistentVolumeClaim"]["claimName"] for v in pod["volumes"][1:]] == ["cache", "data"]
    assert m["metadata"] == {**m["metadata"], "name": "retrain-1", "namespace": "ml"}
    assert m["spec"]["trainer"]["numNodes"] == 3 and "--compile" in m["spec"]["trainer"]["command"]
    assert validate_admission(m) == []


BAD_INPUT = {
    "nodes": (["--nodes", "0"], "--nodes must be >= 1, got 0"),
    "gpus": (["--gpus-per-node", "-1"], "--gpus-per-node must be >= 0, got -1"),
    "api": (["--api", "mpijob"], "--api must be one of pytorchjob, trainjob"),
    "image": (["--image", ""], "--image must be a container image reference"),
    "name": (["--name=---"], "name"),
    "namespace": (["--namespace", "ML_Team"], "--namespace must be a DNS-1123 label"),
    "set key": (["--set", "nope=1"], "nope"),
    "set value": (["--set", "max_steps=-3"], "max_steps"),
    "set clash": (["--set", "precision=bf16-mixed"], "--precision"),
    "strategy": (
        ["--strategy", "single"],
        "--strategy single runs one process, but --nodes x --gpus-per-node is",
    ),
    "precision": (["--precision", "int3"], "--precision must be one of"),
    "toleration": (["--toleration", "k=v:Sometimes"], "effect"),
    "toleration json": (["--toleration", '{"key": "k", "operator": "Maybe"}'], "operator"),
    "selector": (["--node-selector", "pool"], "--node-selector"),
    "volume": (["--volume", "claim"], "--volume"),
    # the flags a user typed, not the fields behind them (cpu, clean_pod_policy, ...)
    "cpu": (["--cpu", "lots"], "--cpu must be a Kubernetes quantity (e.g. 4, 500m, 16Gi), got 'lots'"),
    "memory": (
        ["--memory", "16 GB"],
        "--memory must be a Kubernetes quantity (e.g. 4, 500m, 16Gi), got '16 GB'",
    ),
    "clean policy": (
        ["--api", "pytorchjob", "--clean-pod-policy", "Sometimes"],
        "--clean-pod-policy must be one of All, Running, None; got 'Sometimes'",
    ),
    "backoff": (
        ["--api", "pytorchjob", "--backoff-limit", "-1"],
        "--backoff-limit must be an integer >= 0, got -1",
    ),
    "ttl": (
        ["--api", "pytorchjob", "--ttl-seconds-after-finished", "-60"],
        "--ttl-seconds-after-finished must be an integer >= 0, got -60",
    ),
    "active deadline": (
        ["--api", "pytorchjob", "--active-deadline-seconds", "-5"],
        "--active-deadline-seconds must be an integer >= 1, or 0 for none, got -5",
    ),
    "v1 field on v2": (
        ["--api", "trainjob", "--ttl-seconds-after-finished", "60"],
        "--ttl-seconds-after-finished sets a PyTorchJob runPolicy field",
    ),
    "v1 policy on v2": (
        ["--api", "trainjob", "--clean-pod-policy", "All"],
        "--clean-pod-policy sets a PyTorchJob runPolicy field",
    ),
    "inline credentials": (
        ["--tracking-uri", "https://bob:hunter2@mlflow.example.com"],
        "--tracking-uri must not carry",
    ),
    "timeout": (["--timeout", "0"], "--run-deadline (or --timeout) must be a positive number of seconds"),
    "queue timeout": (["--queue-timeout", "-5"], "--queue-timeout must be a positive number of seconds"),
    "poll interval": (["--poll-interval", "0"], "--poll-interval must be positive, got 0"),
    "queue": (["--queue", "Team_A"], "--queue must be a DNS-1123 name"),
    "workload priority": (["--workload-priority", "x" * 64], "--workload-priority must be a DNS-1123 name"),
    "priority class on v2": (
        ["--priority-class", "high"],
        "--priority-class: a TrainJob cannot set its pods' priorityClassName",
    ),
    # the flag a user typed, not the field behind it (priority_class)
    "priority class": (
        ["--api", "pytorchjob", "--priority-class", "High!"],
        "--priority-class must be a DNS-1123 name (lower case, digits, '-', '.', at most 63 characters), "
        "got 'High!'",
    ),
    "token in uri": (
        ["--tracking-uri", "https://hunter2@mlflow.example.com"],
        "--tracking-uri must not carry",
    ),
}


@pytest.mark.parametrize("case", list(BAD_INPUT))
def test_bad_input_exits_2_with_one_line(case: str, capsys: pytest.CaptureFixture[str]) -> None:
    extra, needle = BAD_INPUT[case]
    assert main([*_launch_args(*extra), "--dry-run"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and needle in err and "Traceback" not in err
    assert "hunter2" not in err


def test_plan_step_carries_api_queue_priority_and_deadlines(capsys: pytest.CaptureFixture[str]) -> None:
    """What the Airflow DAGs and KFP hand ``plan_step`` (``launch={...}``) reaches the job: the API, the
    Kueue labels, the pods' priority class, and both deadlines parse back into the launch CLI."""
    from ampflow.cli import build_parser
    from ampflow.commands import plan_step

    launch = {
        "nodes": 2,
        "gpus_per_node": 4,
        "image": "i:1",
        "api": "pytorchjob",
        "queue": "team-a",
        "priority_class": "training-high",
        "workload_priority": "high",
        "queue_timeout": 21600,
        "run_deadline": 7200,
        "dry_run": True,
    }
    plan = plan_step(
        "train", {"recipe": "tweets-bow", "data": "/d", "out": "/r"}, distributed=True, launch=launch
    )
    argv = plan.argv()
    args = build_parser().parse_args(argv[1:])
    assert (args.queue_timeout, args.run_deadline, args.api) == (21600, 7200, "pytorchjob")
    assert main(argv[1:]) == 0
    m = yaml.safe_load(capsys.readouterr().out)
    assert m["kind"] == "PyTorchJob"
    assert m["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == "team-a"
    assert m["metadata"]["labels"]["kueue.x-k8s.io/priority-class"] == "high"
    pods = [r["template"]["spec"] for r in m["spec"]["pytorchReplicaSpecs"].values()]
    assert [p["priorityClassName"] for p in pods] == ["training-high", "training-high"]

"""The compiled pipelines: fresh against the code, and carrying the cluster settings asked for.

kfp.local ignores resources and kfp.kubernetes settings, so this is where they are checked: in the
IR YAML that Kubeflow Pipelines runs (pipeline spec + the kubernetes platform spec).
"""

from __future__ import annotations

import filecmp
from pathlib import Path

import pytest
import yaml

from components import CACHE_MOUNT

ROOT = Path(__file__).resolve().parents[1]
COMPILED = ROOT / "pipelines" / "compiled"


@pytest.fixture(scope="module")
def fresh(tmp_path_factory):
    from pipelines.compile import compile_all

    out = tmp_path_factory.mktemp("compiled")
    compile_all(out)
    return out


def _load(path: Path) -> tuple[dict, dict]:
    spec, platform = yaml.safe_load_all(path.read_text())
    return spec, platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]


@pytest.mark.parametrize("name", ["benchmark.yaml", "retrain.yaml"])
def test_committed_yaml_is_not_stale(fresh, name):
    assert (COMPILED / name).is_file(), f"pipelines/compiled/{name} missing: run `make compile`"
    assert filecmp.cmp(fresh / name, COMPILED / name, shallow=False), (
        f"pipelines/compiled/{name} is stale: run `make compile` and commit the result"
    )


def test_compile_is_deterministic(fresh, tmp_path):
    from pipelines.compile import compile_all

    compile_all(tmp_path)
    for name in ("benchmark.yaml", "retrain.yaml"):
        assert (tmp_path / name).read_bytes() == (fresh / name).read_bytes()


def _executors(spec):
    return spec["deploymentSpec"]["executors"]


def _all_tasks(spec):
    """(component name, task name, task) for every task of every DAG in the spec."""
    dags = [("root", spec["root"])] + [(n, c) for n, c in spec["components"].items() if "dag" in c]
    for comp, body in dags:
        for task_name, task in body["dag"]["tasks"].items():
            yield comp, task_name, task


def _executor_of(spec, task):
    return spec["components"][task["componentRef"]["name"]].get("executorLabel")


def _param(name):
    return f"{{{{$.inputs.parameters['pipelinechannel--{name}']}}}}"


def _check_gpu_executor(spec, platform, label, count_param):
    container = _executors(spec)[label]["container"]
    assert container["image"] == _param("image")
    res = container["resources"]
    assert res["accelerator"]["resourceType"] == _param("accelerator_type")
    assert res["accelerator"]["resourceCount"] == _param(count_param)
    assert res["resourceCpuRequest"] == _param("cpu_request") and res["resourceCpuLimit"] == _param(
        "cpu_limit"
    )
    assert res["resourceMemoryRequest"] == _param("memory_request")
    assert res["resourceMemoryLimit"] == _param("memory_limit")
    k8s = platform[label]
    assert "componentInputParameter" in k8s["nodeSelector"]["nodeSelectorJson"]
    assert k8s["nodeSelector"]["nodeSelectorJson"]["componentInputParameter"].endswith("node_selector")
    (tol,) = k8s["tolerations"]
    assert tol["tolerationJson"]["componentInputParameter"].endswith("tolerations")
    _check_mlflow_secret(k8s)


def _check_mlflow_secret(k8s):
    envs = {}
    for entry in k8s["secretAsEnv"]:
        assert entry["secretNameParameter"]["componentInputParameter"].endswith("mlflow_secret")
        for pair in entry["keyToEnv"]:
            envs[pair["envVar"]] = entry.get("optional", False)
    assert envs["MLFLOW_TRACKING_URI"] is False, "the tracking URI must be there"
    assert envs["MLFLOW_TRACKING_PASSWORD"] is True


def _check_pvc(k8s):
    (mount,) = k8s["pvcMount"]
    assert mount["mountPath"] == CACHE_MOUNT
    assert mount["pvcNameParameter"]["componentInputParameter"].endswith("cache_pvc")


def _retry(spec, executor):
    """Retry policies of the tasks whose executor is `executor` (or a numbered copy of it)."""
    found = [
        t.get("retryPolicy")
        for _, _, t in _all_tasks(spec)
        if (_executor_of(spec, t) or "").rstrip("-0123456789") == executor
    ]
    assert found, executor
    return found


def test_benchmark_yaml_carries_cluster_settings():
    spec, platform = _load(COMPILED / "benchmark.yaml")
    for label in ("exec-train", "exec-evaluate"):
        _check_gpu_executor(spec, platform, label, "accelerator_count")
    _check_pvc(platform["exec-train"])
    _check_pvc(platform["exec-prep"])
    _check_mlflow_secret(platform["exec-compare"])
    (policy,) = _retry(spec, "exec-train")
    assert policy["maxRetryCount"] == 2 and policy["backoffDuration"] == "60s"
    loop = spec["components"]["comp-for-loop-1"]
    params = spec["root"]["inputDefinitions"]["parameters"]
    assert {"recipe", "precisions", "compile_modes", "repeats", "baseline", "tolerance", "image"} <= set(
        params
    )
    assert "configurations" not in params, "the sweep is given as lists, not encoded strings"
    assert spec["root"]["dag"]["tasks"]["for-loop-1"]["parameterIterator"]["itemInput"]
    assert "dag" in loop
    compare_inputs = spec["root"]["dag"]["tasks"]["compare"]["inputs"]["artifacts"]["runs"]
    assert compare_inputs["taskOutputArtifact"]["producerTask"] == "for-loop-1", "compare collects the loop"
    outputs = spec["components"]["comp-compare"]["outputDefinitions"]["artifacts"]
    assert outputs["report_html"]["artifactType"]["schemaTitle"] == "system.HTML"
    assert outputs["report_md"]["artifactType"]["schemaTitle"] == "system.Markdown"


def test_benchmark_sweeps_strategies_single_in_a_pod_the_others_as_a_kubeflow_job():
    """`strategies` is a sweep dimension: sweep_plan checks it with the process count; in the loop a
    `single` configuration trains in one GPU pod, every other one is launched as a job of num_nodes x
    nproc_per_node GPUs (its own name per configuration), and one evaluate takes whichever Model the
    branch made (dsl.OneOf) before compare collects them."""
    spec, platform = _load(COMPILED / "benchmark.yaml")
    params = spec["root"]["inputDefinitions"]["parameters"]
    assert params["strategies"]["defaultValue"] == ["single"]  # kfp-local and old runs: one process
    assert params["nproc_per_node"]["defaultValue"] == 2 and params["num_nodes"]["defaultValue"] == 1
    assert params["job_api"]["defaultValue"] == "trainjob"
    plan = spec["root"]["dag"]["tasks"]["sweep-plan"]["inputs"]["parameters"]
    for name in ("strategies", "nproc_per_node", "num_nodes", "settings"):
        assert plan[name] == {"componentInputParameter": name}, name
    assert plan["single_process_only"] == {"runtimeValue": {"constant": False}}

    tasks = {(comp, name): task for comp, name, task in _all_tasks(spec)}
    (branches,) = [c for c in spec["components"] if c.startswith("comp-condition-branches")]
    single, job = sorted(name for comp, name in tasks if comp == branches)  # If, then Else
    strategy_is_single = "loop-item-subvar-strategy'] == 'single'"
    assert tasks[(branches, single)]["triggerPolicy"]["condition"].endswith(strategy_is_single)
    assert tasks[(branches, job)]["triggerPolicy"]["condition"] == (
        f"!({tasks[(branches, single)]['triggerPolicy']['condition']})"
    )
    in_single = spec["components"][tasks[(branches, single)]["componentRef"]["name"]]["dag"]["tasks"]
    in_job = spec["components"][tasks[(branches, job)]["componentRef"]["name"]]["dag"]["tasks"]
    assert [t["componentRef"]["name"] for t in in_single.values()] == ["comp-train"]
    assert [t["componentRef"]["name"] for t in in_job.values()] == ["comp-train-distributed"]

    launch = next(iter(in_job.values()))["inputs"]["parameters"]
    item = "pipelinechannel--sweep-plan-Output-loop-item"
    for name, key in (("strategy", "strategy"), ("precision", "precision"), ("name_suffix", "id")):
        assert launch[name] == {
            "componentInputParameter": item,
            "parameterExpressionSelector": f'parseJson(string_value)["{key}"]',
        }, name
    assert launch["gpus_per_node"] == {"componentInputParameter": "pipelinechannel--nproc_per_node"}
    assert launch["nodes"] == {"componentInputParameter": "pipelinechannel--num_nodes"}
    assert launch["api"] == {"componentInputParameter": "pipelinechannel--job_api"}
    for name in (
        "queue",
        "priority_class",
        "workload_priority",
        "queue_timeout",
        "run_deadline",
        "namespace",
    ):
        assert launch[name] == {"componentInputParameter": f"pipelinechannel--{name}"}, name
    # the launcher: a small pod on the cache PVC, retried (it reattaches to its job), no MLflow Secret
    (policy,) = _retry(spec, "exec-train-distributed")
    assert policy["maxRetryCount"] == 2
    _check_pvc(platform["exec-train-distributed"])
    assert "secretAsEnv" not in platform["exec-train-distributed"]
    assert "accelerator" not in _executors(spec)["exec-train-distributed"]["container"]["resources"]

    # one evaluate per configuration, fed by whichever branch ran; compare collects the loop
    loop = spec["components"]["comp-for-loop-1"]["dag"]["tasks"]
    model = loop["evaluate"]["inputs"]["artifacts"]["model"]["taskOutputArtifact"]
    assert model["producerTask"] == branches.removeprefix("comp-")
    selectors = spec["components"][branches]["dag"]["outputs"]["artifacts"][model["outputArtifactKey"]]
    assert len(selectors["artifactSelectors"]) == 2


def test_benchmark_built_for_kfp_local_trains_single_process_only(tmp_path):
    """kfp.local cannot launch a job nor pick an artifact out of branches: built there, the pipeline
    has the single-process path only, and its plan refuses any other strategy."""
    from kfp import compiler

    from pipelines.benchmark import build_benchmark

    compiler.Compiler().compile(build_benchmark(train_retries=0, distributed=False), str(tmp_path / "b.yaml"))
    spec, _ = _load(tmp_path / "b.yaml")
    assert "exec-train-distributed" not in _executors(spec)
    assert not [c for c in spec["components"] if c.startswith("comp-condition")]
    plan = spec["root"]["dag"]["tasks"]["sweep-plan"]["inputs"]["parameters"]
    assert plan["single_process_only"] == {"runtimeValue": {"constant": True}}


def test_retrain_yaml_carries_cluster_settings_branches_and_exit_handler():
    spec, platform = _load(COMPILED / "retrain.yaml")
    # the training sub-pipeline runs after either prep (imported data, recipe data): every task twice
    # single-device train: gpus_per_node accelerators of accelerator_type
    _check_gpu_executor(spec, platform, "exec-train", "gpus_per_node")
    _check_pvc(platform["exec-train"])
    policies = _retry(spec, "exec-train")
    assert len(policies) == 2 and all(p["maxRetryCount"] == 2 for p in policies)
    # both distributed branches launch with retries (the launcher reattaches) and the cache PVC
    policies = _retry(spec, "exec-train-distributed")
    assert len(policies) == 4 and all(p["maxRetryCount"] == 2 for p in policies)
    for label in [x for x in platform if x.startswith("exec-train-distributed")]:
        _check_pvc(platform[label])
        _check_mlflow_secret_absent = (
            "secretAsEnv" not in platform[label]
        )  # the job's pods get it, not this pod
        assert _check_mlflow_secret_absent
    # evaluate in every branch's sub-pipeline gets the GPU settings and the secret
    evaluates = [label for label in _executors(spec) if label.startswith("exec-evaluate")]
    assert len(evaluates) == 6
    for label in evaluates:
        _check_gpu_executor(spec, platform, label, "accelerator_count")
    # the branches: multi-node, multi-GPU, single device
    conditions = [
        t.get("triggerPolicy", {}).get("condition", "")
        for _, _, t in _all_tasks(spec)
        if t.get("triggerPolicy", {}).get("condition")
    ]
    assert any("num_nodes" in c and "> 1" in c for c in conditions)
    assert any("gpus_per_node" in c and "> 1" in c for c in conditions)
    # register only when compare passed
    register_conditions = [c for c in conditions if "compare-Output" in c or "passed" in c]
    assert register_conditions, conditions
    # the exit handler closes MLflow runs and gets the secret
    root_tasks = spec["root"]["dag"]["tasks"]
    exit_tasks = [
        t
        for t in root_tasks.values()
        if t.get("triggerPolicy", {}).get("strategy") == "ALL_UPSTREAM_TASKS_COMPLETED"
    ]
    assert [t["componentRef"]["name"] for t in exit_tasks] == ["comp-mark-failed"]
    _check_mlflow_secret(platform["exec-mark-failed"])


@pytest.mark.parametrize("name", ["benchmark.yaml", "retrain.yaml"])
def test_no_secret_or_install_step_in_compiled_yaml(name):
    text = (COMPILED / name).read_text()
    spec, _ = _load(COMPILED / name)
    for label, executor in _executors(spec).items():
        if "importer" in executor:  # no container: the KFP backend records the artifact itself
            continue
        container = executor["container"]
        assert "env" not in container, f"{label}: credentials come from the Secret, not inline env"
        assert "pip install" not in " ".join(container.get("command", [])), label
    assert "MLFLOW_TRACKING_PASSWORD=" not in text and "password:" not in text.lower()


def test_retrain_imports_external_data_and_passes_the_launch_options():
    """An external data URI enters through dsl.importer (KFP lineage: Dataset -> prep), only when
    `source` is set, re-imported on every run; the launch options are pipeline parameters that reach
    the train_distributed tasks, TrainJob first."""
    spec, _ = _load(COMPILED / "retrain.yaml")
    importer = _executors(spec)["exec-importer"]["importer"]
    assert importer["reimport"] is True and importer["typeSchema"]["schemaTitle"] == "system.Dataset"
    assert importer["artifactUri"] == {"runtimeParameter": "uri"}
    tasks = {(comp, name): task for comp, name, task in _all_tasks(spec)}
    [((comp, _), imp)] = [(k, t) for k, t in tasks.items() if t["componentRef"]["name"] == "comp-importer"]
    assert imp["inputs"]["parameters"]["uri"] == {"componentInputParameter": "pipelinechannel--source"}
    assert imp.get("cachingOptions", {}).get("enableCache") is not True
    prep = tasks[(comp, "prep")]
    assert prep["inputs"]["artifacts"]["raw"]["taskOutputArtifact"] == {
        "outputArtifactKey": "artifact",
        "producerTask": "importer",
    }
    conditions = [t["triggerPolicy"].get("condition", "") for t in tasks.values() if "triggerPolicy" in t]
    assert any("pipelinechannel--source" in c and "!= ''" in c for c in conditions), conditions
    params = spec["root"]["inputDefinitions"]["parameters"]
    assert params["job_api"]["defaultValue"] == "trainjob"
    for name in ("queue", "priority_class", "workload_priority", "queue_timeout", "run_deadline"):
        assert name in params
    launches = [t for t in tasks.values() if t["componentRef"]["name"].startswith("comp-train-distributed")]
    assert len(launches) == 4
    for task in launches:
        inputs = task["inputs"]["parameters"]
        for name in ("queue", "priority_class", "workload_priority", "queue_timeout", "run_deadline"):
            assert inputs[name]["componentInputParameter"] == f"pipelinechannel--{name}"
        assert inputs["api"]["componentInputParameter"] == "pipelinechannel--job_api"

"""KFP components: import boundaries, packaging, the argv parity with the CLI, sweep plan, exit handler.

The parity test runs each component's Python function for real up to the step call, with
``ampflow.cli.main`` replaced by a spy that parses the argv with the real ``ampflow.cli.build_parser()``
and stops the function there: what is tested is the translation of component inputs into the step's
arguments, which is all a component does before the step runs.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from kfp import dsl

import components
from components.champion import champion
from components.compare import compare
from components.evaluate import evaluate
from components.mark_failed import mark_failed
from components.prep import prep
from components.register import register
from components.sweep_plan import sweep_plan
from components.train import train
from components.train_distributed import train_distributed

ROOT = Path(__file__).resolve().parents[1]
ALL = {
    "prep": prep,
    "train": train,
    "train_distributed": train_distributed,
    "evaluate": evaluate,
    "compare": compare,
    "register": register,
    "champion": champion,
    "sweep_plan": sweep_plan,
    "mark_failed": mark_failed,
}
# inputs that configure the component's process, not the step's arguments
RUNTIME_ONLY = {"cache_dir", "pipeline_run_id", "status", "experiment"}
# values a component returns (KFP output parameters), read from the step's result files
RETURNED = {"Output"}


def test_components_pipelines_and_their_runner_import_neither_torch_nor_mlflow():
    code = (
        "import sys, importlib\n"
        "for m in sys.argv[1:]: importlib.import_module(m)\n"
        "heavy = sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'mlflow'))\n"
        "print(heavy[:5]); sys.exit(1 if heavy else 0)\n"
    )
    modules = ["ampflow.integrations.kfp", "components", *(f"components.{c}" for c in sorted(ALL))]
    modules += [f"pipelines.{p}" for p in ("benchmark", "retrain", "compile", "local", "cluster")]
    # a fresh interpreter: this test process has long imported torch and mlflow
    proc = subprocess.run(  # noqa: S603 - this interpreter, fixed arguments
        [sys.executable, "-c", code, *modules], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.mark.parametrize("name", sorted(ALL))
def test_component_runs_in_the_training_image_without_installing_kfp(name):
    spec = ALL[name].component_spec
    container = spec.implementation.container
    assert container.image == components.TRAINING_IMAGE
    command = " ".join(container.command)
    assert "pip install" not in command, "install_kfp_package=False: the image brings kfp"
    assert "kfp.dsl.executor_main" in command
    assert spec.description, "the docstring is what the KFP UI shows for the component"
    assert (ROOT / "components" / name / "README.md").is_file()


def test_component_sources_hold_no_training_logic():
    """Each component imports the shared step runner inside its function and nothing from torch."""
    for name in ALL:
        source = (ROOT / "components" / name / "component.py").read_text()
        assert "import torch" not in source, name
        if name not in ("sweep_plan", "mark_failed", "champion"):  # no step: a plan, the registry
            assert "run_step(" in source, name
            # the run context, the exit-code check and the metric logging are run_step's
            assert "MLFLOW_RUN_CONTEXT" not in source and "log_metric" not in source, name
        # one constant for the pipeline-run tag, never spelled out
        assert '"ampflow.pipeline_run_id"' not in source, name
    assert components.PIPELINE_RUN_TAG == "ampflow.pipeline_run_id"


# -- parity: component inputs -> step arguments ------------------------------------------------


class _Stop(Exception):
    pass


def _artifact(cls, tmp_path, name):
    art = cls(uri=str(tmp_path / name))
    return art


def _capture(monkeypatch, step):
    from ampflow import cli

    parser = cli.build_parser()
    try:
        parser.parse_args([step, "--help"])
    except SystemExit as exc:  # --help exits 0 when the step exists
        if exc.code != 0:
            pytest.skip(f"`ampflow {step}` is not in this checkout yet")
    seen = {}

    def spy(argv):
        seen["argv"] = argv
        seen["ns"] = cli.build_parser().parse_args(argv)
        raise _Stop

    monkeypatch.setattr(cli, "main", spy)
    return seen


def _run_until_step(func, **kwargs):
    with pytest.raises(_Stop):
        func(**kwargs)


def _inputs(component):
    return set(component.component_spec.inputs or {}) | set(component.component_spec.outputs or {})


def _check(component, ns, expected, exempt=()):
    missing = _inputs(component) - set(expected) - RUNTIME_ONLY - RETURNED - set(exempt)
    assert not missing, f"component inputs with no CLI counterpart checked: {sorted(missing)}"
    for dest, want in expected.values():
        if dest is None:
            continue
        assert getattr(ns, dest) == want, (dest, getattr(ns, dest), want)


def test_prep_parity(monkeypatch, tmp_path):
    seen = _capture(monkeypatch, "prep")
    data = _artifact(dsl.Dataset, tmp_path, "data")
    _run_until_step(
        prep.python_func, recipe="tweets-bow", data=data, source="s3://b/k.csv", seed=7, limit=300
    )
    _check(
        prep,
        seen["ns"],
        {
            "recipe": ("recipe", "tweets-bow"),
            "data": ("out", data.path),
            "source": ("source", "s3://b/k.csv"),
            "raw": (None, None),  # checked below
            "seed": ("seed", 7),
            "limit": ("limit", 300),
        },
    )
    # defaults leave the step's own defaults alone
    _run_until_step(prep.python_func, recipe="tweets-bow", data=data)
    assert seen["ns"].source is None and seen["ns"].limit is None
    # an imported Dataset (dsl.importer) is read at its local path and wins over the `source` string
    raw = _artifact(dsl.Dataset, tmp_path, "raw")
    _run_until_step(prep.python_func, recipe="tweets-bow", data=data, raw=raw, source="s3://b/other.csv")
    assert seen["ns"].source == raw.path


def _overrides(ns):
    dest = "overrides" if hasattr(ns, "overrides") else "set"
    return sorted(getattr(ns, dest) or [])


def test_train_parity(monkeypatch, tmp_path):
    seen = _capture(monkeypatch, "train")
    data, model = _artifact(dsl.Dataset, tmp_path, "d"), _artifact(dsl.Model, tmp_path, "m")
    _run_until_step(
        train.python_func,
        recipe="tweets-bow",
        data=data,
        model=model,
        metrics=dsl.Metrics(),
        precision="bf16-mixed",
        compile=True,
        strategy="single",
        settings=["max_steps=8", "warmup_steps=2"],
        parent_run_id="abc123",
        require_tracking=True,
    )
    ns = seen["ns"]
    _check(
        train,
        ns,
        {
            "recipe": ("recipe", "tweets-bow"),
            "data": ("data", data.path),
            "model": ("out", model.path),
            "precision": ("precision", "bf16-mixed"),
            "compile": ("compile", True),
            "strategy": ("strategy", "single"),
            "parent_run_id": ("parent_run_id", "abc123"),
            "require_tracking": ("require_tracking", True),
            "settings": (None, None),
            "metrics": (None, None),
        },
    )
    assert _overrides(ns) == ["max_steps=8", "warmup_steps=2"]


def test_evaluate_parity(monkeypatch, tmp_path):
    seen = _capture(monkeypatch, "evaluate")
    data, model = _artifact(dsl.Dataset, tmp_path, "d"), _artifact(dsl.Model, tmp_path, "m")
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "result.json").write_text("{}")
    (tmp_path / "m" / "checkpoint.pt").write_bytes(b"weights")
    run = _artifact(dsl.Artifact, tmp_path, "run")
    _run_until_step(
        evaluate.python_func,
        recipe="tweets-bow",
        data=data,
        model=model,
        evaluated_run=run,
        metrics=dsl.Metrics(),
        confusion=dsl.ClassificationMetrics(),
        parent_run_id="p1",
        require_tracking=True,
    )
    _check(
        evaluate,
        seen["ns"],
        {
            "recipe": ("recipe", "tweets-bow"),
            "data": ("data", data.path),
            "model": ("checkpoint", model.path),
            "evaluated_run": ("out", os.path.join(run.path, "eval")),
            "parent_run_id": ("parent_run_id", "p1"),
            "require_tracking": ("require_tracking", True),
            "metrics": (None, None),
            "confusion": (None, None),
        },
    )
    # the evaluated run carries the figures compare reads, not the weights
    assert (tmp_path / "run" / "result.json").is_file() and not (tmp_path / "run" / "checkpoint.pt").exists()


def test_compare_parity(monkeypatch, tmp_path):
    seen = _capture(monkeypatch, "compare")
    runs = [_artifact(dsl.Artifact, tmp_path, f"r{i}") for i in range(3)]
    outs = dict(
        report_html=dsl.HTML(), report_md=dsl.Markdown(), summary=dsl.Artifact(), metrics=dsl.Metrics()
    )
    _run_until_step(
        compare.python_func,
        runs=runs,
        baseline="bf16-mixed",
        tolerance=0.25,
        experiment="exp",
        recipe="tweets-bow",
        sweep="s1",
        record_sweep=True,
        fail_on_regression=True,
        **outs,
    )
    ns = seen["ns"]
    given = ns.runs if isinstance(ns.runs, list) else str(ns.runs).split(",")
    assert given == [r.path for r in runs]
    _check(
        compare,
        ns,
        {
            "runs": (None, None),
            "run": (None, None),
            "baseline": ("baseline", "bf16-mixed"),
            "tolerance": ("tolerance", 0.25),
            "experiment": ("experiment", "exp"),
            "recipe": ("recipe", "tweets-bow"),
            "sweep": ("sweep", "s1"),
            "record_sweep": ("record_sweep", True),
            "fail_on_regression": ("fail_on_regression", True),
        },
        exempt=set(outs),
    )
    _run_until_step(compare.python_func, run=runs[0], **outs)
    ns = seen["ns"]
    assert (ns.runs if isinstance(ns.runs, list) else str(ns.runs).split(",")) == [runs[0].path]


def test_register_parity(monkeypatch, tmp_path):
    seen = _capture(monkeypatch, "register")
    summary = _artifact(dsl.Artifact, tmp_path, "summary.json")
    data = _artifact(dsl.Dataset, tmp_path, "d")
    decision = _artifact(dsl.Artifact, tmp_path, "decision")
    _run_until_step(
        register.python_func,
        summary=summary,
        data=data,
        decision=decision,
        model_name="tweets",
        tolerance=0.3,
        champion_version="7",
    )
    _check(
        register,
        seen["ns"],
        {
            "summary": ("summary", summary.path),
            "data": ("data", data.path),
            "model_name": ("model_name", "tweets"),
            "tolerance": ("tolerance", 0.3),
            "allow_unloadable_champion": ("allow_unloadable_champion", False),
            # the imported champion's version is the one scored (tests/test_champion_importer.py)
            "champion_version": ("champion_version", "7"),
            # lineage and the decision's record, no step arguments
            "champion": (None, None),
            "decision": (None, None),
        },
    )
    # none imported: the step reads the alias itself
    _run_until_step(register.python_func, summary=summary, data=data, decision=decision)
    assert seen["ns"].champion_version is None


def test_train_distributed_parity(monkeypatch, tmp_path):
    seen = _capture(monkeypatch, "launch")
    data = _artifact(dsl.Dataset, tmp_path, "d")
    model = _artifact(dsl.Model, tmp_path, "m")
    _run_until_step(
        train_distributed.python_func, recipe="tweets-minilm", data=data, model=model, image="img:1",
        cache_pvc="shared-cache", cache_dir="/mnt/cache", nodes=2, gpus_per_node=8, precision="bf16-mixed",
        compile=True, strategy="fsdp", settings=["max_steps=8"], name="job-a", api="trainjob", namespace="ml",
        mlflow_secret="mlflow-creds", node_selector={"pool": "a100"},
        tolerations=[{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"},
                     {"key": "team", "operator": "Equal", "value": "ml"}],
        queue="team-a", priority_class="", workload_priority="high", queue_timeout=3600.0, run_deadline=0.0,
        dry_run=True, pipeline_run_id="run-7",
    )  # fmt: skip
    ns = seen["ns"]
    staged = "/mnt/cache/pipelines/run-7/job-a"
    _check(train_distributed, ns, {
        "recipe": ("recipe", "tweets-minilm"), "data": ("data", f"{staged}/data"), "model": ("out", f"{staged}/run"),
        "image": ("image", "img:1"), "nodes": ("nodes", 2), "gpus_per_node": ("gpus_per_node", 8),
        "precision": ("precision", "bf16-mixed"), "compile": ("compile", True), "strategy": ("strategy", "fsdp"),
        "name": ("name", "job-a"), "api": ("api", "trainjob"), "namespace": ("namespace", "ml"),
        "dry_run": ("dry_run", True), "cache_pvc": ("volume", ["shared-cache:/mnt/cache"]),
        "mlflow_secret": ("mlflow_secret", "mlflow-creds"), "node_selector": ("node_selector", ["pool=a100"]),
        "tolerations": (None, None), "settings": (None, None), "name_suffix": (None, None),  # name wins
        "queue": ("queue", "team-a"), "workload_priority": ("workload_priority", "high"),
        # "" and 0 mean "not set": the launcher's defaults apply
        "priority_class": ("priority_class", None), "queue_timeout": ("queue_timeout", 3600.0),
        "run_deadline": ("run_deadline", None),
    })  # fmt: skip
    assert _overrides(ns) == ["max_steps=8"]
    # the tolerations arrive whole, as the launcher's own parser reads them
    from ampflow.kube.manifests import parse_tolerations

    assert [t for text in ns.toleration for t in parse_tolerations(text)] == [
        {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"},
        {"key": "team", "operator": "Equal", "value": "ml"},
    ]


def test_train_distributed_dry_run_renders_a_valid_manifest(tmp_path, capsys):
    """The real launcher, --dry-run: the component's argv becomes a TrainJob manifest (no cluster)."""
    from ampflow import cli

    parser = cli.build_parser()
    with pytest.raises(SystemExit) as exc:
        parser.parse_args(["launch", "--help"])
    if exc.value.code != 0:
        pytest.skip("`ampflow launch` is not in this checkout yet")
    data, model = _artifact(dsl.Dataset, tmp_path, "d"), _artifact(dsl.Model, tmp_path, "m")
    job = train_distributed.python_func(
        recipe="tweets-bow", data=data, model=model, image="ghcr.io/ampflow/ampflow-train:0.1.0-cuda12.8",
        cache_pvc="shared-cache", cache_dir="/mnt/ampflow-cache", nodes=2, gpus_per_node=4,
        mlflow_secret="ampflow-mlflow", tolerations=[{"key": "nvidia.com/gpu", "operator": "Exists"}],
        dry_run=True, pipeline_run_id="8f2a",
    )  # fmt: skip
    assert job == "ampflow-tweets-bow-8f2a"
    manifest = yaml.safe_load(capsys.readouterr().out.split("running:", 1)[1].split("\n", 1)[1])
    assert manifest["kind"] == "TrainJob"
    pod = manifest["spec"]["runtimePatches"][0]["trainingRuntimeSpec"]["template"]["spec"]["replicatedJobs"][
        0
    ]
    pod = pod["template"]["spec"]["template"]["spec"]
    mounts = {m["mountPath"] for c in pod["containers"] for m in c.get("volumeMounts", [])}
    assert "/mnt/ampflow-cache" in mounts
    # a benchmark's configurations each get their own job (and staging folder) in one pipeline run
    job = train_distributed.python_func(
        recipe="tweets-bow", data=data, model=model, image="img:1", cache_pvc="c", cache_dir="/mnt/c",
        gpus_per_node=2, strategy="fsdp", name_suffix="bf16-mixed-fsdp", dry_run=True, pipeline_run_id="8f2a",
    )  # fmt: skip
    assert job == "ampflow-tweets-bow-8f2a-bf16-mixed-fsdp"
    assert model.metadata["config_id"] == "bf16-mixed-fsdp" and model.metadata["world_size"] == 2


# -- sweep plan ----------------------------------------------------------------------------------


def test_sweep_plan_matches_bench_order_and_ids():
    from ampflow.config import SweepSpec

    plan = sweep_plan.python_func(
        precisions=["32-true", "bf16-mixed"], compile_modes=["off", "on"], repeats=2
    )
    expected = SweepSpec.from_words("32-true,bf16-mixed", "off,on", repeats=2).entries()
    # every item names its strategy: the pipeline's condition reads it
    assert plan == [{**e.to_dict(), "strategy": "single"} for e in expected]
    assert [p["id"] for p in plan[:4]] == ["32-true", "32-true-compiled", "bf16-mixed", "bf16-mixed-compiled"]
    assert plan[4]["id"] == "32-true-r1"
    plan = sweep_plan.python_func(precisions=["bf16-mixed"], compile_modes=["on"], baseline="bf16-mixed")
    assert plan == [
        {
            "id": "bf16-mixed-compiled",
            "precision": "bf16-mixed",
            "compile": True,
            "repeat": 0,
            "strategy": "single",
        }
    ]


def test_sweep_plan_sweeps_strategies_as_bench_does_and_refuses_what_cannot_run():
    """Strategies innermost with bench's ids; the process count is checked by bench's own rules
    (check_nproc, mesh.resolve over several nodes) before any pod starts; the kfp.local build refuses
    every distributed strategy."""
    from ampflow.config import ConfigError, SweepSpec

    plan = sweep_plan.python_func(precisions=["32-true", "bf16-mixed"], strategies=["single", "fsdp"])
    expected = SweepSpec.from_words("32-true,bf16-mixed", strategies="single,fsdp").entries()
    assert [p["id"] for p in plan] == [e.id for e in expected]
    assert [p["strategy"] for p in plan] == ["single", "fsdp", "single", "fsdp"]
    # two nodes of one GPU hold ddp; a 2x2 mesh needs 4 ranks
    sweep_plan.python_func(precisions=["32-true"], strategies=["ddp"], nproc_per_node=1, num_nodes=2)
    sweep_plan.python_func(
        precisions=["32-true"],
        strategies=["fsdp+tp"],
        nproc_per_node=2,
        num_nodes=2,
        settings=["mesh=dp:2,tp:2"],
    )
    refused = {
        "at least 2": dict(strategies=["single", "ddp"], nproc_per_node=1),
        "covers 4 ranks": dict(strategies=["tp"], nproc_per_node=2, settings=["mesh=tp:4"]),
        "strategy": dict(strategies=["zero3"]),
        "kfp.local": dict(strategies=["single", "ddp"], single_process_only=True),
    }
    for message, bad in refused.items():
        with pytest.raises(ConfigError, match=message):
            sweep_plan.python_func(precisions=["32-true"], **bad)
    # the user's words are the pipeline's parameters, not ampflow bench's flags
    with pytest.raises(ConfigError) as exc:
        sweep_plan.python_func(precisions=["32-true"], **refused["at least 2"])
    assert str(exc.value) == (
        "nproc_per_node must be at least 2 for strategies ddp (got 1); use strategies single for one process"
    )
    # single only: the process count does not matter, and kfp.local runs it
    assert (
        len(sweep_plan.python_func(precisions=["32-true"], nproc_per_node=1, single_process_only=True)) == 1
    )


@pytest.mark.parametrize(
    "precisions,compile_modes,repeats,baseline",
    [
        (["fp9"], ["off"], 1, "fp9"),
        (["32-true"], ["fast"], 1, "32-true"),
        ([], ["off"], 1, "32-true"),
        (["32-true"], [], 1, "32-true"),
        (["32-true"], ["off"], 0, "32-true"),
        (["32-true", "32-true"], ["off"], 1, "32-true"),
        (["bf16-mixed"], ["off"], 1, "32-true"),  # the baseline must be one of the precisions
    ],
)
def test_sweep_plan_refuses_bad_input(precisions, compile_modes, repeats, baseline):
    from ampflow.config import ConfigError

    with pytest.raises(ConfigError):
        sweep_plan.python_func(
            precisions=precisions, compile_modes=compile_modes, repeats=repeats, baseline=baseline
        )


# -- exit handler against a real MLflow store ----------------------------------------------------


def test_mark_failed_closes_only_this_pipelines_running_runs(tmp_path, monkeypatch):
    """Real MLflow (SQLite store): RUNNING runs of this pipeline run end FAILED; others are untouched."""
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    client = MlflowClient(uri)
    exp = client.create_experiment("kfp", artifact_location=str(tmp_path / "artifacts"))
    tag = components.PIPELINE_RUN_TAG
    mine = client.create_run(exp, tags={tag: "job-1"}).info.run_id
    done = client.create_run(exp, tags={tag: "job-1"}).info.run_id
    client.set_terminated(done, "FINISHED")
    other = client.create_run(exp, tags={tag: "job-2"}).info.run_id

    ok = dsl.PipelineTaskFinalStatus("SUCCEEDED", "r", "exit-handler-1", 0, "")
    assert mark_failed.python_func(pipeline_run_id="job-1", status=ok) == 0
    assert client.get_run(mine).info.status == "RUNNING"

    failed = dsl.PipelineTaskFinalStatus("FAILED", "r", "exit-handler-1", 1, "train failed")
    assert mark_failed.python_func(pipeline_run_id="job-1", status=failed) == 1
    assert client.get_run(mine).info.status == "FAILED"
    assert client.get_run(done).info.status == "FINISHED"
    assert client.get_run(other).info.status == "RUNNING"


def test_run_context_tag_reaches_runs_started_by_mlflow(tmp_path):
    """The tag every component sets through MLFLOW_RUN_CONTEXT lands on a run MLflow's fluent API starts."""
    code = (
        "import json, os, mlflow\n"
        "with mlflow.start_run() as run: pass\n"
        "print(json.dumps(mlflow.get_run(run.info.run_id).data.tags))\n"
    )
    env = {
        **os.environ,
        "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'm.db'}",
        "MLFLOW_RUN_CONTEXT": json.dumps({components.PIPELINE_RUN_TAG: "job-9"}),
    }
    proc = subprocess.run(  # noqa: S603 - this interpreter, fixed arguments
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=180, cwd=tmp_path
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert json.loads(proc.stdout.strip().splitlines()[-1])[components.PIPELINE_RUN_TAG] == "job-9"


# -- the shared step runner ------------------------------------------------------------------------


class _Metrics:
    def __init__(self):
        self.logged = {}

    def log_metric(self, name, value):
        self.logged[name] = value


def test_run_step_sets_the_run_context_logs_finite_figures_and_fails_on_exit_code(monkeypatch, tmp_path):
    from ampflow import cli
    from ampflow.integrations import kfp as integration

    result = tmp_path / "result.json"
    result.write_text(json.dumps({"metrics": {"samples_per_s": 12.5, "loss": float("nan"), "ok": True}}))
    seen = {}

    def fake_main(argv):
        seen["argv"], seen["context"] = argv, os.environ.get("MLFLOW_RUN_CONTEXT")
        return seen.get("rc", 0)

    monkeypatch.setattr(cli, "main", fake_main)
    monkeypatch.delenv("MLFLOW_RUN_CONTEXT", raising=False)
    metrics = _Metrics()
    got = integration.run_step(
        "prep", recipe="tweets-bow", out="/o", source="", seed=0, pipeline_run_id="job-3",
        metrics=metrics, result_file=str(result),
    )  # fmt: skip
    # "" means "not given" in a KFP parameter; 0 is a value
    assert seen["argv"] == ["prep", "--recipe", "tweets-bow", "--out", "/o", "--seed", "0"]
    assert json.loads(seen["context"]) == {components.PIPELINE_RUN_TAG: "job-3"}
    assert metrics.logged == {"samples_per_s": 12.5}
    assert got["metrics"]["samples_per_s"] == 12.5

    seen["rc"] = 2
    with pytest.raises(RuntimeError, match="ampflow prep exited 2"):
        integration.run_step("prep", recipe="tweets-bow", out="/o")
    with pytest.raises(ValueError, match="key=value"):
        integration.run_step("train", recipe="tweets-bow", settings=["max_steps"])


def test_components_tag_constant_is_the_integrations_one():
    from ampflow.integrations.kfp import PIPELINE_RUN_TAG

    assert components.PIPELINE_RUN_TAG is PIPELINE_RUN_TAG


def test_both_pipelines_take_the_one_cluster_parameter_definition():
    from pipelines.benchmark import benchmark
    from pipelines.cluster import CLUSTER_PARAMETERS
    from pipelines.retrain import evaluate_and_promote, retrain

    for pipeline in (benchmark, retrain, evaluate_and_promote):
        assert set(CLUSTER_PARAMETERS) <= set(pipeline.component_spec.inputs), pipeline.name
    for name, (_, default) in CLUSTER_PARAMETERS.items():
        assert benchmark.component_spec.inputs[name].default == default
        assert retrain.component_spec.inputs[name].default == default


def test_bench_finds_the_kfp_local_engine_by_entry_point(monkeypatch):
    import importlib.metadata

    from ampflow.config import ConfigError
    from ampflow.steps import bench
    from pipelines.local import run_benchmark_locally

    assert bench._kfp_local_runner() is run_benchmark_locally
    monkeypatch.setattr(importlib.metadata, "entry_points", lambda **_: [])
    with pytest.raises(ConfigError, match="kfp-local is not installed"):
        bench._kfp_local_runner()


def test_confusion_matrix_reaches_the_kfp_ui_in_eval_json_order():
    """Rows are true labels and columns predictions in eval.json, as ClassificationMetrics reads them."""
    from ampflow.integrations.kfp import log_confusion

    confusion = dsl.ClassificationMetrics()
    result = {"labels": ["neg", "neu", "pos"], "confusion_matrix": [[12, 1, 0], [8, 4, 0], [4, 2, 0]]}
    assert log_confusion(confusion, result)
    cm = confusion.metadata["confusionMatrix"]
    assert [a["displayName"] for a in cm["annotationSpecs"]] == ["neg", "neu", "pos"]
    assert [row["row"] for row in cm["rows"]] == result["confusion_matrix"]
    assert not log_confusion(dsl.ClassificationMetrics(), {"accuracy": 0.5})
    with pytest.raises(ValueError, match="3-row confusion matrix for 2 labels"):
        log_confusion(dsl.ClassificationMetrics(), {**result, "labels": ["a", "b"]})


def test_link_sweep_records_a_pipelines_runs_once_and_never_moves_a_run(tmp_path, monkeypatch):
    """Real MLflow (SQLite): the parent `bench` creates, in the runs' experiment, with their hardware;
    a second call (a retried compare) reuses it; runs of another parent are left alone."""
    from mlflow.tracking import MlflowClient

    from ampflow.tracking import schema
    from ampflow.tracking.sweeps import link_sweep

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_RUN_CONTEXT", json.dumps({components.PIPELINE_RUN_TAG: "job-5"}))
    client = MlflowClient(uri)
    exp = client.create_experiment("kfp", artifact_location=str(tmp_path / "artifacts"))
    tags = {schema.TAG_KIND: "train", schema.TAG_RECIPE: "tweets-bow", schema.TAG_HARDWARE: "hw1"}
    ids = []
    for precision in ("32-true", "bf16-mixed"):
        run = client.create_run(exp, tags=tags)
        client.log_param(run.info.run_id, "max_steps", "8")
        client.log_param(run.info.run_id, "precision", precision)
        client.set_terminated(run.info.run_id, "FINISHED")
        ids.append(run.info.run_id)
    records = [
        {"run_id": rid, "precision": p, "compile": False, "strategy": "single", "tracking_uri": uri}
        for rid, p in zip(ids, ("32-true", "bf16-mixed"), strict=True)
    ]
    parent_id = link_sweep(records, baseline="32-true", tolerance=0.5)
    parent = client.get_run(parent_id)
    assert parent.info.experiment_id == exp and parent.info.status == "FINISHED"
    assert {k: parent.data.tags[k] for k in (schema.TAG_KIND, schema.TAG_SWEEP, schema.TAG_HARDWARE)} == {
        schema.TAG_KIND: "sweep",
        schema.TAG_SWEEP: parent_id,
        schema.TAG_HARDWARE: "hw1",
    }
    assert parent.data.tags[components.PIPELINE_RUN_TAG] == "job-5"
    assert parent.data.params["precisions"] == "32-true,bf16-mixed" and parent.data.params["max_steps"] == "8"
    assert [r["sweep_run_id"] for r in records] == [parent_id, parent_id]
    for rid in ids:
        assert client.get_run(rid).data.tags[schema.TAG_PARENT] == parent_id
    assert link_sweep([dict(r) for r in records], baseline="32-true", tolerance=0.5) == parent_id

    other = client.create_run(exp, tags=tags).info.run_id
    mixed = [*records, {"run_id": other, "precision": "tf32", "tracking_uri": uri}]
    assert link_sweep(mixed, baseline="32-true", tolerance=0.5) is None
    assert schema.TAG_PARENT not in client.get_run(other).data.tags


@pytest.mark.slow  # about 8 s: kfp.local starts a subprocess for the real prep
@pytest.mark.filterwarnings("ignore:.*custom or non-Python base image")
def test_importer_feeds_prep_under_kfp_local(tmp_path, monkeypatch):
    """kfp.local (2.17) runs dsl.importer with a local path: the imported Dataset reaches the real prep
    component, which reads that file (not the recipe's built-in data) and records it as its source."""
    import csv

    from kfp import local

    monkeypatch.setenv("AMPFLOW_TRACKING", "off")
    src = tmp_path / "tweets.csv"
    with src.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["text", "label"])
        for label, words in {
            "negative": "awful sad",
            "neutral": "plain usual",
            "positive": "great happy",
        }.items():
            w.writerows([f"{words} note{i} {label}x", label] for i in range(20))
    root = tmp_path / "kfp"
    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(root), raise_on_error=True)

    def imported(uri):
        raw = dsl.importer(artifact_uri=uri, artifact_class=dsl.Dataset, reimport=True)
        return prep(recipe="tweets-bow", raw=raw.output).outputs["data"]

    # real types, not this module's postponed (string) annotations: KFP reads them
    imported.__annotations__ = {"uri": str, "return": dsl.Dataset}
    data = dsl.pipeline(name="import-and-prep")(imported)(uri=str(src)).output
    manifest = json.loads((Path(data.path) / "manifest.json").read_text())
    assert manifest["source"] == str(src) and sum(manifest["rows"].values()) == 60

"""The current champion enters the retrain pipeline through ``dsl.importer`` (KFP lineage).

- The compiled IR: in every promotion branch the `champion` lookup feeds an importer of a Model,
  under the condition that it found a URI, and that importer's Model reaches register.
- kfp.local against the real ``mlflow server`` on 127.0.0.1: the lookup finds the champion and its
  files, the importer brings them in and register's stand-in receives them; without a champion the
  branch is skipped.
- The register component hands the imported champion's version to the step (``--champion-version``)
  and records the champion it received (its `decision` artifact's metadata); against the real server,
  an alias that moved after the lookup leaves the candidate registered but not promoted.

No ``from __future__ import annotations``: kfp.local reads the probe component's annotations as types.
"""

import json
import os
import warnings
from pathlib import Path

import pytest
import yaml
from kfp import dsl
from kfp.dsl import Input, Model

from components.champion import champion
from components.register import register

ROOT = Path(__file__).resolve().parents[1]


# -- the compiled pipeline -------------------------------------------------------------------------


def test_compiled_retrain_imports_the_champion_the_lookup_found():
    spec, _ = yaml.safe_load_all((ROOT / "pipelines" / "compiled" / "retrain.yaml").read_text())
    comps, executors = spec["components"], spec["deploymentSpec"]["executors"]

    def dag(ref):
        return comps[ref]["dag"]["tasks"]

    lookups = [
        (name, body["dag"]["tasks"])
        for name, body in comps.items()
        if "dag" in body and "champion" in body["dag"]["tasks"]
    ]
    # one per promotion: 2 data sources x 3 training branches, each after compare passed
    assert len(lookups) == 6
    for _, tasks in lookups:
        assert tasks["champion"]["componentRef"]["name"].startswith("comp-champion")
        found = tasks["condition-1"]
        none = tasks["condition-2"]
        channel = "pipelinechannel--champion-Output"
        assert found["triggerPolicy"]["condition"] == f"inputs.parameter_values['{channel}'] != ''"
        assert none["triggerPolicy"]["condition"] == f"inputs.parameter_values['{channel}'] == ''"
        for branch in (found, none):
            assert branch["inputs"]["parameters"][channel]["taskOutputParameter"] == {
                "outputParameterKey": "Output",
                "producerTask": "champion",
            }
        # a champion found: imported, and handed to register with the version the lookup found
        inner = dag(found["componentRef"]["name"])
        importer = inner["champion-importer"]
        # the URI is an input of the importer's own DAG: the KFP backend reads it from there only
        assert importer["inputs"]["parameters"]["uri"] == {"componentInputParameter": channel}
        spec_ = executors[comps[importer["componentRef"]["name"]]["executorLabel"]]["importer"]
        assert spec_["typeSchema"]["schemaTitle"] == "system.Model" and not spec_.get("reimport", False)
        assert spec_["artifactUri"] == {"runtimeParameter": "uri"}
        # constants only: the KFP backend stores an importer's metadata unresolved
        assert spec_["metadata"] == {"mlflow_alias": "champion"}
        assert inner["register"]["inputs"]["artifacts"]["champion"]["taskOutputArtifact"] == {
            "outputArtifactKey": "artifact",
            "producerTask": "champion-importer",
        }
        assert inner["register"]["inputs"]["parameters"]["champion_version"] == {
            "componentInputParameter": "pipelinechannel--champion-version"
        }
        # none (the first run of a model), or out of KFP's reach: register without one
        (other,) = dag(none["componentRef"]["name"]).values()
        assert other["componentRef"]["name"].startswith("comp-register")
        assert "champion" not in other["inputs"].get("artifacts", {})


# -- kfp.local against the real MLflow server --------------------------------------------------------


@dsl.component(base_image="python:3.11", install_kfp_package=False)
def _received(out: str, champion: Input[Model] = None, champion_version: str = "") -> None:
    """register's stand-in: writes down what the pipeline handed it."""
    import json
    import os

    seen = {"champion": None, "version": champion_version}
    if champion is not None:
        files = sorted(os.listdir(champion.path)) if os.path.isdir(champion.path) else []
        seen["champion"] = {"uri": champion.uri, "metadata": dict(champion.metadata), "files": files}
    with open(out, "w", encoding="utf-8") as fh:
        json.dump(seen, fh)


def _champion_of(client, name):
    """A registered model whose `champion` alias names a version logged as register logs models."""
    import mlflow
    import torch

    exp = client.create_experiment(f"champion-{name}")
    # a new run in that experiment, named explicitly: resuming one by id fails when another test left
    # a different experiment active in this process ("active experiment ID does not match")
    with mlflow.start_run(experiment_id=exp) as run:
        # requirements given: inferring them starts a subprocess that takes seconds
        logged = mlflow.pytorch.log_model(
            torch.nn.Linear(2, 2), name="model", serialization_format="pickle", pip_requirements=["torch"]
        )
    client.create_registered_model(name)
    source = client.get_logged_model(logged.model_id).artifact_location
    version = client.create_model_version(name, source, run_id=run.info.run_id, model_id=logged.model_id)
    client.set_registered_model_alias(name, "champion", version.version)
    return version, run.info.run_id


@pytest.mark.slow  # about 25 s: two kfp.local runs, each starting the lookup and the stand-in
def test_champion_is_looked_up_and_imported_under_kfp_local(tracking_env, mlflow_client, tmp_path):
    import mlflow
    from kfp import local

    from pipelines.cluster import cluster_parameters
    from pipelines.retrain import with_champion

    mlflow.set_tracking_uri(tracking_env.uri)
    name = f"ampflow-test-{tmp_path.name}"
    version, run_id = _champion_of(mlflow_client, name)
    local.init(
        runner=local.SubprocessRunner(use_venv=False),
        pipeline_root=str(tmp_path / "kfp"),
        raise_on_error=True,
    )

    @dsl.pipeline(name="champion-lineage")
    @cluster_parameters
    def lineage(model_name: str, artifacts_destination: str, out: str, cluster=None) -> None:
        def registered(**champion_model):
            _received(out=out, **champion_model)

        with_champion(
            registered,
            model_name=model_name,
            recipe="",
            artifacts_destination=artifacts_destination,
            cluster=cluster,
        )

    def run(model_name):
        out = tmp_path / f"{model_name}.json"
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*no effect in the current local runner.*")
            warnings.filterwarnings("ignore", message=".*custom or non-Python base image.*")
            lineage(model_name=model_name, artifacts_destination=str(tracking_env.artifacts), out=str(out))
        # the lookup task's folder: its returned Output, and a file per OutputPath parameter
        task = max((tmp_path / "kfp").glob("champion-lineage-*/champion"), key=os.path.getmtime)
        outputs = {k: (task / k).read_text() for k in ("exists", "version", "run_id")}
        outputs["Output"] = json.loads((task / "executor_output.json").read_text())["parameterValues"][
            "Output"
        ]
        return outputs, json.loads(out.read_text())

    # the champion's files, where the server keeps them, imported as a Model that register receives
    outputs, seen = run(name)
    files = tracking_env.artifacts / version.source.split("mlflow-artifacts:/", 1)[1]
    assert outputs == {"Output": str(files), "exists": "true", "version": version.version, "run_id": run_id}
    assert seen["version"] == version.version
    assert seen["champion"]["uri"] == str(files) and "MLmodel" in seen["champion"]["files"]
    assert seen["champion"]["metadata"] == {"mlflow_alias": "champion"}

    # no registered model yet: the lookup says so, the import is skipped, register still runs
    outputs, seen = run(f"{name}-new")
    assert outputs == {"Output": "", "exists": "false", "version": "", "run_id": ""}
    assert seen == {"champion": None, "version": ""}


@pytest.mark.slow  # the session's MLflow server
def test_lookup_names_only_uris_kfp_can_import(tracking_env, mlflow_client, tmp_path):
    """Without the server's artifact destination its mlflow-artifacts:/ URI is not importable; a
    version registered from runs:/ resolves to the run's storage."""
    name = f"ampflow-test-{tmp_path.name}"
    exp = mlflow_client.create_experiment(name)
    run = mlflow_client.create_run(exp).info.run_id
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "MLmodel").write_text("flavors: {}\n")
    mlflow_client.log_artifacts(run, str(tmp_path / "model"), "model")
    mlflow_client.create_registered_model(name)
    mlflow_client.create_model_version(name, f"runs:/{run}/model", run_id=run)
    outs = {k: tmp_path / k for k in ("exists", "version", "run_id")}

    def lookup(**kwargs):
        uri = champion.python_func(**{k: str(v) for k, v in outs.items()}, model_name=name, **kwargs)
        return uri, {k: v.read_text() for k, v in outs.items()}

    assert lookup() == ("", {"exists": "false", "version": "", "run_id": ""}), "a version, no alias yet"
    mlflow_client.set_registered_model_alias(name, "champion", "1")
    assert lookup() == ("", {"exists": "true", "version": "1", "run_id": run})
    uri, _ = lookup(artifacts_destination=str(tracking_env.artifacts))
    assert Path(uri, "MLmodel").is_file() and uri.startswith(str(tracking_env.artifacts))
    with pytest.MonkeyPatch.context() as mp:  # in a KFP backend pod, whose importer reads object stores only
        mp.setenv("KFP_POD_NAME", "retrain-abc-123")
        assert lookup(artifacts_destination=str(tracking_env.artifacts))[0] == ""
    uri, _ = lookup(artifacts_destination="s3://bucket/mlartifacts/")
    assert uri == f"s3://bucket/mlartifacts/{uri.split('/mlartifacts/', 1)[1]}" and uri.endswith("/model")


# -- register records the champion it received --------------------------------------------------------


def test_register_records_the_champion_it_was_handed(monkeypatch, tmp_path, capsys):
    """The step is the real component's up to ``ampflow register`` (a stand-in writes register.json);
    the imported champion's version reaches the step, and the decision names that champion."""
    from ampflow import cli

    compared = {"version": "3"}
    argvs = []

    def step(argv):
        argvs.append(argv)
        summary = Path(argv[argv.index("--summary") + 1])
        result = {"model_name": "m", "version": "4", "promoted": False, "champion_before": dict(compared)}
        summary.with_name("register.json").write_text(json.dumps(result))
        return 0

    monkeypatch.setattr(cli, "main", step)
    (tmp_path / "compare").mkdir()
    (tmp_path / "compare" / "summary.json").write_text("{}")
    summary = dsl.Artifact(uri=str(tmp_path / "compare" / "summary.json"))
    current = Model(uri=str(tmp_path / "champion-files"), metadata={"mlflow_alias": "champion"})

    def run(**champion_model):
        decision = dsl.Artifact(uri=str(tmp_path / "decision.json"))
        register.python_func(
            summary=summary, data=dsl.Dataset(uri="/data"), decision=decision, **champion_model
        )
        assert json.loads(Path(decision.path).read_text())["version"] == "4"
        return decision.metadata

    assert run(champion=current, champion_version="3") == {
        "model_name": "m", "version": "4", "promoted": False, "champion_version": "3",
        "champion_uri": current.uri, "champion_matches": True,
    }  # fmt: skip
    assert f"champion (imported): v3 at {current.uri}" in capsys.readouterr().out
    # the step is told which champion to score: the imported one
    assert argvs[-1][argvs[-1].index("--champion-version") + 1] == "3"
    compared["version"] = "5"  # a step that scored another champion all the same is called out
    assert run(champion=current, champion_version="3")["champion_matches"] is False
    assert "but register compared against v5" in capsys.readouterr().out
    # nothing imported (no champion, or its files out of KFP's reach): nothing claimed, nothing expected
    assert "champion_uri" not in run()
    assert "--champion-version" not in argvs[-1]


@pytest.mark.slow  # the session's MLflow server, three real `ampflow register` runs
def test_register_component_scores_the_imported_champion_even_after_the_alias_moved(
    tracking_env, mlflow_client, tmp_path, capsys
):
    """The real component and step: the pipeline imported v1, the alias moved to v2 before register ran.
    The decision is made against v1 (the lineage's champion), and the alias is not moved."""
    from tests.test_register import BlockModel, _candidate, _dataset, _register

    data = _dataset(tmp_path / "data")
    name = f"imported-{tmp_path.name}"
    _, r1 = _register(_candidate(tmp_path / "a", BlockModel(0), accuracy=0.8), data, "--model-name", name)
    _, r2 = _register(_candidate(tmp_path / "c", BlockModel(2), accuracy=0.8), data, "--model-name", name)
    v1, v2 = r1["version"], r2["version"]
    mlflow_client.set_registered_model_alias(name, "champion", v2)

    summary = _candidate(tmp_path / "b", BlockModel(1), accuracy=0.8)
    decision = dsl.Artifact(uri=str(tmp_path / "decision.json"))
    imported = Model(uri=str(tmp_path / "champion-files"), metadata={"mlflow_alias": "champion"})
    register.python_func(
        summary=dsl.Artifact(uri=str(summary)), data=dsl.Dataset(uri=str(data)), decision=decision,
        model_name=name, champion=imported, champion_version=v1,
    )  # fmt: skip
    result = json.loads(Path(decision.path).read_text())
    # against v1 it passes (0.795 vs 0.800, the tolerance); against v2 (0.794) it would pass too
    assert (result["verdict"], result["promoted"], result["champion_before"]["accuracy"]) == (
        "pass",
        False,
        0.8,
    )
    assert f"expects 'champion' to name v{v1}, but it names v{v2}" in result["reason"]
    assert dict(decision.metadata) == {
        "model_name": name, "version": result["version"], "promoted": False, "champion_version": v1,
        "champion_uri": imported.uri, "champion_matches": True,
    }  # fmt: skip
    assert mlflow_client.get_model_version_by_alias(name, "champion").version == v2
    assert f"--champion-version {v1}" in capsys.readouterr().out

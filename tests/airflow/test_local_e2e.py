"""Both DAGs end to end in local mode through dag.test(), against a real MLflow server.

    .venv-airflow/bin/python -m pytest -q tests/airflow/test_local_e2e.py

Real parts only: `airflow db migrate` on SQLite, dag.test() running every task in this process, each
step a real `ampflow` subprocess of the main venv (AMPFLOW_BIN), a real `mlflow server` on 127.0.0.1
(queried over its REST API, mlflow is not installed in this venv). Tiny settings: prep --limit 300,
train --set max_steps=8 warmup_steps=2.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from tests.airflow.conftest import all_runs, ampflow_steps_missing, mlflow_api

pytestmark = [pytest.mark.slow, pytest.mark.airflow]
TINY = {"limit": 300, "overrides": {"max_steps": 8, "warmup_steps": 2}, "execution_mode": "local"}


@pytest.fixture(autouse=True)
def _steps_present():
    missing = ampflow_steps_missing("prep", "train", "evaluate", "compare", "register")
    if missing:
        pytest.skip(f"the main venv's ampflow has no step {', '.join(missing)} yet")


@pytest.fixture(scope="module")
def tracking(mlflow_server):
    """The steps (subprocesses of the tasks dag.test() runs here) log to the real server."""
    before = os.environ.get("MLFLOW_TRACKING_URI")
    os.environ["MLFLOW_TRACKING_URI"] = mlflow_server
    yield mlflow_server
    if before is None:
        os.environ.pop("MLFLOW_TRACKING_URI", None)
    else:
        os.environ["MLFLOW_TRACKING_URI"] = before


@pytest.fixture(scope="module")
def benchmark_run(airflow_db, tracking):
    """One precision under two strategies: the ddp configuration trains under torchrun (2 processes)."""
    conf = {
        **TINY,
        "precisions": ["32-true"],
        "compile_modes": ["off"],
        "strategies": ["single", "ddp"],
        "nproc_per_node": 2,
    }
    return fresh_dag("ampflow_benchmark").test(run_conf=conf)


def fresh_dag(name):
    """A newly parsed DAG object: dag.test() runs tasks in this process and Airflow merges a run's conf
    into the DAG's params in place, so a second run of the same object would inherit the first's."""
    import importlib

    return importlib.reload(importlib.import_module(name)).dag


def xcoms(dr, task_id):
    """The return values a task pushed in this run, by map index."""
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session

    with create_session() as session:
        rows = session.scalars(
            XComModel.get_many(run_id=dr.run_id, dag_ids=dr.dag_id, task_ids=task_id, key="return_value")
        ).all()
        return {row.map_index: XComModel.deserialize_value(row) for row in rows}


def states(dr):
    return {(ti.task_id, ti.map_index): ti.state for ti in dr.get_task_instances()}


def run_root(dr):
    from airflow_ampflow.runtime import safe_name

    return Path(os.environ["AMPFLOW_WORKDIR"], safe_name(dr.dag_id), safe_name(dr.run_id))


def runs_of(url, dr):
    """The MLflow runs this DAG run's steps created, by the run ids their run directories recorded."""
    from ampflow.steps.close_runs import recorded_run_ids

    ids = recorded_run_ids(run_root(dr))
    return [mlflow_api(url, f"runs/get?run_id={rid}")["run"] for rid in sorted(ids)]


def _tags(run):
    return {t["key"]: t["value"] for t in run.get("data", {}).get("tags", [])}


def _params(run):
    return {p["key"]: p["value"] for p in run.get("data", {}).get("params", [])}


def _metrics(run):
    return {m["key"]: m["value"] for m in run.get("data", {}).get("metrics", [])}


def test_retrain_runs_end_to_end_and_registers_the_candidate(airflow_db, tracking):
    dr = fresh_dag("ampflow_retrain").test(run_conf={**TINY, "model_name": "ampflow-airflow-test"})
    assert dr.state == "success", states(dr)
    assert all(s == "success" for s in states(dr).values()), states(dr)

    train = xcoms(dr, "train")[-1]
    assert train["metrics"]["steps"] == 8 and train["precision"] == "32-true"
    assert "loss_curve" not in train  # long series stay in result.json, out of the metadata DB
    summary = xcoms(dr, "compare")[-1]
    assert summary["schema"] == "ampflow.compare/1"
    assert summary["recommended"] == "32-true"
    assert "| " in summary["markdown"]  # the comparison table travels with the run
    register = xcoms(dr, "register")[-1]
    assert register["promoted"] is True  # no champion yet: the first candidate becomes it
    assert champion_events("ampflow-airflow-test") == [register["version"]]  # a deployment DAG's trigger

    runs = runs_of(tracking, dr)
    assert runs, "the steps' MLflow runs carry the Airflow run id"
    assert all(r["info"]["status"] == "FINISHED" for r in runs)
    trained = [r for r in runs if _tags(r).get("ampflow.kind") == "train"]
    assert len(trained) == 1
    run = trained[0]
    assert _params(run)["recipe"] == "tweets-bow" and _params(run)["precision"] == "32-true"
    assert {"samples_per_s", "accuracy", "macro_f1"} <= set(_metrics(run))


def champion_events(model_name):
    """The versions the champion asset events of ``model_name`` announced, oldest first."""
    from airflow.models.asset import AssetEvent, AssetModel
    from airflow.utils.session import create_session
    from sqlalchemy import select

    from airflow_ampflow.assets import champion_asset

    with create_session() as session:
        query = (
            select(AssetEvent)
            .join(AssetModel, AssetEvent.asset_id == AssetModel.id)
            .where(AssetModel.name == champion_asset(model_name).name)
            .order_by(AssetEvent.timestamp)
        )
        return [event.extra.get("version") for event in session.scalars(query)]


def test_a_later_benchmark_run_is_checked_against_earlier_ones_and_a_regression_fails_it(
    benchmark_run, tracking
):
    """The module's benchmark run (and the retrain run) are recorded as sweeps; a later run of 32-true
    with another seed (repeats differ there, so the runs stay comparable) trains these 8 steps to 0.42
    accuracy instead of 0.52: with fail_on_regression its compare step exits 3 and fails the run at once."""
    conf = {
        **TINY,
        "overrides": {**TINY["overrides"], "seed": 1},
        "precisions": ["32-true"],
        "fail_on_regression": True,
    }
    dr = fresh_dag("ampflow_benchmark").test(run_conf=conf)
    assert dr.state == "failed", states(dr)
    compare = dr.get_task_instance("compare")
    assert compare.state == "failed" and compare.try_number == 1  # a regression is not retried
    status = run_root(dr) / ".steps" / "compare.try1" / "status.json"
    assert json.loads(status.read_text())["returncode"] == 3

    sweeps = {
        _tags(r).get("ampflow.airflow_run_id"): r
        for r in all_runs(tracking)
        if _tags(r).get("ampflow.kind") == "sweep"
    }
    assert {benchmark_run.run_id, dr.run_id} <= set(sweeps)  # the parent bench creates, per DAG run
    assert _tags(sweeps[dr.run_id])["ampflow.regressed"] == "true"
    assert _params(sweeps[dr.run_id])["precisions"] == "32-true"


def test_step_runs_carry_the_airflow_run_id(benchmark_run, tracking):
    """Every run a step creates is tagged (MLFLOW_RUN_CONTEXT) with the Airflow run: the teardown finds it."""
    dr = benchmark_run
    tagged = [r for r in all_runs(tracking) if _tags(r).get("ampflow.airflow_run_id") == dr.run_id]
    sweeps = [r for r in tagged if _tags(r).get("ampflow.kind") == "sweep"]
    steps = {r["info"]["run_id"] for r in tagged} - {r["info"]["run_id"] for r in sweeps}
    assert steps == {r["info"]["run_id"] for r in runs_of(tracking, dr)}
    # compare recorded the configurations as one sweep, the parent `ampflow bench` creates
    assert len(sweeps) == 1 and sweeps[0]["info"]["status"] == "FINISHED"
    assert {_tags(r).get("mlflow.parentRunId") for r in runs_of(tracking, dr)} == {
        sweeps[0]["info"]["run_id"]
    }
    assert {_tags(r)["ampflow.airflow_task_id"] for r in tagged} >= {"train"}


def test_benchmark_maps_over_configurations_and_compares(benchmark_run, tracking):
    """strategies [single, ddp]: the ddp configuration's train task runs `ampflow train --strategy ddp`
    under torchrun (nproc_per_node=2, the training venv's interpreter), evaluate stays one process, and
    compare lines the two layouts up by strategy against the single-process baseline."""
    from airflow_ampflow.process import training_python

    dr = benchmark_run
    assert dr.state == "success", states(dr)
    st = states(dr)
    assert sorted(k for k in st if k[0] in ("train", "evaluate")) == [
        ("evaluate", 0),
        ("evaluate", 1),
        ("train", 0),
        ("train", 1),
    ]
    assert all(s == "success" for s in st.values()), st
    steps = run_root(dr) / ".steps"
    single, ddp = (
        (steps / f"train.{i}.try1" / "step.log").read_text().splitlines()[0].removeprefix("$ ")
        for i in (0, 1)
    )
    python = training_python(os.environ["AMPFLOW_BIN"])  # the training venv's, not this one's
    same_venv = (os.path.realpath(os.path.dirname(f)) for f in (python, os.environ["AMPFLOW_BIN"]))
    assert len(set(same_venv)) == 1
    assert ddp.startswith(f"{python} -m torch.distributed.run --nproc_per_node=2 --master_port=")
    assert " -m ampflow train " in ddp and ddp.endswith(
        "--strategy ddp --set max_steps=8 --set warmup_steps=2"
    )
    assert single.startswith(os.environ["AMPFLOW_BIN"] + " train ") and "--strategy" not in single
    assert xcoms(dr, "train")[1]["world_size"] == 2

    summary = xcoms(dr, "compare")[-1]
    assert summary["baseline"] == "32-true"
    configs = {c["config_id"]: c for c in summary["configs"]}
    assert list(configs) == ["32-true", "32-true-ddp"]
    assert configs["32-true"]["is_baseline"] and configs["32-true-ddp"]["strategy"] == "ddp"
    assert summary["recommended"] in configs and "| " in summary["markdown"]
    trained = {
        _params(r).get("strategy", "single"): r
        for r in runs_of(tracking, dr)
        if _tags(r).get("ampflow.kind") == "train"
    }
    assert set(trained) == {"single", "ddp"}
    for run in trained.values():
        assert run["info"]["status"] == "FINISHED"
        assert _params(run)["precision"] == "32-true" and _tags(run)["ampflow.precision"] == "32-true"
        assert "accuracy" in _metrics(run)


def test_bad_input_fails_its_task_at_once_and_a_runtime_failure_uses_the_retries(airflow_db, tracking):
    """Exit 2 (bad input) fails without retrying; exit 1 retries; no MLflow run is left RUNNING."""
    # a recipe that does not exist: prep exits 2, no retry can help
    dr = fresh_dag("ampflow_retrain").test(run_conf={**TINY, "recipe": "no-such-recipe"})
    assert dr.state == "failed"
    prep = dr.get_task_instance("prep")
    assert prep.state == "failed" and prep.try_number == 1
    assert dr.get_task_instance("train").state == "upstream_failed"

    # a learning rate that makes every loss non-finite: train aborts (exit 1) and is retried
    dr = fresh_dag("ampflow_retrain").test(
        run_conf={**TINY, "overrides": {**TINY["overrides"], "learning_rate": 1e38, "max_nonfinite_steps": 1}}
    )
    train = dr.get_task_instance("train")
    assert dr.state == "failed"
    assert train.state == "failed"
    assert train.try_number == 1 + fresh_dag("ampflow_retrain").task_dict["train"].retries
    runs = runs_of(tracking, dr)
    assert runs and not [r for r in runs if r["info"]["status"] == "RUNNING"]
    # every try ran its own step process, each ended with exit 1; the retries resumed the same run dir
    tries = sorted((run_root(dr) / ".steps").glob("train.try*"))
    assert [p.name for p in tries] == [f"train.try{n}" for n in range(1, train.try_number + 1)]
    assert [json.loads((p / "status.json").read_text())["returncode"] for p in tries] == [1] * len(tries)
    commands = [(p / "step.log").read_text().splitlines()[0] for p in tries]
    assert "--resume" not in commands[0] and all("--resume" in c for c in commands[1:])

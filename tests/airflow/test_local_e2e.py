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

from tests.airflow.conftest import all_runs, ampflow_steps_missing

pytestmark = pytest.mark.slow
TINY = {"limit": 300, "overrides": {"max_steps": 8, "warmup_steps": 2}, "execution_mode": "local"}


@pytest.fixture(autouse=True)
def _steps_present():
    missing = ampflow_steps_missing("prep", "train", "evaluate", "compare", "register")
    if missing:
        pytest.skip(f"the main venv's ampflow has no step {', '.join(missing)} yet")


@pytest.fixture
def tracking(mlflow_server, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server)
    return mlflow_server


def xcoms(dr, task_id):
    """The return values a task pushed in this run, by map index."""
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session

    with create_session() as session:
        rows = session.scalars(XComModel.get_many(run_id=dr.run_id, dag_ids=dr.dag_id, task_ids=task_id,
                                                  key="return_value")).all()
        return {row.map_index: XComModel.deserialize_value(row) for row in rows}


def states(dr):
    return {(ti.task_id, ti.map_index): ti.state for ti in dr.get_task_instances()}


def runs_of(url, dr):
    return [r for r in all_runs(url) if _tags(r).get("ampflow.airflow_run_id") == dr.run_id]


def _tags(run):
    return {t["key"]: t["value"] for t in run.get("data", {}).get("tags", [])}


def _params(run):
    return {p["key"]: p["value"] for p in run.get("data", {}).get("params", [])}


def _metrics(run):
    return {m["key"]: m["value"] for m in run.get("data", {}).get("metrics", [])}


def test_retrain_runs_end_to_end_and_registers_the_candidate(airflow_db, tracking):
    import ampflow_retrain

    dr = ampflow_retrain.dag.test(run_conf={**TINY, "model_name": "ampflow-airflow-test"})
    assert dr.state == "success", states(dr)
    assert all(s == "success" for s in states(dr).values()), states(dr)

    train = xcoms(dr, "train")[-1]
    assert train["steps"] == 8 if "steps" in train else train["metrics"]["steps"] == 8
    summary = xcoms(dr, "compare")[-1]
    assert summary["schema"] == "ampflow.compare/1"
    assert summary["recommended"] == "32-true"
    assert "| " in summary["markdown"]  # the comparison table travels with the run
    register = xcoms(dr, "register")[-1]
    assert register["promoted"] is True  # no champion yet: the first candidate becomes it

    runs = runs_of(tracking, dr)
    assert runs, "the steps' MLflow runs carry the Airflow run id"
    assert all(r["info"]["status"] == "FINISHED" for r in runs)
    trained = [r for r in runs if _tags(r).get("ampflow.kind") == "train"]
    assert len(trained) == 1
    run = trained[0]
    assert _params(run)["recipe"] == "tweets-bow" and _params(run)["precision"] == "32-true"
    assert {"samples_per_s", "accuracy", "macro_f1"} <= set(_metrics(run))
    assert _tags(run)["ampflow.airflow_task_id"] == "train"


def test_benchmark_maps_over_configurations_and_compares(airflow_db, tracking):
    import ampflow_benchmark

    conf = {**TINY, "precisions": ["32-true", "bf16-mixed"], "compile_modes": ["off"]}
    dr = ampflow_benchmark.dag.test(run_conf=conf)
    assert dr.state == "success", states(dr)
    st = states(dr)
    assert [k for k in st if k[0] == "train"] == [("train", 0), ("train", 1)] or sorted(
        k for k in st if k[0] == "train") == [("train", 0), ("train", 1)]
    assert all(s == "success" for s in st.values()), st

    summary = xcoms(dr, "compare")[-1]
    assert summary["baseline"] == "32-true"
    assert sorted(c["config_id"] for c in summary["configs"]) == ["32-true", "bf16-mixed"] or sorted(
        c["config_id"] for c in summary["configs"]) == sorted(["32-true", "bf16-mixed"])
    trained = {_params(r)["precision"]: r for r in runs_of(tracking, dr) if _tags(r).get("ampflow.kind") == "train"}
    assert set(trained) == {"32-true", "bf16-mixed"}
    for precision, run in trained.items():
        assert run["info"]["status"] == "FINISHED"
        assert _tags(run)["ampflow.precision"] == precision
        assert "accuracy" in _metrics(run)


def test_bad_input_fails_its_task_at_once_and_a_runtime_failure_uses_the_retries(airflow_db, tracking):
    """Exit 2 (bad input) fails without retrying; exit 1 retries; no MLflow run is left RUNNING."""
    import ampflow_retrain

    # a recipe that does not exist: prep exits 2, no retry can help
    dr = ampflow_retrain.dag.test(run_conf={**TINY, "recipe": "no-such-recipe"})
    assert dr.state == "failed"
    prep = dr.get_task_instance("prep")
    assert prep.state == "failed" and prep.try_number == 1
    assert dr.get_task_instance("train").state == "upstream_failed"

    # a learning rate that makes every loss non-finite: train aborts (exit 1) and is retried
    dr = ampflow_retrain.dag.test(run_conf={**TINY, "overrides": {**TINY["overrides"], "learning_rate": 1e38,
                                                                   "max_nonfinite_steps": 1}})
    train = dr.get_task_instance("train")
    assert dr.state == "failed"
    assert train.state == "failed"
    assert train.try_number == 1 + ampflow_retrain.dag.task_dict["train"].retries
    runs = runs_of(tracking, dr)
    assert runs and not [r for r in runs if r["info"]["status"] == "RUNNING"]
    logs = sorted(Path(os.environ["AMPFLOW_WORKDIR"], "ampflow_retrain").glob(f"*/.steps/train.try*/step.log"))
    assert len([p for p in logs if dr.run_id.replace(":", "_").replace("+", "_") in str(p)]) >= 2 or len(logs) >= 2
    assert json.loads(Path(logs[-1]).with_name("status.json").read_text())["returncode"] == 1

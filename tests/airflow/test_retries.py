"""Retries that never duplicate a step, and no MLflow run left RUNNING.

    .venv-airflow/bin/python -m pytest -q tests/airflow/test_retries.py

Real parts: dag.test() with Airflow 3.3's task state store, real `ampflow train` processes of the main
venv, a real `mlflow server`. The interrupted try is made with ``execution_timeout`` and
``on_kill_action="keep"``: the try ends while its step keeps running, which is what a crashed worker
leaves behind, and it happens inside one dag.test() run, so the retry is the same task instance.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from datetime import timedelta
from pathlib import Path

import pendulum
import pytest

from tests.airflow.conftest import ampflow_steps_missing, mlflow_api

pytestmark = [pytest.mark.slow, pytest.mark.airflow]


@pytest.fixture(autouse=True)
def _steps_present():
    missing = ampflow_steps_missing("prep", "train")
    if missing:
        pytest.skip(f"the main venv's ampflow has no step {', '.join(missing)} yet")


def _dag(dag_id: str, *, timeout_s: float | None, max_steps: int, retries: int = 30):
    from airflow.sdk import DAG

    from airflow_ampflow.operator import AmpflowStepOperator
    from airflow_ampflow.params import common_params
    from ampflow.tracking.schema import TAG_AIRFLOW_RUN_ID

    with DAG(
        dag_id=dag_id,
        schedule=None,
        start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
        params=common_params(),
        render_template_as_native_obj=True,
        tags=["ampflow", "test"],
        default_args={"retries": retries, "retry_delay": timedelta(seconds=1)},
    ) as dag:
        root = os.path.join(
            os.environ["AMPFLOW_WORKDIR"], dag_id, "{{ run_id | replace(':', '_') | replace('+', '_') }}"
        )
        data = root + "/data"
        prep = AmpflowStepOperator(
            task_id="prep", step="prep", step_options={"recipe": "tweets-bow", "out": data, "limit": 300}
        )
        train = AmpflowStepOperator(
            task_id="train",
            step="train",
            result=("out", "result.json"),
            step_options={"recipe": "tweets-bow", "data": data, "out": root + "/runs/candidate"},
            overrides={"max_steps": max_steps, "warmup_steps": 2, "log_every": 1, "checkpoint_every": 50},
            execution_timeout=timedelta(seconds=timeout_s) if timeout_s else None,
            on_kill_action="keep",
        )

        closer = AmpflowStepOperator(
            task_id="close_mlflow_runs",
            step="close-runs",
            step_options={"tag": TAG_AIRFLOW_RUN_ID + "={{ run_id }}", "run_root": root},
        )
        prep >> train >> closer.as_teardown(setups=prep)
    # dag.test() runs only serialized DAGs: store this one as the DAG processor would
    from airflow.dag_processing.bundles.manager import DagBundlesManager
    from airflow.dag_processing.dagbag import DagBag, sync_bag_to_db

    DagBundlesManager().sync_bundles_to_db()

    bag = DagBag(dag_folder=os.devnull, collect_dags=False)
    bag.bag_dag(dag)
    sync_bag_to_db(bag, "dags-folder", None)
    return dag


def test_an_interrupted_try_leaves_its_step_running_and_the_retry_reconnects(
    airflow_db, mlflow_server, monkeypatch
):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server)
    # every try ends after 2 s; `ampflow train` needs longer than that only to import torch, so at
    # least the first try is interrupted and later tries follow the same process until it ends
    dag = _dag("ampflow_test_reconnect", timeout_s=2, max_steps=100)
    dr = dag.test()
    train = dr.get_task_instance("train")
    assert dr.state == "success"
    assert train.try_number >= 2
    root = Path(os.environ["AMPFLOW_WORKDIR"], "ampflow_test_reconnect")
    steps = sorted(root.glob("*/.steps/train.*"))
    # one step process for both tries: the retry followed it instead of starting another
    assert [p.name for p in steps] == ["train.try1"]
    log = (steps[0] / "step.log").read_text()
    assert log.count("$ ") == 1 and "--resume" not in log.splitlines()[0]
    assert json.loads((steps[0] / "status.json").read_text()) == {"returncode": 0}
    result = json.loads(next(root.glob("*/runs/candidate/result.json")).read_text())
    assert result["metrics"]["steps"] == 100 and result.get("resumed_from_step") in (None, 0)


def test_the_clean_up_step_marks_this_runs_running_runs_failed(
    airflow_db, mlflow_server, monkeypatch, tmp_path
):
    """A step killed with SIGKILL cannot close its run; the clean-up task's `ampflow close-runs` does,
    and only this DAG run's: by the Airflow run id tag, and by the run ids its run directories record."""
    from airflow_ampflow.runtime import close_runs_options, run_root
    from ampflow.commands import plan_step
    from ampflow.tracking.schema import TAG_AIRFLOW_RUN_ID

    monkeypatch.setenv("AMPFLOW_WORKDIR", str(tmp_path))
    exp = mlflow_api(mlflow_server, "experiments/create", {"name": f"ampflow/closer-{time.time_ns()}"})
    mine_run_id, other_run_id = "manual__2026-11-23T10:00:00+00:00", "manual__2026-11-22T10:00:00+00:00"

    def create(airflow_run_id):
        run = mlflow_api(
            mlflow_server,
            "runs/create",
            {
                "experiment_id": exp["experiment_id"],
                "start_time": int(time.time() * 1000),
                "tags": [{"key": TAG_AIRFLOW_RUN_ID, "value": airflow_run_id}],
            },
        )
        return run["run"]["info"]["run_id"]

    tagged = create(mine_run_id)
    other = create(other_run_id)
    finished = create(mine_run_id)
    mlflow_api(mlflow_server, "runs/update", {"run_id": finished, "status": "FINISHED"})
    # an untagged run that only the run directory knows about (how the steps record their runs)
    recorded = create("unrelated")

    class Dag:
        dag_id = "ampflow_retrain"

    ctx = {"run_id": mine_run_id, "dag": Dag(), "params": {"execution_mode": "local"}}
    root = run_root(ctx, "local")
    state = Path(root, "runs", "x", "tracking")
    state.mkdir(parents=True)
    (state / "state.json").write_text(json.dumps({"run_id": recorded}))

    # what the DAGs' close_mlflow_runs task runs, with the server the worker's environment names
    argv = plan_step("close-runs", close_runs_options(ctx, root)).argv((os.environ["AMPFLOW_BIN"],))
    env = {**os.environ, "MLFLOW_TRACKING_URI": mlflow_server}
    proc = subprocess.run(argv, capture_output=True, text=True, env=env, check=False)  # noqa: S603
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert sorted(ln.split()[3] for ln in proc.stdout.splitlines() if ln.startswith("marked")) == sorted(
        [tagged, recorded]
    )

    def status(rid):
        return mlflow_api(mlflow_server, f"runs/get?run_id={rid}")["run"]["info"]["status"]

    assert status(tagged) == "FAILED" and status(recorded) == "FAILED"
    assert status(other) == "RUNNING" and status(finished) == "FINISHED"
    mlflow_api(mlflow_server, "runs/update", {"run_id": other, "status": "KILLED"})

    # without a tracking server there is nothing to check: the task succeeds
    env.pop("MLFLOW_TRACKING_URI")
    proc = subprocess.run(argv, capture_output=True, text=True, env=env, check=False)  # noqa: S603
    assert proc.returncode == 0 and "nothing checked" in proc.stdout, proc.stderr[-2000:]


def _step_pids(marker: str) -> list[int]:
    """Pids of `ampflow train` processes (not their keepers) whose command line holds ``marker``."""
    pids = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmd = (proc / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        text = [c.decode(errors="replace") for c in cmd]
        if (
            "train" in text
            and any(marker in c for c in text)
            and not any("airflow_ampflow.process" in c for c in text)
        ):
            pids.append(int(proc.name))
    return pids


def test_a_step_killed_with_sigkill_fails_its_task_and_the_teardown_closes_its_mlflow_run(
    airflow_db, mlflow_server, monkeypatch
):
    """SIGKILL (the OOM killer, a lost node) gives the step no chance to close its MLflow run."""
    import signal
    import threading

    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server)
    dag = _dag("ampflow_test_sigkill", timeout_s=None, max_steps=100_000, retries=0)
    root = Path(os.environ["AMPFLOW_WORKDIR"], "ampflow_test_sigkill")
    killed: dict[str, str] = {}

    def kill_once_its_run_exists():
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline and not killed:
            for state in root.glob("*/runs/candidate/tracking/state.json"):
                run_id = json.loads(state.read_text()).get("run_id")
                pids = _step_pids(str(state.parents[1]))
                if run_id and pids:
                    for pid in pids:
                        os.kill(pid, signal.SIGKILL)
                    killed["run_id"] = run_id
            time.sleep(0.2)

    watcher = threading.Thread(target=kill_once_its_run_exists, daemon=True)
    watcher.start()
    dr = dag.test()
    watcher.join(timeout=5)
    assert killed, "the train step never created its MLflow run"
    assert dr.state == "failed"
    assert dr.get_task_instance("train").state == "failed"
    status = json.loads(next(root.glob("*/.steps/train.try1/status.json")).read_text())
    assert status == {"returncode": -signal.SIGKILL}
    closer = dr.get_task_instance("close_mlflow_runs")
    assert closer.state == "success"
    run = mlflow_api(mlflow_server, f"runs/get?run_id={killed['run_id']}")["run"]
    assert run["info"]["status"] == "FAILED"

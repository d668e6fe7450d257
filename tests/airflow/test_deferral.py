"""Deferred waits, a retry reattaching while deferred, and MLflow settings from an Airflow Connection.

    .venv-airflow/bin/python -m pytest -q tests/airflow/test_deferral.py

Real parts: Airflow 3.3's dag.test() (which runs a deferred task's trigger inline, then resumes the
task through its ``next_method``), the task state store, the process runner's keeper, a Connection
defined the way a deployment does (``AIRFLOW_CONN_MLFLOW_DEFAULT``, JSON form) and Airflow's secrets
masker. The step is a stand-in for ``ampflow`` (AMPFLOW_BIN points at a small script written here):
it records the MLflow environment it was given, echoes the password into its own log (which the
task relays), writes a result file and sleeps as long as told, so the tests cost seconds, not the
import of torch. The real steps' retries run in test_retries.py.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import time
from datetime import timedelta
from pathlib import Path

import pendulum
import pytest

pytestmark = pytest.mark.airflow

PASSWORD = "s3cr3t-Pa55word"  # noqa: S105 - a test credential, asserted to be masked

STAND_IN = """#!{python}
# stand-in for `ampflow <step>` (tests/airflow/test_deferral.py): records what the step was given
import json, os, sys, time
argv = sys.argv[1:]
out = argv[argv.index("--out") + 1]
os.makedirs(out, exist_ok=True)
env = {{k: v for k, v in os.environ.items() if k.startswith("MLFLOW_")}}
with open(os.environ["STANDIN_RECORD"], "a") as fh:
    fh.write(json.dumps({{"argv": argv, "env": env, "pid": os.getpid()}}) + "\\n")
print("step sees", env.get("MLFLOW_TRACKING_URI"), "password", env.get("MLFLOW_TRACKING_PASSWORD"), flush=True)
time.sleep(float(os.environ.get("STANDIN_SLEEP", "0")))
with open(os.path.join(out, "result.json"), "w") as fh:
    json.dump({{"steps": 3, "loss_curve": [1.0, 0.5, 0.25]}}, fh)
print("step done", flush=True)
"""


@pytest.fixture
def stand_in(tmp_path, monkeypatch):
    """AMPFLOW_BIN -> the stand-in script; returns the file its runs are recorded in."""
    script = tmp_path / "ampflow"
    script.write_text(STAND_IN.format(python=sys.executable))
    script.chmod(0o755)
    record = tmp_path / "record.jsonl"
    monkeypatch.setenv("AMPFLOW_BIN", str(script))
    monkeypatch.setenv("STANDIN_RECORD", str(record))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    return record


@pytest.fixture
def task_runs(monkeypatch):
    """Every task-runner pass dag.test() makes: (task_id, state it ended in, classpath of its trigger)."""
    from airflow.sdk.execution_time import supervisor

    seen: list[tuple[str, str, str | None]] = []
    real = supervisor.run_task_in_process

    def spy(ti, task):
        result = real(ti=ti, task=task)
        state = result.ti.state
        seen.append((ti.task_id, getattr(state, "value", state), getattr(result.msg, "classpath", None)))
        return result

    monkeypatch.setattr(supervisor, "run_task_in_process", spy)
    return seen


@pytest.fixture
def task_log():
    """The log as a deployment writes it: Airflow's own processor chain (airflow.sdk.log), secrets
    masker included, as the supervisor and the triggerer apply it; dag.test() alone leaves logging
    to pytest. Restored afterwards."""
    import io

    import structlog
    from airflow.sdk.log import logging_processors

    buf = io.StringIO()
    saved = structlog.get_config()
    structlog.configure(
        processors=list(logging_processors(json_output=False, colors=False)),
        logger_factory=structlog.PrintLoggerFactory(file=buf),
        cache_logger_on_first_use=False,
    )
    yield buf
    structlog.configure(**saved)


def _dag(dag_id: str, *, timeout_s: float | None = None, on_kill_action: str = "kill", retries: int = 0):
    from airflow.dag_processing.bundles.manager import DagBundlesManager
    from airflow.dag_processing.dagbag import DagBag, sync_bag_to_db
    from airflow.sdk import DAG

    from airflow_ampflow.operator import AmpflowStepOperator
    from airflow_ampflow.params import common_params

    with DAG(
        dag_id=dag_id,
        schedule=None,
        start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
        params=common_params(),
        render_template_as_native_obj=True,
        default_args={"retries": retries, "retry_delay": timedelta(seconds=1)},
    ) as dag:
        out = os.path.join(
            os.environ["AMPFLOW_WORKDIR"],
            dag_id,
            "{{ run_id | replace(':', '_') | replace('+', '_') }}",
            "prep",
        )
        AmpflowStepOperator(
            task_id="prep",
            step="prep",
            step_options={"recipe": "tweets-bow", "out": out},
            result=("out", "result.json"),
            execution_timeout=timedelta(seconds=timeout_s) if timeout_s else None,
            on_kill_action=on_kill_action,
            poll_interval=0.2,
        )
    DagBundlesManager().sync_bundles_to_db()
    bag = DagBag(dag_folder=os.devnull, collect_dags=False)
    bag.bag_dag(dag)
    sync_bag_to_db(bag, "dags-folder", None)
    return dag


def _xcom(dr, task_id):
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session

    with create_session() as session:
        rows = session.scalars(
            XComModel.get_many(run_id=dr.run_id, dag_ids=dr.dag_id, task_ids=task_id, key="return_value")
        ).all()
        return [XComModel.deserialize_value(row) for row in rows]


# -- the trigger alone ------------------------------------------------------------------------------


def test_the_trigger_survives_serialization_as_the_triggerer_rebuilds_it():
    """What the task runner stores (serde of serialize()'s kwargs) rebuilds an equal trigger."""
    from airflow.sdk._shared.module_loading import import_string
    from airflow.sdk.serde import deserialize, serialize

    from airflow_ampflow.triggers import LocalStepTrigger

    ident = {
        "pid": 4242,
        "start": "123",
        "status": "/w/status.json",
        "log": "/w/step.log",
        "argv": ["a", "b"],
    }
    trigger = LocalStepTrigger(
        step=ident,
        label="train",
        poll_interval=0.5,
        deadline=1.5e9,
        log_offset=17,
        mlflow_conn_id="mlf",
        stop_on_kill=False,
    )
    classpath, kwargs = trigger.serialize()
    assert classpath == "airflow_ampflow.triggers.LocalStepTrigger"
    stored = json.loads(json.dumps(serialize(kwargs)))  # through the database as JSON
    rebuilt = import_string(classpath)(**deserialize(stored))
    assert rebuilt.serialize() == (classpath, kwargs)
    assert rebuilt.step == ident and rebuilt.log_offset == 17 and rebuilt.deadline == 1.5e9
    assert rebuilt.stop_on_kill is False


def test_the_trigger_module_imports_without_torch_mlflow_or_the_pod_operator():
    """The triggerer imports it: a fresh interpreter shows what it pulls in."""
    import subprocess

    code = (
        "import sys, json; import airflow_ampflow.triggers\n"
        "print(json.dumps([m for m in ('torch', 'mlflow', 'airflow.providers.cncf.kubernetes.operators.pod') if m in sys.modules]))"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)  # noqa: S603
    assert json.loads(proc.stdout.strip().splitlines()[-1]) == []


def test_the_trigger_follows_a_real_step_and_reports_its_exit_code(tmp_path):
    """A real keeper process; the trigger's event carries the exit code and how far the log was read."""
    from airflow_ampflow import process
    from airflow_ampflow.triggers import LocalStepTrigger

    ident = process.start(
        [sys.executable, "-c", "print('one'); print('two'); raise SystemExit(3)"],
        tmp_path / "s",
        dict(os.environ),
    )
    event = asyncio.run(anext(LocalStepTrigger(step=ident, label="x", poll_interval=0.05).run()))
    assert event.payload["status"] == "failed:3"
    log = Path(ident["log"]).read_bytes()
    assert b"one\ntwo\n" in log and event.payload["log_offset"] == len(log)

    # past the try's deadline the event says so and the step is left to the operator
    ident = process.start(
        [sys.executable, "-c", "import time; print('ready', flush=True); time.sleep(60)"],
        tmp_path / "t",
        dict(os.environ),
    )
    deadline = time.monotonic() + 120  # a bound on a loaded machine, not a measurement
    log = Path(ident["log"])
    while not (log.exists() and b"ready" in log.read_bytes()) and time.monotonic() < deadline:
        time.sleep(0.05)
    try:
        event = asyncio.run(anext(LocalStepTrigger(step=ident, label="x", deadline=time.time() - 1).run()))
        assert event.payload["status"] == "timeout" and process.state(ident) == "running"
        # a user killing the deferred task: kept with stop_on_kill=False, stopped (SIGTERM) otherwise
        asyncio.run(LocalStepTrigger(step=ident, label="x", stop_on_kill=False).on_kill())
        assert process.state(ident) == "running"
        asyncio.run(LocalStepTrigger(step=ident, label="x").on_kill())
        assert process.state(ident) == f"failed:{-signal.SIGTERM}"
    finally:
        process.stop(ident)


# -- through dag.test() -----------------------------------------------------------------------------


def test_a_local_step_defers_resumes_and_gets_the_mlflow_connection_masked(
    airflow_db, stand_in, task_runs, monkeypatch, task_log
):
    """The task defers to LocalStepTrigger (its first pass ends DEFERRED), resumes in
    execute_complete with the step's result as XCom; the step got the Connection's URI, credentials
    and TLS setting, and the password the step echoed shows as *** in the task's log."""
    monkeypatch.setenv(
        "AIRFLOW_CONN_MLFLOW_DEFAULT",
        json.dumps(
            {
                "conn_type": "http",
                "host": "mlflow.internal",
                "port": 5443,
                "schema": "https",
                "login": "ampflow-bot",
                "password": PASSWORD,
                "extra": {"server_cert_path": "/etc/ssl/mlflow-ca.pem"},
            }
        ),
    )
    dr = _dag("ampflow_test_defer").test()
    assert dr.state == "success"
    assert task_runs[0] == ("prep", "deferred", "airflow_ampflow.triggers.LocalStepTrigger")
    assert task_runs[-1][:2] == ("prep", "success") and len(task_runs) == 2
    # the result file came back as the XCom, per-step series left out
    assert _xcom(dr, "prep") == [{"steps": 3}]
    [run] = [json.loads(line) for line in stand_in.read_text().splitlines()]
    assert run["env"]["MLFLOW_TRACKING_URI"] == "https://mlflow.internal:5443"
    assert run["env"]["MLFLOW_TRACKING_USERNAME"] == "ampflow-bot"
    assert run["env"]["MLFLOW_TRACKING_PASSWORD"] == PASSWORD
    assert run["env"]["MLFLOW_TRACKING_SERVER_CERT_PATH"] == "/etc/ssl/mlflow-ca.pem"
    logs = task_log.getvalue()
    # the trigger relayed the step's own output into the task log, the password masked
    assert "[prep] step sees https://mlflow.internal:5443 password ***" in logs
    assert PASSWORD not in logs


def test_without_the_connection_the_step_keeps_the_workers_environment(
    airflow_db, stand_in, monkeypatch, task_log
):
    monkeypatch.delenv("AIRFLOW_CONN_MLFLOW_DEFAULT", raising=False)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:1")
    dr = _dag("ampflow_test_noconn").test()
    assert dr.state == "success"
    [run] = [json.loads(line) for line in stand_in.read_text().splitlines()]
    assert run["env"]["MLFLOW_TRACKING_URI"] == "http://127.0.0.1:1"
    assert "MLFLOW_TRACKING_PASSWORD" not in run["env"]
    assert "no Airflow connection 'mlflow_default'" in task_log.getvalue()


def test_a_deferred_try_past_its_timeout_leaves_the_step_and_the_retry_reattaches(
    airflow_db, stand_in, task_runs, monkeypatch
):
    """execution_timeout ends a deferred try (the trigger's deadline); with on_kill_action=keep the
    step runs on and the retry defers on the same process instead of starting a second one."""
    monkeypatch.setenv("STANDIN_SLEEP", "6")
    dr = _dag("ampflow_test_reattach", timeout_s=1, on_kill_action="keep", retries=5).test()
    assert dr.state == "success"
    ti = dr.get_task_instance("prep")
    assert ti.try_number >= 2
    runs = [json.loads(line) for line in stand_in.read_text().splitlines()]
    assert len(runs) == 1  # one step process for every try
    steps = sorted(Path(os.environ["AMPFLOW_WORKDIR"], "ampflow_test_reattach").glob("*/.steps/prep.*"))
    assert [p.name for p in steps] == ["prep.try1"]
    deferred = [r for r in task_runs if r[1] == "deferred"]
    assert len(deferred) >= 2 and {r[2] for r in deferred} == {"airflow_ampflow.triggers.LocalStepTrigger"}
    assert _xcom(dr, "prep") == [{"steps": 3}]

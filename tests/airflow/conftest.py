"""Airflow DAG tests: run in the Airflow venv (`make test-airflow`), skipped in the main venv.

    .venv-airflow/bin/python -m pytest -q tests/airflow

Airflow reads its configuration when first imported, so AIRFLOW_HOME (a temporary folder with a
SQLite metadata database) and the dags folder are set here, at import, before any test imports it.
`airflow db migrate` runs once per session. Steps run through the main venv's `ampflow`
(AMPFLOW_BIN), never inside this interpreter: the Airflow venv has no torch and no mlflow.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DAGS = ROOT / "dags"
MAIN_BIN = ROOT / ".venv" / "bin"

if importlib.util.find_spec("airflow") is None:
    # the main venv has no Airflow (kubernetes>=36 against kfp's <31): these run in .venv-airflow
    collect_ignore_glob = ["test_*.py"]
else:
    _HOME = tempfile.mkdtemp(prefix="ampflow-airflow-")
    os.environ.update(
        {
            "AIRFLOW_HOME": _HOME,
            "AIRFLOW__CORE__DAGS_FOLDER": str(DAGS),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{_HOME}/airflow.db",
            "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
            "AIRFLOW__LOGGING__LOGGING_LEVEL": "INFO",
            "AMPFLOW_WORKDIR": os.path.join(_HOME, "work"),
            # a real connection definition, so the pod operator's hook can be built (never called)
            "AIRFLOW_CONN_KUBERNETES_DEFAULT": json.dumps(
                {"conn_type": "kubernetes", "extra": {"in_cluster": False}}
            ),
            # retries wait a second here instead of a minute
            "AIRFLOW_VAR_AMPFLOW_RETRY_DELAY_S": "1",
        }
    )
    # a kubeconfig for a cluster that is never contacted: the pod operator's hook needs one to exist
    Path(_HOME, "kubeconfig").write_text(
        json.dumps(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "current-context": "test",
                "clusters": [{"name": "test", "cluster": {"server": "https://127.0.0.1:1"}}],
                "contexts": [{"name": "test", "context": {"cluster": "test", "user": "test"}}],
                "users": [{"name": "test", "user": {}}],
            }
        )
    )
    os.environ["KUBECONFIG"] = os.path.join(_HOME, "kubeconfig")
    os.environ.setdefault("AMPFLOW_BIN", str(MAIN_BIN / "ampflow"))
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    os.environ.pop("MLFLOW_TRACKING_URI", None)
    if str(DAGS) not in sys.path:
        sys.path.insert(0, str(DAGS))


def pytest_sessionfinish(session, exitstatus):
    home = os.environ.get("AIRFLOW_HOME", "")
    if home.startswith(tempfile.gettempdir()) and "ampflow-airflow-" in home:
        shutil.rmtree(home, ignore_errors=True)


@pytest.fixture(scope="session")
def airflow_db():
    """`airflow db migrate` once per session, on SQLite under the temporary AIRFLOW_HOME."""
    airflow = Path(sys.executable).with_name("airflow")
    proc = subprocess.run([str(airflow), "db", "migrate"], capture_output=True, text=True, check=False)  # noqa: S603
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    from airflow import settings

    settings.configure_orm()
    return os.environ["AIRFLOW_HOME"]


def ampflow_steps_missing(*steps: str) -> list[str]:
    """Steps the main venv's `ampflow` does not offer yet (they are being written alongside)."""
    exe = os.environ["AMPFLOW_BIN"]
    if not os.access(exe, os.X_OK):
        return list(steps)
    out = subprocess.run([exe, "--help"], capture_output=True, text=True, check=False)  # noqa: S603
    return [
        s
        for s in steps
        if f"    {s}" not in out.stdout and f"{{{s}" not in out.stdout and f",{s}" not in out.stdout
    ]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory):
    """A real `mlflow server` (from the main venv) on a free 127.0.0.1 port, SQLite-backed."""
    exe = MAIN_BIN / "mlflow"
    if not exe.exists():
        pytest.skip("the main venv has no mlflow (make setup)")
    folder = tmp_path_factory.mktemp("mlflow")
    port = _free_port()
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    log = open(folder / "server.log", "wb")  # noqa: SIM115 - open for the server's lifetime
    proc = subprocess.Popen(  # noqa: S603
        [
            str(exe),
            "server",
            "--backend-store-uri",
            f"sqlite:///{folder}/mlflow.db",
            "--artifacts-destination",
            str(folder / "artifacts"),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            "1",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        env=env,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while True:
        try:
            with urllib.request.urlopen(url + "/health", timeout=2) as resp:  # noqa: S310
                if resp.status == 200:
                    break
        except OSError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            pytest.fail("mlflow server did not start: " + (folder / "server.log").read_text()[-2000:])
        time.sleep(0.5)
    yield url
    proc.terminate()
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
    log.close()


def mlflow_api(url: str, path: str, payload: dict | None = None) -> dict:
    """MLflow's REST API, from this venv (mlflow itself is not installed here)."""
    data = json.dumps(payload).encode() if payload is not None else None
    req = urllib.request.Request(
        f"{url}/api/2.0/mlflow/{path}",
        data=data,
        method="POST" if data else "GET",
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(req, timeout=30) as resp:  # noqa: S310
        return json.loads(resp.read() or b"{}")


def all_runs(url: str) -> list[dict]:
    exps = mlflow_api(url, "experiments/search", {"max_results": 1000}).get("experiments", [])
    ids = [e["experiment_id"] for e in exps]
    if not ids:
        return []
    return mlflow_api(url, "runs/search", {"experiment_ids": ids, "max_results": 1000}).get("runs", [])

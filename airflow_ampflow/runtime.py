"""What a task resolves when it runs: execution mode, the ``ampflow`` executable, cluster settings,
the run directory, and the MLflow tags every step of the DAG run carries.

Variables are read here, at run time only (never while the scheduler parses). Each falls back to an
environment variable and then a default, so a plain import or a unit test without an API server works.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from typing import Any

from airflow.sdk import Variable
from airflow.sdk.exceptions import AirflowFailException

from airflow_ampflow.params import MODES
from airflow_ampflow.pods import KUBE_DEFAULTS
from ampflow.tracking.schema import TAG_AIRFLOW_DAG_ID, TAG_AIRFLOW_RUN_ID, TAG_AIRFLOW_TASK_ID


def variable(key: str, default: Any = None) -> Any:
    """The Airflow Variable ``key``, else ``default`` (also when no API server can be asked)."""
    try:
        return Variable.get(key, default=default)
    except Exception:  # no API server to ask (plain import, unit test): the default stands
        return default


def resolve_mode(context: Any) -> str:
    """``local`` or ``kubernetes``: the param, else Variable ``ampflow_execution_mode``, else env
    ``AMPFLOW_EXECUTION_MODE``, else ``local``."""
    mode = (
        context["params"].get("execution_mode")
        or variable("ampflow_execution_mode")
        or os.environ.get("AMPFLOW_EXECUTION_MODE")
        or "local"
    )
    if mode not in MODES:
        raise AirflowFailException(f"execution_mode must be one of {', '.join(MODES)}; got {mode!r}")
    return mode


def resolve_ampflow_bin() -> str:
    """Local mode's ``ampflow`` executable: Variable ``ampflow_bin``, else env ``AMPFLOW_BIN``, else
    ``ampflow`` on PATH. Deliberately not a param: who triggers a run must not choose what the worker
    executes."""
    candidate = variable("ampflow_bin") or os.environ.get("AMPFLOW_BIN") or "ampflow"
    found = shutil.which(candidate)
    if not found:
        raise AirflowFailException(
            f"ampflow_bin: {candidate!r} is not an executable; point the Variable ampflow_bin "
            "or env AMPFLOW_BIN at the training venv's ampflow (e.g. /opt/ampflow/.venv/bin/ampflow)"
        )
    return found


def kube_settings(context: Any) -> dict[str, Any]:
    """Cluster settings: :data:`~airflow_ampflow.pods.KUBE_DEFAULTS`, overridden by the Variable
    ``ampflow_kubernetes`` (a JSON object) and the ``image`` param."""
    raw = variable("ampflow_kubernetes")
    overrides = json.loads(raw) if isinstance(raw, str) and raw.strip() else (raw or {})
    if not isinstance(overrides, dict):
        raise AirflowFailException("Variable ampflow_kubernetes must be a JSON object")
    settings = {**KUBE_DEFAULTS, **overrides}
    if context["params"].get("image"):
        settings["image"] = context["params"]["image"]
    return settings


def safe_name(text: str) -> str:
    """``text`` as one path component (dag ids and run ids hold ``:`` and ``+``)."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("._") or "run"


def run_root(context: Any, mode: str | None = None) -> str:
    """The directory every step of this DAG run reads and writes: under the PVC's mount path in
    kubernetes mode, else under Variable ``ampflow_workdir`` (env ``AMPFLOW_WORKDIR``, default
    ``$AIRFLOW_HOME/ampflow-work``)."""
    mode = mode or resolve_mode(context)
    if mode == "kubernetes":
        base = kube_settings(context)["mount_path"]
    else:
        home = os.environ.get("AIRFLOW_HOME", os.path.expanduser("~/airflow"))
        base = (
            variable("ampflow_workdir")
            or os.environ.get("AMPFLOW_WORKDIR")
            or os.path.join(home, "ampflow-work")
        )
    return os.path.join(base, safe_name(context["dag"].dag_id), safe_name(context["run_id"]))


def run_context_tags(context: Any) -> dict[str, str]:
    """Tags every MLflow run a step starts carries (through MLflow's ``MLFLOW_RUN_CONTEXT``), so the
    clean-up task finds and closes the runs a killed step left RUNNING."""
    ti = context["ti"]
    return {TAG_AIRFLOW_DAG_ID: ti.dag_id, TAG_AIRFLOW_RUN_ID: ti.run_id, TAG_AIRFLOW_TASK_ID: ti.task_id}


def close_runs_options(context: Any, root: str) -> dict[str, Any]:
    """The ``ampflow close-runs`` options of this DAG run's clean-up task: its runs by their Airflow
    run id tag and by the run directories under ``root``; the server is Variable
    ``ampflow_mlflow_tracking_uri``, else the step's ``MLFLOW_TRACKING_URI``."""
    return {
        "tag": f"{TAG_AIRFLOW_RUN_ID}={context['run_id']}",
        "run_root": root,
        "tracking_uri": variable("ampflow_mlflow_tracking_uri") or None,
    }

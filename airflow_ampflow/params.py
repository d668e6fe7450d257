"""The Params and default_args the ampflow DAGs share, and the settings read while parsing.

The scheduler parses DAG files every few seconds: nothing here reads a Variable (a database round
trip) or imports torch or mlflow. Settings come from the environment in Airflow's own spelling of a
Variable (``AIRFLOW_VAR_<NAME>``).
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from datetime import timedelta
from typing import Any

from airflow.sdk import Param

from ampflow.config import BASELINE_PRECISION, PRECISIONS, overrides_schema

MODES = ("local", "kubernetes")
APIS = ("trainjob", "pytorchjob")
# a Kueue LocalQueue or a PriorityClass: a DNS-1123 subdomain that also fits a label value (63)
_K8S_NAME = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"


def parse_time_setting(name: str, default: str) -> str:
    """A setting the scheduler needs while parsing, from ``AIRFLOW_VAR_<NAME>``, else ``default``."""
    return os.environ.get(f"AIRFLOW_VAR_{name.upper()}", default)


def default_args() -> dict[str, Any]:
    """Every task: at least 2 retries, exponential back-off from ``ampflow_retry_delay_s`` (60 s)."""
    retries = max(2, int(parse_time_setting("ampflow_retries", "2")))
    return {
        "owner": "ampflow",
        "retries": retries,
        "retry_delay": timedelta(seconds=float(parse_time_setting("ampflow_retry_delay_s", "60"))),
        "retry_exponential_backoff": 2.0,
        "max_retry_delay": timedelta(minutes=30),
    }


def common_params() -> dict[str, Param]:
    """The params both DAGs take: what to train on, ``--set`` overrides, where the steps run, the
    MLflow Connection, the shared-cluster settings (:func:`cluster_params`), and whether a regression
    against earlier runs fails the run."""
    return {
        "recipe": Param(
            "tweets-bow", type="string", minLength=1, description="built-in recipe or module:function"
        ),
        "source": Param(
            None, type=["null", "string"], description="data file or fsspec URI (default: the recipe's data)"
        ),
        "limit": Param(
            None, type=["null", "integer"], minimum=1, description="prep: keep a stratified subset of N rows"
        ),
        # the schema comes from RunConfig: the trigger form refuses an unknown key or a wrong type
        "overrides": Param(
            {}, description='RunConfig --set overrides, e.g. {"max_steps": 100}', **overrides_schema()
        ),
        "execution_mode": Param(
            None,
            type=["null", "string"],
            enum=[None, *MODES],
            description="local or kubernetes; empty: Variable ampflow_execution_mode, else local",
        ),
        "image": Param(None, type=["null", "string"], description="kubernetes mode: training image override"),
        "mlflow_conn_id": Param(
            "mlflow_default",
            type="string",
            minLength=1,
            description="Airflow connection (type http) of the MLflow tracking server: host/port/schema, "
            "login/password, extra insecure_tls or server_cert_path; when it does not exist the worker's "
            "MLFLOW_TRACKING_* environment (kubernetes: the Secret) is used",
        ),
        **cluster_params(),
        "fail_on_regression": Param(
            False,
            type="boolean",
            description="fail the run (compare exits 3) when a configuration regressed against earlier "
            "runs of the recipe on the same hardware",
        ),
    }


def cluster_params() -> dict[str, Param]:
    """The shared-cluster params (kubernetes mode): Kueue queue, priority class and workload priority,
    the job API of a distributed train, and the two deadlines ``ampflow launch`` separates (a queue
    timeout while pending, a run deadline once running). Each becomes the ``launch`` flag of the same
    name (``--queue``, ``--priority-class``, ``--workload-priority``, ``--api``, ``--queue-timeout``,
    ``--run-deadline``) through :func:`ampflow.commands.plan_step`; ``queue`` and ``priority_class``
    also reach the task pods."""
    return {
        "queue": _k8s_name_param(
            "kubernetes: Kueue LocalQueue (label kueue.x-k8s.io/queue-name) of the job and pods"
        ),
        "priority_class": _k8s_name_param(
            "kubernetes: the pods' priorityClassName (a distributed TrainJob takes it from its runtime: "
            "use api pytorchjob)"
        ),
        "workload_priority": _k8s_name_param(
            "kubernetes, distributed: Kueue WorkloadPriorityClass (label kueue.x-k8s.io/priority-class)"
        ),
        "api": Param(
            "trainjob",
            type="string",
            enum=list(APIS),
            description="kubernetes, nodes x gpus_per_node > 1: Kubeflow Trainer v2 TrainJob, or the "
            "legacy Training Operator's PyTorchJob",
        ),
        "queue_timeout": _seconds_param(
            "kubernetes, distributed: seconds the job may wait to be admitted and scheduled"
        ),
        "run_deadline": _seconds_param("kubernetes, distributed: seconds the job may run once it started"),
    }


def _k8s_name_param(description: str) -> Param:
    """An optional Kubernetes object name (a Kueue queue, a priority class): a DNS-1123 subdomain that
    also fits a label value."""
    return Param(None, type=["null", "string"], maxLength=63, pattern=_K8S_NAME, description=description)


def _seconds_param(description: str) -> Param:
    """An optional positive number of seconds (a deadline)."""
    return Param(None, type=["null", "number"], exclusiveMinimum=0, description=description)


def choices_param(default: list[str], choices: Iterable[str], description: str) -> Param:
    """A non-empty list of distinct words, each one of ``choices``: a sweep dimension (precisions,
    compile modes, strategies) as the trigger form validates it."""
    return Param(
        list(default),
        type="array",
        minItems=1,
        uniqueItems=True,
        items={"type": "string", "enum": list(choices)},
        description=description,
    )


def precision_param(default: str = BASELINE_PRECISION, **kw: Any) -> Param:
    """A param that takes only ampflow's precision modes."""
    return Param(default, type="string", enum=list(PRECISIONS), **kw)


def tolerance_param() -> Param:
    """The accuracy a configuration may lose against the baseline, in percentage points."""
    return Param(0.5, type="number", minimum=0, description="accuracy tolerance, percentage points")

"""The MLflow tracking server from an Airflow Connection (param ``mlflow_conn_id``, default
``mlflow_default``), turned into the environment MLflow's client reads.

A Connection of type ``http``: ``schema`` (http or https, default http), ``host`` and ``port`` make
``MLFLOW_TRACKING_URI`` (a host that already holds a URI, ``https://mlflow.example.com/base``, is
kept as it is); ``login``/``password`` become ``MLFLOW_TRACKING_USERNAME``/``MLFLOW_TRACKING_PASSWORD``;
the extra ``{"insecure_tls": true}``, ``{"server_cert_path": "/etc/ssl/mlflow.pem"}``,
``{"client_cert_path": ...}`` and ``{"token": ...}`` become ``MLFLOW_TRACKING_INSECURE_TLS``,
``MLFLOW_TRACKING_SERVER_CERT_PATH``, ``MLFLOW_TRACKING_CLIENT_CERT_PATH`` and
``MLFLOW_TRACKING_TOKEN``. Define one with the environment variable Airflow reads::

    AIRFLOW_CONN_MLFLOW_DEFAULT='{"conn_type": "http", "host": "mlflow.example.com", "schema": "https",
                                  "login": "ampflow", "password": "...", "extra": {"server_cert_path": "/etc/ssl/ca.pem"}}'

Without the Connection a step keeps today's behaviour: the worker's ``MLFLOW_TRACKING_*`` environment
(and the Secret in kubernetes mode), which the task log says.

Sources: MLflow's client environment (https://mlflow.org/docs/latest/self-hosting/security/basic-http-auth/
and ``mlflow.environment_variables``); Airflow's JSON connection format
(https://airflow.apache.org/docs/apache-airflow/stable/howto/connection.html); the SDK masks a fetched
connection's password, and :func:`airflow.sdk.log.mask_secret` is called here as well.
"""

from __future__ import annotations

from typing import Any

DEFAULT_CONN_ID = "mlflow_default"

# connection extra key -> MLflow client environment variable
_EXTRA_ENV = {
    "insecure_tls": "MLFLOW_TRACKING_INSECURE_TLS",
    "server_cert_path": "MLFLOW_TRACKING_SERVER_CERT_PATH",
    "client_cert_path": "MLFLOW_TRACKING_CLIENT_CERT_PATH",
    "token": "MLFLOW_TRACKING_TOKEN",
}
# what a pod may carry in plain env: no credential (those come from the Kubernetes Secret)
NOT_SECRET = ("MLFLOW_TRACKING_URI", "MLFLOW_TRACKING_INSECURE_TLS", "MLFLOW_TRACKING_SERVER_CERT_PATH")


def tracking_uri(conn: Any) -> str:
    """``schema://host[:port]``; a host that already is a URI stays as it is (credentials never in it)."""
    host = (conn.host or "").strip()
    if not host:
        raise ValueError(f"connection {conn.conn_id!r} has no host")
    if "://" in host:
        return host.rstrip("/")
    scheme = (conn.schema or "http").strip() or "http"
    port = f":{conn.port}" if conn.port else ""
    return f"{scheme}://{host}{port}"


def mlflow_env(conn: Any) -> dict[str, str]:
    """The MLflow client environment a step gets from the Connection ``conn``."""
    env = {"MLFLOW_TRACKING_URI": tracking_uri(conn)}
    if conn.login:
        env["MLFLOW_TRACKING_USERNAME"] = conn.login
    if conn.password:
        env["MLFLOW_TRACKING_PASSWORD"] = conn.password
    extra = conn.extra_dejson or {}
    for key, name in _EXTRA_ENV.items():
        value = extra.get(key)
        if value in (None, "", False):
            continue
        env[name] = "true" if value is True else str(value)
    return env


def resolve_mlflow_env(context: Any, log: Any) -> dict[str, str] | None:
    """The step environment from the Connection the ``mlflow_conn_id`` param names (default
    ``mlflow_default``), its secrets masked; ``None`` (and a log line) when it is not defined."""
    from airflow.sdk import Connection
    from airflow.sdk.exceptions import AirflowNotFoundException
    from airflow.sdk.log import mask_secret

    conn_id = (context.get("params") or {}).get("mlflow_conn_id") or DEFAULT_CONN_ID
    try:
        conn = Connection.get(conn_id)
    except AirflowNotFoundException:
        log.info(
            "MLflow: no Airflow connection %r; the step uses the worker's MLFLOW_TRACKING_* environment "
            "(kubernetes mode: the Secret)",
            conn_id,
        )
        return None
    env = mlflow_env(conn)
    for name in ("MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_TOKEN"):
        if env.get(name):
            mask_secret(env[name])
    log.info(
        "MLflow: tracking server %s from connection %r%s",
        env["MLFLOW_TRACKING_URI"],
        conn_id,
        " (with credentials)" if "MLFLOW_TRACKING_PASSWORD" in env or "MLFLOW_TRACKING_TOKEN" in env else "",
    )
    return env

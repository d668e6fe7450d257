"""KFP component: look up the registered model's current ``champion`` in MLflow's model registry.

from components.champion import champion
lookup = champion(model_name="tweets-bow")          # .output: a URI a dsl.importer can import, or ""
with dsl.If(lookup.output != ""):
    current = dsl.importer(artifact_uri=lookup.output, artifact_class=Model, reimport=False)

The retrain pipeline imports the champion this way before ``register``, so that KFP's lineage links the
promotion decision to the model it was compared against (pipelines/retrain.py).
"""

# No `from __future__ import annotations` here: KFP reads the annotations as types.
from kfp import dsl

from components import TRAINING_IMAGE


@dsl.component(base_image=TRAINING_IMAGE, install_kfp_package=False)
def champion(
    exists: dsl.OutputPath(bool),
    version: dsl.OutputPath(str),
    run_id: dsl.OutputPath(str),
    model_name: str = "",
    recipe: str = "",
    artifacts_destination: str = "",
) -> str:
    """Find the version the `champion` alias of `model_name` ("" = ``ampflow-<recipe>``, as register
    names it) points at; return its files' URI when KFP can import it, else "".

    exists, version, run_id: whether there is a champion, its version and its MLflow run ("" without).
    The URI is the version's download URI (``MlflowClient.get_model_version_download_uri``; a
    ``runs:/`` or ``models:/<logged model id>`` one resolved to the run's or model's storage). A server
    that proxies artifacts hands out ``mlflow-artifacts:/PATH``, which only the server can read:
    `artifacts_destination` (the server's ``--artifacts-destination``, e.g. ``s3://bucket/mlartifacts``)
    turns it into ``DESTINATION/PATH``. Returned are s3://, gs:// and minio:// URIs (what the KFP
    launcher reads) and, off the KFP backend (kfp.local), local paths that exist here; any other URI is
    reported and "" returned: the pipeline skips the import, and register still compares against the
    champion by its alias. A model or alias that does not exist is "no champion"; any other registry
    error fails the task (a server that does not answer is no evidence that there is no champion).
    """
    import os
    from urllib.parse import urlparse

    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    from ampflow.steps.register import ALIAS, default_model_name
    from ampflow.tracking.tracker import tracking_uri
    from ampflow.tracking.writer import apply_http_defaults

    def write(path: str, value: str) -> None:
        with open(path, "w", encoding="utf-8") as fh:
            fh.write(value)

    def concrete(uri: str) -> str:
        # a version registered from runs:/RUN/PATH or models:/<logged model id> names no storage
        if uri.startswith("runs:/"):
            source_run, _, path = uri[len("runs:/") :].partition("/")
            root = client.get_run(source_run).info.artifact_uri.rstrip("/")
            return f"{root}/{path}" if path else root
        if uri.startswith("models:/m-") and "/" not in uri[len("models:/") :]:
            return client.get_logged_model(uri[len("models:/") :]).artifact_location
        return uri

    def importable(uri: str) -> str:
        parsed = urlparse(uri)
        if parsed.scheme == "mlflow-artifacts" and artifacts_destination:
            uri = f"{artifacts_destination.rstrip('/')}/{parsed.path.lstrip('/')}"
            parsed = urlparse(uri)
        if parsed.scheme in ("s3", "gs", "minio"):
            return uri
        # a path only off the KFP backend (which sets KFP_POD_NAME): its importer reads object stores
        if parsed.scheme in ("", "file") and not os.environ.get("KFP_POD_NAME"):
            path = parsed.path if parsed.scheme == "file" else uri
            if os.path.isabs(path) and os.path.exists(path):
                return path
        return ""

    name = model_name or default_model_name(recipe)
    apply_http_defaults()
    client = MlflowClient(tracking_uri())
    try:
        aliases = client.get_registered_model(name).aliases or {}
    except MlflowException as exc:
        if exc.error_code != "RESOURCE_DOES_NOT_EXIST":
            raise
        aliases = {}
    if ALIAS not in aliases:
        print(f"no champion: {name} has no '{ALIAS}' alias yet", flush=True)
        write(exists, "false")
        write(version, "")
        write(run_id, "")
        return ""

    current = client.get_model_version_by_alias(name, ALIAS)
    download = concrete(client.get_model_version_download_uri(name, current.version))
    uri = importable(download)
    write(exists, "true")
    write(version, str(current.version))
    write(run_id, current.run_id or "")
    if uri:
        print(f"champion: {name} v{current.version} (run {current.run_id or '-'}) at {uri}", flush=True)
    else:
        hint = (
            "; set the pipeline's mlflow_artifacts_destination to the server's --artifacts-destination"
            if download.startswith("mlflow-artifacts:") and not artifacts_destination
            else ""
        )
        print(
            f"champion: {name} v{current.version} at {download}, which KFP cannot import (s3://, gs:// or "
            f"minio:// wanted){hint}; register compares against it by its alias, without the import",
            flush=True,
        )
    return uri

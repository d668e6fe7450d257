"""``ampflow register``: register a sweep's recommended model; move the alias ``champion`` only when it
matches or beats the current champion on the evaluation metric (accuracy) within the tolerance.

    ampflow register --summary bench/summary.json --model-name tweets-bow --tolerance 0.5

Refusing to promote is a normal outcome (exit 0; ``register.json`` says ``"promoted": false`` and why).
The registered version carries its lineage as tags: sweep id, run id, dataset hash, precision, compile,
config id and the evaluation figures. Writes ``register.json`` next to the summary.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ampflow.config import ConfigError

HELP = "register the recommended model; promote it to alias 'champion' only when it is at least as good"
ALIAS = "champion"
METRIC = "accuracy"


def add_arguments(p: Any) -> None:
    p.add_argument(
        "--summary", required=True, help="summary.json written by `ampflow compare` or `ampflow bench`"
    )
    p.add_argument("--model-name", default=None, help="registered model name (default: ampflow-<recipe>)")
    p.add_argument(
        "--tolerance",
        type=float,
        default=0.5,
        help="accuracy the candidate may lose against the champion, in percentage points (default 0.5)",
    )


def cli(args: Any) -> int:
    result = run(summary=args.summary, model_name=args.model_name, tolerance=args.tolerance)
    print(result["message"])
    return 0


def run(
    *,
    summary: str | Path | dict[str, Any],
    model_name: str | None = None,
    tolerance: float = 0.5,
    tracking_uri: str | None = None,
) -> dict[str, Any]:
    """Register and maybe promote; returns the decision (also written to register.json next to the summary)."""
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    from ampflow.io import atomic_write_json
    from ampflow.tracking import schema
    from ampflow.tracking.tracker import tracking_uri as default_uri

    summary_path: Path | None = None
    if not isinstance(summary, dict):
        summary_path = Path(summary)
        if not summary_path.is_file():
            raise ConfigError(
                f"--summary {summary_path}: no such file (run `ampflow compare --out DIR` first)"
            )
        summary = json.loads(summary_path.read_text(encoding="utf-8"))
    if tolerance < 0:
        raise ConfigError(f"--tolerance must be >= 0 percentage points, got {tolerance}")
    rec_id = summary.get("recommended")
    config = next((c for c in summary.get("configs", []) if c["config_id"] == rec_id), None)
    if config is None:
        raise ConfigError(
            f"--summary: no recommended configuration to register ({summary.get('recommendation')})"
        )
    run_ids = [r for r in config.get("run_ids") or [] if r]
    if not run_ids:
        raise ConfigError(
            f"--summary: configuration {rec_id} has no tracked MLflow run to register a model from"
        )
    name = model_name or f"ampflow-{summary.get('recipe')}"
    client = MlflowClient(tracking_uri or summary.get("tracking_uri") or default_uri())

    # the repeat with the best accuracy carries the model; its accuracy is what the champion is compared on
    candidates = []
    for rid in run_ids:
        r = client.get_run(rid)
        candidates.append((r.data.metrics.get(METRIC, float("-inf")), r))
    acc, source = max(candidates, key=lambda t: t[0])
    model_uri = source.data.tags.get(schema.TAG_MODEL_URI)
    if not model_uri:
        raise ConfigError(
            f"run {source.info.run_id} ({rec_id}) has no logged model (tag {schema.TAG_MODEL_URI})"
        )
    p = source.data.params
    lineage = {
        schema.TAG_SWEEP: str(summary.get("sweep_run_id")),
        "ampflow.run_id": source.info.run_id,
        schema.TAG_DATASET_HASH: str(p.get("dataset_hash") or summary.get("dataset_hash")),
        schema.TAG_PRECISION: str(p.get("precision") or config.get("precision")),
        "ampflow.compile": str(p.get("compile")),
        schema.TAG_CONFIG_ID: rec_id,
        schema.TAG_RECIPE: str(summary.get("recipe")),
        schema.TAG_HARDWARE: str(source.data.tags.get(schema.TAG_HARDWARE)),
        f"ampflow.{METRIC}": repr(acc),
        "ampflow.macro_f1": repr(source.data.metrics.get("macro_f1")),
        "ampflow.samples_per_s": repr(source.data.metrics.get("samples_per_s")),
    }
    try:
        client.get_registered_model(name)
    except MlflowException:
        client.create_registered_model(name, description="ampflow: recommended configurations of sweeps")
    model_id = model_uri.split("/", 1)[1] if model_uri.startswith("models:/") else None
    source_uri = model_uri
    if model_id:
        # a version's source must be the logged model's artifact location, linked by model_id
        source_uri = client.get_logged_model(model_id).artifact_location
    mv = client.create_model_version(
        name, source_uri, run_id=source.info.run_id, tags=lineage, model_id=model_id
    )

    champion = None
    try:
        champion = client.get_model_version_by_alias(name, ALIAS)
    except MlflowException:
        champion = None
    champ_acc = None
    if champion is not None:
        champ_acc = _version_metric(client, champion)
    if champion is None:
        promoted, why = True, "no champion yet"
    elif champ_acc is None:
        promoted, why = True, f"champion v{champion.version} has no {METRIC} figure"
    elif (acc - champ_acc) * 100 >= -tolerance:
        promoted = True
        why = f"{METRIC} {acc:.4f} vs champion v{champion.version} {champ_acc:.4f} ({(acc - champ_acc) * 100:+.2f} pp, tolerance {tolerance} pp)"
    else:
        promoted = False
        why = f"{METRIC} {acc:.4f} is {(champ_acc - acc) * 100:.2f} pp below champion v{champion.version} ({champ_acc:.4f}); tolerance {tolerance} pp"
    if promoted:
        client.set_registered_model_alias(name, ALIAS, mv.version)
        client.set_model_version_tag(name, mv.version, "ampflow.promoted", "true")
        message = f"registered {name} v{mv.version} ({rec_id}) and promoted it to '{ALIAS}': {why}"
    else:
        client.set_model_version_tag(name, mv.version, "ampflow.promoted", "false")
        message = f"registered {name} v{mv.version} ({rec_id}); not promoted, '{ALIAS}' stays v{champion.version}: {why}"
    result = {
        "schema": "ampflow.register/1", "model_name": name, "version": str(mv.version), "config_id": rec_id,
        "run_id": source.info.run_id, "model_uri": model_uri, METRIC: acc, "champion_before":
        None if champion is None else {"version": str(champion.version), METRIC: champ_acc},
        "promoted": promoted, "alias": ALIAS, "reason": why, "message": message, "tolerance_pp": tolerance,
    }  # fmt: skip
    if summary_path is not None:
        atomic_write_json(summary_path.with_name("register.json"), result)
    return result


def _version_metric(client: Any, version: Any) -> float | None:
    tag = (version.tags or {}).get(f"ampflow.{METRIC}")
    try:
        if tag is not None:
            return float(tag)
    except ValueError:
        pass
    if version.run_id:
        return client.get_run(version.run_id).data.metrics.get(METRIC)
    return None

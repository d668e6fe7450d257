"""``ampflow register``: register a sweep's recommended model; move the alias ``champion`` only when the
candidate holds its own against the current champion on the CURRENT test split.

    ampflow register --summary bench/summary.json --data data/ --model-name tweets-bow --tolerance 0.5
    ampflow register --summary bench/summary.json --data bench/data      # default name ampflow-<recipe>
    ampflow register --summary out/summary.json --data data/ --allow-unloadable-champion

What is compared: the candidate (the recommended configuration's best evaluated repeat, loaded from its
``ampflow.model_uri``) and the current champion (loaded by its alias, ``models:/NAME@champion``) are
both scored on ``--data``'s test split in this step, each under the precision it was trained in. The
two accuracies give the delta (:func:`ampflow.compare.stats.accuracy_delta_pp`, the one rounding rule
``compare`` uses too), the per-example correctness gives McNemar's exact paired test, and
:func:`ampflow.compare.stats.accuracy_verdict` decides: promoted only on ``"pass"`` (within the
tolerance and not significantly worse). Stored accuracies, measured back then on whatever data each
model was evaluated on, only pick the repeat and prove the candidate was evaluated at all.

Exit codes: 0 done, whether promoted or not (``register.json`` says ``"promoted"`` and why); 2 bad
input, before anything is registered: no summary, no recommended configuration, a candidate without an
accuracy figure (never evaluated) or without a logged model, an invalid ``--model-name`` (checked
before the server is contacted), ``--data`` not a prepared dataset of the recipe, a precision the
device cannot run; 1 failure (server errors, a candidate model that cannot be scored).

A champion that cannot be loaded or scored is reported (``champion_unloadable`` in register.json, a
line on stderr) and blocks promotion unless ``--allow-unloadable-champion`` is given.

Both figures, the paired test, the verdict and the test split's dataset hash are tags on the new
model version and tags and ``promotion/*`` metrics on the candidate's run; the version also carries
its lineage (sweep id, run id, training dataset hash, precision, compile, config id).
"""

from __future__ import annotations

import hashlib
import json
import math
import posixpath
import re
import sys
from pathlib import Path
from typing import Any

from ampflow.config import ConfigError
from ampflow.redact import with_credentials

HELP = "register the recommended model; promote it to alias 'champion' only when it holds up on the current test split"
ALIAS = "champion"
METRIC = "accuracy"
SPLIT = "test"
PROMOTION = "ampflow.promotion."  # tag prefix of the decision's figures (version and run)
MAX_NAME = 256  # MLflow's registered-model name column is String(256)


def add_arguments(p: Any) -> None:
    p.add_argument(
        "--summary", required=True, help="summary.json written by `ampflow compare` or `ampflow bench`"
    )
    p.add_argument(
        "--data",
        required=True,
        help="prepared dataset directory whose test split both the candidate and the champion are scored on",
    )
    p.add_argument(
        "--model-name",
        default=None,
        help="registered model name (default: ampflow-<recipe>, sanitized for module:function recipes)",
    )
    p.add_argument(
        "--tolerance",
        type=float,
        default=0.5,
        help="accuracy the candidate may lose against the champion, in percentage points (default 0.5)",
    )
    p.add_argument(
        "--device", default="auto", choices=("auto", "cpu", "cuda"), help="device to score on (default auto)"
    )
    p.add_argument(
        "--allow-unloadable-champion",
        action="store_true",
        help="promote even when the current champion cannot be loaded or scored (it is reported either way)",
    )


def cli(args: Any) -> int:
    result = run(
        summary=args.summary,
        data=args.data,
        model_name=args.model_name,
        tolerance=args.tolerance,
        device=args.device,
        allow_unloadable_champion=args.allow_unloadable_champion,
    )
    print(result["message"])
    return 0


def default_model_name(recipe: str) -> str:
    """``ampflow-<recipe>`` for a built-in recipe; for any other reference (``module:function``,
    dotted paths) the characters MLflow or a URI would trip on become ``-`` and 8 hex digits of the
    reference's SHA-256 are appended, so two references never share a name. Deterministic; always
    passes :func:`check_model_name`."""
    safe = re.sub(r"[^A-Za-z0-9._-]+", "-", recipe).strip("-.") or "recipe"
    name = f"ampflow-{safe}"
    if safe != recipe:
        name = f"{name[: MAX_NAME - 9]}-{hashlib.sha256(recipe.encode()).hexdigest()[:8]}"
    return name[:MAX_NAME]


def check_model_name(name: str) -> None:
    """Raise ConfigError (exit 2) unless MLflow's registry accepts ``name``.

    MLflow's rules (``mlflow.utils.validation._validate_model_name``): not empty, no ``/`` or ``:``,
    unchanged by ``posixpath.normpath`` and not ``.``/``..``-led; its SQL store holds 256 characters.
    Leading or trailing spaces are refused too: they make two names that look the same.
    """
    problem = None
    if not name or not name.strip():
        problem = "is empty"
    elif "/" in name or ":" in name:
        problem = "may not contain '/' or ':'"
    elif name != name.strip():
        problem = "may not start or end with spaces"
    elif posixpath.normpath(name) != name or name.startswith(".."):
        problem = "may not be '.' or start with '..'"
    elif len(name) > MAX_NAME:
        problem = f"is {len(name)} characters; MLflow keeps at most {MAX_NAME}"
    if problem:
        raise ConfigError(f"--model-name {name!r} {problem}")


def decide(
    candidate_accuracy: float, champion_accuracy: float, tolerance_pp: float, paired: Any
) -> tuple[bool, str, str, float]:
    """``(promoted, verdict, reason, delta_pp)`` of a candidate against the champion on the same split.

    Accuracies are fractions in [0, 1]; ``tolerance_pp`` percentage points; ``paired`` the
    :class:`ampflow.compare.stats.PairedTest` (champion as reference) or None. The delta and verdict
    are :mod:`ampflow.compare.stats`' (the rule ``compare`` applies); promoted only on ``"pass"``.
    """
    from ampflow.compare import stats

    delta = stats.accuracy_delta_pp(candidate_accuracy, champion_accuracy)
    verdict, reason = stats.accuracy_verdict(delta, tolerance_pp, paired)
    return verdict == "pass", verdict, reason, delta


def run(
    *,
    summary: str | Path | dict[str, Any],
    data: str | Path,
    model_name: str | None = None,
    tolerance: float = 0.5,
    tracking_uri: str | None = None,
    device: str = "auto",
    allow_unloadable_champion: bool = False,
) -> dict[str, Any]:
    """Score the candidate and the champion on ``data``'s test split, register the candidate and
    promote it when :func:`decide` says so; returns the decision (also written to register.json next
    to the summary, strict JSON: null, never NaN or Infinity).

    ``tolerance`` in percentage points (>= 0). Raises ConfigError for bad input (module docstring),
    before anything is registered; MLflow and scoring errors propagate (exit 1).
    """
    from ampflow.data.manifest import dataset_hash, read_manifest

    # -- bad input first, before the server is contacted ------------------------------------------
    summary_path: Path | None = None
    if not isinstance(summary, dict):
        summary_path = Path(summary)
        if not summary_path.is_file():
            raise ConfigError(
                f"--summary {summary_path}: no such file (run `ampflow compare --out DIR` first)"
            )
        try:
            summary = json.loads(summary_path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise ConfigError(f"--summary {summary_path}: unreadable ({exc})") from None
    if not (math.isfinite(tolerance) and tolerance >= 0):
        raise ConfigError(f"--tolerance must be a number >= 0 percentage points, got {tolerance}")
    recipe = summary.get("recipe")
    if model_name is None and not recipe:
        raise ConfigError("--summary names no recipe; pass --model-name")
    name = model_name if model_name is not None else default_model_name(str(recipe))
    check_model_name(name)
    manifest = read_manifest(data)
    if SPLIT not in (manifest.get("rows") or {}):
        raise ConfigError(f"--data {data}: no {SPLIT} split to score the models on")
    if recipe and manifest.get("recipe") and manifest["recipe"] != recipe:
        raise ConfigError(f"--data {data} was prepared by recipe {manifest['recipe']!r}, not {recipe!r}")
    data_hash = dataset_hash(manifest)
    rec_id = summary.get("recommended")
    config = next((c for c in summary.get("configs", []) if c.get("config_id") == rec_id), None)
    if config is None:
        raise ConfigError(
            f"--summary: no recommended configuration to register ({summary.get('recommendation')})"
        )
    run_ids = [r for r in config.get("run_ids") or [] if r]
    if not run_ids:
        raise ConfigError(
            f"--summary: configuration {rec_id} has no tracked MLflow run to register a model from"
        )

    from mlflow.tracking import MlflowClient

    from ampflow.tracking import schema
    from ampflow.tracking.tracker import tracking_uri as default_uri
    from ampflow.tracking.writer import apply_http_defaults

    apply_http_defaults()
    uri = tracking_uri or summary.get("tracking_uri") or default_uri()
    client = MlflowClient(with_credentials(uri))
    source, stored = _candidate_run(client, run_ids, rec_id, schema)
    model_uri = source.data.tags[schema.TAG_MODEL_URI]
    p, t = source.data.params, source.data.tags
    cand_precision = p.get("precision") or t.get(schema.TAG_PRECISION) or config.get("precision")
    if not cand_precision:
        raise ConfigError(f"run {source.info.run_id} ({rec_id}) records no precision to score it under")

    # -- score both on the current test split -------------------------------------------------------
    import mlflow

    from ampflow.compare import stats
    from ampflow.engine.devices import resolve_device
    from ampflow.engine.scoring import score_model

    mlflow.set_tracking_uri(uri)
    dev = resolve_device(device)
    try:
        cand = score_model(
            _load(model_uri, dev),
            data,
            precision=cand_precision,
            device=dev,
            input_names=_names(t.get(schema.TAG_MODEL_INPUTS)),
        )
    except ConfigError:
        raise
    except Exception as exc:
        raise RuntimeError(
            f"candidate {model_uri} (run {source.info.run_id}) cannot be scored on --data {data}: "
            f"{type(exc).__name__}: {_first_line(exc)}"
        ) from exc

    champion = _champion_version(client, name)
    champ = None
    champ_precision = None
    unloadable = None
    if champion is not None:
        champ_run_tags: dict[str, str] = {}
        champ_params: dict[str, str] = {}
        if champion.run_id:
            try:
                champ_run = client.get_run(champion.run_id)
                champ_run_tags, champ_params = champ_run.data.tags, champ_run.data.params
            except Exception as exc:
                if _server_trouble(exc):
                    raise
        champ_precision = (
            (champion.tags or {}).get(schema.TAG_PRECISION)
            or champ_params.get("precision")
            or champ_run_tags.get(schema.TAG_PRECISION)
        )
        try:
            if not champ_precision:
                raise ValueError("no precision recorded on the version or its run")
            champ = score_model(
                _load(f"models:/{name}@{ALIAS}", dev),
                data,
                precision=champ_precision,
                device=dev,
                input_names=_names(champ_run_tags.get(schema.TAG_MODEL_INPUTS)),
            )
            if champ.n != cand.n:
                raise ValueError(f"scored {champ.n} examples, the candidate {cand.n}")
        except Exception as exc:
            if _server_trouble(exc):
                raise  # the server failing is no verdict on the champion: exit 1, decide another day
            unloadable = f"{type(exc).__name__}: {_first_line(exc)}"
            champ = None
            print(
                f"ampflow register: champion {name} v{champion.version} cannot be loaded or scored "
                f"({unloadable})",
                file=sys.stderr,
            )

    # -- decide ---------------------------------------------------------------------------------------
    paired = delta = None
    verdict = None
    if champion is None:
        promoted, why = True, "no champion yet"
    elif champ is None:
        promoted = allow_unloadable_champion
        why = f"champion v{champion.version} cannot be loaded or scored ({unloadable}); " + (
            "promoted because --allow-unloadable-champion is set"
            if promoted
            else "not promoted without --allow-unloadable-champion"
        )
    else:
        paired = stats.mcnemar(champ.correct, cand.correct)
        promoted, verdict, reason, delta = decide(cand.accuracy, champ.accuracy, tolerance, paired)
        why = (
            f"{verdict}: {METRIC} {cand.accuracy:.4f} vs champion v{champion.version} {champ.accuracy:.4f} "
            f"on the current {SPLIT} split; {reason}"
        )

    figures = {
        "dataset_hash": data_hash,
        "split": SPLIT,
        "n": cand.n,
        "candidate_accuracy": cand.accuracy,
        "candidate_precision": cand_precision,
        "champion_version": None if champion is None else str(champion.version),
        "champion_accuracy": None if champ is None else champ.accuracy,
        "champion_precision": champ_precision,
        "champion_unloadable": unloadable,
        "delta_pp": delta,
        "tolerance_pp": tolerance,
        "verdict": verdict,
        "promoted": promoted,
        "reason": why,
        **(
            {}
            if paired is None
            else {
                "mcnemar_p": paired.p_value,
                "only_champion": paired.only_reference,
                "only_candidate": paired.only_candidate,
            }
        ),
    }

    # -- register, record, promote ---------------------------------------------------------------------
    train_hash = p.get("dataset_hash") or t.get(schema.TAG_DATASET_HASH) or summary.get("dataset_hash")
    lineage = {
        schema.TAG_SWEEP: summary.get("sweep_run_id"),
        "ampflow.run_id": source.info.run_id,
        schema.TAG_DATASET_HASH: train_hash,
        schema.TAG_PRECISION: cand_precision,
        "ampflow.compile": p.get("compile"),
        schema.TAG_CONFIG_ID: rec_id,
        schema.TAG_RECIPE: recipe,
        schema.TAG_HARDWARE: t.get(schema.TAG_HARDWARE),
        # the accuracy on the split this decision used; the stored one is the run's own metric
        f"ampflow.{METRIC}": cand.accuracy,
        "ampflow.macro_f1": source.data.metrics.get("macro_f1"),
        "ampflow.samples_per_s": source.data.metrics.get("samples_per_s"),
    }
    tags = _tag_values({**lineage, **{PROMOTION + k: v for k, v in figures.items()}})
    _ensure_registered_model(client, name)
    model_id = model_uri.split("/", 1)[1] if model_uri.startswith("models:/") else None
    source_uri = model_uri
    if model_id:
        # a version's source must be the logged model's artifact location, linked by model_id
        source_uri = client.get_logged_model(model_id).artifact_location
    mv = client.create_model_version(
        name, source_uri, run_id=source.info.run_id, tags=tags, model_id=model_id
    )
    _record_on_run(client, source.info.run_id, figures, name, mv.version)
    if promoted:
        client.set_registered_model_alias(name, ALIAS, mv.version)
        message = f"registered {name} v{mv.version} ({rec_id}) and promoted it to '{ALIAS}': {why}"
    elif champion is not None:
        message = f"registered {name} v{mv.version} ({rec_id}); not promoted, '{ALIAS}' stays v{champion.version}: {why}"
    else:  # pragma: no cover - without a champion the candidate is always promoted
        message = f"registered {name} v{mv.version} ({rec_id}); not promoted: {why}"

    result = {
        "schema": "ampflow.register/2", "model_name": name, "version": str(mv.version), "config_id": rec_id,
        "run_id": source.info.run_id, "model_uri": model_uri, "stored_accuracy": stored,
        METRIC: cand.accuracy, "champion_before": None if champion is None else {
            "version": str(champion.version), METRIC: None if champ is None else champ.accuracy,
            "precision": champ_precision, "unloadable": unloadable},
        "paired_test": None if paired is None else paired.to_dict(), "delta_pp": delta, "verdict": verdict,
        "dataset_hash": data_hash, "split": SPLIT, "n": cand.n, "precision": cand_precision,
        "promoted": promoted, "alias": ALIAS, "reason": why, "message": message, "tolerance_pp": tolerance,
    }  # fmt: skip
    result = _finite(result)
    if summary_path is not None:
        from ampflow.io import atomic_write_text

        text = json.dumps(result, indent=2, sort_keys=True, allow_nan=False, default=str)
        atomic_write_text(summary_path.with_name("register.json"), text + "\n")
    return result


# -- helpers ---------------------------------------------------------------------------------------------


def _candidate_run(client: Any, run_ids: list[str], rec_id: str, schema: Any) -> tuple[Any, float]:
    """The repeat that carries the model: among the evaluated runs with a logged model, the best stored
    accuracy. ConfigError when no run has an accuracy figure (never evaluated) or none has a model."""
    runs = [client.get_run(rid) for rid in run_ids]
    evaluated = [(r.data.metrics.get(METRIC), r) for r in runs]
    evaluated = [(a, r) for a, r in evaluated if a is not None and math.isfinite(a)]
    if not evaluated:
        raise ConfigError(
            f"--summary: candidate {rec_id} has no {METRIC} figure (run {', '.join(run_ids)} was never "
            "evaluated); run `ampflow evaluate` before registering"
        )
    with_model = [(a, r) for a, r in evaluated if r.data.tags.get(schema.TAG_MODEL_URI)]
    if not with_model:
        ids = ", ".join(r.info.run_id for _, r in evaluated)
        raise ConfigError(
            f"--summary: candidate {rec_id} run {ids} has no logged model (tag {schema.TAG_MODEL_URI})"
        )
    acc, source = max(with_model, key=lambda t: t[0])
    return source, acc


def _champion_version(client: Any, name: str) -> Any:
    """The version the alias points at, or None when the model or the alias does not exist yet. Any
    other error propagates: a server that fails to answer must never read as "no champion"."""
    from mlflow.exceptions import MlflowException

    try:
        model = client.get_registered_model(name)
    except MlflowException as exc:
        if exc.error_code == "RESOURCE_DOES_NOT_EXIST":
            return None
        raise
    version = (model.aliases or {}).get(ALIAS)
    return None if version is None else client.get_model_version(name, str(version))


def _ensure_registered_model(client: Any, name: str) -> None:
    from mlflow.exceptions import MlflowException

    try:
        client.get_registered_model(name)
    except MlflowException as exc:
        if exc.error_code != "RESOURCE_DOES_NOT_EXIST":
            raise
        client.create_registered_model(name, description="ampflow: recommended configurations of sweeps")


def _load(uri: str, device: Any) -> Any:
    import mlflow.pytorch

    model = mlflow.pytorch.load_model(uri)
    try:
        model.to(device)
    except Exception:  # noqa: S110 - an exported (pt2) graph stays where it was exported; scoring says so
        pass
    return model


def _record_on_run(client: Any, run_id: str, figures: dict[str, Any], name: str, version: Any) -> None:
    """The decision's figures on the candidate's run: ``promotion/*`` metrics and ``ampflow.promotion.*``
    tags (the run may be finished; MLflow accepts both on it)."""
    import time

    from mlflow.entities import Metric, RunTag

    ts = int(time.time() * 1000)
    keys = ("candidate_accuracy", "champion_accuracy", "delta_pp", "mcnemar_p", "n")
    metrics = [
        Metric(f"promotion/{k}", float(figures[k]), ts, 0)
        for k in keys
        if isinstance(figures.get(k), int | float) and math.isfinite(figures[k])
    ]
    tags = _tag_values({PROMOTION + k: v for k, v in figures.items()})
    tags[PROMOTION + "model_version"] = f"{name}/{version}"
    client.log_batch(run_id, metrics=metrics, tags=[RunTag(k, v) for k, v in tags.items()], synchronous=True)


def _tag_values(tags: dict[str, Any]) -> dict[str, str]:
    """Tags as strings; None and non-finite values left out (no "None" or "nan" strings in MLflow)."""
    out = {}
    for key, value in tags.items():
        if value is None or (isinstance(value, float) and not math.isfinite(value)):
            continue
        out[key] = ("true" if value else "false") if isinstance(value, bool) else str(value)
    return out


def _finite(data: Any) -> Any:
    """``data`` with every non-finite float replaced by None, recursively (strict JSON)."""
    if isinstance(data, dict):
        return {k: _finite(v) for k, v in data.items()}
    if isinstance(data, list | tuple):
        return [_finite(v) for v in data]
    if isinstance(data, float) and not math.isfinite(data):
        return None
    return data


def _names(tag: str | None) -> list[str] | None:
    return [n for n in tag.split(",") if n] if tag else None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:300] if text else ""


def _server_trouble(exc: BaseException) -> bool:
    """The tracking server failing (unreachable, 5xx, 429), as opposed to a model that does not load."""
    from mlflow.exceptions import MlflowException, RestException

    from ampflow.tracking.writer import is_transient

    if isinstance(exc, MlflowException):
        # MLflow raises its own exception class for local refusals too (a pickle it will not load is
        # an INTERNAL_ERROR): only a server's answer, or a request that got none, is server trouble
        via_server = isinstance(exc, RestException) or str(exc).startswith("API request to")
        return via_server and is_transient(exc)
    return type(exc).__module__.split(".")[0] in {"requests", "urllib3"} or isinstance(
        exc, ConnectionError | TimeoutError
    )

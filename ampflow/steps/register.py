"""``ampflow register``: register a sweep's recommended model; move the alias ``champion`` only when the
candidate holds its own against the current champion on the CURRENT test split.

    ampflow register --summary bench/summary.json --data data/tweets --model-name tweets-bow --tolerance 0.5
    ampflow register --summary bench/summary.json --data bench/data      # default name ampflow-<recipe>
    ampflow register --summary out/summary.json --data data/tweets --allow-unloadable-champion
    ampflow register --summary out/summary.json --data data/tweets --champion-version 7   # expect v7

What is compared: the candidate (the recommended configuration's best evaluated repeat, loaded from its
``ampflow.model_uri``) and the current champion (the version behind the alias ``champion``) are
both scored on ``--data``'s test split in this step, each under the precision it was trained in. The
two accuracies give the delta (:func:`ampflow.compare.stats.accuracy_delta_pp`, the one rounding rule
``compare`` uses too), the per-example correctness gives McNemar's exact paired test, and
:func:`ampflow.compare.stats.accuracy_verdict` decides: promoted only on ``"pass"`` (within the
tolerance and not significantly worse). Stored accuracies, measured back then on whatever data each
model was evaluated on, only pick the repeat and prove the candidate was evaluated at all.

Exit codes: 0 done, whether promoted or not (``register.json`` says ``"promoted"`` and why); 2 bad
input, before anything is registered: no summary, no recommended configuration, a candidate without an
accuracy figure (never evaluated) or without a logged model, an invalid ``--model-name`` (checked
before the server is contacted), ``--champion-version`` that is not a positive integer (checked before
the server is contacted) or not a version of the model, ``--data`` not a prepared dataset of the recipe,
a precision the device cannot run; 1 failure (server errors, a candidate model that cannot be scored).

The champion is scored by its version number, read once through the alias; just before the alias would
move, it is read again, and if another register moved it meanwhile the candidate is registered but
not promoted (``reason`` names both versions).

``--champion-version N`` says which champion the caller expects (the KFP retrain pipeline passes the
version it looked up and imported, so that the decision rests on the champion its lineage names): then
version N is scored, whatever the alias says, and the candidate is promoted only if the alias names N
both before scoring and at the re-check just before it would move; otherwise (the alias names another
version, or none) the candidate is registered but not promoted and ``reason`` names both versions.
``champion_expected`` and ``alias_version`` in register.json record what was expected and what the
alias named at the last look.

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
import os
import posixpath
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ampflow.config import ConfigError
from ampflow.redact import with_credentials

HELP = "register the recommended model; promote it to alias 'champion' only when it holds up on the current test split"
ALIAS = "champion"
METRIC = "accuracy"
SPLIT = "test"
PROMOTION = "ampflow.promotion."  # tag prefix of the decision's figures (version and run)
MOVED = "the alias moved: "  # how a reason of _recheck_alias begins
UNEXPECTED = "not the expected champion: "  # how a reason of _check_expected begins
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
    p.add_argument(
        "--champion-version",
        default=None,
        metavar="N",
        help="the champion version the caller expects (a positive integer): score exactly that version, and "
        "promote only if the alias 'champion' still names it (default: whatever the alias names)",
    )


def cli(args: Any) -> int:
    result = run(
        summary=args.summary,
        data=args.data,
        model_name=args.model_name,
        tolerance=args.tolerance,
        device=args.device,
        allow_unloadable_champion=args.allow_unloadable_champion,
        champion_version=args.champion_version,
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


@dataclass(frozen=True)
class Inputs:
    """The checked command line and summary: everything decided before the server is contacted."""

    summary: dict[str, Any]
    summary_path: Path | None  # None when the summary came as a dict: no register.json is written
    data: str | Path
    tolerance: float
    name: str
    recipe: Any
    data_hash: str
    rec_id: Any
    config: dict[str, Any]
    run_ids: list[str]
    champion_version: str | None = None  # --champion-version, normalized ("7"); None when not given


@dataclass(frozen=True)
class Candidate:
    """The recommended configuration's repeat that carries the model (its MLflow run)."""

    run: Any
    stored: float  # the run's own accuracy, only used to pick the repeat
    model_uri: str
    precision: str


@dataclass(frozen=True)
class Champion:
    """The champion scored: its version (the alias's, or --champion-version's; None without one), its
    score on the current split (None when it could not be loaded or scored), its precision, why it
    could not be scored, and the version the alias named when it was read before scoring (None: no
    alias)."""

    version: Any
    score: Any
    precision: str | None
    unloadable: str | None
    alias: str | None = None


@dataclass(frozen=True)
class Scores:
    """Both models scored on the same test split."""

    candidate: Any  # ampflow.engine.scoring.score_model's result
    champion: Champion


@dataclass(frozen=True)
class Decision:
    promoted: bool
    why: str
    verdict: str | None  # None when there was no champion score to compare with
    paired: Any  # the McNemar PairedTest, or None
    delta: float | None
    alias_version: str | None = None  # what the alias named at the last look (None: no alias)


def run(
    *,
    summary: str | Path | dict[str, Any],
    data: str | Path,
    model_name: str | None = None,
    tolerance: float = 0.5,
    tracking_uri: str | None = None,
    device: str = "auto",
    allow_unloadable_champion: bool = False,
    champion_version: str | int | None = None,
) -> dict[str, Any]:
    """Score the candidate and the champion on ``data``'s test split, register the candidate and
    promote it when :func:`decide` says so; returns the decision (also written to register.json next
    to the summary, strict JSON: null, never NaN or Infinity).

    ``tolerance`` in percentage points (>= 0). ``champion_version`` (a positive integer, or its
    digits): the champion the caller expects; that version is scored, and the candidate is promoted
    only while the alias names it (module docstring). Raises ConfigError for bad input (module
    docstring), before anything is registered; MLflow and scoring errors propagate (exit 1).
    """
    # bad input first: nothing below may run (no server contact) for a refused command line
    inputs = _read_inputs(summary, data, model_name, tolerance, champion_version)
    client, uri = _client(tracking_uri, inputs.summary)
    cand = _candidate(client, inputs)
    expected = _expected_champion(client, inputs)
    dev = _scoring_device(uri, device)
    cand_score = _score_candidate(cand, inputs.data, dev)
    scores = Scores(cand_score, _score_champion(client, inputs, dev, cand_score.n, expected))
    decision = _decision(scores, inputs.tolerance, allow_unloadable_champion)
    decision = _check_expected(inputs, scores.champion, decision)
    decision = _recheck_alias(client, inputs.name, scores.champion.version, decision)
    figures = _figures(inputs, cand, scores, decision)
    version, message = _register_version(client, inputs, cand, scores, decision, figures)
    return _result(inputs, cand, scores, decision, version, message)


# -- run's steps -----------------------------------------------------------------------------------------


def _read_inputs(
    summary: str | Path | dict[str, Any],
    data: str | Path,
    model_name: str | None,
    tolerance: float,
    champion_version: str | int | None = None,
) -> Inputs:
    """The checked inputs. Raises ConfigError (exit 2) for a missing or unreadable summary, a negative
    or non-finite tolerance, a champion version that is not a positive integer, no usable model name,
    a dataset without a test split or of another recipe, no recommended configuration or one without
    tracked runs; contacts no server."""
    from ampflow.data.manifest import dataset_hash, read_manifest

    summary, summary_path = _read_summary(summary)
    if not (math.isfinite(tolerance) and tolerance >= 0):
        raise ConfigError(f"--tolerance must be a number >= 0 percentage points, got {tolerance}")
    expected = check_champion_version(champion_version)
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
    return Inputs(
        summary, summary_path, data, tolerance, name, recipe, data_hash, rec_id, config, run_ids, expected
    )


def check_champion_version(value: str | int | None) -> str | None:
    """``--champion-version`` as MLflow spells a version (``"7"``; ``"007"`` becomes ``"7"``), or None
    when not given. Raises ConfigError (exit 2) unless it is a positive integer; contacts no server."""
    if value is None:
        return None
    text = str(value).strip()
    if isinstance(value, bool) or not re.fullmatch(r"[0-9]+", text) or int(text) < 1:
        raise ConfigError(
            f"--champion-version {value!r}: expected a positive integer, the model version the "
            f"'{ALIAS}' alias is expected to name"
        )
    return str(int(text))


def _read_summary(summary: str | Path | dict[str, Any]) -> tuple[dict[str, Any], Path | None]:
    """``(summary, its path)``; a dict is taken as is (path None). Raises ConfigError when the file is
    missing or not JSON."""
    if isinstance(summary, dict):
        return summary, None
    summary_path = Path(summary)
    if not summary_path.is_file():
        raise ConfigError(f"--summary {summary_path}: no such file (run `ampflow compare --out DIR` first)")
    try:
        return json.loads(summary_path.read_text(encoding="utf-8")), summary_path
    except (OSError, ValueError) as exc:
        raise ConfigError(f"--summary {summary_path}: unreadable ({exc})") from None


def _client(tracking_uri: str | None, summary: dict[str, Any]) -> tuple[Any, str]:
    """``(MlflowClient, tracking URI)``: the explicit URI, else ``MLFLOW_TRACKING_URI`` (the store this
    process is configured for, as every other step uses), else the summary's, else the default."""
    from mlflow.tracking import MlflowClient

    from ampflow.tracking.tracker import tracking_uri as default_uri
    from ampflow.tracking.writer import apply_http_defaults

    apply_http_defaults()
    uri = (
        tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or summary.get("tracking_uri") or default_uri()
    )
    return MlflowClient(with_credentials(uri)), uri


def _candidate(client: Any, inputs: Inputs) -> Candidate:
    """The candidate's run, model and precision. Raises ConfigError (exit 2) when no repeat was
    evaluated or has a model (:func:`_candidate_run`) or the run records no precision."""
    from ampflow.tracking import schema

    source, stored = _candidate_run(client, inputs.run_ids, inputs.rec_id, schema)
    p, t = source.data.params, source.data.tags
    precision = p.get("precision") or t.get(schema.TAG_PRECISION) or inputs.config.get("precision")
    if not precision:
        raise ConfigError(
            f"run {source.info.run_id} ({inputs.rec_id}) records no precision to score it under"
        )
    return Candidate(source, stored, t[schema.TAG_MODEL_URI], precision)


def _expected_champion(client: Any, inputs: Inputs) -> Any:
    """The model version ``--champion-version`` names, or None when it was not given. Raises ConfigError
    (exit 2) when the registry has no such version of the model (or no such model); other registry
    errors propagate (exit 1)."""
    from mlflow.exceptions import MlflowException

    if inputs.champion_version is None:
        return None
    try:
        return client.get_model_version(inputs.name, inputs.champion_version)
    except MlflowException as exc:
        if exc.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):
            raise ConfigError(
                f"--champion-version {inputs.champion_version}: model {inputs.name!r} has no version "
                f"{inputs.champion_version} in the registry"
            ) from None
        raise


def _scoring_device(uri: str, device: str) -> Any:
    """The torch device to score on. Raises ConfigError (exit 2) for cuda where there is none."""
    import mlflow

    from ampflow.engine.devices import resolve_device

    # models:/ URIs (the candidate's logged model, the champion's alias) resolve against the global URI
    mlflow.set_tracking_uri(uri)
    return resolve_device(device)


def _score_candidate(cand: Candidate, data: str | Path, dev: Any) -> Any:
    """The candidate's score on ``data``'s test split. ConfigError propagates (exit 2); any other
    failure is a RuntimeError (exit 1): a candidate that cannot be scored is never registered."""
    from ampflow.engine.scoring import score_model
    from ampflow.tracking import schema

    try:
        return score_model(
            _load(cand.model_uri, dev),
            data,
            precision=cand.precision,
            device=dev,
            input_names=_names(cand.run.data.tags.get(schema.TAG_MODEL_INPUTS)),
        )
    except ConfigError:
        raise
    except Exception as exc:
        raise RuntimeError(
            f"candidate {cand.model_uri} (run {cand.run.info.run_id}) cannot be scored on --data {data}: "
            f"{type(exc).__name__}: {_first_line(exc)}"
        ) from exc


def _score_champion(client: Any, inputs: Inputs, dev: Any, n: int, expected: Any = None) -> Champion:
    """The champion scored on the same split as the candidate's ``n`` examples: ``expected`` (the
    model version of --champion-version) when given, else the version the alias names. A champion
    that cannot be loaded or scored is reported on stderr and returned with ``unloadable`` set; server
    trouble propagates (exit 1), since a failing server is no verdict on the champion."""
    from ampflow.engine.scoring import score_model
    from ampflow.tracking import schema

    name = inputs.name
    by_alias = _champion_version(client, name)
    alias = None if by_alias is None else str(by_alias.version)
    champion = by_alias if expected is None else expected
    if champion is None:
        return Champion(None, None, None, None, alias)
    run_tags, params = _champion_run_data(client, champion)
    precision = (
        (champion.tags or {}).get(schema.TAG_PRECISION)
        or params.get("precision")
        or run_tags.get(schema.TAG_PRECISION)
    )
    try:
        if not precision:
            raise ValueError("no precision recorded on the version or its run")
        score = score_model(
            # the version read above, not the alias: another register may move the alias meanwhile
            _load(f"models:/{name}/{champion.version}", dev),
            inputs.data,
            precision=precision,
            device=dev,
            input_names=_names(run_tags.get(schema.TAG_MODEL_INPUTS)),
        )
        if score.n != n:
            raise ValueError(f"scored {score.n} examples, the candidate {n}")
    except Exception as exc:
        if _server_trouble(exc):
            raise  # the server failing is no verdict on the champion: exit 1, decide another day
        unloadable = f"{type(exc).__name__}: {_first_line(exc)}"
        print(
            f"ampflow register: champion {name} v{champion.version} cannot be loaded or scored "
            f"({unloadable})",
            file=sys.stderr,
        )
        return Champion(champion, None, precision, unloadable, alias)
    return Champion(champion, score, precision, None, alias)


def _champion_run_data(client: Any, champion: Any) -> tuple[dict[str, str], dict[str, str]]:
    """``(tags, params)`` of the champion version's run; empty when it has none or the run is gone
    (its precision may still be on the version). Server trouble propagates."""
    if not champion.run_id:
        return {}, {}
    try:
        champ_run = client.get_run(champion.run_id)
    except Exception as exc:
        if _server_trouble(exc):
            raise
        return {}, {}
    return champ_run.data.tags, champ_run.data.params


def _decision(scores: Scores, tolerance: float, allow_unloadable_champion: bool) -> Decision:
    """Promoted without a champion; with an unloadable one only when allowed; otherwise as
    :func:`decide` says on the paired per-example correctness (champion as reference)."""
    from ampflow.compare import stats

    cand, champ = scores.candidate, scores.champion
    if champ.version is None:
        return Decision(True, "no champion yet", None, None, None, champ.alias)
    if champ.score is None:
        why = f"champion v{champ.version.version} cannot be loaded or scored ({champ.unloadable}); " + (
            "promoted because --allow-unloadable-champion is set"
            if allow_unloadable_champion
            else "not promoted without --allow-unloadable-champion"
        )
        return Decision(allow_unloadable_champion, why, None, None, None, champ.alias)
    paired = stats.mcnemar(champ.score.correct, cand.correct)
    promoted, verdict, reason, delta = decide(cand.accuracy, champ.score.accuracy, tolerance, paired)
    why = (
        f"{verdict}: {METRIC} {cand.accuracy:.4f} vs champion v{champ.version.version} "
        f"{champ.score.accuracy:.4f} on the current {SPLIT} split; {reason}"
    )
    return Decision(promoted, why, verdict, paired, delta, champ.alias)


def _check_expected(inputs: Inputs, champ: Champion, decision: Decision) -> Decision:
    """With --champion-version N, a promotion stands only if the alias named N when the champion was
    read, before scoring; otherwise (another version, or no alias: the champion was removed) the
    candidate is not promoted and the reason names both. The figures stay those against vN."""
    expected = inputs.champion_version
    if expected is None or champ.alias == expected:
        return decision
    named = "no version (the alias was removed?)" if champ.alias is None else f"v{champ.alias}"
    why = UNEXPECTED + (
        f"--champion-version {expected} expects '{ALIAS}' to name v{expected}, but it names {named}; "
        f"promoting now would replace a champion the candidate was not compared with (did the alias "
        f"move after v{expected} was looked up?). Run register again to weigh the candidate against the "
        f"current champion. Against v{expected}: {decision.why}"
    )
    return Decision(False, why, decision.verdict, decision.paired, decision.delta, champ.alias)


def _recheck_alias(client: Any, name: str, scored: Any, decision: Decision) -> Decision:
    """A promotion stands only if the alias still points at the champion that was scored.

    Scoring takes minutes; another ``register`` (a second retrain run, a person) may move the alias
    meanwhile. Moving it again would replace a champion nobody compared the candidate with, so the
    candidate is then registered but not promoted, and the reason names both versions. MLflow has no
    compare-and-set for aliases: what is left is the moment between this read and the alias write.
    """
    if not decision.promoted:
        return decision
    now = _champion_version(client, name)
    before = None if scored is None else str(scored.version)
    after = None if now is None else str(now.version)
    if before == after:
        return decision
    why = MOVED + (
        f"'{ALIAS}' moved from {'no version' if before is None else 'v' + before} to "
        f"{'no version' if after is None else 'v' + after} while this decision ran (another register?); "
        f"run register again to weigh the candidate against the new champion. Before the move: {decision.why}"
    )
    return Decision(False, why, decision.verdict, decision.paired, decision.delta, after)


def _figures(inputs: Inputs, cand: Candidate, scores: Scores, decision: Decision) -> dict[str, Any]:
    """The decision's figures, tagged on the new version and the candidate's run (``promotion.*``)."""
    champ = scores.champion
    paired = decision.paired
    return {
        "dataset_hash": inputs.data_hash,
        "split": SPLIT,
        "n": scores.candidate.n,
        "candidate_accuracy": scores.candidate.accuracy,
        "candidate_precision": cand.precision,
        "champion_version": None if champ.version is None else str(champ.version.version),
        "champion_accuracy": None if champ.score is None else champ.score.accuracy,
        "champion_precision": champ.precision,
        "champion_unloadable": champ.unloadable,
        "champion_expected": inputs.champion_version,
        "alias_version": decision.alias_version,
        "delta_pp": decision.delta,
        "tolerance_pp": inputs.tolerance,
        "verdict": decision.verdict,
        "promoted": decision.promoted,
        "reason": decision.why,
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


def _lineage(inputs: Inputs, cand: Candidate, accuracy: float) -> dict[str, Any]:
    """The new version's lineage tags: where the model came from and what it was trained on."""
    from ampflow.tracking import schema

    p, t, metrics = cand.run.data.params, cand.run.data.tags, cand.run.data.metrics
    train_hash = p.get("dataset_hash") or t.get(schema.TAG_DATASET_HASH) or inputs.summary.get("dataset_hash")
    return {
        schema.TAG_SWEEP: inputs.summary.get("sweep_run_id"),
        "ampflow.run_id": cand.run.info.run_id,
        schema.TAG_DATASET_HASH: train_hash,
        schema.TAG_PRECISION: cand.precision,
        "ampflow.compile": p.get("compile"),
        schema.TAG_CONFIG_ID: inputs.rec_id,
        schema.TAG_RECIPE: inputs.recipe,
        schema.TAG_HARDWARE: t.get(schema.TAG_HARDWARE),
        # the accuracy on the split this decision used; the stored one is the run's own metric
        f"ampflow.{METRIC}": accuracy,
        "ampflow.macro_f1": metrics.get("macro_f1"),
        "ampflow.samples_per_s": metrics.get("samples_per_s"),
    }


def _register_version(
    client: Any, inputs: Inputs, cand: Candidate, scores: Scores, decision: Decision, figures: dict[str, Any]
) -> tuple[Any, str]:
    """Create the model version (lineage and decision tags), record the decision on the candidate's
    run and move the alias when promoted; returns ``(version, message)``. MLflow errors propagate."""
    name, rec_id, why = inputs.name, inputs.rec_id, decision.why
    lineage = _lineage(inputs, cand, scores.candidate.accuracy)
    tags = _tag_values({**lineage, **{PROMOTION + k: v for k, v in figures.items()}})
    _ensure_registered_model(client, name)
    model_uri = cand.model_uri
    model_id = model_uri.split("/", 1)[1] if model_uri.startswith("models:/") else None
    source_uri = model_uri
    if model_id:
        # a version's source must be the logged model's artifact location, linked by model_id
        source_uri = client.get_logged_model(model_id).artifact_location
    mv = client.create_model_version(
        name, source_uri, run_id=cand.run.info.run_id, tags=tags, model_id=model_id
    )
    _record_on_run(client, cand.run.info.run_id, figures, name, mv.version)
    champion = scores.champion.version
    if decision.promoted:
        client.set_registered_model_alias(name, ALIAS, mv.version)
        message = f"registered {name} v{mv.version} ({rec_id}) and promoted it to '{ALIAS}': {why}"
    elif champion is not None and not why.startswith((MOVED, UNEXPECTED)):
        message = f"registered {name} v{mv.version} ({rec_id}); not promoted, '{ALIAS}' stays v{champion.version}: {why}"
    else:  # the alias did not name the champion scored (_check_expected, _recheck_alias)
        message = f"registered {name} v{mv.version} ({rec_id}); not promoted: {why}"
    return mv.version, message


def _result(
    inputs: Inputs, cand: Candidate, scores: Scores, decision: Decision, version: Any, message: str
) -> dict[str, Any]:
    """The register.json dict with non-finite floats as None; written next to the summary (strict
    JSON) when the summary came from a file."""
    champion, champ, paired = scores.champion.version, scores.champion.score, decision.paired
    acc = scores.candidate.accuracy
    result = {
        "schema": "ampflow.register/2", "model_name": inputs.name, "version": str(version),
        "config_id": inputs.rec_id, "run_id": cand.run.info.run_id, "model_uri": cand.model_uri,
        "stored_accuracy": cand.stored, METRIC: acc, "champion_before": None if champion is None else {
            "version": str(champion.version), METRIC: None if champ is None else champ.accuracy,
            "precision": scores.champion.precision, "unloadable": scores.champion.unloadable},
        "paired_test": None if paired is None else paired.to_dict(), "delta_pp": decision.delta,
        "verdict": decision.verdict, "dataset_hash": inputs.data_hash, "split": SPLIT,
        "n": scores.candidate.n, "precision": cand.precision, "promoted": decision.promoted, "alias": ALIAS,
        "reason": decision.why, "message": message, "tolerance_pp": inputs.tolerance,
        "champion_expected": inputs.champion_version, "alias_version": decision.alias_version,
    }  # fmt: skip
    result = _finite(result)
    if inputs.summary_path is not None:
        from ampflow.io import atomic_write_text

        text = json.dumps(result, indent=2, sort_keys=True, allow_nan=False, default=str)
        atomic_write_text(inputs.summary_path.with_name("register.json"), text + "\n")
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

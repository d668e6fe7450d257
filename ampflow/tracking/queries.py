"""MLflow reads: a sweep's runs, the latest sweep of a recipe, earlier sweeps; and compare's write-back.

Owns every MLflow search and get the comparison does (``ampflow compare``, ``ampflow bench``), and
the one write it makes: the reports and per-configuration medians onto the sweep's parent run
(:func:`publish_summary`). What the runs mean is :mod:`ampflow.compare`'s: runs become records there
(:func:`ampflow.compare.records.record_from_tracked`) and earlier sweeps become medians there
(:func:`ampflow.compare.regression.previous_from_runs`).

Import-light: mlflow is imported inside the functions (the tracking extra); each raises ImportError
without it. Filters use the tag names of :mod:`ampflow.tracking.schema`.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Any, NamedTuple

from ampflow.compare.comparable import settings_of
from ampflow.compare.records import record_from_tracked
from ampflow.compare.regression import PREVIOUS_SWEEPS, previous_from_runs
from ampflow.config import ConfigError, config_id
from ampflow.redact import with_credentials
from ampflow.tracking import schema

MAX_CHILD_RUNS = 1000  # one sweep's training runs
MAX_HISTORY_RUNS = 2000  # training runs searched for the previous sweeps
MAX_METRICS_PER_BATCH = 1000  # MLflow's log_batch limit


def _client(uri: str | None) -> tuple[Any, str]:
    """An MlflowClient for ``uri`` (default: the configured tracking URI) and the URI it uses."""
    from mlflow.tracking import MlflowClient

    if not uri:
        from ampflow.tracking import tracking_uri  # public name, loaded lazily by the package

        uri = tracking_uri()
    # a URI read back from a run's state is redacted: the configured one carries the credentials
    return MlflowClient(with_credentials(uri)), uri


def records_from_sweep(sweep_run_id: str | None, *, uri: str | None = None) -> list[dict[str, Any]]:
    """The finished training child runs of a sweep's parent run, as compare records, oldest first.

    Each record has the run's params, metrics, ``train/loss`` history and hardware tag
    (:func:`ampflow.compare.records.record_from_tracked`). Raises :class:`ConfigError` when the parent
    run does not exist in the store or has no child runs.
    """
    from mlflow.exceptions import MlflowException

    client, uri = _client(uri)
    try:
        parent = client.get_run(sweep_run_id)
    except MlflowException as exc:
        raise ConfigError(f"--sweep {sweep_run_id}: no such run in {uri} ({exc.error_code})") from None
    children = client.search_runs(
        [parent.info.experiment_id],
        filter_string=f"tags.`{schema.TAG_PARENT}` = '{sweep_run_id}'",
        max_results=MAX_CHILD_RUNS,
        order_by=["attributes.start_time ASC"],
    )
    if not children:
        raise ConfigError(f"--sweep {sweep_run_id}: the run has no child runs")
    records = []
    for child in children:
        # evaluation and other children of the sweep are not configurations to compare
        if child.info.status != "FINISHED" or child.data.tags.get(schema.TAG_KIND, "train") != "train":
            continue
        history = client.get_metric_history(child.info.run_id, "train/loss")
        records.append(
            record_from_tracked(
                name=child.info.run_name,
                run_id=child.info.run_id,
                params=child.data.params,
                metrics=child.data.metrics,
                tags=child.data.tags,
                loss_history=[(h.step, h.value) for h in history],
                sweep_run_id=sweep_run_id,
                tracking_uri=uri,
                start_time=child.info.start_time,
                examples=_logged_predictions(client, child.info.run_id),
            )
        )
    return records


def _logged_predictions(client: Any, run_id: str) -> tuple[list[int], list[bool]] | None:
    """``(labels, correct)`` from the run's ``eval/predictions.jsonl`` artifact (logged by ``ampflow
    evaluate``), or None when the run has none (never evaluated, or evaluated before ampflow logged
    them): compare then says it has no paired test. Server errors propagate: a failing server must not
    turn into a verdict without the paired test."""
    import tempfile

    from ampflow.compare.records import PREDICTIONS_FILE, load_predictions

    logged = {a.path for a in client.list_artifacts(run_id, "eval")}
    if f"eval/{PREDICTIONS_FILE}" not in logged:
        return None
    # one small file per run: MLflow's download progress bar would print a line per configuration
    # (a user's own MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR wins)
    bar = "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"
    before = os.environ.get(bar)
    os.environ[bar] = before if before is not None else "false"
    try:
        with tempfile.TemporaryDirectory(prefix="ampflow-predictions-") as tmp:
            local = client.download_artifacts(run_id, f"eval/{PREDICTIONS_FILE}", tmp)
            return load_predictions(local)
    finally:
        if before is None:
            os.environ.pop(bar, None)


def latest_sweep(experiment: str, recipe: str | None, *, uri: str | None = None) -> str:
    """The run id of the most recently started sweep parent run in ``experiment`` (of ``recipe`` if given).

    Raises :class:`ConfigError` when the experiment does not exist or holds no such sweep.
    """
    client, _ = _client(uri)
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        raise ConfigError(f"--experiment {experiment!r}: no such experiment")
    flt = f"tags.`{schema.TAG_KIND}` = 'sweep'"
    if recipe:
        flt += f" and tags.`{schema.TAG_RECIPE}` = '{recipe}'"
    found = client.search_runs(
        [exp.experiment_id], filter_string=flt, max_results=1, order_by=["attributes.start_time DESC"]
    )
    if not found:
        raise ConfigError(f"--experiment {experiment!r}: no sweep of recipe {recipe!r}")
    return found[0].info.run_id


class SweepHistory(NamedTuple):
    """What :func:`previous_sweeps` found: the hardware tag of the sweep's own runs (``hardware_read``
    says whether it was read at all) and the earlier sweeps (:mod:`ampflow.compare.regression`'s shape)."""

    hardware_read: bool
    hardware: str | None
    sweeps: list[dict[str, Any]]


def previous_sweeps(
    uri: str, *, recipe: str, records: list[dict[str, Any]], current_sweep: str | None
) -> SweepHistory:
    """Earlier comparable sweeps of ``recipe`` on the same hardware fingerprint, from their training runs.

    ``records``: the sweep being compared (at least one with a ``run_id``); the hardware fingerprint is
    its first tracked run's tag, and only finished training runs started before the earliest of
    ``records`` count, and of those only the ones comparable with this sweep's run of the same
    configuration (same dataset hash, device and settings:
    :func:`ampflow.compare.regression.previous_from_runs`). Up to :data:`~ampflow.compare.regression.PREVIOUS_SWEEPS` sweeps, newest first.
    Best effort: when the store cannot be asked, a note goes to stderr and no sweeps come back.
    """
    hardware_read, hw = False, None
    try:
        client, _ = _client(uri)
        own = client.get_run(next(r["run_id"] for r in records if r.get("run_id")))
        hardware_read, hw = True, own.data.tags.get(schema.TAG_HARDWARE)
        started = min(r.get("start_time") or own.info.start_time for r in records)
        flt = (
            f"tags.`{schema.TAG_RECIPE}` = '{recipe}' and tags.`{schema.TAG_HARDWARE}` = '{hw}'"
            f" and tags.`{schema.TAG_KIND}` = 'train' and attributes.status = 'FINISHED'"
            f" and attributes.start_time < {started}"
        )
        runs = client.search_runs(
            [own.info.experiment_id],
            filter_string=flt,
            max_results=MAX_HISTORY_RUNS,
            order_by=["attributes.start_time DESC"],
        )
    except Exception as exc:  # the regression check is best effort when the store is away
        print(f"ampflow compare: regression check skipped ({type(exc).__name__}: {exc})", file=sys.stderr)
        return SweepHistory(hardware_read, hw, [])
    flat = [
        {
            "sweep_run_id": r.data.tags.get(schema.TAG_SWEEP),
            "config_id": config_id(
                r.data.params.get("precision"),
                r.data.params.get("compile") == "true",
                r.data.params.get("strategy"),
            ),
            "metrics": r.data.metrics,
            "record": {
                "recipe": r.data.params.get("recipe") or r.data.tags.get(schema.TAG_RECIPE),
                "dataset_hash": r.data.params.get("dataset_hash"),
                "device_name": r.data.params.get("device_name"),
                "settings": settings_of(r.data.params),
            },
        }
        for r in runs
    ]
    references: dict[str, dict[str, Any]] = {}
    for rec in records:
        references.setdefault(config_id(rec.get("precision"), rec.get("compile"), rec.get("strategy")), rec)
    return SweepHistory(
        hardware_read,
        hw,
        previous_from_runs(flat, current_sweep=current_sweep, limit=PREVIOUS_SWEEPS, references=references),
    )


def publish_summary(summary: dict[str, Any], files: list[Path], *, uri: str | None = None) -> None:
    """Log the report files under ``compare/`` on the sweep's parent run (``summary["sweep_run_id"]``),
    each configuration's medians as metrics ``<config_id>/{samples_per_s,accuracy,peak_memory_bytes,
    time_to_target_s,joules_per_sample,cost_per_1k_samples,speedup,time_to_target_speedup}`` (step 0;
    a figure a configuration does not have is left out), and the tags ``ampflow.recommended`` and ``ampflow.regressed``.

    Raises what MLflow raises when the store cannot be reached or the run does not exist.
    """
    from mlflow.entities import Metric

    client, _ = _client(uri)
    run_id = summary["sweep_run_id"]
    for f in files:
        client.log_artifact(run_id, str(f), "compare")
    ts = int(time.time() * 1000)
    metrics = []
    for c in summary["configs"]:
        for key in ("samples_per_s", "accuracy", "peak_memory_bytes", "time_to_target_s", "joules_per_sample",
                    "cost_per_1k_samples"):  # fmt: skip
            if c["figures"].get(key):
                metrics.append(Metric(f"{c['config_id']}/{key}", c["figures"][key]["median"], ts, 0))
        if c["speedup"] is not None:
            metrics.append(Metric(f"{c['config_id']}/speedup", c["speedup"], ts, 0))
        tt_speedup = (c.get("time_to_target") or {}).get("speedup")
        if tt_speedup is not None:
            metrics.append(Metric(f"{c['config_id']}/time_to_target_speedup", tt_speedup, ts, 0))
    client.log_batch(run_id, metrics=metrics[:MAX_METRICS_PER_BATCH])
    client.set_tag(run_id, "ampflow.recommended", str(summary.get("recommended")))
    client.set_tag(run_id, "ampflow.regressed", "true" if summary.get("regressed") else "false")

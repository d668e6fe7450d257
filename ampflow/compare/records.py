"""Run records: the one shape compare reads a finished training run in, wherever the run came from.

Owns that shape and the ways of filling it: from a run directory (:func:`load_run_dir`), from a run
as MLflow stored it (:func:`record_from_tracked`, fed by :mod:`ampflow.tracking.queries`, which does
the reading), or as a record already built (:func:`to_records` takes all three). Standard library only.

A record is a dict:

    name, precision, compile (bool), strategy ("single" when absent), recipe, device_name,
    bf16_emulated (bool or None), dataset_hash,
    metrics        {name: float or None}: result.json's figures plus accuracy, macro_f1, ece; a
                   non-finite figure (NaN, inf) is None: it is no evidence
    settings       {RunConfig field: text}: the resolved settings (comparable.settings_of); {} unknown
    batch_auto     True when the run chose its batch size with batch_size=auto
    correct        [bool] per test example, in split order, from evaluate's predictions.jsonl; None
                   without the file (runs evaluated before it existed, runs read from MLflow)
    labels         [int] the test examples' labels in the same order (to check that two runs' files
                   are the same examples); None with ``correct``
    loss_curve     [[step, training loss], ...] in step order
    val_curve      [[step, train_clock_s, val_accuracy], ...] per validation; [] without validation or
                   from MLflow (time_to_target_s and steps_to_target are in ``metrics`` either way)
    target_accuracy, val_every                  the run's settings (None / 0 unset)
    energy_reason  why the run has no energy figure (result.json ``energy.reason``); None from MLflow
    run_id, sweep_run_id, tracking_uri          None for an untracked run
    run_dir                                     from a directory only
    hardware, start_time (epoch ms)             from MLflow only
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from ampflow.compare.comparable import settings_of
from ampflow.config import ConfigError

# the evaluation figures a record carries next to result.json's
EVAL_FIGURES = ("accuracy", "macro_f1", "ece")
PREDICTIONS_FILE = "predictions.jsonl"  # written by ampflow evaluate beside eval.json


def finite_or_none(value: Any) -> float | None:
    """A figure as a float, or None when it is missing, not a number, NaN or infinite."""
    if value is None or isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) else None


def _finite_metrics(metrics: dict[str, Any]) -> dict[str, Any]:
    return {k: (finite_or_none(v) if isinstance(v, float) else v) for k, v in metrics.items()}


def load_predictions(path: str | Path) -> tuple[list[int], list[bool]] | None:
    """``(labels, correct)`` from evaluate's predictions.jsonl (lines ``{"index", "label", "prediction",
    "confidence"}`` in split order); None when the file is absent. Raises :class:`ConfigError` on a
    file that is not that (a line that does not parse, or indices out of order)."""
    path = Path(path)
    if not path.is_file():
        return None
    labels, correct = [], []
    with path.open(encoding="utf-8") as fh:
        for i, line in enumerate(fh):
            try:
                row = json.loads(line)
                ok = row["index"] == i
                label, pred = int(row["label"]), int(row["prediction"])
            except (ValueError, KeyError, TypeError):
                ok = False
            if not ok:
                raise ConfigError(f"{path}: line {i + 1} is not an example of evaluate's predictions file")
            labels.append(label)
            correct.append(label == pred)
    return labels, correct


def load_run_dir(path: str | Path) -> dict[str, Any]:
    """A run directory as a record: result.json, eval.json (in the directory or its eval/), tracking state.

    eval.json is optional (its figures are then None); ``tracking/state.json``, when present, gives the
    run ids and tracking URI. Raises :class:`ConfigError` when there is no result.json (the run did not
    finish, or the path is not an ``ampflow train`` directory).
    """
    path = Path(path)
    result_file = path / "result.json"
    if not result_file.is_file():
        raise ConfigError(f"--runs {path}: no result.json (not a finished `ampflow train` directory)")
    result = json.loads(result_file.read_text(encoding="utf-8"))
    ev: dict[str, Any] = {}
    examples = None
    for candidate in (path / "eval.json", path / "eval" / "eval.json"):
        if candidate.is_file():
            ev = json.loads(candidate.read_text(encoding="utf-8"))
            examples = load_predictions(candidate.parent / PREDICTIONS_FILE)
            break
    state: dict[str, Any] = {}
    state_file = path / "tracking" / "state.json"
    if state_file.is_file():
        state = json.loads(state_file.read_text(encoding="utf-8"))
    metrics = _finite_metrics(dict(result.get("metrics") or {}))
    for key in EVAL_FIGURES:
        metrics[key] = finite_or_none(ev.get(key))
    cfg = result.get("config") or {}
    return {
        "name": path.name,
        "precision": result.get("precision") or cfg.get("precision"),
        "compile": bool(result.get("compile", cfg.get("compile", False))),
        "strategy": result.get("strategy") or cfg.get("strategy") or "single",
        "recipe": result.get("recipe") or cfg.get("recipe"),
        "device_name": result.get("device_name"),
        "bf16_emulated": result.get("bf16_emulated"),
        "dataset_hash": result.get("dataset_hash"),
        "metrics": metrics,
        "settings": settings_of(cfg, device=result.get("device")),
        "batch_auto": bool(result.get("batch_size_search")),
        "labels": examples[0] if examples else None,
        "correct": examples[1] if examples else None,
        "loss_curve": result.get("loss_curve") or [],
        "val_curve": result.get("val_curve") or [],
        "target_accuracy": finite_or_none(cfg.get("target_accuracy")),
        "val_every": cfg.get("val_every") or 0,
        "energy_reason": (result.get("energy") or {}).get("reason"),
        "run_id": state.get("run_id"),
        "sweep_run_id": state.get("parent_run_id"),
        "tracking_uri": state.get("tracking_uri"),
        "run_dir": str(path),
    }


def record_from_tracked(
    *,
    name: str | None,
    run_id: str,
    params: dict[str, str],
    metrics: dict[str, float],
    tags: dict[str, str],
    loss_history: Iterable[tuple[int, float]],
    sweep_run_id: str | None,
    tracking_uri: str | None,
    start_time: int | None,
    examples: tuple[list[int], list[bool]] | None = None,
) -> dict[str, Any]:
    """A record from a training run as MLflow holds it: params and tags are strings there.

    ``examples``: ``(labels, correct)`` of the run's evaluation (:func:`load_predictions` of the
    predictions.jsonl logged under its ``eval`` artifacts), for the paired test; None without one.

    ``loss_history``: the run's ``train/loss`` points as (step, value), in any order. Booleans were
    logged as ``"true"``/``"false"``; precision and recipe fall back to their tags
    (:mod:`ampflow.tracking.schema`) when the param is missing.
    """
    from ampflow.tracking import schema  # not at import: the tracking package sets up exit handlers

    return {
        "name": name,
        "precision": params.get("precision") or tags.get(schema.TAG_PRECISION),
        "compile": params.get("compile") == "true",
        "strategy": params.get("strategy") or "single",
        "recipe": params.get("recipe") or tags.get(schema.TAG_RECIPE),
        "device_name": params.get("device_name"),
        "bf16_emulated": params.get("bf16_emulated") == "true" if "bf16_emulated" in params else None,
        "dataset_hash": params.get("dataset_hash"),
        "metrics": _finite_metrics(dict(metrics)),
        # params hold the resolved settings (device and batch size as resolved); whether the batch size
        # was searched is not logged, so differing batch sizes of tracked runs are refused
        "settings": settings_of(params),
        "batch_auto": False,
        "labels": None if examples is None else examples[0],
        "correct": None if examples is None else examples[1],
        "loss_curve": [[step, value] for step, value in sorted(loss_history, key=lambda h: h[0])],
        "val_curve": [],
        "target_accuracy": _number(params.get("target_accuracy")),
        "val_every": int(_number(params.get("val_every")) or 0),
        "energy_reason": None,
        "run_id": run_id,
        "sweep_run_id": sweep_run_id,
        "tracking_uri": tracking_uri,
        "hardware": tags.get(schema.TAG_HARDWARE),
        "start_time": start_time,
    }


def _number(text: str | None) -> float | None:
    """An MLflow param (a string) as a finite float, or None."""
    try:
        return finite_or_none(float(text)) if text is not None else None
    except ValueError:
        return None


def to_records(inputs: Iterable[Any]) -> list[dict[str, Any]]:
    """Records from run directories (``str`` or ``Path``) and records already built (dicts with ``metrics``).

    Raises :class:`ConfigError` for anything else, and for a directory :func:`load_run_dir` refuses.
    """
    records = []
    for item in inputs:
        if isinstance(item, str | Path):
            records.append(load_run_dir(item))
        elif isinstance(item, dict) and "metrics" in item:
            records.append(item)
        else:
            raise ConfigError(f"compare: cannot read {item!r} (a run directory or a run record)")
    return records

"""The comparison summary (schema ``ampflow.compare/1``, documented in the README): built and written.

Owns the assembly, :func:`compare_runs` (records -> comparability check -> verdict -> regression
check), and
:func:`write_reports` (``summary.json``, ``report.md``, ``report.html``). The decisions are
:mod:`ampflow.compare.verdict`'s and :mod:`ampflow.compare.regression`'s; this module is the only one
in the package that reaches out, and only lazily: to MLflow through :mod:`ampflow.tracking.queries`
for earlier sweeps, to the local machine's hardware fingerprint, and to the disk.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from ampflow.compare.comparable import (
    COMPARED_DIMENSIONS,
    batch_size_compared,
    check_comparable,
    parse_allowed,
)
from ampflow.compare.efficiency import add_time_to_target, energy_note, target_of
from ampflow.compare.html import render_html
from ampflow.compare.markdown import render_markdown
from ampflow.compare.records import to_records
from ampflow.compare.regression import DEFAULT_ACCURACY_DROP_PP, DEFAULT_THROUGHPUT_DROP, find_regressions
from ampflow.compare.verdict import DEFAULT_TOLERANCE_PP, SCHEMA, compare_configs, group_by_config
from ampflow.config import BASELINE_PRECISION, ConfigError


def _hardware_of(records: list[dict[str, Any]]) -> str | None:
    """This machine's fingerprint when the runs were tracked (they ran here), else None."""
    from ampflow.tracking import schema  # not at import: the tracking package sets up exit handlers

    if any(r.get("run_id") for r in records):
        return schema.hardware()[0]
    return None


def _first(records: list[dict[str, Any]], key: str) -> Any:
    return next((r.get(key) for r in records if r.get(key)), None)


def compare_runs(
    inputs: list[Any],
    *,
    baseline: str = BASELINE_PRECISION,
    tolerance: float = DEFAULT_TOLERANCE_PP,
    previous: list[dict[str, Any]] | None = None,
    throughput_drop: float = DEFAULT_THROUGHPUT_DROP,
    accuracy_drop: float = DEFAULT_ACCURACY_DROP_PP,
    tracking_uri: str | None = None,
    allow_mismatch: tuple[str, ...] | list[str] | str | None = None,
) -> dict[str, Any]:
    """The comparison summary (schema ``ampflow.compare/1``) of run directories or run records.

    ``inputs``: run directories and/or records (:func:`ampflow.compare.records.to_records`).
    ``baseline``: a config id or precision; ``tolerance``: accuracy percentage points a configuration
    may lose to it. ``previous``: earlier sweeps (:mod:`ampflow.compare.regression`'s shape) for the
    regression check; ``None`` looks them up in MLflow (same recipe and hardware fingerprint, started
    before this sweep) when the runs were tracked, ``[]`` skips the check. ``throughput_drop``
    (fraction) and ``accuracy_drop`` (pp) are the regression thresholds. ``tracking_uri`` is used when
    no record names one. ``allow_mismatch``: fields that may differ although they must match
    (:mod:`ampflow.compare.comparable`); they split configurations and are listed in ``mismatches``.
    Raises :class:`ConfigError` on no inputs, a negative tolerance, an unreadable input, runs that are
    not comparable (the field and both values named) or a baseline not among the runs.
    """
    if not inputs:
        raise ConfigError("compare: no runs to compare")
    if tolerance < 0:
        raise ConfigError(f"--tolerance must be >= 0 percentage points, got {tolerance}")
    allowed = parse_allowed(allow_mismatch)
    records = to_records(inputs)
    mismatches = check_comparable(records, allowed)
    split_by = tuple(m["field"] for m in mismatches)
    verdict = compare_configs(records, baseline=baseline, tolerance=tolerance, split_by=split_by)
    # time to target beside samples/s: reported, not decided on (compare.efficiency)
    add_time_to_target(verdict["configs"], group_by_config(records, split_by), verdict["baseline"])
    first = records[0]
    tests = [c["accuracy_test"] for c in verdict["configs"] if c.get("accuracy_test")]
    summary: dict[str, Any] = {  # key order is summary.json's
        "schema": SCHEMA,
        "recipe": first.get("recipe"),
        "device_name": first.get("device_name"),
        "hardware": first.get("hardware") or _hardware_of(records),
        "dataset_hash": first.get("dataset_hash"),
        "baseline": verdict["baseline"],
        "tolerance_pp": tolerance,
        # what this comparison varies; everything else was checked equal, bar the allowed mismatches
        "compared": list(COMPARED_DIMENSIONS) + (["batch_size"] if batch_size_compared(records) else []),
        "mismatches": mismatches,
        "accuracy_test": "mcnemar-exact" if tests else "tolerance-only",
        # the smallest accuracy difference the test split can show significant (None without a paired test)
        "min_detectable_pp": tests[0]["min_detectable_pp"] if tests else None,
        **target_of(records),
        "energy_note": energy_note(records),
        "configs": verdict["configs"],
        "recommended": verdict["recommended"],
        "recommended_run_id": verdict["recommended_run_id"],
        "recommendation": verdict["recommendation"],
        "sweep_run_id": _first(records, "sweep_run_id"),
        "tracking_uri": _first(records, "tracking_uri") or tracking_uri,
        "thresholds": {"throughput_drop": throughput_drop, "accuracy_drop_pp": accuracy_drop},
    }
    if previous is None:
        previous = _look_up_previous(summary, records)
    summary["regression_baseline"] = [p.get("sweep_run_id") for p in previous]
    summary["regressions"] = find_regressions(
        summary["configs"], previous, throughput_drop=throughput_drop, accuracy_drop=accuracy_drop
    )
    summary["regressed"] = bool(summary["regressions"])
    # which configurations earlier sweeps had figures for: the champion gate's evidence (compare.gate)
    summary["regression_checked"] = [
        c["config_id"] for c in summary["configs"] if any(c["config_id"] in p["configs"] for p in previous)
    ]
    return summary


def _look_up_previous(summary: dict[str, Any], records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Earlier sweeps from MLflow, when the runs were tracked; the hardware tag MLflow holds for them
    replaces the summary's (the regression check compares on that fingerprint)."""
    uri, recipe = summary.get("tracking_uri"), summary.get("recipe")
    if not uri or not recipe or not any(r.get("run_id") for r in records):
        return []
    from ampflow.tracking.queries import previous_sweeps

    history = previous_sweeps(uri, recipe=recipe, records=records, current_sweep=summary.get("sweep_run_id"))
    if history.hardware_read:
        summary["hardware"] = history.hardware
    return history.sweeps


def write_reports(summary: dict[str, Any], out: str | Path) -> list[Path]:
    """summary.json, report.md, report.html into ``out`` (created); returns the paths written.

    Each file is written atomically. Without matplotlib (the ``tracking`` extra) report.html is left
    out with a note on stderr, and the list has two paths.
    """
    from ampflow.io import atomic_write_json, atomic_write_text

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / "summary.json", out / "report.md", out / "report.html"]
    atomic_write_json(paths[0], summary)
    atomic_write_text(paths[1], render_markdown(summary) + "\n")
    try:
        atomic_write_text(paths[2], render_html(summary))
    except ImportError as exc:  # matplotlib is in the tracking extra
        print(f"ampflow compare: no report.html ({exc})", file=sys.stderr)
        paths.pop()
    return paths

"""The regression check: a sweep's figures against earlier comparable sweeps.

Owns the rule the README's "Compare" section states: each configuration against the median of the
previous (up to :data:`PREVIOUS_SWEEPS`) sweeps' figures for the same configuration; a throughput drop
beyond ``throughput_drop`` (a fraction) or an accuracy drop beyond ``accuracy_drop`` (percentage
points) is a regression. An earlier run counts only when it is comparable with this sweep's run of
the same configuration (:mod:`ampflow.compare.comparable`: same recipe, dataset hash, device and
settings, bar the seed and bookkeeping): a quick ``--limit 600`` example is no baseline for a
full-data sweep. Pure functions; which runs are candidates (same recipe and hardware fingerprint,
started earlier) is asked of MLflow by :func:`ampflow.tracking.queries.previous_sweeps`.

A previous sweep: ``{"sweep_run_id": str, "configs": {config_id: {"samples_per_s": float | None,
"accuracy": float | None}}}`` (the sweep's medians per configuration).
"""

from __future__ import annotations

import statistics
from typing import Any

from ampflow.compare.comparable import differences
from ampflow.compare.stats import accuracy_delta_pp

DEFAULT_THROUGHPUT_DROP = 0.10  # fraction
DEFAULT_ACCURACY_DROP_PP = 1.0  # percentage points
PREVIOUS_SWEEPS = 5  # how many earlier sweeps the reference median is taken over
CHECKED = ("samples_per_s", "accuracy")  # the figures a regression is looked for in


def previous_from_runs(
    runs: list[dict[str, Any]],
    *,
    current_sweep: str | None,
    limit: int = PREVIOUS_SWEEPS,
    references: dict[str, dict[str, Any]] | None = None,
) -> list[dict[str, Any]]:
    """Previous sweeps (module docstring's shape) from their training runs, newest first.

    ``runs``: ``[{"sweep_run_id": str | None, "config_id": str, "metrics": {name: float}, "record":
    {recipe, dataset_hash, device_name, settings}}]`` ordered newest first. ``references``: this sweep's
    records by config id; when given, a run counts only when :func:`~ampflow.compare.comparable.differences`
    finds nothing between its ``record`` and the reference of its configuration (of the first
    configuration when this sweep has not got its own). Runs of no sweep or of ``current_sweep`` are
    skipped; the first ``limit`` sweeps met are kept; each configuration's figure is the median over
    that sweep's runs (None without any).
    """
    sweeps: dict[str, dict[str, dict[str, list[float]]]] = {}
    fallback = next(iter(references.values()), None) if references else None
    for r in runs:
        sid = r.get("sweep_run_id")
        if not sid or sid == current_sweep:
            continue
        if references is not None:
            ref = references.get(r["config_id"], fallback)
            if ref is None or differences([r.get("record") or {}, ref]):
                continue
        if sid not in sweeps:
            if len(sweeps) >= limit:
                continue
            sweeps[sid] = {}
        vals = sweeps[sid].setdefault(r["config_id"], {k: [] for k in CHECKED})
        for k in CHECKED:
            if r["metrics"].get(k) is not None:
                vals[k].append(r["metrics"][k])
    return [
        {
            "sweep_run_id": sid,
            "configs": {
                cid: {k: (statistics.median(v) if v else None) for k, v in vals.items()}
                for cid, vals in configs.items()
            },
        }
        for sid, configs in sweeps.items()
    ]


def _reference(previous: list[dict[str, Any]], cid: str, key: str) -> float | None:
    """Median of the previous sweeps' figures for one configuration; None when none has it."""
    values = [p["configs"][cid].get(key) for p in previous if cid in p["configs"]]
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def find_regressions(
    configs: list[dict[str, Any]],
    previous: list[dict[str, Any]],
    *,
    throughput_drop: float,
    accuracy_drop: float,
) -> list[dict[str, Any]]:
    """Per configuration, against the median of the previous sweeps' figures for the same configuration.

    ``configs``: summary rows (``config_id`` and ``figures``); ``previous``: module docstring's shape.
    ``throughput_drop``: fraction of samples/s that may be lost; ``accuracy_drop``: percentage points.
    Returns ``[{config_id, metric, previous, current, change, threshold, message}]`` (``change``: the
    fraction or percentage points lost, negative), throughput before accuracy per configuration.
    """
    found = []
    for c in configs:
        cid = c["config_id"]
        thr = c["figures"]["samples_per_s"]["median"] if c["figures"].get("samples_per_s") else None
        acc = c["figures"]["accuracy"]["median"] if c["figures"].get("accuracy") else None
        ref = _reference(previous, cid, "samples_per_s")
        if thr is not None and ref is not None:
            drop = 1 - thr / ref if ref else 0.0
            if drop > throughput_drop:
                found.append(
                    {
                        "config_id": cid,
                        "metric": "samples_per_s",
                        "previous": ref,
                        "current": thr,
                        "change": round(-drop, 4),
                        "threshold": throughput_drop,
                        "message": f"throughput {drop:.1%} below the previous sweeps ({ref:.1f} -> {thr:.1f}/s)",
                    }
                )
        ref = _reference(previous, cid, "accuracy")
        if acc is not None and ref is not None:
            drop_pp = -accuracy_delta_pp(
                acc, ref
            )  # the one rounding rule: 0.79 vs 0.80 is 1.0 pp, not 1.0000000000000009
            if drop_pp > accuracy_drop:
                found.append(
                    {
                        "config_id": cid,
                        "metric": "accuracy",
                        "previous": ref,
                        "current": acc,
                        "change": round(-drop_pp, 4),
                        "threshold": accuracy_drop,
                        "message": f"accuracy {drop_pp:.2f} pp below the previous sweeps ({ref:.4f} -> {acc:.4f})",
                    }
                )
    return found

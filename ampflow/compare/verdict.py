"""The verdict: a sweep's configurations against the baseline, judged, and the one to recommend.

Owns the rules the README's "Compare" section states: figures are medians with min-max over repeats;
a difference no larger than the min-max range of either side is within noise (not claimed at all
with single runs); a configuration passes when its accuracy is at most ``tolerance`` percentage
points below the baseline's; the recommendation is the fastest configuration that passes.

Pure functions on run records (:mod:`ampflow.compare.records`): no files, no MLflow, standard
library only. Units: throughput in samples/s, memory in bytes, accuracy and macro-F1 as fractions
(their deltas in percentage points), ECE as a fraction.
"""

from __future__ import annotations

import statistics
from typing import Any

from ampflow.config import ConfigError, config_id

SCHEMA = "ampflow.compare/1"
DEFAULT_TOLERANCE_PP = 0.5  # percentage points of accuracy a configuration may lose to the baseline
# figures summarised per configuration (median and min-max over repeats)
FIGURES = ("samples_per_s", "tokens_per_s", "peak_memory_bytes", "step_time_p50_s", "accuracy", "macro_f1", "ece",
           "mfu", "final_train_loss", "skipped_steps")  # fmt: skip


def spread(values: list[float | None]) -> dict[str, float] | None:
    """``{"median", "min", "max", "n"}`` of the values that are not None; None when there are none."""
    vals = [v for v in values if v is not None]
    if not vals:
        return None
    return {"median": statistics.median(vals), "min": min(vals), "max": max(vals), "n": len(vals)}


def median_of(figures: dict[str, Any], key: str) -> float | None:
    """The median of one figure from a ``figures`` mapping of :func:`spread` results; None when absent."""
    s = figures.get(key)
    return s["median"] if s else None


def range_of(figures: dict[str, Any], key: str) -> float:
    """max - min of one figure over the repeats; 0.0 when absent."""
    s = figures.get(key)
    return (s["max"] - s["min"]) if s else 0.0


def within_noise(config: dict[str, Any], base: dict[str, Any], key: str) -> bool | None:
    """Whether two configurations' medians of ``key`` differ by no more than either side's min-max range.

    ``config``/``base``: dicts with ``figures`` and ``repeats`` (a group or a report row). None when a
    median is missing, or when neither side has repeats to tell noise from a difference.
    """
    a, b = median_of(config["figures"], key), median_of(base["figures"], key)
    if a is None or b is None:
        return None
    if config["repeats"] < 2 and base["repeats"] < 2:
        return None
    return abs(a - b) <= max(range_of(config["figures"], key), range_of(base["figures"], key))


def ratio(a: float | None, b: float | None) -> float | None:
    """a / b rounded to 4 places; None when a is missing or b is missing or zero."""
    if a is None or not b:
        return None
    return round(a / b, 4)


def group_by_config(records: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Records grouped by :func:`ampflow.config.config_id`, in first-seen order.

    Each group: ``config_id``, ``precision``, ``compile``, ``strategy``, ``members`` (its records),
    ``repeats`` (their count) and ``figures`` ({figure: :func:`spread` over the members} for FIGURES).
    """
    groups: dict[str, dict[str, Any]] = {}
    for rec in records:
        cid = config_id(rec.get("precision"), rec.get("compile"), rec.get("strategy"))
        g = groups.setdefault(
            cid,
            {
                "config_id": cid,
                "precision": rec.get("precision"),
                "compile": rec.get("compile"),
                "strategy": rec.get("strategy"),
                "members": [],
            },
        )
        g["members"].append(rec)
    for g in groups.values():
        g["repeats"] = len(g["members"])
        g["figures"] = {k: spread([m["metrics"].get(k) for m in g["members"]]) for k in FIGURES}
    return groups


def pick_baseline(groups: dict[str, dict[str, Any]], baseline: str) -> str:
    """The baseline's config id: ``baseline`` itself, else the uncompiled group of that precision.

    Raises :class:`ConfigError` naming the configurations there are when neither exists.
    """
    if baseline in groups:
        return baseline
    same = [cid for cid, g in groups.items() if g["precision"] == baseline]
    if not same:
        raise ConfigError(
            f"--baseline {baseline!r}: no such configuration in the runs; have {', '.join(groups)}"
        )
    return sorted(same, key=lambda cid: groups[cid]["compile"])[0]


def judge(accuracy_delta_pp: float | None, *, is_baseline: bool, tolerance: float) -> tuple[str, str]:
    """(verdict, reason): ``baseline``, ``unknown`` (no accuracy), ``pass`` or ``fail``.

    Passes when the accuracy delta is at least ``-tolerance`` percentage points (README, "Compare").
    """
    if is_baseline:
        return "baseline", "the reference configuration"
    if accuracy_delta_pp is None:
        return "unknown", "no accuracy figure (was it evaluated?)"
    if accuracy_delta_pp >= -tolerance:
        return "pass", f"accuracy {accuracy_delta_pp:+.2f} pp, within {tolerance} pp of the baseline"
    return "fail", f"accuracy {accuracy_delta_pp:+.2f} pp, more than {tolerance} pp below the baseline"


def config_row(group: dict[str, Any], base: dict[str, Any], *, tolerance: float) -> dict[str, Any]:
    """One configuration's report row (README's ``configs[]`` of summary.json) against the baseline group.

    Ratios (speedup, memory_ratio) are of medians; accuracy and macro-F1 deltas are in percentage
    points, the ECE delta a fraction; ``loss_curve`` is the first repeat's.
    """
    is_base = group["config_id"] == base["config_id"]
    fig, bfig = group["figures"], base["figures"]
    b_thr = median_of(bfig, "samples_per_s")
    thr, mem = median_of(fig, "samples_per_s"), median_of(fig, "peak_memory_bytes")
    acc, b_acc = median_of(fig, "accuracy"), median_of(bfig, "accuracy")
    f1, b_f1 = median_of(fig, "macro_f1"), median_of(bfig, "macro_f1")
    ece, b_ece = median_of(fig, "ece"), median_of(bfig, "ece")
    members = group["members"]
    row: dict[str, Any] = {
        "config_id": group["config_id"], "precision": group["precision"], "compile": group["compile"],
        "strategy": group["strategy"], "repeats": group["repeats"], "is_baseline": is_base,
        "run_ids": [m.get("run_id") for m in members],
        "run_dirs": [m.get("run_dir") for m in members],
        "figures": fig,
        "bf16_emulated": any(bool(m.get("bf16_emulated")) for m in members),
        "speedup": ratio(thr, b_thr),
        "speedup_range": [ratio(fig["samples_per_s"]["min"], b_thr),
                          ratio(fig["samples_per_s"]["max"], b_thr)] if thr is not None else None,
        "throughput_within_noise": None if is_base else within_noise(group, base, "samples_per_s"),
        "memory_ratio": ratio(mem, median_of(bfig, "peak_memory_bytes")),
        "accuracy_delta_pp": None if acc is None or b_acc is None else round((acc - b_acc) * 100, 4),
        "accuracy_within_noise": None if is_base else within_noise(group, base, "accuracy"),
        "macro_f1_delta_pp": None if f1 is None or b_f1 is None else round((f1 - b_f1) * 100, 4),
        "ece_delta": None if ece is None or b_ece is None else round(ece - b_ece, 6),
        "loss_curve": members[0].get("loss_curve") or [],
    }  # fmt: skip
    row["verdict"], row["reason"] = judge(row["accuracy_delta_pp"], is_baseline=is_base, tolerance=tolerance)
    return row


def recommend(configs: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The fastest row (median samples/s) whose verdict is ``pass`` or ``baseline``; None when none is.

    Rows without a (non-zero) throughput figure cannot be ranked and are left out; on a tie the
    earlier row wins.
    """
    passing = [
        c
        for c in configs
        if c["verdict"] in ("pass", "baseline") and median_of(c["figures"], "samples_per_s")
    ]
    return max(passing, key=lambda c: c["figures"]["samples_per_s"]["median"], default=None)


def recommendation(rec: dict[str, Any] | None) -> str:
    """The sentence summary.json and the reports give for the recommended row ``rec``."""
    if rec is None:
        return "no configuration passes (none was evaluated against the baseline)"
    text = f"{rec['config_id']}: fastest configuration within tolerance"
    if rec["speedup"] is not None and not rec["is_baseline"]:
        text += f" ({rec['speedup']:.2f}x the baseline"
        text += ", within noise)" if rec["throughput_within_noise"] else ")"
    elif rec["is_baseline"]:
        text += " (the baseline itself: no other configuration is both faster and accurate enough)"
    return text


def compare_configs(records: list[dict[str, Any]], *, baseline: str, tolerance: float) -> dict[str, Any]:
    """The verdict on a sweep's records: ``{"baseline", "configs", "recommended", "recommended_run_id",
    "recommendation"}``.

    ``baseline``: a config id or a precision (see :func:`pick_baseline`); ``tolerance`` in percentage
    points. ``configs``: the rows of :func:`config_row`, baseline first, then by config id.
    Raises :class:`ConfigError` when the baseline is not among the records.
    """
    groups = group_by_config(records)
    base_id = pick_baseline(groups, baseline)
    configs = [config_row(g, groups[base_id], tolerance=tolerance) for g in groups.values()]
    # ranked before sorting: on equal throughput the first-seen configuration is recommended
    recommended = recommend(configs)
    configs.sort(key=lambda c: (not c["is_baseline"], c["config_id"]))
    return {
        "baseline": base_id,
        "configs": configs,
        "recommended": recommended["config_id"] if recommended else None,
        "recommended_run_id": recommended["run_ids"][0] if recommended else None,
        "recommendation": recommendation(recommended),
    }

"""The verdict: a sweep's configurations against the baseline, judged, and the one to recommend.

Owns the rules the README's "Compare" section states:

- figures are medians with min-max over repeats;
- accuracy: a configuration is judged against the baseline by
  :func:`ampflow.compare.stats.accuracy_verdict`: with both runs' per-example results on the same test
  examples, McNemar's exact test and the tolerance (``pass``, ``fail``, ``inconclusive``); without them,
  the tolerance alone (the reason says so); ``unknown`` when either side has no accuracy figure;
- speed: ``faster`` or ``not_faster`` than the baseline, or ``inconclusive`` when either side timed
  fewer than :data:`MIN_TIMED_STEPS` steps (or did not say how many), or when the difference of the
  medians is no larger than the min-max range of either side's repeats (within noise); ``unknown``
  without a throughput figure;
- the recommendation: nothing at all when the baseline has no accuracy figure (nothing can be judged
  against it); otherwise the fastest configuration whose accuracy verdict is ``pass`` and whose speed
  verdict is ``faster``; the baseline itself when there is none. A configuration whose speed-up is
  inconclusive is never recommended over the baseline on speed.

Pure functions on run records (:mod:`ampflow.compare.records`): no files, no MLflow, standard
library only (scipy inside :func:`ampflow.compare.stats.mcnemar`). Units: throughput in samples/s,
memory in bytes, accuracy and macro-F1 as fractions (their deltas in percentage points), ECE as a
fraction.
"""

from __future__ import annotations

import statistics
from typing import Any

from ampflow.compare.comparable import split_key
from ampflow.compare.stats import PairedTest, accuracy_delta_pp, accuracy_verdict, mcnemar
from ampflow.config import ConfigError, config_id

SCHEMA = "ampflow.compare/1"
DEFAULT_TOLERANCE_PP = 0.5  # percentage points of accuracy a configuration may lose to the baseline
# fewest timed (steady-state) steps, result.json's metrics.timed_steps, a speed figure is trusted on:
# fewer steps leave warm-up, allocator and clock effects in the median
MIN_TIMED_STEPS = 20
# figures summarised per configuration (median and min-max over repeats)
FIGURES = ("samples_per_s", "tokens_per_s", "peak_memory_bytes", "step_time_p50_s", "accuracy", "macro_f1", "ece",
           "mfu", "final_train_loss", "skipped_steps",
           # reported beside the decision, never an input to it (compare.efficiency)
           "time_to_target_s", "steps_to_target", "final_val_accuracy", "joules_per_sample",
           "cost_per_1k_samples", "cost_to_target", "cost_per_run")  # fmt: skip


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


def group_by_config(
    records: list[dict[str, Any]], split_by: tuple[str, ...] = ()
) -> dict[str, dict[str, Any]]:
    """Records grouped by :func:`ampflow.config.config_id`, in first-seen order.

    ``split_by``: fields a person allowed to differ (``--allow-mismatch``); runs that differ there are
    different configurations, never repeats, and the id gets a suffix (:func:`comparable.split_key
    <ampflow.compare.comparable.split_key>`). Each group: ``config_id``, ``precision``, ``compile``,
    ``strategy``, ``members`` (its records), ``repeats`` (their count) and ``figures`` ({figure:
    :func:`spread` over the members} for FIGURES).
    """
    groups: dict[str, dict[str, Any]] = {}
    for rec in records:
        cid = config_id(rec.get("precision"), rec.get("compile"), rec.get("strategy")) + split_key(
            rec, split_by
        )
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
    """The baseline's config id: ``baseline`` itself, else the first uncompiled group of that precision.

    Raises :class:`ConfigError` naming the configurations there are when neither exists.
    """
    if baseline in groups:
        return baseline
    same = [cid for cid, g in groups.items() if g["precision"] == baseline]
    if not same:
        raise ConfigError(
            f"--baseline {baseline!r}: no such configuration in the runs; have {', '.join(groups)}"
        )
    return sorted(same, key=lambda cid: bool(groups[cid]["compile"]))[0]


def timed_steps(group: dict[str, Any]) -> int | None:
    """The fewest timed steps (result.json's ``metrics.timed_steps``) over a group's members; None when
    any member does not say (no evidence that its speed figure is steady-state)."""
    counts = [m["metrics"].get("timed_steps") for m in group["members"]]
    if not counts or any(c is None for c in counts):
        return None
    return int(min(counts))


def speed_verdict(group: dict[str, Any], base: dict[str, Any]) -> tuple[str, str]:
    """``(verdict, reason)`` on throughput against the baseline group (module docstring's rule).

    ``faster``/``not_faster`` (median samples/s above the baseline's, or not), ``inconclusive`` (too
    few timed steps on either side, or within noise of the repeats), ``unknown`` (no figure on a side).
    """
    thr, b_thr = median_of(group["figures"], "samples_per_s"), median_of(base["figures"], "samples_per_s")
    if thr is None or b_thr is None:
        side = group["config_id"] if thr is None else f"the baseline {base['config_id']}"
        return "unknown", f"{side} has no throughput figure"
    for g in (group, base):
        steps = timed_steps(g)
        if steps is None:
            return "inconclusive", f"{g['config_id']} does not say how many steps were timed"
        if steps < MIN_TIMED_STEPS:
            return "inconclusive", f"{g['config_id']} timed only {steps} steps (fewer than {MIN_TIMED_STEPS})"
    if within_noise(group, base, "samples_per_s"):
        spread_w = max(
            range_of(group["figures"], "samples_per_s"), range_of(base["figures"], "samples_per_s")
        )
        return (
            "inconclusive",
            f"{thr - b_thr:+.1f} samples/s is within the repeats' spread ({spread_w:.1f} samples/s)",
        )
    if thr > b_thr:
        return "faster", f"{thr / b_thr:.2f}x the baseline's samples/s"
    return "not_faster", f"{thr / b_thr:.2f}x the baseline's samples/s"


def _examples(group: dict[str, Any]) -> dict[str, Any] | None:
    return next((m for m in group["members"] if m.get("correct") is not None), None)


def paired_test(group: dict[str, Any], base: dict[str, Any]) -> tuple[PairedTest | None, str]:
    """McNemar's exact test of a group against the baseline on the same test examples, and why not.

    Uses the first member of each group that has per-example results. Returns ``(None, why)`` when
    either side has none, or when the two files are not the same examples (labels differ); else
    ``(test, "")``.
    """
    mine, ref = _examples(group), _examples(base)
    if mine is None or ref is None:
        lacking = [
            name
            for name, ex in ((group["config_id"], mine), (f"the baseline {base['config_id']}", ref))
            if ex is None
        ]
        verb = "have" if len(lacking) > 1 else "has"
        return (
            None,
            f"no paired test: {' and '.join(lacking)} {verb} no per-example results (predictions.jsonl); tolerance only",
        )
    if mine.get("labels") != ref.get("labels"):
        return None, "no paired test: the per-example results are not the same test examples; tolerance only"
    return mcnemar(ref["correct"], mine["correct"]), ""


def accuracy_judgement(
    group: dict[str, Any], base: dict[str, Any], *, tolerance: float
) -> tuple[str, str, float | None, PairedTest | None]:
    """``(verdict, reason, accuracy delta in pp, paired test or None)`` of a non-baseline group.

    Verdicts as :func:`ampflow.compare.stats.accuracy_verdict`; the reason of ``unknown`` names the run
    that lacks its accuracy figure, and a tolerance-only verdict says why there was no paired test.
    """
    acc, b_acc = median_of(group["figures"], "accuracy"), median_of(base["figures"], "accuracy")
    if acc is None or b_acc is None:
        side = group["config_id"] if acc is None else f"the baseline {base['config_id']}"
        return "unknown", f"{side} has no accuracy figure (not evaluated): nothing to judge", None, None
    delta = accuracy_delta_pp(acc, b_acc)
    paired, why_not = paired_test(group, base)
    verdict, reason = accuracy_verdict(delta, tolerance, paired)
    if paired is None:
        reason = reason.split(" (no paired test")[0] + f" ({why_not})"
    return verdict, reason, delta, paired


def config_row(group: dict[str, Any], base: dict[str, Any], *, tolerance: float) -> dict[str, Any]:
    """One configuration's report row (README's ``configs[]`` of summary.json) against the baseline group.

    Ratios (speedup, memory_ratio) are of medians; accuracy and macro-F1 deltas are in percentage
    points, the ECE delta a fraction; ``accuracy_test``: the paired test's
    :meth:`~ampflow.compare.stats.PairedTest.to_dict` or None; ``verdict``/``reason`` on accuracy,
    ``speed_verdict``/``speed_reason`` on throughput (module docstring); ``loss_curve`` is the first
    repeat's; ``batch_sizes``: the members' batch sizes when they were searched (else None).
    """
    is_base = group["config_id"] == base["config_id"]
    fig, bfig = group["figures"], base["figures"]
    b_thr = median_of(bfig, "samples_per_s")
    thr, mem = median_of(fig, "samples_per_s"), median_of(fig, "peak_memory_bytes")
    f1, b_f1 = median_of(fig, "macro_f1"), median_of(bfig, "macro_f1")
    ece, b_ece = median_of(fig, "ece"), median_of(bfig, "ece")
    members = group["members"]
    if is_base:
        acc = median_of(fig, "accuracy")
        verdict, reason, delta, paired = (
            "baseline",
            "the reference configuration",
            (0.0 if acc is not None else None),
            None,
        )
        if acc is None:
            reason = "the reference configuration; it has no accuracy figure (not evaluated)"
        speed, speed_reason = "baseline", "the reference configuration"
    else:
        verdict, reason, delta, paired = accuracy_judgement(group, base, tolerance=tolerance)
        speed, speed_reason = speed_verdict(group, base)
    row: dict[str, Any] = {
        "config_id": group["config_id"], "precision": group["precision"], "compile": group["compile"],
        "strategy": group["strategy"], "repeats": group["repeats"], "is_baseline": is_base,
        "run_ids": [m.get("run_id") for m in members],
        "run_dirs": [m.get("run_dir") for m in members],
        "figures": fig,
        "bf16_emulated": any(bool(m.get("bf16_emulated")) for m in members),
        "batch_sizes": [m["metrics"].get("batch_size") for m in members]
        if all(m.get("batch_auto") for m in members) else None,
        "timed_steps": timed_steps(group),
        "speedup": ratio(thr, b_thr),
        "speedup_range": [ratio(fig["samples_per_s"]["min"], b_thr),
                          ratio(fig["samples_per_s"]["max"], b_thr)] if thr is not None else None,
        "throughput_within_noise": None if is_base else within_noise(group, base, "samples_per_s"),
        "memory_ratio": ratio(mem, median_of(bfig, "peak_memory_bytes")),
        "accuracy_delta_pp": delta,
        "accuracy_within_noise": None if is_base else within_noise(group, base, "accuracy"),
        "accuracy_test": paired.to_dict() if paired else None,
        "macro_f1_delta_pp": None if f1 is None or b_f1 is None else accuracy_delta_pp(f1, b_f1),
        "ece_delta": None if ece is None or b_ece is None else round(ece - b_ece, 6),
        "loss_curve": members[0].get("loss_curve") or [],
        "verdict": verdict,
        "reason": reason,
        "speed_verdict": speed,
        "speed_reason": speed_reason,
    }  # fmt: skip
    return row


def recommend(configs: list[dict[str, Any]]) -> tuple[dict[str, Any] | None, str]:
    """``(row, sentence)``: the configuration to run and why (module docstring's rule).

    None when the baseline row has no accuracy figure. Otherwise the fastest (median samples/s) row
    whose ``verdict`` is ``pass`` and ``speed_verdict`` is ``faster``; on a tie the earlier row wins;
    the baseline row when there is none, the sentence saying why each other row was not chosen.
    """
    base = next(c for c in configs if c["is_baseline"])
    if median_of(base["figures"], "accuracy") is None:
        runs = ", ".join(str(d or r) for d, r in zip(base["run_dirs"], base["run_ids"], strict=True))
        return None, (
            f"no recommendation: the baseline {base['config_id']} has no accuracy figure (not evaluated: "
            f"{runs}); no configuration can be judged against it"
        )
    eligible = [c for c in configs if c["verdict"] == "pass" and c["speed_verdict"] == "faster"]
    best = max(eligible, key=lambda c: c["figures"]["samples_per_s"]["median"], default=None)
    if best is not None:
        text = f"{best['config_id']}: fastest configuration that keeps accuracy ({best['speedup']:.2f}x the baseline)"
        return best, text
    why = [
        f"{c['config_id']} {c['verdict']}"
        + ("" if c["verdict"] != "pass" else f", speed {c['speed_verdict']}: {c['speed_reason']}")
        for c in configs
        if not c["is_baseline"]
    ]
    text = f"{base['config_id']}: the baseline itself"
    return base, text + (
        f" (no other configuration both keeps accuracy and is faster: {'; '.join(why)})" if why else ""
    )


def compare_configs(
    records: list[dict[str, Any]], *, baseline: str, tolerance: float, split_by: tuple[str, ...] = ()
) -> dict[str, Any]:
    """The verdict on a sweep's records: ``{"baseline", "configs", "recommended", "recommended_run_id",
    "recommendation"}``.

    ``baseline``: a config id or a precision (see :func:`pick_baseline`); ``tolerance`` in percentage
    points; ``split_by``: allowed mismatching fields (:func:`group_by_config`). ``configs``: the rows of
    :func:`config_row`, baseline first, then by config id. ``recommended`` is None when the baseline
    was not evaluated. Raises :class:`ConfigError` when the baseline is not among the records.
    """
    groups = group_by_config(records, split_by)
    base_id = pick_baseline(groups, baseline)
    configs = [config_row(g, groups[base_id], tolerance=tolerance) for g in groups.values()]
    # ranked before sorting: on equal throughput the first-seen configuration is recommended
    recommended, text = recommend(configs)
    configs.sort(key=lambda c: (not c["is_baseline"], c["config_id"]))
    return {
        "baseline": base_id,
        "configs": configs,
        "recommended": recommended["config_id"] if recommended else None,
        "recommended_run_id": recommended["run_ids"][0] if recommended else None,
        "recommendation": text,
    }

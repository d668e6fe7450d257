"""The summary as Markdown: ``report.md``, what ``ampflow compare`` prints, and bench's table.

Owns the table's columns and the number formats both reports share (:func:`fmt_value`,
:func:`fmt_figure`; :mod:`ampflow.compare.html` uses them too). Standard library only.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

MIB = 1 / 2**20  # bytes -> MiB


def fmt_value(v: Any, spec: str, suffix: str = "") -> str:
    """``v`` in format ``spec`` followed by ``suffix``; ``n/a`` when None."""
    return "n/a" if v is None else f"{format(v, spec)}{suffix}"


def fmt_figure(c: dict[str, Any], key: str, spec: str, scale: float = 1.0) -> str:
    """A row's figure as ``median`` or, with repeats, ``median (min-max)``, each times ``scale``."""
    s = c["figures"].get(key)
    if not s:
        return "n/a"
    text = format(s["median"] * scale, spec)
    if s["n"] > 1:
        text += f" ({format(s['min'] * scale, spec)}-{format(s['max'] * scale, spec)})"
    return text


def _table_row(c: dict[str, Any], recommended: str | None) -> str:
    mark = "~" if c.get("throughput_within_noise") else ""
    amark = "~" if c.get("accuracy_within_noise") else ""
    name = c["config_id"] + (" (bf16 emulated)" if c.get("bf16_emulated") else "")
    rec = " **recommended**" if c["config_id"] == recommended else ""
    return (
        f"| {name} | {c['repeats']} | {fmt_figure(c, 'samples_per_s', '.1f')} "
        f"| {mark}{fmt_value(c['speedup'], '.2f', 'x')} "
        f"| {fmt_figure(c, 'peak_memory_bytes', '.0f', MIB)} | {fmt_value(c['memory_ratio'], '.2f', 'x')} "
        f"| {fmt_figure(c, 'accuracy', '.4f')} | {amark}{fmt_value(c['accuracy_delta_pp'], '+.2f')} "
        f"| {fmt_value(c['macro_f1_delta_pp'], '+.2f')} | {fmt_value(c['ece_delta'], '+.4f')} "
        f"| {c['verdict']}{rec} | {c.get('speed_verdict', 'n/a')} |"
    )


# figures of the time-to-target and cost table (compare.efficiency), in column order after samples/s
EFFICIENCY_FIGURES = ("joules_per_sample", "cost_per_1k_samples", "cost_to_target")


def has_efficiency(summary: dict[str, Any]) -> bool:
    """Whether the reports show the time-to-target and cost table: the runs set a target accuracy, or
    some configuration has an energy or cost figure."""
    return summary.get("target_accuracy") is not None or any(
        c["figures"].get(k) for c in summary["configs"] for k in EFFICIENCY_FIGURES
    )


def time_to_target_cell(c: dict[str, Any], spec: str = ".4g") -> str:
    """A row's time to target in seconds: the median (min-max) over the runs that reached it, ``[k/n]``
    when only k of n did, ``never`` when none did, ``n/a`` without a target."""
    tt = c.get("time_to_target") or {}
    if tt.get("reached") is None:
        return "n/a"
    if not tt["reached"]:
        return "never"
    text = fmt_figure(c, "time_to_target_s", spec)
    return text + (f" [{tt['reached']}/{tt['of']}]" if tt["reached"] < tt["of"] else "")


def efficiency_header(summary: dict[str, Any]) -> str:
    """The sentence above the time-to-target and cost table: the target, the cadence, the clock."""
    target = summary.get("target_accuracy")
    if target is None:
        head = "no target_accuracy set (no time to target)"
    else:
        head = (
            f"time to target: training-clock seconds (warm-up included; validation and checkpoint writes "
            f"excluded) to the first validation at or above val accuracy {target:g}, validated every "
            f"{summary.get('val_every')} steps; speedup = baseline time / this time, only where every run of "
            "both reached it; it informs, the recommendation does not use it"
        )
    energy = summary.get("energy_note")
    tail = f"; energy unavailable: {energy}" if energy else ""
    return head + "; J/sample over the timed window; cost = devices x hours x price_per_device_hour" + tail


def efficiency_notes(summary: dict[str, Any]) -> list[str]:
    """One plain line per configuration that did not reach the target in every run."""
    out = []
    for c in summary["configs"]:
        tt = c.get("time_to_target") or {}
        if tt.get("reached") is not None and tt["reached"] < tt["of"]:
            out.append(f"- {c['config_id']}: {tt['note']}")
    return out


def _efficiency_row(c: dict[str, Any]) -> str:
    tt = c.get("time_to_target") or {}
    return (
        f"| {c['config_id']} | {fmt_figure(c, 'samples_per_s', '.1f')} | {fmt_figure(c, 'final_val_accuracy', '.4f')} "
        f"| {fmt_figure(c, 'steps_to_target', '.0f')} | {time_to_target_cell(c)} "
        f"| {fmt_value(tt.get('speedup'), '.2f', 'x')} | {fmt_figure(c, 'joules_per_sample', '.4g')} "
        f"| {fmt_figure(c, 'cost_per_1k_samples', '.4g')} | {fmt_figure(c, 'cost_to_target', '.4g')} |"
    )


def efficiency_table(summary: dict[str, Any]) -> list[str]:
    """The time-to-target and cost table (Markdown lines, a blank line first); [] when
    :func:`has_efficiency` is false."""
    if not has_efficiency(summary):
        return []
    lines = [
        "",
        efficiency_header(summary),
        "",
        "| config | samples/s | final val acc | steps to target | time to target s | speedup to target "
        "| J/sample | cost/1k samples | cost to target |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    lines += [_efficiency_row(c) for c in summary["configs"]]
    notes = efficiency_notes(summary)
    return lines + (["", *notes] if notes else [])


def header_notes(summary: dict[str, Any]) -> list[str]:
    """The lines both reports put above the table: what was compared, the allowed mismatches, runs that
    skipped steps, and the accuracy test used (with the smallest difference the test split can detect)."""
    notes = [
        f"compared: {', '.join(summary.get('compared') or [])}; every other setting, the recipe and the dataset are equal"
    ]
    mismatches = summary.get("mismatches") or []
    if mismatches:
        notes = [
            "compared: "
            + ", ".join(summary.get("compared") or [])
            + "; NOT COMPARABLE, allowed by --allow-mismatch: "
            + "; ".join(
                f"{m['field']} differs ({' vs '.join(str(v) for v in m['values'])})" for m in mismatches
            )
        ]
    for c in summary["configs"]:
        skipped = (c["figures"].get("skipped_steps") or {}).get("max")
        if skipped:
            notes.append(
                f"WARNING: {c['config_id']} skipped {skipped:.0f} steps (non-finite loss or gradients): "
                "its figures count work that did not update the model"
            )
    if summary.get("min_detectable_pp") is not None:
        notes.append(
            f"accuracy: McNemar's exact paired test on the same test examples; this test split can detect "
            f"differences of {summary['min_detectable_pp']:.2f} pp or more"
        )
    else:
        notes.append(
            "accuracy: tolerance only (no paired test: the runs have no per-example results to pair)"
        )
    return notes


def _reasons(summary: dict[str, Any]) -> list[str]:
    return [
        f"- {c['config_id']}: accuracy {c['verdict']}: {c['reason']}; speed {c.get('speed_verdict')}: "
        f"{c.get('speed_reason')}"
        for c in summary["configs"]
        if not c["is_baseline"]
    ]


def render_markdown(summary: dict[str, Any]) -> str:
    """The summary (schema ``ampflow.compare/1``) as Markdown: heading, table, recommendation, regressions.

    No trailing newline. Raises KeyError when the summary lacks ``baseline``, ``tolerance_pp``,
    ``configs`` or ``recommendation``.
    """
    lines = [
        f"### ampflow compare: {summary.get('recipe')} on {summary.get('device_name') or 'unknown device'}",
        "",
        f"baseline `{summary['baseline']}`, accuracy tolerance {summary['tolerance_pp']} pp; "
        "medians, (min-max) over repeats; ~ marks a difference within noise",
        "",
        *header_notes(summary),
        "",
        "| config | repeats | samples/s | speedup | peak mem MiB | mem ratio | accuracy | Δacc pp | Δmacro-F1 pp "
        "| ΔECE | verdict | speed |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---|",
    ]
    lines += [_table_row(c, summary.get("recommended")) for c in summary["configs"]]
    lines += efficiency_table(summary)
    lines += ["", f"**Recommended:** {summary['recommendation']}"]
    reasons = _reasons(summary)
    if reasons:
        lines += ["", *reasons]
    if summary.get("regressions"):
        lines += ["", "**Regressions against previous sweeps:**"]
        lines += [f"- {r['config_id']}: {r['message']}" for r in summary["regressions"]]
    elif summary.get("regression_baseline"):
        lines += ["", f"No regression against {len(summary['regression_baseline'])} previous sweep(s)."]
    else:
        lines += [
            "",
            "No previous comparable sweep (same recipe, hardware, dataset and settings) to check regressions against.",
        ]
    return "\n".join(lines)


def closing_lines(summary: dict[str, Any], out: Path | None) -> str:
    """The closing lines of a sweep: the recommendation, the sweep's MLflow run and the files written.

    The sweep run id is what ``ampflow compare --sweep`` and ``ampflow register`` need next; ``out``
    None (nothing written) leaves the file lines out.
    """
    rec = summary.get("recommended")
    lines = [
        "",
        f"recommended: {rec}" if rec else f"recommended: none ({summary.get('recommendation')})",
        f"sweep run:   {summary.get('sweep_run_id') or 'not tracked'}",
    ]
    files = [out / name for name in ("summary.json", "report.md", "report.html")] if out else []
    lines += [
        f"{label:<12} {f}"
        for label, f in zip(("summary:", "report:", "html report:"), files, strict=False)
        if f.is_file()
    ]
    return "\n".join(lines)

"""The summary as a self-contained ``report.html``: the table, the regressions and four plots.

Owns the page and its plots (throughput, peak memory, loss curves, accuracy against throughput),
drawn with matplotlib's Agg backend and embedded as base64 PNG so the file travels alone (KFP UI,
MLflow artifact). matplotlib is imported inside the functions: it comes with the ``tracking`` extra,
and the rest of the package must import without it.
"""

from __future__ import annotations

import base64
import io
from html import escape
from typing import Any

from ampflow.compare.markdown import (
    MIB,
    efficiency_header,
    efficiency_notes,
    fmt_figure,
    fmt_value,
    has_efficiency,
    header_notes,
    time_to_target_cell,
)

BASELINE_COLOR, PASS_COLOR, FAIL_COLOR = "#4c72b0", "#55a868", "#c44e52"
FIGSIZE = (6, 3.4)  # inches


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")  # no display where reports are made (CI, pods, the Airflow worker)
    import matplotlib.pyplot as plt

    return plt


def _png(plt: Any, fig: Any) -> str:
    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode()


def _bars(plt: Any, configs: list[dict[str, Any]], colors: list[str], key: str, scale: float,
          ylabel: str, title: str) -> str:  # fmt: skip
    """A bar per configuration: the median, error bars to min and max."""
    fig, ax = plt.subplots(figsize=FIGSIZE)
    names = [c["config_id"] for c in configs]
    med, lo, hi = [], [], []
    for c in configs:
        s = c["figures"].get(key)
        med.append(s["median"] * scale if s else 0)
        lo.append((s["median"] - s["min"]) * scale if s else 0)
        hi.append((s["max"] - s["median"]) * scale if s else 0)
    ax.bar(names, med, color=colors, yerr=[lo, hi], capsize=4)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.tick_params(axis="x", rotation=20)
    return _png(plt, fig)


def _loss(plt: Any, configs: list[dict[str, Any]]) -> str:
    fig, ax = plt.subplots(figsize=FIGSIZE)
    styles = ("-", "--", ":", "-.")
    for i, c in enumerate(configs):
        curve = c.get("loss_curve") or []
        if curve:  # dashes keep identical curves (same seed, same data order) visible on top of each other
            ax.plot(
                [p[0] for p in curve],
                [p[1] for p in curve],
                label=c["config_id"],
                linewidth=1.2,
                linestyle=styles[i % len(styles)],
            )
    ax.set_xlabel("step")
    ax.set_ylabel("training loss")
    ax.set_title("Loss curves")
    if any(c.get("loss_curve") for c in configs):
        ax.legend(fontsize=8)
    return _png(plt, fig)


def _val_curves(plt: Any, configs: list[dict[str, Any]], target: float | None) -> str:
    """Validation accuracy against the training clock, one line per configuration (its first run), the
    target as a dashed line: time to accuracy, where the speedup a user banks shows."""
    fig, ax = plt.subplots(figsize=FIGSIZE)
    styles = ("-", "--", ":", "-.")
    for i, c in enumerate(configs):
        curve = c.get("val_curve") or []
        if curve:
            ax.plot([p[1] for p in curve], [p[2] * 100 for p in curve], marker="o", markersize=3,
                    label=c["config_id"], linewidth=1.2, linestyle=styles[i % len(styles)])  # fmt: skip
    if target is not None:
        ax.axhline(target * 100, color="grey", linestyle="--", linewidth=0.8, label=f"target {target:g}")
    ax.set_xlabel("training clock s (validation and checkpoints excluded)")
    ax.set_ylabel("val accuracy %")
    ax.set_title("Time to accuracy")
    ax.legend(fontsize=8)
    return _png(plt, fig)


def _tradeoff(plt: Any, configs: list[dict[str, Any]], colors: list[str], tolerance_pp: float) -> str:
    fig, ax = plt.subplots(figsize=FIGSIZE)
    placed: list[str] = []  # labels of points that may coincide are stacked, not overprinted
    for c, color in zip(configs, colors, strict=True):
        thr, acc = c["figures"].get("samples_per_s"), c["figures"].get("accuracy")
        if thr and acc:
            ax.scatter([thr["median"]], [acc["median"] * 100], color=color, s=50)
            ax.annotate(
                c["config_id"],
                (thr["median"], acc["median"] * 100),
                textcoords="offset points",
                xytext=(6, 6 - 11 * (len(placed) % 3)),
                fontsize=8,
            )
            placed.append(c["config_id"])
    base = next(c for c in configs if c["is_baseline"])
    if base["figures"].get("accuracy"):
        ref = base["figures"]["accuracy"]["median"] * 100
        ax.axhline(
            ref - tolerance_pp,
            color="grey",
            linestyle="--",
            linewidth=0.8,
            label=f"baseline - {tolerance_pp} pp",
        )
        ax.legend(fontsize=8)
    ax.set_xlabel("samples/s")
    ax.set_ylabel("accuracy %")
    ax.set_title("Accuracy against throughput")
    return _png(plt, fig)


def render_plots(summary: dict[str, Any]) -> dict[str, str]:
    """The report's plots as base64 PNG: ``{"throughput", "memory", "loss", "tradeoff": str}``, plus
    ``"time_to_accuracy"`` (validation accuracy against the training clock) when some run validated.

    Bars are blue for the baseline, green for a pass, red otherwise. Raises ImportError without
    matplotlib; StopIteration when no row is the baseline.
    """
    plt = _pyplot()
    configs = summary["configs"]
    colors = [BASELINE_COLOR if c["is_baseline"] else (PASS_COLOR if c["verdict"] == "pass" else FAIL_COLOR)
              for c in configs]  # fmt: skip
    plots = {
        "throughput": _bars(
            plt, configs, colors, "samples_per_s", 1.0, "samples/s", "Throughput (median, min-max)"
        ),
        "memory": _bars(plt, configs, colors, "peak_memory_bytes", MIB, "MiB", "Peak memory"),
        "loss": _loss(plt, configs),
        "tradeoff": _tradeoff(plt, configs, colors, summary["tolerance_pp"]),
    }
    if any(c.get("val_curve") for c in configs):
        plots["time_to_accuracy"] = _val_curves(plt, configs, summary.get("target_accuracy"))
    return plots


def _table_row(c: dict[str, Any], recommended: str | None) -> str:
    cls = "rec" if c["config_id"] == recommended else ""
    return (
        f"<tr class='{cls}'><td>{escape(c['config_id'])}</td><td>{c['repeats']}</td>"
        f"<td>{fmt_figure(c, 'samples_per_s', '.1f')}</td><td>{fmt_value(c['speedup'], '.2f', 'x')}"
        f"{' ~' if c.get('throughput_within_noise') else ''}</td>"
        f"<td>{fmt_figure(c, 'peak_memory_bytes', '.0f', MIB)}</td>"
        f"<td>{fmt_value(c['memory_ratio'], '.2f', 'x')}</td>"
        f"<td>{fmt_figure(c, 'accuracy', '.4f')}</td><td>{fmt_value(c['accuracy_delta_pp'], '+.2f')}</td>"
        f"<td>{fmt_value(c['macro_f1_delta_pp'], '+.2f')}</td><td>{fmt_value(c['ece_delta'], '+.4f')}</td>"
        f"<td class='{c['verdict']}' title='{escape(str(c.get('reason')))}'>{c['verdict']}</td>"
        f"<td title='{escape(str(c.get('speed_reason')))}'>{c.get('speed_verdict', 'n/a')}</td></tr>"
    )


def _efficiency(summary: dict[str, Any]) -> str:
    """The time-to-target and cost table (the Markdown report's second table); "" when it has none."""
    if not has_efficiency(summary):
        return ""
    rows = "".join(
        f"<tr><td>{escape(c['config_id'])}</td><td>{fmt_figure(c, 'samples_per_s', '.1f')}</td>"
        f"<td>{fmt_figure(c, 'final_val_accuracy', '.4f')}</td><td>{fmt_figure(c, 'steps_to_target', '.0f')}</td>"
        f"<td title='{escape(str((c.get('time_to_target') or {}).get('note')))}'>{time_to_target_cell(c)}</td>"
        f"<td>{fmt_value((c.get('time_to_target') or {}).get('speedup'), '.2f', 'x')}</td>"
        f"<td>{fmt_figure(c, 'joules_per_sample', '.4g')}</td><td>{fmt_figure(c, 'cost_per_1k_samples', '.4g')}</td>"
        f"<td>{fmt_figure(c, 'cost_to_target', '.4g')}</td></tr>"
        for c in summary["configs"]
    )
    notes = "".join(f"<li>{escape(n[2:])}</li>" for n in efficiency_notes(summary))
    return (
        f"<h2>Time to target and cost</h2><p class='meta'>{escape(efficiency_header(summary))}</p>"
        "<table><tr><th>config</th><th>samples/s</th><th>final val acc</th><th>steps to target</th>"
        "<th>time to target s</th><th>speedup to target</th><th>J/sample</th><th>cost/1k samples</th>"
        f"<th>cost to target</th></tr>{rows}</table>" + (f"<ul>{notes}</ul>" if notes else "")
    )


def _regressions(summary: dict[str, Any]) -> str:
    regress = "".join(
        f"<li>{escape(r['config_id'])}: {escape(r['message'])}</li>" for r in summary.get("regressions") or []
    )
    n_prev = len(summary.get("regression_baseline") or [])
    if regress:
        return f"<h2>Regressions</h2><ul>{regress}</ul>"
    if n_prev:
        return f"<p>Regression check: nothing flagged against {n_prev} previous sweep(s).</p>"
    return "<p>Regression check: no previous comparable sweep (same recipe, hardware, dataset and settings) yet.</p>"


STYLE = """<style>
body { font-family: -apple-system, Segoe UI, Helvetica, Arial, sans-serif; margin: 24px; color: #222; }
table { border-collapse: collapse; font-size: 13px; } th, td { border: 1px solid #ddd; padding: 4px 8px;
text-align: right; } th { background: #f4f4f4; } td:first-child { text-align: left; }
tr.rec { background: #eaf6ea; font-weight: 600; } td.fail { color: #b00; } td.pass { color: #080; }
.plots img { width: 48%; min-width: 380px; margin: 4px; border: 1px solid #eee; }
.meta { color: #555; font-size: 13px; } .mismatch p { color: #b00; font-weight: 600; }
</style>"""


def render_html(summary: dict[str, Any]) -> str:
    """The summary (schema ``ampflow.compare/1``) as one HTML page with its plots embedded.

    Raises ImportError without matplotlib (the ``tracking`` extra); :func:`write_reports
    <ampflow.compare.summary.write_reports>` then leaves report.html out.
    """
    plots = render_plots(summary)
    rows = "".join(_table_row(c, summary.get("recommended")) for c in summary["configs"])
    imgs = "".join(f"<img alt='{k}' src='data:image/png;base64,{v}'>" for k, v in plots.items())
    recipe = escape(str(summary.get("recipe")))
    notes = "".join(f"<p class='meta'>{escape(n)}</p>" for n in header_notes(summary))
    cls = " class='mismatch'" if summary.get("mismatches") else ""
    reasons = "".join(
        f"<li>{escape(c['config_id'])}: accuracy {escape(c['verdict'])}: {escape(str(c['reason']))}; speed "
        f"{escape(str(c.get('speed_verdict')))}: {escape(str(c.get('speed_reason')))}</li>"
        for c in summary["configs"]
        if not c["is_baseline"]
    )
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><title>ampflow compare: {recipe}</title>
{STYLE}</head><body>
<h1>ampflow compare: {recipe}</h1>
<p class="meta">device {escape(str(summary.get("device_name")))} · hardware {escape(str(summary.get("hardware")))}
· dataset {escape(str(summary.get("dataset_hash"))[:23])} · baseline <b>{escape(summary["baseline"])}</b>
· tolerance {summary["tolerance_pp"]} pp · sweep {escape(str(summary.get("sweep_run_id")))}</p>
<div{cls}>{notes}</div>
<p><b>Recommended:</b> {escape(summary["recommendation"])}</p>
<table><tr><th>config</th><th>repeats</th><th>samples/s</th><th>speedup</th><th>peak MiB</th><th>mem ratio</th>
<th>accuracy</th><th>Δacc pp</th><th>Δmacro-F1 pp</th><th>ΔECE</th><th>verdict</th><th>speed</th></tr>
{rows}</table>
<ul>{reasons}</ul>
<p class="meta">medians, (min-max) over repeats; ~ marks a difference within the spread (noise)</p>
{_efficiency(summary)}
{_regressions(summary)}
<div class="plots">{imgs}</div>
</body></html>
"""

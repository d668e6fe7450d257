"""The ``ampflow doctor --gpu`` report: rows from the sweep's run folders, Markdown and a self-contained
HTML page with plots. Pure apart from reading the run folders; matplotlib loads inside the HTML renderer.

The report JSON (``gpu_check.json``, schema ``ampflow.gpu_check/1``)::

    environment   GPU, capability, driver / CUDA / cuDNN / NCCL versions, bf16 / TF32 / fp8 support,
                  peaks {dtype: {flops, source, detail}}       (ampflow.engine.gpucheck.environment)
    workload      recipe, seq_len, settings the sweep trained with
    configs       one row per configuration: config_id, precision, compile, status, batch_size,
                  samples_per_s, mfu, mfu_peak_flops, mfu_peak_source, peak_memory_bytes,
                  speedup_vs_32_true, speedup_vs_tf32, time_to_target_s, joules_per_sample,
                  accuracy, compile_s, skipped_steps, loss_scale
    checks        [{name, status: pass|fail|skip, detail, seconds, ...}]
    passed        every check passed or was skipped, and every configuration trained
    sweep         {out, sweep_run_id}; wall_s
"""

from __future__ import annotations

import json
from html import escape
from pathlib import Path
from typing import Any

from ampflow.config import PEAK_DTYPES

SCHEMA = "ampflow.gpu_check/1"
MIB = 1024**2


def config_rows(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per configuration from the bench's run records (``{id, precision, compile, status,
    run_dir}``), reading each run's ``result.json`` and ``eval/eval.json``; speedups are samples/s
    over 32-true's and over tf32's (None where either is missing)."""
    rows = []
    for rec in records:
        run = Path(rec["run_dir"])
        result = _read(run / "result.json")
        evaluation = _read(run / "eval" / "eval.json")
        m = result.get("metrics") or {}
        rows.append(
            {
                "config_id": rec["id"],
                "precision": rec["precision"],
                "compile": bool(rec["compile"]),
                "status": rec["status"],
                "batch_size": m.get("batch_size"),
                "samples_per_s": m.get("samples_per_s"),
                "mfu": m.get("mfu"),
                "mfu_peak_flops": m.get("mfu_peak_flops", result.get("peak_flops_per_device")),
                "mfu_peak_source": result.get("mfu_peak_source"),
                "peak_memory_bytes": m.get("peak_memory_bytes"),
                "time_to_target_s": m.get("time_to_target_s", result.get("time_to_target_s")),
                "joules_per_sample": m.get("joules_per_sample"),
                "accuracy": evaluation.get("accuracy"),
                "compile_s": m.get("compile_s"),
                "skipped_steps": m.get("skipped_steps"),
                "loss_scale": m.get("loss_scale"),
            }
        )
    add_speedups(rows)
    return rows


def add_speedups(rows: list[dict[str, Any]]) -> None:
    """``speedup_vs_32_true`` and ``speedup_vs_tf32`` of every row, against the uncompiled baselines."""
    base = {
        r["precision"]: r.get("samples_per_s") for r in rows if not r.get("compile") and r["status"] == "ok"
    }
    for r in rows:
        sps = r.get("samples_per_s")
        for key, ref in (("speedup_vs_32_true", base.get("32-true")), ("speedup_vs_tf32", base.get("tf32"))):
            r[key] = sps / ref if sps and ref else None


def passed(report: dict[str, Any]) -> bool:
    """Every check passed or was skipped, and every configuration trained."""
    checks_ok = all(c["status"] in ("pass", "skip") for c in report.get("checks", []))
    return checks_ok and all(r["status"] == "ok" for r in report.get("configs", []))


def _read(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


# -- formatting -----------------------------------------------------------------------------------


def _num(v: Any, fmt: str = "{:.1f}", missing: str = "-") -> str:
    return missing if v is None else fmt.format(v)


def _pct(v: Any) -> str:
    """A share as a percentage: one decimal, two under 1 % (a CPU's or a tiny model's MFU)."""
    return "-" if v is None else (f"{v:.1%}" if v >= 0.01 else f"{v:.2%}")


def _tflops(v: Any) -> str:
    """TFLOP/s: one decimal from 100 up (an H100's 989.5), else three significant digits (a CPU's 0.0731)."""
    if v is None:
        return "-"
    t = v / 1e12
    return f"{t:,.1f}" if t >= 100 else f"{t:.3g}"


def environment_lines(env: dict[str, Any]) -> list[str]:
    """The environment as ``key: value`` Markdown bullet lines."""
    yes = {True: "yes", False: "no", None: "-"}
    fp8 = yes[env.get("fp8_supported")]
    if env.get("fp8_supported") and env.get("fp8_unsupported_reason"):
        fp8 += f" (hardware yes; {env['fp8_unsupported_reason']})"
    mem = env.get("total_memory_bytes")
    if env.get("device") == "cuda":
        device = (
            f"- GPU: {env.get('gpu_name')} x {env.get('gpu_count')}, compute capability "
            f"{env.get('compute_capability') or '-'}, {_num(mem and mem / 1024**3, '{:.0f}')} GiB"
        )
    else:
        device = f"- device: {env.get('device')} ({env.get('gpu_name')}), no CUDA GPU"
    return [
        device,
        f"- driver {env.get('driver_version') or '-'}, CUDA {env.get('cuda_version') or '-'}, "
        f"cuDNN {env.get('cudnn_version') or '-'}, NCCL {env.get('nccl_version') or '-'}, "
        f"torch {env.get('torch_version')}, torchao {env.get('torchao_version') or '-'}, "
        f"ampflow {env.get('ampflow_version')}",
        f"- bf16 native: {yes[env.get('bf16_native')]}; TF32: {yes[env.get('tf32_supported')]}; fp8: {fp8}",
    ]


def peaks_table(env: dict[str, Any]) -> list[str]:
    """The MFU peaks per dtype: TFLOP/s, source (table|probe|user) and where the figure comes from."""
    lines = ["| dtype | peak TFLOP/s (dense) | source | from |", "|---|---:|---|---|"]
    peaks = env.get("peaks") or {}
    for dtype in [d for d in PEAK_DTYPES if d in peaks] + [d for d in peaks if d not in PEAK_DTYPES]:
        p = peaks[dtype]
        lines.append(
            f"| {dtype} | {_tflops(p.get('flops'))} | {p.get('source') or '-'} | {p.get('detail')} |"
        )
    return lines


def configs_table(rows: list[dict[str, Any]]) -> list[str]:
    """The per-configuration table (Markdown)."""
    lines = [
        "| config | batch | samples/s | MFU | peak mem MiB | vs 32-true | vs tf32 | time to target s "
        "| J/sample | accuracy | status |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in rows:
        mem = r.get("peak_memory_bytes")
        lines.append(
            f"| {r['config_id']} | {_num(r.get('batch_size'), '{}')} | {_num(r.get('samples_per_s'))} "
            f"| {_pct(r.get('mfu'))} | {_num(mem and mem / MIB, '{:,.0f}')} "
            f"| {_num(r.get('speedup_vs_32_true'), '{:.2f}x')} | {_num(r.get('speedup_vs_tf32'), '{:.2f}x')} "
            f"| {_num(r.get('time_to_target_s'), '{:.1f}', 'not reached')} "
            f"| {_num(r.get('joules_per_sample'), '{:.3f}')} | {_num(r.get('accuracy'), '{:.4f}')} "
            f"| {r['status']} |"
        )
    return lines


def check_lines(checks: list[dict[str, Any]]) -> list[str]:
    """``PASS timing: ...`` lines, one per check."""
    return [f"- **{c['status'].upper()}** {c['name']}: {c['detail']}" for c in checks]


def render_markdown(report: dict[str, Any]) -> str:
    """The whole report as Markdown (what the terminal shows and ``report.md`` holds)."""
    env = report.get("environment") or {}
    work = report.get("workload") or {}
    verdict = "PASSED" if report.get("passed") else "FAILED"
    parts = [
        f"# GPU check: {verdict} on {env.get('gpu_name')}",
        "",
        *environment_lines(env),
        "",
        "## Peak FLOP/s used for MFU",
        "",
        *peaks_table(env),
        "",
        "## Checks",
        "",
        *check_lines(report.get("checks") or []),
    ]
    if report.get("configs"):
        parts += [
            "",
            f"## Precisions on {work.get('recipe')} ({work.get('seq_len')} tokens, batch size auto)",
            "",
            *configs_table(report["configs"]),
            "",
            "MFU is against the peak of each configuration's compute dtype (table above). Speedups are "
            "samples/s over the uncompiled 32-true and tf32 runs; tf32 is the honest baseline from Ampere on. "
            f"Time to target: training clock to the first validation at accuracy >= {work.get('target_accuracy')}.",
        ]
    if report.get("wall_s") is not None:
        parts += ["", f"Wall time {report['wall_s']:.0f} s."]
    return "\n".join(parts) + "\n"


def render_html(report: dict[str, Any]) -> str:
    """A self-contained page: the Markdown's content as HTML tables, plus bar plots of samples/s,
    MFU, peak memory and the speedups (PNG, base64-embedded)."""
    env = report.get("environment") or {}
    rows = report.get("configs") or []
    verdict = "PASSED" if report.get("passed") else "FAILED"
    checks = "".join(
        f"<li class='{escape(c['status'])}'><b>{escape(c['status'].upper())}</b> {escape(c['name'])}: "
        f"{escape(c['detail'])}</li>"
        for c in report.get("checks") or []
    )
    env_html = "".join(f"<li>{escape(line[2:])}</li>" for line in environment_lines(env))
    plots = "".join(f"<img alt='{escape(t)}' src='data:image/png;base64,{p}'>" for t, p in _plots(rows))
    return (
        "<!doctype html><html><head><meta charset='utf-8'><title>ampflow GPU check</title><style>"
        "body{font-family:sans-serif;margin:2em;max-width:75em}table{border-collapse:collapse}"
        "td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}td:first-child{text-align:left}"
        ".pass{color:#2a7b3d}.fail{color:#b22}.skip{color:#777}img{margin:4px}</style></head><body>"
        f"<h1>GPU check: {verdict} on {escape(str(env.get('gpu_name')))}</h1><ul>{env_html}</ul>"
        f"<h2>Peak FLOP/s used for MFU</h2>{_md_table_html(peaks_table(env))}"
        f"<h2>Checks</h2><ul>{checks}</ul>"
        + (f"<h2>Precisions</h2>{_md_table_html(configs_table(rows))}{plots}" if rows else "")
        + "</body></html>\n"
    )


def _md_table_html(lines: list[str]) -> str:
    """A Markdown table (header, rule, rows) as an HTML table."""

    def cells(line: str) -> list[str]:
        return [escape(c.strip()) for c in line.strip().strip("|").split("|")]

    head = "".join(f"<th>{c}</th>" for c in cells(lines[0]))
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in cells(row)) + "</tr>" for row in lines[2:])
    return f"<table><tr>{head}</tr>{body}</table>"


def _plots(rows: list[dict[str, Any]]) -> list[tuple[str, str]]:
    """(title, base64 PNG) bar plots; none without matplotlib or without rows."""
    ok = [r for r in rows if r["status"] == "ok"]
    if not ok:
        return []
    try:
        from ampflow.compare.html import _png, _pyplot

        plt = _pyplot()
    except ImportError:
        return []
    out = []
    for key, scale, label in (
        ("samples_per_s", 1.0, "samples/s"),
        ("mfu", 100.0, "MFU %"),
        ("peak_memory_bytes", 1.0 / MIB, "peak memory MiB"),
        ("speedup_vs_32_true", 1.0, "speedup vs 32-true"),
        ("speedup_vs_tf32", 1.0, "speedup vs tf32"),
    ):
        values = [(r["config_id"], r.get(key)) for r in ok]
        if not any(v is not None for _, v in values):
            continue
        fig, ax = plt.subplots(figsize=(6, 3.4))
        ax.bar([n for n, _ in values], [(v or 0) * scale for _, v in values], color="#4c72b0")
        ax.set_ylabel(label)
        ax.set_title(label)
        ax.tick_params(axis="x", rotation=25)
        out.append((label, _png(plt, fig)))
    return out

"""``ampflow compare``: turn a sweep into a verdict (fastest configuration that keeps accuracy), and flag
regressions against earlier sweeps of the same recipe on the same hardware.

    ampflow compare --runs bench/runs/32-true,bench/runs/bf16-mixed --out bench/compare
    ampflow compare --sweep <parent run id> --out report/ --fail-on-regression
    ampflow compare --experiment ampflow/tweets-bow --recipe tweets-bow --out report/

Writes ``summary.json`` (schema ``ampflow.compare/1``, documented in the README), ``report.md`` and a
self-contained ``report.html`` (plots embedded as base64 PNG) into ``--out``, and logs all three as
artifacts of the sweep's parent run when there is one.

Exit codes: 0 done, 2 bad input, 1 failure, 3 a regression was found and ``--fail-on-regression`` is set.
"""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path
from typing import Any

from ampflow.config import BASELINE_PRECISION, ConfigError

HELP = (
    "compare a sweep's configurations against the baseline: speedup, memory, accuracy, verdict, regressions"
)
SCHEMA = "ampflow.compare/1"
EXIT_REGRESSION = 3
# figures summarised per configuration (median and min-max over repeats)
FIGURES = ("samples_per_s", "tokens_per_s", "peak_memory_bytes", "step_time_p50_s", "accuracy", "macro_f1", "ece",
           "mfu", "final_train_loss", "skipped_steps")  # fmt: skip
DEFAULT_THROUGHPUT_DROP = 0.10  # fraction
DEFAULT_ACCURACY_DROP_PP = 1.0  # percentage points
PREVIOUS_SWEEPS = 5


def add_arguments(p: Any) -> None:
    src = p.add_argument_group("input (one of)")
    src.add_argument("--runs", help="comma-separated run directories (each with result.json and eval.json)")
    src.add_argument("--sweep", help="MLflow run id of a sweep's parent run")
    src.add_argument("--experiment", help="MLflow experiment: its latest sweep is compared (with --recipe)")
    p.add_argument("--recipe", help="recipe of the sweep to find in --experiment")
    p.add_argument("--out", help="where summary.json, report.md and report.html go (default: print only)")
    p.add_argument(
        "--baseline", default=BASELINE_PRECISION, help="configuration the others are compared with"
    )
    p.add_argument(
        "--tolerance",
        type=float,
        default=0.5,
        help="accuracy loss allowed against the baseline, in percentage points (default 0.5)",
    )
    p.add_argument(
        "--throughput-drop",
        type=float,
        default=DEFAULT_THROUGHPUT_DROP,
        help="regression threshold: fraction of throughput lost against previous sweeps (default 0.10)",
    )
    p.add_argument(
        "--accuracy-drop",
        type=float,
        default=DEFAULT_ACCURACY_DROP_PP,
        help="regression threshold: accuracy lost against previous sweeps, percentage points (default 1.0)",
    )
    p.add_argument(
        "--fail-on-regression", action="store_true", help=f"exit {EXIT_REGRESSION} when a regression is found"
    )


def cli(args: Any) -> int:
    runs = [r for r in (args.runs or "").split(",") if r.strip()]
    summary = run(
        runs=runs or None,
        sweep=args.sweep,
        experiment=args.experiment,
        recipe=args.recipe,
        out=args.out,
        baseline=args.baseline,
        tolerance=args.tolerance,
        throughput_drop=args.throughput_drop,
        accuracy_drop=args.accuracy_drop,
    )
    print(render_markdown(summary))
    if summary["regressed"] and args.fail_on_regression:
        print(
            f"ampflow compare: regression against previous sweeps (exit {EXIT_REGRESSION})", file=sys.stderr
        )
        return EXIT_REGRESSION
    return 0


def run(
    *,
    runs: list[str | Path] | None = None,
    sweep: str | None = None,
    experiment: str | None = None,
    recipe: str | None = None,
    out: str | Path | None = None,
    baseline: str = BASELINE_PRECISION,
    tolerance: float = 0.5,
    throughput_drop: float = DEFAULT_THROUGHPUT_DROP,
    accuracy_drop: float = DEFAULT_ACCURACY_DROP_PP,
    tracking_uri: str | None = None,
) -> dict[str, Any]:
    """Compare, write the reports into ``out`` and log them on the sweep's parent run."""
    given = [name for name, v in (("--runs", runs), ("--sweep", sweep), ("--experiment", experiment)) if v]
    if len(given) != 1:
        raise ConfigError("compare needs exactly one input: --runs DIRS, --sweep RUN_ID or --experiment NAME")
    if experiment and not recipe:
        raise ConfigError("--experiment needs --recipe (the recipe whose latest sweep is compared)")
    if runs:
        inputs: list[Any] = list(runs)
    else:
        if experiment:
            sweep = latest_sweep(experiment, recipe, uri=tracking_uri)
        inputs = records_from_sweep(sweep, uri=tracking_uri)
    summary = compare_runs(
        inputs,
        baseline=baseline,
        tolerance=tolerance,
        throughput_drop=throughput_drop,
        accuracy_drop=accuracy_drop,
        tracking_uri=tracking_uri,
    )
    if sweep and not summary.get("sweep_run_id"):
        summary["sweep_run_id"] = sweep
    files = write_reports(summary, out) if out else []
    if files and summary.get("sweep_run_id"):
        publish(summary, files, uri=summary.get("tracking_uri") or tracking_uri)
    return summary


# -- records ------------------------------------------------------------------------------------


def load_run_dir(path: str | Path) -> dict[str, Any]:
    """A run directory as a record: result.json, eval.json (in the directory or its eval/), tracking state."""
    path = Path(path)
    result_file = path / "result.json"
    if not result_file.is_file():
        raise ConfigError(f"--runs {path}: no result.json (not a finished `ampflow train` directory)")
    result = json.loads(result_file.read_text(encoding="utf-8"))
    ev: dict[str, Any] = {}
    for candidate in (path / "eval.json", path / "eval" / "eval.json"):
        if candidate.is_file():
            ev = json.loads(candidate.read_text(encoding="utf-8"))
            break
    state: dict[str, Any] = {}
    state_file = path / "tracking" / "state.json"
    if state_file.is_file():
        state = json.loads(state_file.read_text(encoding="utf-8"))
    metrics = dict(result.get("metrics") or {})
    for key in ("accuracy", "macro_f1", "ece"):
        metrics[key] = ev.get(key)
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
        "loss_curve": result.get("loss_curve") or [],
        "run_id": state.get("run_id"),
        "sweep_run_id": state.get("parent_run_id"),
        "tracking_uri": state.get("tracking_uri"),
        "run_dir": str(path),
    }


def records_from_sweep(sweep_run_id: str | None, *, uri: str | None = None) -> list[dict[str, Any]]:
    """The child runs of a sweep's parent run, read back from MLflow."""
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    from ampflow.tracking import schema
    from ampflow.tracking.tracker import tracking_uri

    uri = uri or tracking_uri()
    client = MlflowClient(uri)
    try:
        parent = client.get_run(sweep_run_id)
    except MlflowException as exc:
        raise ConfigError(f"--sweep {sweep_run_id}: no such run in {uri} ({exc.error_code})") from None
    children = client.search_runs(
        [parent.info.experiment_id],
        filter_string=f"tags.`{schema.TAG_PARENT}` = '{sweep_run_id}'",
        max_results=1000,
        order_by=["attributes.start_time ASC"],
    )
    if not children:
        raise ConfigError(f"--sweep {sweep_run_id}: the run has no child runs")
    records = []
    for child in children:
        if child.info.status != "FINISHED" or child.data.tags.get(schema.TAG_KIND, "train") != "train":
            continue
        p, m, t = child.data.params, child.data.metrics, child.data.tags
        history = client.get_metric_history(child.info.run_id, "train/loss")
        records.append(
            {
                "name": child.info.run_name,
                "precision": p.get("precision") or t.get(schema.TAG_PRECISION),
                "compile": p.get("compile") == "true",
                "strategy": p.get("strategy") or "single",
                "recipe": p.get("recipe") or t.get(schema.TAG_RECIPE),
                "device_name": p.get("device_name"),
                "bf16_emulated": p.get("bf16_emulated") == "true" if "bf16_emulated" in p else None,
                "dataset_hash": p.get("dataset_hash"),
                "metrics": dict(m),
                "loss_curve": [[h.step, h.value] for h in sorted(history, key=lambda h: h.step)],
                "run_id": child.info.run_id,
                "sweep_run_id": sweep_run_id,
                "tracking_uri": uri,
                "hardware": t.get(schema.TAG_HARDWARE),
                "start_time": child.info.start_time,
            }
        )
    return records


def latest_sweep(experiment: str, recipe: str | None, *, uri: str | None = None) -> str:
    from mlflow.tracking import MlflowClient

    from ampflow.tracking import schema
    from ampflow.tracking.tracker import tracking_uri

    client = MlflowClient(uri or tracking_uri())
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


# -- the comparison -------------------------------------------------------------------------------


def _spread(values: list[float]) -> dict[str, float] | None:
    vals = [v for v in values if v is not None]
    if not vals:
        return None
    return {"median": statistics.median(vals), "min": min(vals), "max": max(vals), "n": len(vals)}


def _med(group: dict[str, Any], key: str) -> float | None:
    s = group["figures"].get(key)
    return s["median"] if s else None


def _range(group: dict[str, Any], key: str) -> float:
    s = group["figures"].get(key)
    return (s["max"] - s["min"]) if s else 0.0


def _within_noise(group: dict[str, Any], base: dict[str, Any], key: str) -> bool | None:
    """Smaller than the spread of either side; None when neither side has repeats to tell."""
    a, b = _med(group, key), _med(base, key)
    if a is None or b is None:
        return None
    if group["repeats"] < 2 and base["repeats"] < 2:
        return None
    return abs(a - b) <= max(_range(group, key), _range(base, key))


def _config_id(rec: dict[str, Any]) -> str:
    from ampflow.tracking.schema import config_id

    return config_id(rec.get("precision"), rec.get("compile"), rec.get("strategy"))


def _normalise(inputs: list[Any]) -> list[dict[str, Any]]:
    records = []
    for item in inputs:
        if isinstance(item, str | Path):
            records.append(load_run_dir(item))
        elif isinstance(item, dict) and "metrics" in item:
            records.append(item)
        else:
            raise ConfigError(f"compare: cannot read {item!r} (a run directory or a run record)")
    return records


def _pick_baseline(groups: dict[str, dict[str, Any]], baseline: str) -> str:
    if baseline in groups:
        return baseline
    same = [cid for cid, g in groups.items() if g["precision"] == baseline]
    if not same:
        raise ConfigError(
            f"--baseline {baseline!r}: no such configuration in the runs; have {', '.join(groups)}"
        )
    return sorted(same, key=lambda cid: groups[cid]["compile"])[0]


def compare_runs(
    inputs: list[Any],
    *,
    baseline: str = BASELINE_PRECISION,
    tolerance: float = 0.5,
    previous: list[dict[str, Any]] | None = None,
    throughput_drop: float = DEFAULT_THROUGHPUT_DROP,
    accuracy_drop: float = DEFAULT_ACCURACY_DROP_PP,
    tracking_uri: str | None = None,
) -> dict[str, Any]:
    """The comparison summary (schema ``ampflow.compare/1``) of run directories or run records.

    ``previous``: earlier sweeps as ``[{"sweep_run_id": ..., "configs": {config_id: {"samples_per_s": x,
    "accuracy": y}}}]`` for the regression check; ``None`` looks them up in MLflow (same recipe and
    hardware fingerprint, started before this sweep) when the runs were tracked, ``[]`` skips the check.
    """
    if not inputs:
        raise ConfigError("compare: no runs to compare")
    if tolerance < 0:
        raise ConfigError(f"--tolerance must be >= 0 percentage points, got {tolerance}")
    records = _normalise(inputs)
    groups: dict[str, dict[str, Any]] = {}
    for rec in records:
        cid = _config_id(rec)
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
        g["figures"] = {k: _spread([m["metrics"].get(k) for m in g["members"]]) for k in FIGURES}
    base_id = _pick_baseline(groups, baseline)
    base = groups[base_id]
    b_thr, b_mem, b_acc = _med(base, "samples_per_s"), _med(base, "peak_memory_bytes"), _med(base, "accuracy")
    b_f1, b_ece = _med(base, "macro_f1"), _med(base, "ece")

    configs = []
    for cid, g in groups.items():
        thr, mem, acc = _med(g, "samples_per_s"), _med(g, "peak_memory_bytes"), _med(g, "accuracy")
        f1, ece = _med(g, "macro_f1"), _med(g, "ece")
        row: dict[str, Any] = {
            "config_id": cid, "precision": g["precision"], "compile": g["compile"], "strategy": g["strategy"],
            "repeats": g["repeats"], "is_baseline": cid == base_id,
            "run_ids": [m.get("run_id") for m in g["members"]],
            "run_dirs": [m.get("run_dir") for m in g["members"]],
            "figures": g["figures"],
            "bf16_emulated": any(bool(m.get("bf16_emulated")) for m in g["members"]),
            "speedup": _ratio(thr, b_thr),
            "speedup_range": [_ratio(g["figures"]["samples_per_s"]["min"], b_thr),
                              _ratio(g["figures"]["samples_per_s"]["max"], b_thr)] if thr is not None else None,
            "throughput_within_noise": None if cid == base_id else _within_noise(g, base, "samples_per_s"),
            "memory_ratio": _ratio(mem, b_mem),
            "accuracy_delta_pp": None if acc is None or b_acc is None else round((acc - b_acc) * 100, 4),
            "accuracy_within_noise": None if cid == base_id else _within_noise(g, base, "accuracy"),
            "macro_f1_delta_pp": None if f1 is None or b_f1 is None else round((f1 - b_f1) * 100, 4),
            "ece_delta": None if ece is None or b_ece is None else round(ece - b_ece, 6),
            "loss_curve": g["members"][0].get("loss_curve") or [],
        }  # fmt: skip
        if cid == base_id:
            row["verdict"], row["reason"] = "baseline", "the reference configuration"
        elif row["accuracy_delta_pp"] is None:
            row["verdict"], row["reason"] = "unknown", "no accuracy figure (was it evaluated?)"
        elif row["accuracy_delta_pp"] >= -tolerance:
            row["verdict"] = "pass"
            row["reason"] = (
                f"accuracy {row['accuracy_delta_pp']:+.2f} pp, within {tolerance} pp of the baseline"
            )
        else:
            row["verdict"] = "fail"
            row["reason"] = (
                f"accuracy {row['accuracy_delta_pp']:+.2f} pp, more than {tolerance} pp below the baseline"
            )
        configs.append(row)

    passing = [
        c
        for c in configs
        if c["verdict"] in ("pass", "baseline") and _med(groups[c["config_id"]], "samples_per_s")
    ]
    recommended = max(passing, key=lambda c: c["figures"]["samples_per_s"]["median"], default=None)
    configs.sort(key=lambda c: (not c["is_baseline"], c["config_id"]))
    first = records[0]
    summary: dict[str, Any] = {
        "schema": SCHEMA,
        "recipe": first.get("recipe"),
        "device_name": first.get("device_name"),
        "hardware": first.get("hardware") or _hardware_of(records),
        "dataset_hash": first.get("dataset_hash"),
        "baseline": base_id,
        "tolerance_pp": tolerance,
        "configs": configs,
        "recommended": recommended["config_id"] if recommended else None,
        "recommended_run_id": (recommended["run_ids"][0] if recommended else None),
        "recommendation": _recommendation(recommended, configs),
        "sweep_run_id": next((r.get("sweep_run_id") for r in records if r.get("sweep_run_id")), None),
        "tracking_uri": next((r.get("tracking_uri") for r in records if r.get("tracking_uri")), tracking_uri),
        "thresholds": {"throughput_drop": throughput_drop, "accuracy_drop_pp": accuracy_drop},
    }
    if previous is None:
        previous = _previous_sweeps(summary, records)
    summary["regression_baseline"] = [p.get("sweep_run_id") for p in previous]
    summary["regressions"] = find_regressions(
        configs, previous, throughput_drop=throughput_drop, accuracy_drop=accuracy_drop
    )
    summary["regressed"] = bool(summary["regressions"])
    return summary


def _ratio(a: float | None, b: float | None) -> float | None:
    if a is None or not b:
        return None
    return round(a / b, 4)


def _recommendation(rec: dict[str, Any] | None, configs: list[dict[str, Any]]) -> str:
    if rec is None:
        return "no configuration passes (none was evaluated against the baseline)"
    text = f"{rec['config_id']}: fastest configuration within tolerance"
    if rec["speedup"] is not None and not rec["is_baseline"]:
        text += f" ({rec['speedup']:.2f}x the baseline"
        text += ", within noise)" if rec["throughput_within_noise"] else ")"
    elif rec["is_baseline"]:
        text += " (the baseline itself: no other configuration is both faster and accurate enough)"
    return text


def _hardware_of(records: list[dict[str, Any]]) -> str | None:
    from ampflow.tracking.schema import hardware

    if any(r.get("run_id") for r in records):
        return hardware()[0]
    return None


def find_regressions(
    configs: list[dict[str, Any]],
    previous: list[dict[str, Any]],
    *,
    throughput_drop: float,
    accuracy_drop: float,
) -> list[dict[str, Any]]:
    """Per configuration, against the median of the previous sweeps' figures for the same configuration."""
    found = []
    for c in configs:
        thr_ref = [
            p["configs"][c["config_id"]].get("samples_per_s")
            for p in previous
            if c["config_id"] in p["configs"]
        ]
        acc_ref = [
            p["configs"][c["config_id"]].get("accuracy") for p in previous if c["config_id"] in p["configs"]
        ]
        thr_ref = [v for v in thr_ref if v is not None]
        acc_ref = [v for v in acc_ref if v is not None]
        thr = c["figures"]["samples_per_s"]["median"] if c["figures"].get("samples_per_s") else None
        acc = c["figures"]["accuracy"]["median"] if c["figures"].get("accuracy") else None
        if thr is not None and thr_ref:
            ref = statistics.median(thr_ref)
            drop = 1 - thr / ref if ref else 0.0
            if drop > throughput_drop:
                found.append(
                    {
                        "config_id": c["config_id"],
                        "metric": "samples_per_s",
                        "previous": ref,
                        "current": thr,
                        "change": round(-drop, 4),
                        "threshold": throughput_drop,
                        "message": f"throughput {drop:.1%} below the previous sweeps ({ref:.1f} -> {thr:.1f}/s)",
                    }
                )
        if acc is not None and acc_ref:
            ref = statistics.median(acc_ref)
            drop_pp = (ref - acc) * 100
            if drop_pp > accuracy_drop:
                found.append(
                    {
                        "config_id": c["config_id"],
                        "metric": "accuracy",
                        "previous": ref,
                        "current": acc,
                        "change": round(-drop_pp, 4),
                        "threshold": accuracy_drop,
                        "message": f"accuracy {drop_pp:.2f} pp below the previous sweeps ({ref:.4f} -> {acc:.4f})",
                    }
                )
    return found


def _previous_sweeps(summary: dict[str, Any], records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Earlier sweeps of the same recipe on the same hardware, from their child runs in MLflow."""
    uri = summary.get("tracking_uri")
    current = summary.get("sweep_run_id")
    if not uri or not summary.get("recipe") or not any(r.get("run_id") for r in records):
        return []
    try:
        from mlflow.tracking import MlflowClient

        from ampflow.tracking import schema

        client = MlflowClient(uri)
        own = client.get_run(next(r["run_id"] for r in records if r.get("run_id")))
        hw = own.data.tags.get(schema.TAG_HARDWARE)
        summary["hardware"] = hw
        started = min(r.get("start_time") or own.info.start_time for r in records)
        flt = (
            f"tags.`{schema.TAG_RECIPE}` = '{summary['recipe']}' and tags.`{schema.TAG_HARDWARE}` = '{hw}'"
            f" and tags.`{schema.TAG_KIND}` = 'train' and attributes.status = 'FINISHED'"
            f" and attributes.start_time < {started}"
        )
        runs = client.search_runs(
            [own.info.experiment_id],
            filter_string=flt,
            max_results=2000,
            order_by=["attributes.start_time DESC"],
        )
    except Exception as exc:  # the regression check is best effort when the store is away
        print(f"ampflow compare: regression check skipped ({type(exc).__name__}: {exc})", file=sys.stderr)
        return []
    sweeps: dict[str, dict[str, Any]] = {}
    for r in runs:
        sid = r.data.tags.get(schema.TAG_SWEEP)
        if not sid or sid == current:
            continue
        if sid not in sweeps:
            if len(sweeps) >= PREVIOUS_SWEEPS:
                continue
            sweeps[sid] = {"sweep_run_id": sid, "values": {}}
        p = r.data.params
        cid = schema.config_id(p.get("precision"), p.get("compile") == "true", p.get("strategy"))
        vals = sweeps[sid]["values"].setdefault(cid, {"samples_per_s": [], "accuracy": []})
        for k in ("samples_per_s", "accuracy"):
            if r.data.metrics.get(k) is not None:
                vals[k].append(r.data.metrics[k])
    return [
        {
            "sweep_run_id": sid,
            "configs": {
                cid: {k: (statistics.median(v) if v else None) for k, v in vals.items()}
                for cid, vals in s["values"].items()
            },
        }
        for sid, s in sweeps.items()
    ]


# -- outputs ------------------------------------------------------------------------------------


def _fmt(v: Any, spec: str, suffix: str = "") -> str:
    return "n/a" if v is None else f"{format(v, spec)}{suffix}"


def _fig(c: dict[str, Any], key: str, spec: str, scale: float = 1.0) -> str:
    s = c["figures"].get(key)
    if not s:
        return "n/a"
    text = format(s["median"] * scale, spec)
    if s["n"] > 1:
        text += f" ({format(s['min'] * scale, spec)}-{format(s['max'] * scale, spec)})"
    return text


def render_markdown(summary: dict[str, Any]) -> str:
    lines = [
        f"### ampflow compare: {summary.get('recipe')} on {summary.get('device_name') or 'unknown device'}",
        "",
        f"baseline `{summary['baseline']}`, accuracy tolerance {summary['tolerance_pp']} pp; "
        "medians, (min-max) over repeats; ~ marks a difference within noise",
        "",
        "| config | repeats | samples/s | speedup | peak mem MiB | mem ratio | accuracy | Δacc pp | Δmacro-F1 pp "
        "| ΔECE | verdict |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for c in summary["configs"]:
        mark = "~" if c.get("throughput_within_noise") else ""
        amark = "~" if c.get("accuracy_within_noise") else ""
        name = c["config_id"] + (" (bf16 emulated)" if c.get("bf16_emulated") else "")
        rec = " **recommended**" if c["config_id"] == summary.get("recommended") else ""
        lines.append(
            f"| {name} | {c['repeats']} | {_fig(c, 'samples_per_s', '.1f')} | {mark}{_fmt(c['speedup'], '.2f', 'x')} "
            f"| {_fig(c, 'peak_memory_bytes', '.0f', 1 / 2**20)} | {_fmt(c['memory_ratio'], '.2f', 'x')} "
            f"| {_fig(c, 'accuracy', '.4f')} | {amark}{_fmt(c['accuracy_delta_pp'], '+.2f')} "
            f"| {_fmt(c['macro_f1_delta_pp'], '+.2f')} | {_fmt(c['ece_delta'], '+.4f')} | {c['verdict']}{rec} |"
        )
    lines += ["", f"**Recommended:** {summary['recommendation']}"]
    if summary.get("regressions"):
        lines += ["", "**Regressions against previous sweeps:**"]
        lines += [f"- {r['config_id']}: {r['message']}" for r in summary["regressions"]]
    elif summary.get("regression_baseline"):
        lines += ["", f"No regression against {len(summary['regression_baseline'])} previous sweep(s)."]
    else:
        lines += ["", "No previous sweep of this recipe on this hardware to check regressions against."]
    return "\n".join(lines)


def _plots(summary: dict[str, Any]) -> dict[str, str]:
    """The report's four plots as base64 PNG (matplotlib Agg)."""
    import base64
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    configs = summary["configs"]
    names = [c["config_id"] for c in configs]
    colors = ["#4c72b0" if c["is_baseline"] else ("#55a868" if c["verdict"] == "pass" else "#c44e52")
              for c in configs]  # fmt: skip
    out = {}

    def save(fig: Any, key: str) -> None:
        buf = io.BytesIO()
        fig.tight_layout()
        fig.savefig(buf, format="png", dpi=110)
        plt.close(fig)
        out[key] = base64.b64encode(buf.getvalue()).decode()

    def bars(key: str, scale: float, ylabel: str, title: str, name: str) -> None:
        fig, ax = plt.subplots(figsize=(6, 3.4))
        med = [(c["figures"][key]["median"] * scale) if c["figures"].get(key) else 0 for c in configs]
        lo = [(c["figures"][key]["median"] - c["figures"][key]["min"]) * scale if c["figures"].get(key) else 0
              for c in configs]  # fmt: skip
        hi = [(c["figures"][key]["max"] - c["figures"][key]["median"]) * scale if c["figures"].get(key) else 0
              for c in configs]  # fmt: skip
        ax.bar(names, med, color=colors, yerr=[lo, hi], capsize=4)
        ax.set_ylabel(ylabel)
        ax.set_title(title)
        ax.tick_params(axis="x", rotation=20)
        save(fig, name)

    bars("samples_per_s", 1.0, "samples/s", "Throughput (median, min-max)", "throughput")
    bars("peak_memory_bytes", 1 / 2**20, "MiB", "Peak memory", "memory")

    fig, ax = plt.subplots(figsize=(6, 3.4))
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
    save(fig, "loss")

    fig, ax = plt.subplots(figsize=(6, 3.4))
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
            ref - summary["tolerance_pp"],
            color="grey",
            linestyle="--",
            linewidth=0.8,
            label=f"baseline - {summary['tolerance_pp']} pp",
        )
        ax.legend(fontsize=8)
    ax.set_xlabel("samples/s")
    ax.set_ylabel("accuracy %")
    ax.set_title("Accuracy against throughput")
    save(fig, "tradeoff")
    return out


def render_html(summary: dict[str, Any]) -> str:
    import html

    plots = _plots(summary)
    rows = []
    for c in summary["configs"]:
        cls = "rec" if c["config_id"] == summary.get("recommended") else ""
        rows.append(
            f"<tr class='{cls}'><td>{html.escape(c['config_id'])}</td><td>{c['repeats']}</td>"
            f"<td>{_fig(c, 'samples_per_s', '.1f')}</td><td>{_fmt(c['speedup'], '.2f', 'x')}"
            f"{' ~' if c.get('throughput_within_noise') else ''}</td>"
            f"<td>{_fig(c, 'peak_memory_bytes', '.0f', 1 / 2**20)}</td><td>{_fmt(c['memory_ratio'], '.2f', 'x')}</td>"
            f"<td>{_fig(c, 'accuracy', '.4f')}</td><td>{_fmt(c['accuracy_delta_pp'], '+.2f')}</td>"
            f"<td>{_fmt(c['macro_f1_delta_pp'], '+.2f')}</td><td>{_fmt(c['ece_delta'], '+.4f')}</td>"
            f"<td class='{c['verdict']}'>{c['verdict']}</td></tr>"
        )
    regress = "".join(
        f"<li>{html.escape(r['config_id'])}: {html.escape(r['message'])}</li>"
        for r in summary.get("regressions") or []
    )
    n_prev = len(summary.get("regression_baseline") or [])
    if regress:
        regress_html = f"<h2>Regressions</h2><ul>{regress}</ul>"
    elif n_prev:
        regress_html = f"<p>Regression check: nothing flagged against {n_prev} previous sweep(s).</p>"
    else:
        regress_html = "<p>Regression check: no previous sweep of this recipe on this hardware yet.</p>"
    imgs = "".join(f"<img alt='{k}' src='data:image/png;base64,{v}'>" for k, v in plots.items())
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><title>ampflow compare: {html.escape(str(summary.get("recipe")))}</title>
<style>
body {{ font-family: -apple-system, Segoe UI, Helvetica, Arial, sans-serif; margin: 24px; color: #222; }}
table {{ border-collapse: collapse; font-size: 13px; }} th, td {{ border: 1px solid #ddd; padding: 4px 8px;
text-align: right; }} th {{ background: #f4f4f4; }} td:first-child {{ text-align: left; }}
tr.rec {{ background: #eaf6ea; font-weight: 600; }} td.fail {{ color: #b00; }} td.pass {{ color: #080; }}
.plots img {{ width: 48%; min-width: 380px; margin: 4px; border: 1px solid #eee; }}
.meta {{ color: #555; font-size: 13px; }}
</style></head><body>
<h1>ampflow compare: {html.escape(str(summary.get("recipe")))}</h1>
<p class="meta">device {html.escape(str(summary.get("device_name")))} · hardware {html.escape(str(summary.get("hardware")))}
· dataset {html.escape(str(summary.get("dataset_hash"))[:23])} · baseline <b>{html.escape(summary["baseline"])}</b>
· tolerance {summary["tolerance_pp"]} pp · sweep {html.escape(str(summary.get("sweep_run_id")))}</p>
<p><b>Recommended:</b> {html.escape(summary["recommendation"])}</p>
<table><tr><th>config</th><th>repeats</th><th>samples/s</th><th>speedup</th><th>peak MiB</th><th>mem ratio</th>
<th>accuracy</th><th>Δacc pp</th><th>Δmacro-F1 pp</th><th>ΔECE</th><th>verdict</th></tr>
{"".join(rows)}</table>
<p class="meta">medians, (min-max) over repeats; ~ marks a difference within the spread (noise)</p>
{regress_html}
<div class="plots">{imgs}</div>
</body></html>
"""


def write_reports(summary: dict[str, Any], out: str | Path) -> list[Path]:
    """summary.json, report.md, report.html into ``out``; returns their paths."""
    from ampflow.dataset import atomic_write_json, atomic_write_text

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


def publish(summary: dict[str, Any], files: list[Path], *, uri: str | None = None) -> None:
    """Log the reports as artifacts of the sweep's parent run, and its per-config medians as metrics."""
    from mlflow.entities import Metric
    from mlflow.tracking import MlflowClient

    from ampflow.tracking.tracker import tracking_uri

    client = MlflowClient(uri or tracking_uri())
    run_id = summary["sweep_run_id"]
    for f in files:
        client.log_artifact(run_id, str(f), "compare")
    import time

    ts = int(time.time() * 1000)
    metrics = []
    for c in summary["configs"]:
        for key in ("samples_per_s", "accuracy", "peak_memory_bytes"):
            if c["figures"].get(key):
                metrics.append(Metric(f"{c['config_id']}/{key}", c["figures"][key]["median"], ts, 0))
        if c["speedup"] is not None:
            metrics.append(Metric(f"{c['config_id']}/speedup", c["speedup"], ts, 0))
    client.log_batch(run_id, metrics=metrics[:1000])
    client.set_tag(run_id, "ampflow.recommended", str(summary.get("recommended")))
    client.set_tag(run_id, "ampflow.regressed", "true" if summary.get("regressed") else "false")

"""The sweep parent run, whoever trained the runs: ``ampflow bench``, a KFP pipeline or an Airflow DAG.

The regression check finds earlier runs through their sweep (:func:`ampflow.tracking.queries.previous_sweeps`
groups training runs by ``ampflow.sweep_id``). ``ampflow bench`` opens its parent run before training;
the pipelines train each configuration in its own task, so ``ampflow compare --record-sweep`` records
their runs as one sweep afterwards, through :func:`link_sweep`: the same parent run (kind ``sweep``,
the same params and tags ``bench`` logs, the run context's pipeline or DAG run id), with every training
run re-parented under it (``mlflow.parentRunId`` and ``ampflow.sweep_id`` tags). Later comparisons then
see a scheduled run as an earlier sweep on the same hardware fingerprint, as they see a ``bench``.

Also the compare views MLflow renders itself (:func:`log_comparison_views`): the table through
``log_table`` and the plots through ``log_figure`` on the sweep run.

Import-light: mlflow is imported inside the functions.
"""

from __future__ import annotations

import sys
import uuid
from collections import Counter
from typing import Any

from ampflow.tracking import schema

TAG_SWEEP_SIZE = "ampflow.sweep_size"
# a parent recorded after its runs trained (a pipeline's), not opened before them (bench's)
TAG_SWEEP_LINKED = "ampflow.sweep_linked"
# per-configuration params a sweep's parent does not carry: they differ between its runs
_PER_RUN = {"precision", "compile", "strategy"}


def sweep_params(
    *,
    recipe: str,
    precisions: list[str],
    compile_modes: list[str],
    repeats: int,
    baseline: str,
    tolerance: float,
    strategies: list[str] | None = None,
) -> dict[str, Any]:
    """The sweep's own params, as every sweep parent run logs them (beside the shared config).

    ``strategies``: the sweep's strategy dimension (None: ``single``, every sweep before strategies).
    """
    return {
        "recipe": recipe,
        "precisions": ",".join(precisions),
        "compile_modes": ",".join(compile_modes),
        "strategies": ",".join(strategies or ["single"]),
        "repeats": repeats,
        "baseline": baseline,
        "tolerance_pp": tolerance,
    }


def _sweep_shape(records: list[dict[str, Any]]) -> tuple[list[str], list[str], list[str], int]:
    """Precisions, compile modes and strategies in first-seen order, and repeats (most runs of one
    configuration)."""
    precisions = list(dict.fromkeys(str(r.get("precision")) for r in records))
    modes = list(dict.fromkeys("on" if r.get("compile") else "off" for r in records))
    strategies = list(dict.fromkeys(str(r.get("strategy") or "single") for r in records))
    per_config = Counter(
        schema.config_id(r.get("precision"), r.get("compile"), r.get("strategy")) for r in records
    )
    return precisions, modes, strategies, max(per_config.values())


def _shared_config(runs: list[Any]) -> dict[str, str]:
    """The RunConfig params every run logged with the same value (what bench's parent logs as config)."""
    from ampflow.config import RunConfig

    fields = set(RunConfig.field_names()) - _PER_RUN
    shared = {k: v for k, v in runs[0].data.params.items() if k in fields}
    for run in runs[1:]:
        shared = {k: v for k, v in shared.items() if run.data.params.get(k) == v}
    return shared


def link_sweep(
    records: list[dict[str, Any]], *, baseline: str, tolerance: float, uri: str | None = None
) -> str | None:
    """Record tracked runs as one sweep: create its parent run and re-parent the runs under it.

    ``records``: compare records (:mod:`ampflow.compare.records`) of the runs; each gets the parent's
    id as ``sweep_run_id``. Runs that already belong to one sweep (a ``bench``, or an earlier try of
    this step) keep it: linking twice creates nothing; runs of several parents are left alone. The parent lives in the runs' experiment,
    carries their hardware fingerprint (not the one of the machine compare runs on: a pipeline's
    compare pod is not its GPU node), spans their start and end, and is closed FINISHED at once, so
    a killed pipeline cannot leave it RUNNING. Returns the parent run id, or None when no run is
    tracked or the store cannot be reached (a note on stderr; the comparison goes on without history).
    """
    tracked = [r for r in records if r.get("run_id")]
    if not tracked:
        print("ampflow compare: no tracked run, no sweep recorded", file=sys.stderr)
        return None
    try:
        parent_id = _link(tracked, baseline=baseline, tolerance=tolerance, uri=uri)
    except Exception as exc:  # the store is away: the comparison itself needs no MLflow
        print(f"ampflow compare: sweep not recorded ({type(exc).__name__}: {exc})", file=sys.stderr)
        return None
    for r in records:
        r["sweep_run_id"] = parent_id
    return parent_id


def _link(records: list[dict[str, Any]], *, baseline: str, tolerance: float, uri: str | None) -> str:
    from mlflow.entities import Param
    from mlflow.tracking import MlflowClient
    from mlflow.tracking.context.registry import resolve_tags

    uri = uri or records[0].get("tracking_uri")
    if not uri:
        from ampflow.tracking import tracking_uri

        uri = tracking_uri()
    client = MlflowClient(uri)
    runs = [client.get_run(r["run_id"]) for r in records]
    parents = {run.data.tags.get(schema.TAG_PARENT) for run in runs}
    if parents != {None}:
        # a run is never taken from the sweep it belongs to: all of one sweep (a bench, or this step's
        # earlier try) is that sweep; a mix is refused rather than guessed
        existing = parents.pop() if len(parents) == 1 else None
        if existing and client.get_run(existing).data.tags.get(schema.TAG_KIND) == "sweep":
            return existing
        raise ValueError("the runs already belong to other parent runs; they are left where they are")
    first = runs[0]
    recipe = first.data.tags.get(schema.TAG_RECIPE) or records[0].get("recipe") or ""
    tags = {
        schema.TAG_KIND: "sweep",
        schema.TAG_RECIPE: recipe,
        schema.TAG_HARDWARE: first.data.tags.get(schema.TAG_HARDWARE, ""),
        schema.TAG_HARDWARE_DESC: first.data.tags.get(schema.TAG_HARDWARE_DESC, ""),
        TAG_SWEEP_SIZE: str(len(runs)),
        TAG_SWEEP_LINKED: "true",
    }
    # MLflow's context providers, as for every run ampflow creates: the user, and MLFLOW_RUN_CONTEXT,
    # through which the pipeline or DAG run id reaches the parent
    tags = {**resolve_tags(tags), schema.TAG_RUN_UID: uuid.uuid4().hex}
    start = min(run.info.start_time for run in runs)
    parent = client.create_run(
        first.info.experiment_id, start_time=start, tags=tags, run_name=f"sweep {recipe}".strip()
    )
    pid = parent.info.run_id
    precisions, modes, strategies, repeats = _sweep_shape(records)
    params = {
        **_shared_config(runs),
        **sweep_params(
            recipe=recipe,
            precisions=precisions,
            compile_modes=modes,
            strategies=strategies,
            repeats=repeats,
            baseline=baseline,
            tolerance=tolerance,
        ),
    }
    client.log_batch(pid, params=[Param(k, schema.param_value(v)[:6000]) for k, v in params.items()])
    client.set_tag(pid, schema.TAG_SWEEP, pid)
    for run in runs:
        client.set_tag(run.info.run_id, schema.TAG_PARENT, pid)
        client.set_tag(run.info.run_id, schema.TAG_SWEEP, pid)
    end = max((run.info.end_time or 0) for run in runs) or None
    client.set_terminated(pid, "FINISHED", end_time=end)
    return pid


def log_comparison_views(summary: dict[str, Any], *, uri: str | None = None) -> None:
    """The comparison as MLflow renders it on the sweep run: the per-configuration table
    (``compare/table.json`` through ``log_table``, shown in the run's Evaluation/Artifacts view) and the
    plots (``compare/<name>.png`` through ``log_figure``).

    Best effort: the reports themselves are already logged; a note goes to stderr when MLflow refuses.
    Plots need matplotlib (the tracking extra) and are left out without it.
    """
    run_id = summary.get("sweep_run_id")
    if not run_id:
        return
    try:
        from mlflow.tracking import MlflowClient

        client = MlflowClient(uri or summary.get("tracking_uri") or None)
        client.log_table(run_id, data=comparison_table(summary), artifact_file="compare/table.json")
        for name, fig in _figures(summary).items():
            client.log_figure(run_id, fig, f"compare/{name}.png")
    except Exception as exc:
        print(f"ampflow compare: table/plots not logged ({type(exc).__name__}: {exc})", file=sys.stderr)


def comparison_table(summary: dict[str, Any]) -> dict[str, list[Any]]:
    """The summary's configurations as columns (``log_table``'s dict form), one row per configuration."""
    cols = (
        "config_id",
        "verdict",
        "speed_verdict",
        "speedup",
        "memory_ratio",
        "accuracy_delta_pp",
        "macro_f1_delta_pp",
        "reason",
    )
    table: dict[str, list[Any]] = {c: [] for c in (*cols, "samples_per_s", "accuracy", "recommended")}
    for c in summary.get("configs") or []:
        for col in cols:
            table[col].append(c.get(col))
        for key in ("samples_per_s", "accuracy"):
            fig = (c.get("figures") or {}).get(key) or {}
            table[key].append(fig.get("median"))
        table["recommended"].append(c.get("config_id") == summary.get("recommended"))
    return table


def _figures(summary: dict[str, Any]) -> dict[str, Any]:
    """Throughput and accuracy per configuration as matplotlib figures; {} without matplotlib.

    ``Figure`` objects, not pyplot's: no global figure registry to fill in a long-lived process.
    """
    try:
        from matplotlib.figure import Figure
    except ImportError:
        return {}
    table = comparison_table(summary)
    figures = {}
    for key, label in (("samples_per_s", "samples/s (median)"), ("accuracy", "accuracy (median)")):
        fig = Figure(figsize=(6, 3))
        ax = fig.subplots()
        ax.bar(table["config_id"], [v or 0.0 for v in table[key]], color="#4c72b0")
        ax.set_ylabel(label)
        ax.tick_params(axis="x", rotation=20)
        fig.tight_layout()
        figures[key] = fig
    return figures

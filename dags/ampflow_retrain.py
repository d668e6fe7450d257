"""
### ampflow_retrain: scheduled retraining with a champion gate

prep → train → evaluate → compare → *passes?* → register, then `close_mlflow_runs` (a teardown that
always runs and marks FAILED any MLflow run of this DAG run that a killed step left RUNNING).

**When:** on the cron in `AIRFLOW_VAR_AMPFLOW_RETRAIN_CRON` (default `0 3 * * *`, UTC), **or** when the
asset `ampflow_training_data` is updated (a producer DAG with `outlets=[Asset("ampflow_training_data")]`).
A run started by the asset reads the asset's file URI as `--source` unless the `source` param is set.
`AIRFLOW_VAR_AMPFLOW_RETRAIN_CRON=none` leaves the asset alone. The DAG starts paused and has no
`start_date`: unpausing it never starts a run for a slot that has passed (the first cron run is the
next slot after the unpause; `catchup=False`). After a pause, unpausing runs the latest missed slot
once, as `catchup=False` does.

**Where:** param `execution_mode` (else Variable `ampflow_execution_mode`, else `local`):
`local` runs each step as a subprocess of `ampflow` (Variable `ampflow_bin` or env `AMPFLOW_BIN`);
`kubernetes` runs each step as a pod on the training image (Variable `ampflow_kubernetes` holds the
namespace, image, GPU, node selector, tolerations, MLflow Secret and PVC); with `nodes` ×
`gpus_per_node` > 1 training runs as a TrainJob (a PyTorchJob with `api`) through `ampflow launch`;
`queue`, `priority_class`, `workload_priority`, `queue_timeout` and `run_deadline` are launch's Kueue
and deadline flags. **MLflow:** the server comes from the Airflow Connection the `mlflow_conn_id`
param names (default `mlflow_default`), else the worker's environment (README: Airflow).

**Retries:** a retry after a worker crash reconnects to the running step process or pod (task state
store) and a job is reattached by its deterministic name; a retried `train` resumes from its
last checkpoint. Bad input (exit 2) fails at once, without retries. Every wait is deferred: while a
step, pod or job runs, the triggerer watches it and no worker slot is held.

**Gate:** `compare` records the candidate as a sweep in MLflow (the parent run `ampflow bench`
creates, tagged with this DAG run's id) and checks it against earlier sweeps of the recipe on the same
hardware; `passes` (`ampflow.compare.gate`) stops on a regression and prints what it checked (a
candidate compared with itself is never evidence); `register` then decides champion against
challenger. With `fail_on_regression` a regression fails `compare` (exit 3, no retries) and the run.
A promotion emits an event for the asset `ampflow_champion_<model>` through the alias
`ampflow_champion` (`airflow_ampflow.assets`): schedule a deployment DAG on it.

**Report:** `compare` returns the comparison summary as its XCom (`return_value`) and prints the
Markdown table in its log; `summary.json`, `report.md` (and `report.html`) lie in the run's
`compare/` folder and on the MLflow run.

Trigger by hand: `airflow dags trigger ampflow_retrain -c '{"overrides": {"max_steps": 200}}'`.
"""

from __future__ import annotations

import os
from datetime import timedelta
from typing import Any
from urllib.parse import urlparse

from airflow.sdk import (
    DAG,
    Asset,
    AssetOrTimeSchedule,
    CronTriggerTimetable,
    Param,
    get_current_context,
    task,
)

from airflow_ampflow.operator import TOPOLOGY_OPTION, AmpflowStepOperator
from airflow_ampflow.params import (
    common_params,
    default_args,
    parse_time_setting,
    precision_param,
    tolerance_param,
)
from airflow_ampflow.runtime import close_runs_options, resolve_mode, run_root
from ampflow.compare.gate import gate_decision
from ampflow.config import STRATEGIES, ConfigError
from ampflow.engine import mesh as meshes

TRAINING_DATA = Asset(
    name="ampflow_training_data",
    uri=parse_time_setting("ampflow_training_data_uri", "file:///var/lib/ampflow/training-data.csv"),
)


def local_topology(params: Any, mode: str) -> dict[str, Any]:
    """In local mode a strategy other than ``single`` trains under torchrun on the worker's machine,
    in ``gpus_per_node`` processes: the train task's own topology (``{TOPOLOGY_OPTION: [1, N]}``), as
    the benchmark DAG gives its distributed configurations. ``{}`` otherwise (kubernetes mode
    launches a job from ``nodes`` x ``gpus_per_node``). Raises AirflowFailException (no retries: bad
    input) for a layout one machine cannot hold, with bench's and launch's rule
    (:func:`ampflow.engine.mesh.resolve`), before anything is prepared or trained."""
    from airflow.sdk.exceptions import AirflowFailException

    strategy, nodes, per_node = params["strategy"], int(params["nodes"]), int(params["gpus_per_node"])
    if mode != "local" or strategy == "single":
        return {}
    if nodes != 1 or per_node < 2:
        raise AirflowFailException(
            f"strategy {strategy} in local mode runs under torchrun on this machine: set nodes to 1 and "
            f"gpus_per_node (the process count) to at least 2 (got nodes {nodes}, gpus_per_node {per_node})"
        )
    try:
        meshes.resolve(strategy, (params.get("overrides") or {}).get("mesh"), per_node, per_node)
    except ConfigError as exc:
        raise AirflowFailException(f"strategy {strategy}: {exc}") from None
    return {TOPOLOGY_OPTION: [1, per_node]}


def retrain_schedule(cron: str) -> Any:
    """The cron slot or a new-data event, whichever comes first; asset-only when ``cron`` is empty or
    ``none``. The first cron run is the next slot *after* the DAG is unpaused: ``run_immediately=0``
    (Airflow's default runs a slot that passed less than a tenth of the period ago) and no
    ``start_date`` (with one, catchup off still runs the latest past slot at once)."""
    if cron.strip().lower() in ("", "none"):
        return [TRAINING_DATA]
    return AssetOrTimeSchedule(
        timetable=CronTriggerTimetable(cron, timezone="UTC", run_immediately=timedelta(0)),
        assets=[TRAINING_DATA],
    )


with DAG(
    dag_id="ampflow_retrain",
    description="Retrain on a schedule or on new data; register only a model that passes the champion gate",
    schedule=retrain_schedule(parse_time_setting("ampflow_retrain_cron", "0 3 * * *")),
    # no start_date, catchup off and run_immediately=0 in retrain_schedule: unpausing never starts a run
    # for a cron slot that has already passed (README, Airflow: "Unpausing")
    catchup=False,
    max_active_runs=1,
    default_args=default_args(),
    tags=["ampflow", "ml", "retraining"],
    doc_md=__doc__,
    params={
        **common_params(),
        "precision": precision_param(description="precision mode of the candidate"),
        "compile": Param(False, type="boolean", description="torch.compile the candidate"),
        "strategy": Param("single", type="string", enum=list(STRATEGIES)),
        "nodes": Param(1, type="integer", minimum=1, description="kubernetes: TrainJob/PyTorchJob nodes"),
        "gpus_per_node": Param(
            1,
            type="integer",
            minimum=1,
            description="kubernetes: GPUs per node; local: torchrun's process count for a strategy other than single",
        ),
        "tolerance": tolerance_param(),
        "model_name": Param(
            None, type=["null", "string"], description="registered model (default ampflow-RECIPE)"
        ),
    },
    render_template_as_native_obj=True,
) as dag:

    @task(multiple_outputs=True)
    def plan() -> dict[str, Any]:
        """Where every step reads and writes in this run; resolved once, used by every task."""
        ctx = get_current_context()
        p = ctx["params"]
        root = run_root(ctx)
        source = p.get("source")
        if not source:
            # a run triggered by new data trains on that data
            for events in (ctx.get("triggering_asset_events") or {}).values():
                for event in events:
                    uri = getattr(getattr(event, "asset", None), "uri", "") or ""
                    if uri:
                        source = urlparse(uri).path if uri.startswith("file://") else uri
        data, run_dir = os.path.join(root, "data"), os.path.join(root, "runs", "candidate")
        compare_dir = os.path.join(root, "compare")
        common = {"recipe": p["recipe"]}
        mode = resolve_mode(ctx)
        return {
            "mode": mode,
            "prep": {**common, "out": data, "source": source, "limit": p.get("limit")},
            "train": {
                **common,
                "data": data,
                "out": run_dir,
                "precision": p["precision"],
                "strategy": p["strategy"],
                "compile": bool(p["compile"]),
                **local_topology(p, mode),
            },
            "evaluate": {**common, "data": data, "checkpoint": run_dir, "out": os.path.join(run_dir, "eval")},
            "compare": {
                **common,
                "runs": [run_dir],
                "out": compare_dir,
                "baseline": p["precision"],
                "tolerance": p["tolerance"],
                # recorded as a sweep and checked against the earlier ones: the gate's first half
                "record_sweep": True,
                "fail_on_regression": bool(p["fail_on_regression"]),
            },
            "register": {
                "summary": os.path.join(compare_dir, "summary.json"),
                "data": data,
                # None: register's own default, valid for module:function recipes too
                "model_name": p.get("model_name") or None,
                "tolerance": p["tolerance"],
            },
            "close_runs": close_runs_options(ctx, root),
        }

    layout = plan()
    overrides = "{{ params.overrides }}"
    prep = AmpflowStepOperator(task_id="prep", step="prep", step_options=layout["prep"])
    train = AmpflowStepOperator(
        task_id="train",
        step="train",
        step_options=layout["train"],
        overrides=overrides,
        result=("out", "result.json"),
        gpu=True,
    )
    evaluate = AmpflowStepOperator(
        task_id="evaluate",
        step="evaluate",
        step_options=layout["evaluate"],
        overrides=overrides,
        result=("out", "eval.json"),
        gpu=True,
    )
    compare = AmpflowStepOperator(
        task_id="compare", step="compare", step_options=layout["compare"], result=("out", "summary.json")
    )

    @task.short_circuit(ignore_downstream_trigger_rules=False)
    def passes(summary: dict[str, Any]) -> bool:
        """The gate's first half (ampflow.compare.gate): no regression against earlier runs, and never
        the candidate's comparison with itself as evidence; register, the second half, then moves the
        `champion` alias only if the candidate also beats the current champion."""
        decision = gate_decision(summary)
        for check in decision.checks:
            print(f"champion gate checked: {check}")
        print(f"champion gate: {'pass' if decision.passes else 'stop'}: {decision.why}")
        return decision.passes

    gate = passes(compare.output)
    register = AmpflowStepOperator(
        task_id="register",
        step="register",
        step_options=layout["register"],
        result=("summary", "register.json"),
    )

    # a teardown: runs whatever happened, and marks FAILED the MLflow runs a killed step left RUNNING
    closer = AmpflowStepOperator(
        task_id="close_mlflow_runs", step="close-runs", step_options=layout["close_runs"]
    )
    layout >> prep >> train >> evaluate >> compare >> gate >> register >> closer.as_teardown(setups=layout)

"""
### ampflow_benchmark: one precision/compile/strategy sweep, mapped over its configurations

plan → prep → train[config] → evaluate[config] → compare, then `close_mlflow_runs` (teardown).
`train` and `evaluate` are mapped (`.expand`) over every (precision, compile, strategy, repeat) of the
sweep, in `ampflow bench`'s order (repeats interleave, strategies innermost). On one machine the train
tasks run one at a time (`AIRFLOW_VAR_AMPFLOW_BENCH_PARALLELISM`, default 1): two configurations timed
side by side on shared cores measure contention, not precision. On a cluster each pod has its own GPU;
raise it there.

**Strategies** (`strategies`, default `["single"]`) are a sweep dimension as in `ampflow bench
--strategies`: a configuration of a strategy other than `single` trains in `nproc_per_node` processes.
In `local` mode its train task runs `ampflow train` under torchrun on the worker's machine (the
training venv's interpreter, a free port per task); in `kubernetes` mode it is `ampflow launch` of a
TrainJob (a PyTorchJob with `api`) of `nodes` x `nproc_per_node` GPUs, as `ampflow_retrain` launches
its distributed train. Evaluation stays one process, which reads a sharded checkpoint's shards whole. The
comparison lines the configurations up by strategy (`32-true`, `32-true-ddp`, ...); the baseline is
the uncompiled run of `baseline` under the first strategy listed.

A configuration whose train or evaluate fails after its retries fails the run (compare needs them all);
the other configurations' runs and checkpoints stay in place for a manual `ampflow compare`.

Params are validated before anything runs: `precisions` and `baseline` take only ampflow's precision
modes, `compile_modes` only `off`/`on`, `strategies` only ampflow's strategies; `plan` parses them once
into ampflow's `SweepSpec` (the baseline must be one of the precisions), refuses a process count the
distributed strategies cannot run on (fewer than 2 processes, a `mesh` override that does not cover
them, `nodes` > 1 in local mode) with one line and without retries, and `sweep` turns its entries
into train options.

The comparison (speedup, memory ratio, accuracy delta, verdict, recommended configuration) is the
`compare` task's XCom and its Markdown table is printed in that task's log. `compare` records the
run's configurations as one sweep in MLflow (the parent run `ampflow bench` creates, tagged with this
DAG run's id) and checks them against earlier sweeps of the recipe on the same hardware; with
`fail_on_regression` a regression fails `compare` (exit 3, no retries) and the run. Execution modes, retries
and reconnection work as in `ampflow_retrain` (see its docs and the README's Airflow section).

Trigger: `airflow dags trigger ampflow_benchmark -c '{"precisions": ["32-true", "bf16-mixed"]}'`, or
`-c '{"precisions": ["bf16-mixed"], "baseline": "bf16-mixed", "strategies": ["single", "ddp", "fsdp"]}'`.
"""

from __future__ import annotations

import os
from typing import Any

import pendulum
from airflow.sdk import DAG, Param, get_current_context, task
from airflow.sdk.exceptions import AirflowFailException

from airflow_ampflow.operator import TOPOLOGY_OPTION, AmpflowStepOperator
from airflow_ampflow.params import (
    choices_param,
    common_params,
    default_args,
    parse_time_setting,
    precision_param,
    tolerance_param,
)
from airflow_ampflow.runtime import close_runs_options, resolve_mode, run_root
from ampflow.config import BASELINE_PRECISION, PRECISIONS, STRATEGIES, ConfigError, SweepSpec
from ampflow.steps.bench import DEFAULT_NPROC_PER_NODE, check_nproc

# one process: the topology of a configuration whose strategy is single
ONE_PROCESS = [1, 1]


def run_dir(root: str, entry_id: str) -> str:
    """The run directory of one sweep entry."""
    return os.path.join(root, "runs", entry_id)


def distributed_topology(
    spec: SweepSpec, mode: str, nodes: int, nproc_per_node: int, mesh: str | None = None
) -> list[int]:
    """``[nodes, processes per node]`` of the sweep's distributed configurations (``[1, 1]`` when
    every strategy is single).

    Raises ConfigError (one line) when the strategies cannot run on that many processes: the rules of
    ``ampflow bench`` (:func:`ampflow.steps.bench.check_nproc`: at least 2 processes, and each
    strategy's layout, its default mesh or the ``mesh`` override, covering exactly them); over several
    nodes (kubernetes only) :func:`ampflow.engine.mesh.resolve` on ``nodes`` x ``nproc_per_node`` ranks.
    """
    if not spec.distributed:
        return list(ONE_PROCESS)
    if nodes == 1:
        check_nproc(spec, nproc_per_node, mesh, names=("nproc_per_node", "strategies"))  # the DAG's params
        return [1, nproc_per_node]
    if mode != "kubernetes":
        raise ConfigError(
            f"nodes {nodes}: local mode runs a distributed configuration under torchrun on one machine; "
            "use nodes 1 or execution_mode kubernetes"
        )
    from ampflow.engine import mesh as meshes

    for strategy in spec.strategies:
        meshes.resolve(strategy, mesh, nodes * nproc_per_node, nproc_per_node)
    return [nodes, nproc_per_node]


def train_options(spec: dict[str, Any], entry: dict[str, Any]) -> dict[str, Any]:
    """The train step of one sweep entry: ``strategy`` only when it is not single (the argv of a
    single configuration stays what it always was), and the task's own topology (bookkeeping, left
    out of the argv) that makes the operator run it under torchrun or launch it as a job."""
    strategy = entry.get("strategy")
    return {
        "recipe": spec["recipe"],
        "data": spec["data"],
        "out": run_dir(spec["root"], entry["id"]),
        "precision": entry["precision"],
        "compile": entry["compile"],
        "strategy": strategy,
        "_id": entry["id"],
        TOPOLOGY_OPTION: list(spec["topology"]) if strategy else list(ONE_PROCESS),
    }


def evaluate_options(train: dict[str, Any]) -> dict[str, Any]:
    """The evaluate step of one configuration, from its train options."""
    return {
        "recipe": train["recipe"],
        "data": train["data"],
        "checkpoint": train["out"],
        "out": os.path.join(train["out"], "eval"),
        "_id": train["_id"],
    }


with DAG(
    dag_id="ampflow_benchmark",
    description="Benchmark precision/compile/strategy configurations side by side and compare them",
    schedule=None,
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    max_active_runs=1,
    default_args=default_args(),
    tags=["ampflow", "ml", "benchmark"],
    doc_md=__doc__,
    params={
        **common_params(),
        "precisions": choices_param(
            [BASELINE_PRECISION, "bf16-mixed"], PRECISIONS, "precision modes to compare"
        ),
        "compile_modes": choices_param(["off"], ["off", "on"], "torch.compile off, on, or both"),
        "strategies": choices_param(
            ["single"],
            STRATEGIES,
            "training strategies to compare; every one but single trains in nproc_per_node processes "
            "(torchrun locally, a TrainJob/PyTorchJob in kubernetes mode)",
        ),
        "nproc_per_node": Param(
            DEFAULT_NPROC_PER_NODE,
            type="integer",
            minimum=1,
            description="processes (GPUs) per node of a configuration whose strategy is not single: "
            "torchrun --nproc_per_node locally, the job's GPUs per node in kubernetes mode",
        ),
        "nodes": Param(
            1,
            type="integer",
            minimum=1,
            description="kubernetes: nodes of a distributed configuration's TrainJob/PyTorchJob "
            "(local mode: 1)",
        ),
        "repeats": Param(1, type="integer", minimum=1, maximum=20, description="runs per configuration"),
        "baseline": precision_param(description="the configuration the others are compared with"),
        "tolerance": tolerance_param(),
    },
    render_template_as_native_obj=True,
) as dag:

    @task(multiple_outputs=True)
    def plan() -> dict[str, Any]:
        """The sweep, parsed once, and where every step reads and writes; bad params fail here."""
        ctx = get_current_context()
        p = ctx["params"]
        mode = resolve_mode(ctx)
        try:
            spec = SweepSpec.from_lists(
                p["precisions"], p["compile_modes"], p["repeats"], p["baseline"], p["strategies"]
            )
            mesh = (p.get("overrides") or {}).get("mesh")
            topology = distributed_topology(spec, mode, int(p["nodes"]), int(p["nproc_per_node"]), mesh)
        except ConfigError as exc:
            raise AirflowFailException(str(exc)) from None
        root = run_root(ctx)
        entries = [e.to_dict() for e in spec.entries()]
        data = os.path.join(root, "data")
        sweep = {"recipe": p["recipe"], "data": data, "root": root, "entries": entries, "topology": topology}
        return {
            "mode": mode,
            "sweep": sweep,
            "prep": {
                "recipe": p["recipe"],
                "out": data,
                "source": p.get("source"),
                "limit": p.get("limit"),
            },
            "compare": {
                "recipe": p["recipe"],
                "runs": [run_dir(root, e["id"]) for e in entries],
                "out": os.path.join(root, "compare"),
                "baseline": spec.baseline,
                "tolerance": p["tolerance"],
                # the sweep parent `ampflow bench` creates: later runs' regression check sees this one
                "record_sweep": True,
                "fail_on_regression": bool(p["fail_on_regression"]),
            },
            "close_runs": close_runs_options(ctx, root),
        }

    @task
    def sweep(spec: dict[str, Any]) -> list[dict[str, Any]]:
        """One train option set per sweep entry, in ampflow bench's order; `train` maps over it."""
        return [train_options(spec, e) for e in spec["entries"]]

    layout = plan()
    configs = sweep(layout["sweep"])
    overrides = "{{ params.overrides }}"
    prep = AmpflowStepOperator(task_id="prep", step="prep", step_options=layout["prep"])
    train = AmpflowStepOperator.partial(
        task_id="train",
        step="train",
        overrides=overrides,
        result=("out", "result.json"),
        gpu=True,
        max_active_tis_per_dagrun=int(parse_time_setting("ampflow_bench_parallelism", "1")),
        map_index_template="{{ task.step_options['_id'] }}",
    ).expand(step_options=configs)
    evaluate = AmpflowStepOperator.partial(
        task_id="evaluate",
        step="evaluate",
        overrides=overrides,
        result=("out", "eval.json"),
        gpu=True,
        map_index_template="{{ task.step_options['_id'] }}",
    ).expand(step_options=configs.map(evaluate_options))
    compare = AmpflowStepOperator(
        task_id="compare", step="compare", step_options=layout["compare"], result=("out", "summary.json")
    )
    # a teardown: runs whatever happened, and marks FAILED the MLflow runs a killed step left RUNNING
    closer = AmpflowStepOperator(
        task_id="close_mlflow_runs", step="close-runs", step_options=layout["close_runs"]
    )
    layout >> configs >> prep >> train >> evaluate >> compare >> closer.as_teardown(setups=layout)

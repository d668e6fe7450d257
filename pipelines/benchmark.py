"""The benchmark pipeline: prep once, train + evaluate every precision/compile configuration, compare.

    make compile                                  # -> pipelines/compiled/benchmark.yaml (upload to KFP)
    ampflow bench --engine kfp-local --recipe tweets-bow --limit 300 --set max_steps=8   # this machine

The sweep is given as ``ampflow bench`` and the Airflow DAG give it: ``precisions``, ``compile_modes``
(``off`` and/or ``on``), ``repeats`` and ``baseline``; the ``sweep_plan`` task parses it with
``ampflow.config.SweepSpec`` and expands it into the ParallelFor items. ``repeats`` trains each
configuration several times (medians and spread in the report). The ParallelFor runs one configuration
at a time: configurations timed side by side on one node measure each other.
"""

# No `from __future__ import annotations` here: KFP reads the signature's annotations as types.
from typing import List  # noqa: UP035 - KFP reads these annotations

from kfp import dsl

from components import CACHE_MOUNT
from components.compare import compare
from components.evaluate import evaluate
from components.prep import prep
from components.sweep_plan import sweep_plan
from components.train import train
from pipelines.cluster import TRAIN_BACKOFF, TRAIN_RETRIES, Cluster, cluster_parameters, with_train_retries

# configurations trained one after another (see the module docstring); recompile to change
PARALLELISM = 1


def build_benchmark(train_retries: int = TRAIN_RETRIES, retry_backoff: str = TRAIN_BACKOFF):
    """The benchmark pipeline with this retry policy on its train step.

    The compiled pipeline keeps the defaults; local runs build one without retries, because kfp.local
    honours the policy and its backoff, and a retried local task writes into the same folder.
    """

    @dsl.pipeline(
        name="ampflow-benchmark",
        description="Train and evaluate one recipe under several precision/compile configurations and "
        "compare speed, memory and accuracy against the baseline.",
    )
    @cluster_parameters
    def benchmark(
        recipe: str = "tweets-minilm",
        precisions: List[str] = ["32-true", "tf32", "bf16-mixed"],  # noqa: B006, UP006
        compile_modes: List[str] = ["off", "on"],  # noqa: B006, UP006
        repeats: int = 3,
        baseline: str = "32-true",
        tolerance: float = 0.5,
        settings: List[str] = [],  # noqa: B006, UP006
        source: str = "",
        limit: int = 0,
        seed: int = 0,
        accelerator_count: int = 1,
        fail_on_regression: bool = False,
        cluster: Cluster = None,
    ) -> bool:
        """Returns the gate's decision: a configuration passes and nothing regressed (the recommended
        one is in compare's summary). `fail_on_regression` fails the run (compare exits 3) when a
        configuration regressed against earlier runs of the recipe on the same hardware."""
        run_id = dsl.PIPELINE_JOB_ID_PLACEHOLDER

        # No ExitHandler around a ParallelFor: the KFP backend fails such runs (kubeflow/pipelines#12390).
        # A step ends its own MLflow run as FAILED or KILLED (SIGTERM from a deleted pod included).
        plan = sweep_plan(
            precisions=precisions, compile_modes=compile_modes, repeats=repeats, baseline=baseline
        ).set_display_name("plan")
        cluster.small(plan, mlflow=False)

        prep_task = prep(
            recipe=recipe,
            source=source,
            seed=seed,
            limit=limit,
            cache_dir=CACHE_MOUNT,
            pipeline_run_id=run_id,
        ).set_display_name("prep")
        # the same source URI can hold new data on the next scheduled run: prep always reads it again
        prep_task.set_caching_options(False)
        cluster.cpu(prep_task)

        with dsl.ParallelFor(plan.output, parallelism=PARALLELISM, name="configurations") as entry:
            train_task = train(
                recipe=recipe,
                data=prep_task.outputs["data"],
                precision=entry.precision,
                compile=entry.compile,
                settings=settings,
                cache_dir=CACHE_MOUNT,
                pipeline_run_id=run_id,
            ).set_display_name("train")
            # a benchmark measures: never reuse a cached training
            train_task.set_caching_options(False)
            cluster.gpu(train_task, accelerator_count, cache=True)
            with_train_retries(train_task, train_retries, retry_backoff)

            eval_task = evaluate(
                recipe=recipe,
                data=prep_task.outputs["data"],
                model=train_task.outputs["model"],
                pipeline_run_id=run_id,
            ).set_display_name("evaluate")
            eval_task.set_caching_options(False)
            cluster.gpu(eval_task, accelerator_count)

        compare_task = compare(
            runs=dsl.Collected(eval_task.outputs["evaluated_run"]),
            baseline=baseline,
            tolerance=tolerance,
            # the sweep parent `ampflow bench` creates: later runs' regression check sees this one
            record_sweep=True,
            fail_on_regression=fail_on_regression,
            pipeline_run_id=run_id,
        ).set_display_name("compare")
        compare_task.set_caching_options(False)
        cluster.small(compare_task)
        return compare_task.outputs["Output"]

    return benchmark


benchmark = build_benchmark()

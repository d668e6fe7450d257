"""The benchmark pipeline: prep once, train + evaluate every precision/compile configuration, compare.

    make compile                                  # -> pipelines/compiled/benchmark.yaml (upload to KFP)
    python -m pipelines.local --recipe tweets-bow --limit 300 --set max_steps=8   # on this machine

Configurations are precision modes, ``+compile`` for a torch.compile run (``bf16-mixed+compile``);
``repeats`` trains each one several times (medians and spread in the report). The ParallelFor runs
one configuration at a time: configurations timed side by side on one node measure each other.
"""

# No `from __future__ import annotations` here: KFP reads the signature's annotations as types.
from typing import List  # noqa: UP035 - KFP reads these annotations

from kfp import dsl

from components import CACHE_MOUNT, TRAINING_IMAGE
from components.compare import compare
from components.evaluate import evaluate
from components.prep import prep
from components.sweep_plan import sweep_plan
from components.train import train
from pipelines import cluster

# configurations trained one after another (see the module docstring); recompile to change
PARALLELISM = 1


def build_benchmark(train_retries: int = cluster.TRAIN_RETRIES, retry_backoff: str = cluster.TRAIN_BACKOFF):
    """The benchmark pipeline with this retry policy on its train step.

    The compiled pipeline keeps the defaults; local runs build one without retries, because kfp.local
    honours the policy and its backoff, and a retried local task writes into the same folder.
    """

    @dsl.pipeline(
        name="ampflow-benchmark",
        description="Train and evaluate one recipe under several precision/compile configurations and "
        "compare speed, memory and accuracy against the baseline.",
    )
    def benchmark(
        recipe: str = "tweets-minilm",
        configurations: List[str] = ["32-true", "tf32", "bf16-mixed", "bf16-mixed+compile"],  # noqa: B006, UP006
        repeats: int = 3,
        tolerance: float = 0.5,
        baseline: str = "32-true",
        image: str = TRAINING_IMAGE,
        settings: List[str] = [],  # noqa: B006, UP006
        source: str = "",
        limit: int = 0,
        seed: int = 0,
        accelerator_type: str = "nvidia.com/gpu",
        accelerator_count: int = 1,
        cpu_request: str = "4",
        cpu_limit: str = "8",
        memory_request: str = "16Gi",
        memory_limit: str = "32Gi",
        node_selector: dict = {},  # noqa: B006
        tolerations: list = cluster.GPU_TOLERATIONS,
        mlflow_secret: str = "ampflow-mlflow",
        cache_pvc: str = "ampflow-cache",
    ) -> bool:
        """Returns whether a configuration passes (the recommended one is in compare's summary)."""
        run_id = dsl.PIPELINE_JOB_ID_PLACEHOLDER
        gpu = dict(
            accelerator_type=accelerator_type,
            accelerator_count=accelerator_count,
            cpu_request=cpu_request,
            cpu_limit=cpu_limit,
            memory_request=memory_request,
            memory_limit=memory_limit,
            node_selector=node_selector,
            tolerations=tolerations,
        )

        # No ExitHandler around a ParallelFor: the KFP backend fails such runs (kubeflow/pipelines#12390).
        # A step ends its own MLflow run as FAILED or KILLED (SIGTERM from a deleted pod included).
        plan = sweep_plan(configurations=configurations, repeats=repeats).set_display_name("plan")
        cluster.with_small_resources(cluster.on_image(plan, image))

        prep_task = prep(
            recipe=recipe,
            source=source,
            seed=seed,
            limit=limit,
            cache_dir=CACHE_MOUNT,
            pipeline_run_id=run_id,
        ).set_display_name("prep")
        cluster.with_resources(
            prep_task, cpu_request=cpu_request, memory_request=memory_request, memory_limit=memory_limit
        )
        cluster.with_cache(cluster.on_image(prep_task, image), cache_pvc)

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
            cluster.with_accelerator(cluster.on_image(train_task, image), **gpu)
            cluster.with_cache(cluster.with_mlflow(train_task, mlflow_secret), cache_pvc)
            cluster.with_train_retries(train_task, train_retries, retry_backoff)

            eval_task = evaluate(
                recipe=recipe,
                data=prep_task.outputs["data"],
                model=train_task.outputs["model"],
                pipeline_run_id=run_id,
            ).set_display_name("evaluate")
            eval_task.set_caching_options(False)
            cluster.with_accelerator(cluster.on_image(eval_task, image), **gpu)
            cluster.with_mlflow(eval_task, mlflow_secret)

        compare_task = compare(
            runs=dsl.Collected(eval_task.outputs["evaluated_run"]),
            baseline=baseline,
            tolerance=tolerance,
            pipeline_run_id=run_id,
        ).set_display_name("compare")
        compare_task.set_caching_options(False)
        cluster.with_mlflow(
            cluster.with_small_resources(cluster.on_image(compare_task, image)), mlflow_secret
        )
        return compare_task.outputs["Output"]

    return benchmark


benchmark = build_benchmark()

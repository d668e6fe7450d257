"""The benchmark pipeline: prep once, train + evaluate every precision/compile/strategy configuration, compare.

    make compile                                  # -> pipelines/compiled/benchmark.yaml (upload to KFP)
    ampflow bench --engine kfp-local --recipe tweets-bow --limit 300 --set max_steps=8   # this machine

The sweep is given as ``ampflow bench`` and the Airflow DAG give it: ``precisions``, ``compile_modes``
(``off`` and/or ``on``), ``strategies``, ``repeats`` and ``baseline``; the ``sweep_plan`` task parses it
with ``ampflow.config.SweepSpec``, checks the process count with ``ampflow bench``'s rules, and expands
it into the ParallelFor items. ``repeats`` trains each configuration several times (medians and spread
in the report). The ParallelFor runs one configuration at a time: configurations timed side by side on
one node measure each other.

A configuration whose strategy is ``single`` trains in one pod (``accelerator_count`` GPUs); every other
strategy (``ddp``, ``fsdp``, ``tp``, ``pp``, ``fsdp+tp``) goes to the multi-GPU path: the
``train_distributed`` component launches a Kubeflow TrainJob (``job_api`` ``pytorchjob``: a PyTorchJob)
of ``num_nodes`` x ``nproc_per_node`` GPUs, in Kueue's ``queue`` when given, as the retrain pipeline
does. Either way the run directory is one Model artifact (a distributed checkpoint is gathered into one
file), evaluated by one ``evaluate`` pod, and compare lines the configurations up by strategy
(``bf16-mixed``, ``bf16-mixed-ddp``, ...; the baseline is ``baseline``'s uncompiled run under the first
strategy listed).

kfp.local runs single-process training only: it cannot launch a job, and it cannot pick the Model
artifact out of the two branches (``dsl.OneOf`` of artifacts). Built under kfp.local
(``build_benchmark(distributed=None)`` sees ``kfp.local.init``), the pipeline has the single-process
path only and its ``sweep_plan`` refuses any other strategy (``ampflow bench --engine kfp-local``
already refuses them before it starts).
"""

# No `from __future__ import annotations` here: KFP reads the signature's annotations as types.
from typing import Any, List  # noqa: UP035 - KFP reads these annotations

from kfp import dsl

from ampflow.kube.manifests import DEFAULT_API
from ampflow.steps.bench import DEFAULT_NPROC_PER_NODE
from components import CACHE_MOUNT
from components.compare import compare
from components.evaluate import evaluate
from components.prep import prep
from components.sweep_plan import sweep_plan
from components.train import train
from components.train_distributed import train_distributed
from pipelines.cluster import TRAIN_BACKOFF, TRAIN_RETRIES, Cluster, cluster_parameters, with_train_retries

# configurations trained one after another (see the module docstring); recompile to change
PARALLELISM = 1


def running_locally() -> bool:
    """Whether ``kfp.local.init`` was called in this process: calling a pipeline then runs it here."""
    from kfp.local import config

    return config.LocalExecutionConfig.instance is not None


def build_benchmark(
    train_retries: int = TRAIN_RETRIES, retry_backoff: str = TRAIN_BACKOFF, distributed: bool | None = None
):
    """The benchmark pipeline with this retry policy on its train step.

    The compiled pipeline keeps the defaults; local runs build one without retries, because kfp.local
    honours the policy and its backoff, and a retried local task writes into the same folder.
    ``distributed``: whether configurations of a strategy other than single launch a Kubeflow job
    (``None``: unless kfp.local runs the pipeline, which trains single-process configurations only).
    """
    if distributed is None:
        distributed = not running_locally()

    @dsl.pipeline(
        name="ampflow-benchmark",
        description="Train and evaluate one recipe under several precision/compile/strategy "
        "configurations (single-process or as a Kubeflow TrainJob/PyTorchJob) and compare speed, memory "
        "and accuracy against the baseline.",
    )
    @cluster_parameters
    def benchmark(
        recipe: str = "tweets-minilm",
        precisions: List[str] = ["32-true", "tf32", "bf16-mixed"],  # noqa: B006, UP006
        compile_modes: List[str] = ["off", "on"],  # noqa: B006, UP006
        strategies: List[str] = ["single"],  # noqa: B006, UP006
        repeats: int = 3,
        baseline: str = "32-true",
        tolerance: float = 0.5,
        settings: List[str] = [],  # noqa: B006, UP006
        source: str = "",
        limit: int = 0,
        seed: int = 0,
        accelerator_count: int = 1,
        nproc_per_node: int = DEFAULT_NPROC_PER_NODE,
        num_nodes: int = 1,
        namespace: str = "",
        job_api: str = DEFAULT_API,
        queue: str = "",
        priority_class: str = "",
        workload_priority: str = "",
        queue_timeout: float = 0.0,
        run_deadline: float = 0.0,
        fail_on_regression: bool = False,
        cluster: Cluster = None,
    ) -> bool:
        """Returns the gate's decision: a configuration passes and nothing regressed (the recommended
        one is in compare's summary). `fail_on_regression` fails the run (compare exits 3) when a
        configuration regressed against earlier runs of the recipe on the same hardware.
        `accelerator_count`: GPUs of a single-process configuration's pod (and of every evaluate pod);
        `nproc_per_node` x `num_nodes`: the GPUs of a distributed configuration's job."""
        run_id = dsl.PIPELINE_JOB_ID_PLACEHOLDER

        # No ExitHandler around a ParallelFor: the KFP backend fails such runs (kubeflow/pipelines#12390).
        # A step ends its own MLflow run as FAILED or KILLED (SIGTERM from a deleted pod included).
        plan = sweep_plan(
            precisions=precisions,
            compile_modes=compile_modes,
            repeats=repeats,
            baseline=baseline,
            strategies=strategies,
            nproc_per_node=nproc_per_node,
            num_nodes=num_nodes,
            settings=settings,
            single_process_only=not distributed,
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

        def train_single(entry: Any) -> dsl.PipelineTask:
            """One pod: `ampflow train` of a single-process configuration."""
            task = train(
                recipe=recipe,
                data=prep_task.outputs["data"],
                precision=entry.precision,
                compile=entry.compile,
                settings=settings,
                cache_dir=CACHE_MOUNT,
                pipeline_run_id=run_id,
            ).set_display_name("train")
            # a benchmark measures: never reuse a cached training
            task.set_caching_options(False)
            cluster.gpu(task, accelerator_count, cache=True)
            return with_train_retries(task, train_retries, retry_backoff)

        def train_job(entry: Any) -> dsl.PipelineTask:
            """A Kubeflow job of num_nodes x nproc_per_node GPUs, launched and watched by a small pod."""
            task = train_distributed(
                recipe=recipe,
                data=prep_task.outputs["data"],
                image=cluster.image,
                nodes=num_nodes,
                gpus_per_node=nproc_per_node,
                precision=entry.precision,
                compile=entry.compile,
                strategy=entry.strategy,
                settings=settings,
                # one job per configuration: the name is the run's plus the configuration id
                name_suffix=entry.id,
                api=job_api,
                namespace=namespace,
                queue=queue,
                priority_class=priority_class,
                workload_priority=workload_priority,
                queue_timeout=queue_timeout,
                run_deadline=run_deadline,
                cache_pvc=cluster.cache_pvc,
                cache_dir=CACHE_MOUNT,
                mlflow_secret=cluster.mlflow_secret,
                node_selector=cluster.node_selector,
                tolerations=cluster.tolerations,
                pipeline_run_id=run_id,
            ).set_display_name("train (Kubeflow job)")
            task.set_caching_options(False)
            # the launcher's pod needs no MLflow Secret (the job's pods get it); it stages the dataset
            # on the PVC the job's pods mount and copies their run directory back
            cluster.small(task, mlflow=False, cache=True)
            # the launcher reattaches to its job on a retry instead of submitting a second one
            return with_train_retries(task, train_retries, retry_backoff)

        with dsl.ParallelFor(plan.output, parallelism=PARALLELISM, name="configurations") as entry:
            if distributed:
                with dsl.If(entry.strategy == "single", name="single-process"):
                    single_task = train_single(entry)
                with dsl.Else(name="distributed"):
                    job_task = train_job(entry)
                model = dsl.OneOf(single_task.outputs["model"], job_task.outputs["model"])
            else:
                model = train_single(entry).outputs["model"]

            eval_task = evaluate(
                recipe=recipe,
                data=prep_task.outputs["data"],
                model=model,
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

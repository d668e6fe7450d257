"""The retraining pipeline: prep, train (one device, or a TrainJob/PyTorchJob), evaluate, compare, register.

    make compile                                  # -> pipelines/compiled/retrain.yaml (upload to KFP)

An external ``source`` (a data file's URI in the pipeline's object store: ``s3://``, ``gs://`` or
``minio://``, which the KFP launcher downloads; under kfp.local a path) enters through
``dsl.importer``, so the KFP UI's lineage shows the Dataset it came from before prep reads it; without
one, prep uses the recipe's built-in data. Training runs on one device unless
``num_nodes`` > 1 or ``gpus_per_node`` > 1 ask for more; then the ``train_distributed`` component
launches and watches a Kubeflow job: ``job_api`` ``trainjob`` (Trainer v2, the default) or
``pytorchjob``, in Kueue's LocalQueue ``queue`` when given, with ``priority_class`` (the pods'
PriorityClass, PyTorchJob) or ``workload_priority`` (Kueue's WorkloadPriorityClass), ``queue_timeout``
and ``run_deadline`` in seconds (0: none, and the job's active deadline + 300 s). The candidate is evaluated and
compared: ``ampflow compare --record-sweep`` records it as a sweep (the parent run ``ampflow bench``
creates, tagged with the pipeline run id) and checks it against the earlier sweeps of the recipe on
the same hardware. The gate (``ampflow.compare.gate``) has two halves: that regression check, and
``ampflow register``, which moves the ``champion`` alias only when the candidate matches or beats the
current champion within ``tolerance``; a candidate compared with itself is never evidence.
``fail_on_regression`` fails the run (compare exits 3) on a regression instead of only skipping
register. ``experiment`` is the MLflow experiment of the runs ("" = ``ampflow/<recipe>``; the
PyTorchJob branch logs to the default). An exit handler marks the pipeline run's MLflow runs FAILED
when any step fails.
"""

# No `from __future__ import annotations` here: KFP reads the signature's annotations as types.
from typing import Any, List  # noqa: UP035 - KFP reads these annotations

from kfp import dsl
from kfp.dsl import Dataset, Input, Model

from ampflow.kube.manifests import DEFAULT_API
from components import CACHE_MOUNT
from components.compare import compare
from components.evaluate import evaluate
from components.mark_failed import mark_failed
from components.prep import prep
from components.register import register
from components.train import train
from components.train_distributed import train_distributed
from pipelines.cluster import TRAIN_BACKOFF, TRAIN_RETRIES, Cluster, cluster_parameters, with_train_retries


@dsl.pipeline(name="ampflow-evaluate-and-promote")
@cluster_parameters(defaults=False)
def evaluate_and_promote(
    recipe: str,
    data: Input[Dataset],
    model: Input[Model],
    baseline: str,
    tolerance: float,
    model_name: str,
    experiment: str,
    fail_on_regression: bool,
    accelerator_count: int,
    pipeline_run_id: str,
    cluster: Cluster = None,
) -> None:
    """Evaluate a trained run, compare it, register it only when it passes.

    A sub-pipeline because each training branch produces its own Model: kfp.local cannot pick one
    artifact out of conditional branches (``dsl.OneOf`` works for parameters only there), so every
    branch calls this instead.
    """
    eval_task = evaluate(
        recipe=recipe, data=data, model=model, experiment=experiment, pipeline_run_id=pipeline_run_id
    )
    eval_task.set_display_name("evaluate").set_caching_options(False)
    cluster.gpu(eval_task, accelerator_count)

    compare_task = compare(
        run=eval_task.outputs["evaluated_run"],
        baseline=baseline,
        tolerance=tolerance,
        # recorded as a sweep, checked against the earlier ones (the first half of the gate)
        record_sweep=True,
        fail_on_regression=fail_on_regression,
        pipeline_run_id=pipeline_run_id,
    ).set_display_name("compare")
    compare_task.set_caching_options(False)
    cluster.small(compare_task)

    with dsl.If(compare_task.outputs["Output"] == True, name="passed"):  # noqa: E712 - a KFP condition
        register_task = register(
            summary=compare_task.outputs["summary"],
            data=data,
            model_name=model_name,
            tolerance=tolerance,
            pipeline_run_id=pipeline_run_id,
        ).set_display_name("register")
        register_task.set_caching_options(False)
        cluster.small(register_task)


def build_retrain(train_retries: int = TRAIN_RETRIES, retry_backoff: str = TRAIN_BACKOFF):
    """The retrain pipeline with this retry policy on its train step.

    The compiled pipeline keeps the defaults; local runs build one without retries, because kfp.local
    honours the policy and its backoff, and a retried local task writes into the same folder.
    """

    @dsl.pipeline(name="ampflow-train-and-promote")
    @cluster_parameters(defaults=False)
    def train_and_promote(
        data: Input[Dataset],
        recipe: str,
        precision: str,
        compile: bool,
        num_nodes: int,
        gpus_per_node: int,
        strategy: str,
        settings: List[str],  # noqa: UP006
        tolerance: float,
        model_name: str,
        experiment: str,
        fail_on_regression: bool,
        namespace: str,
        job_api: str,
        queue: str,
        priority_class: str,
        workload_priority: str,
        queue_timeout: float,
        run_deadline: float,
        pipeline_run_id: str,
        cluster: Cluster = None,
    ) -> None:
        """Train on one device or as a Kubeflow job, then evaluate and promote.

        A sub-pipeline because the prepared data comes from one of two branches (an imported source
        or the recipe's own data) and kfp.local cannot pick an artifact out of branches.
        """
        promote = dict(
            recipe=recipe,
            baseline=precision,
            tolerance=tolerance,
            model_name=model_name,
            experiment=experiment,
            fail_on_regression=fail_on_regression,
            # a single-device run gets gpus_per_node (1, or 0 for a CPU run) accelerators
            accelerator_count=gpus_per_node,
            pipeline_run_id=pipeline_run_id,
            **cluster.parameters(),
        )

        def distributed(label: str) -> None:
            job = train_distributed(
                recipe=recipe,
                data=data,
                image=cluster.image,
                nodes=num_nodes,
                gpus_per_node=gpus_per_node,
                precision=precision,
                compile=compile,
                strategy=strategy,
                settings=settings,
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
                pipeline_run_id=pipeline_run_id,
            ).set_display_name(label)
            # the launcher's pod needs no MLflow Secret (the job's pods get it); it stages the
            # dataset on the PVC the job's pods mount and copies their run directory back
            cluster.small(job, mlflow=False, cache=True)
            # the launcher reattaches to its job on a retry instead of submitting a second one
            with_train_retries(job, train_retries, retry_backoff)
            job.set_caching_options(False)
            evaluate_and_promote(data=data, model=job.outputs["model"], **promote)

        with dsl.If(num_nodes > 1, name="multi-node"):
            distributed("train (Kubeflow job, multi-node)")
        with dsl.Elif(gpus_per_node > 1, name="multi-gpu"):
            distributed("train (Kubeflow job, multi-GPU)")
        with dsl.Else(name="single-device"):
            train_task = train(
                recipe=recipe,
                data=data,
                precision=precision,
                compile=compile,
                settings=settings,
                cache_dir=CACHE_MOUNT,
                experiment=experiment,
                pipeline_run_id=pipeline_run_id,
            ).set_display_name("train")
            train_task.set_caching_options(False)
            cluster.gpu(train_task, gpus_per_node, cache=True)
            with_train_retries(train_task, train_retries, retry_backoff)
            evaluate_and_promote(data=data, model=train_task.outputs["model"], **promote)

    @dsl.pipeline(
        name="ampflow-retrain",
        description="Retrain one recipe, evaluate it, and register it as the new champion only when it "
        "passes the comparison; single device or a distributed Kubeflow TrainJob/PyTorchJob.",
    )
    @cluster_parameters
    def retrain(
        recipe: str = "tweets-minilm",
        precision: str = "bf16-mixed",
        compile: bool = False,
        num_nodes: int = 1,
        gpus_per_node: int = 1,
        strategy: str = "ddp",
        settings: List[str] = [],  # noqa: B006, UP006
        tolerance: float = 0.5,
        model_name: str = "",
        experiment: str = "",
        fail_on_regression: bool = False,
        source: str = "",
        limit: int = 0,
        seed: int = 0,
        namespace: str = "",
        job_api: str = DEFAULT_API,
        queue: str = "",
        priority_class: str = "",
        workload_priority: str = "",
        queue_timeout: float = 0.0,
        run_deadline: float = 0.0,
        cluster: Cluster = None,
    ) -> None:
        run_id = dsl.PIPELINE_JOB_ID_PLACEHOLDER
        rest = dict(
            recipe=recipe,
            precision=precision,
            compile=compile,
            num_nodes=num_nodes,
            gpus_per_node=gpus_per_node,
            strategy=strategy,
            settings=settings,
            tolerance=tolerance,
            model_name=model_name,
            experiment=experiment,
            fail_on_regression=fail_on_regression,
            namespace=namespace,
            job_api=job_api,
            queue=queue,
            priority_class=priority_class,
            workload_priority=workload_priority,
            queue_timeout=queue_timeout,
            run_deadline=run_deadline,
            pipeline_run_id=run_id,
            **cluster.parameters(),
        )

        exit_task = mark_failed(pipeline_run_id=run_id).set_display_name("close MLflow runs on failure")
        exit_task.set_caching_options(False)
        cluster.small(exit_task)

        def prepared(raw: Any = None) -> Any:
            imported = {} if raw is None else {"raw": raw}
            prep_task = prep(
                recipe=recipe,
                source=source,
                **imported,
                seed=seed,
                limit=limit,
                cache_dir=CACHE_MOUNT,
                pipeline_run_id=run_id,
            ).set_display_name("prep")
            # the same source URI can hold new data on the next scheduled run: prep always reads it again
            prep_task.set_caching_options(False)
            cluster.cpu(prep_task)
            return prep_task.outputs["data"]

        with dsl.ExitHandler(exit_task, name="retrain"):
            with dsl.If(source != "", name="imported-data"):
                # lineage: the Dataset artifact names the URI the data came from; reimport, because
                # the same URI can hold new data on the next scheduled run
                raw = dsl.importer(
                    artifact_uri=source, artifact_class=Dataset, reimport=True, metadata={"source": source}
                ).set_display_name("import data")
                raw.set_caching_options(False)
                train_and_promote(data=prepared(raw.output), **rest)
            with dsl.Else(name="recipe-data"):
                train_and_promote(data=prepared(), **rest)

    return retrain


retrain = build_retrain()

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

The current champion enters through an importer too (the node ``dsl.importer`` makes, see
:func:`import_model`). Before register, the ``champion`` component asks MLflow's registry which version
the ``champion`` alias of ``model_name`` names and where its files are; when KFP can read them
(``s3://``, ``gs://``, ``minio://``; under kfp.local a local path), they are imported as a Model that
register receives with its version, so the KFP UI's lineage shows which champion each promotion decision
was made against (register's ``decision`` artifact names its version and URI). Register scores exactly
that version (``--champion-version``) and promotes only if the alias still names it when it decides: an
alias that moved after the lookup means registered, not promoted, the reason naming both versions. An
MLflow server that proxies artifacts hands out ``mlflow-artifacts:/`` URIs:
``mlflow_artifacts_destination`` (the server's ``--artifacts-destination``, e.g.
``s3://bucket/mlartifacts``) maps them into the store, else the import is skipped and the lookup's log
says why. Without a champion (a model's first run), or with its files out of reach, the import is
skipped and register scores whatever version the alias names when it runs. The KFP launcher
downloads the imported files into register's pod, so that pod needs read access to the store: a store
the MLflow clients write to directly, the pods that log models already read; for a proxied one, put the
bucket's credentials in the namespace's ``kfp-launcher`` ConfigMap.
"""

# No `from __future__ import annotations` here: KFP reads the signature's annotations as types.
from collections.abc import Callable
from typing import Any, List  # noqa: UP035 - KFP reads these annotations

from kfp import dsl
from kfp.dsl import Artifact, Dataset, Input, Model, PipelineTask, importer_component, structures
from kfp.dsl.types import type_utils

from ampflow.kube.manifests import DEFAULT_API
from ampflow.steps.register import ALIAS as CHAMPION_ALIAS
from components import CACHE_MOUNT
from components.champion import champion
from components.compare import compare
from components.evaluate import evaluate
from components.mark_failed import mark_failed
from components.prep import prep
from components.register import register
from components.train import train
from components.train_distributed import train_distributed
from pipelines.cluster import TRAIN_BACKOFF, TRAIN_RETRIES, Cluster, cluster_parameters, with_train_retries


def import_model(uri: Any, *, name: str, metadata: dict[str, Any]) -> PipelineTask:
    """``dsl.importer(artifact_uri=uri, artifact_class=Model, reimport=False, metadata=metadata)``,
    its component named `name` instead of ``importer``; `metadata` holds constants only (the KFP
    backend stores an importer's metadata as written, placeholders unresolved).

    The same importer node in the IR, under its own name: kfp 2.17 renames the components of a
    sub-pipeline that collide with its parent's in protobuf-map order, which changes from process to
    process; a champion importer in each copy of the promotion sub-pipeline and the data importer in
    the root, all named ``importer``, made the compiled YAML differ from compile to compile.
    """
    model = type_utils.create_bundled_artifact_type(Model.schema_title, Model.schema_version)
    spec = structures.ComponentSpec(
        name=name,
        implementation=structures.Implementation(
            importer=structures.ImporterSpec(
                artifact_uri="{{$.inputs.parameters['uri']}}",
                schema_title=model,
                schema_version=Model.schema_version,
                reimport=False,
                metadata=metadata,
            )
        ),
        inputs={"uri": structures.InputSpec(type="String")},
        outputs={"artifact": structures.OutputSpec(type=model)},
    )
    return importer_component.ImporterComponent(component_spec=spec)(uri=uri)


def with_champion(
    registered: Callable[..., Any],
    *,
    model_name: Any,
    recipe: Any,
    artifacts_destination: Any,
    cluster: Cluster,
) -> None:
    """Look up the current champion; when KFP can import its files, import them as a Model and call
    ``registered(champion=<the Model>, champion_version=<its version>)``, else
    ``registered(champion_version=<its version, "" without a champion>)``.

    The importer sits inside the ``dsl.If`` on the lookup's URI, which makes that URI an input of
    the importer's DAG: the KFP backend's importer reads a runtime URI from its parent DAG's inputs
    only, never straight from another task's output. The conditions use the lookup's single
    ``Output``: kfp.local resolves no other output of a task in a condition. Two ``dsl.If`` rather
    than If/Else: two condition groups, whose names do not collide with the parent pipelines' (see
    :func:`import_model` on why that matters).
    """
    lookup = champion(model_name=model_name, recipe=recipe, artifacts_destination=artifacts_destination)
    lookup.set_display_name("look up champion").set_caching_options(False)
    cluster.small(lookup)
    found = lookup.outputs["Output"]
    with dsl.If(found != "", name="champion-found"):
        # lineage: the Model artifact names the champion's files; the same champion is one artifact
        # across runs (reimport=False). Its metadata are constants: the KFP backend stores an
        # importer's metadata as written, placeholders unresolved; the version goes to register
        current = import_model(found, name="champion-importer", metadata={"mlflow_alias": CHAMPION_ALIAS})
        current.set_display_name("import champion").set_caching_options(False)
        registered(champion=current.output, champion_version=lookup.outputs["version"])
    with dsl.If(found == "", name="no-champion-to-import"):
        # files out of KFP's reach: no lineage, but register still scores the version looked up
        # (none on a recipe's first run: "" leaves the flag out)
        registered(champion_version=lookup.outputs["version"])


@dsl.pipeline(name="ampflow-register-against-champion")
@cluster_parameters(defaults=False)
def register_against_champion(
    summary: Input[Artifact],
    data: Input[Dataset],
    recipe: str,
    tolerance: float,
    model_name: str,
    mlflow_artifacts_destination: str,
    pipeline_run_id: str,
    cluster: Cluster = None,
) -> None:
    """Register the candidate compare recommends, the current champion imported beside it.

    A sub-pipeline so that its condition groups are numbered apart from its parents' (see
    :func:`with_champion`).
    """

    def registered(**champion_model: Any) -> None:
        register_task = register(
            summary=summary,
            data=data,
            model_name=model_name,
            tolerance=tolerance,
            pipeline_run_id=pipeline_run_id,
            **champion_model,
        ).set_display_name("register")
        register_task.set_caching_options(False)
        cluster.small(register_task)

    # looked up right before register, which scores the version found (when imported) or the alias's
    with_champion(
        registered,
        model_name=model_name,
        recipe=recipe,
        artifacts_destination=mlflow_artifacts_destination,
        cluster=cluster,
    )


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
    mlflow_artifacts_destination: str,
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
        register_against_champion(
            summary=compare_task.outputs["summary"],
            data=data,
            recipe=recipe,
            tolerance=tolerance,
            model_name=model_name,
            mlflow_artifacts_destination=mlflow_artifacts_destination,
            pipeline_run_id=pipeline_run_id,
            **cluster.parameters(),
        )


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
        mlflow_artifacts_destination: str,
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
            mlflow_artifacts_destination=mlflow_artifacts_destination,
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
        mlflow_artifacts_destination: str = "",
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
            mlflow_artifacts_destination=mlflow_artifacts_destination,
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
                # the same URI can hold new data on the next scheduled run. No metadata: the KFP
                # backend stores an importer's metadata as written, so {"source": source} would read
                # "{{$.inputs.parameters['metadata']}}" there; the URI says it, and prep's Dataset too
                raw = dsl.importer(artifact_uri=source, artifact_class=Dataset, reimport=True)
                raw.set_display_name("import data")
                raw.set_caching_options(False)
                train_and_promote(data=prepared(raw.output), **rest)
            with dsl.Else(name="recipe-data"):
                train_and_promote(data=prepared(), **rest)

    return retrain


retrain = build_retrain()

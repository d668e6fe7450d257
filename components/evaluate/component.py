"""KFP component: ``ampflow evaluate`` a trained run on the held-out split.

from components.evaluate import evaluate
eval_task = evaluate(recipe="tweets-bow", data=prep_task.outputs["data"],
                     model=train_task.outputs["model"])
"""

# No `from __future__ import annotations` here: KFP reads the annotations as types.
from kfp import dsl
from kfp.dsl import Artifact, ClassificationMetrics, Dataset, Input, Metrics, Model, Output

from components import TRAINING_IMAGE


@dsl.component(base_image=TRAINING_IMAGE, install_kfp_package=False)
def evaluate(
    recipe: str,
    data: Input[Dataset],
    model: Input[Model],
    evaluated_run: Output[Artifact],
    metrics: Output[Metrics],
    confusion: Output[ClassificationMetrics],
    parent_run_id: str = "",
    require_tracking: bool = False,
    experiment: str = "",
    pipeline_run_id: str = "",
) -> float:
    """Evaluate `model` (a train run directory) on the test split.

    `evaluated_run` is laid out like a CLI run directory without its checkpoint (result.json and the
    other small files, plus eval/eval.json): the input artifact is read-only in a pod, and this is the
    layout `ampflow compare --runs` reads. `confusion` is the confusion matrix (rows true labels,
    columns predictions), which the KFP UI draws. `experiment`: the MLflow experiment ("" =
    ``ampflow/<recipe>``). Returns the accuracy.
    """
    import os
    import shutil

    from ampflow.integrations.kfp import log_confusion, run_step

    # weights stay in the model artifact; compare needs the figures only
    heavy = shutil.ignore_patterns("*.pt", "*.pth", "*.safetensors", "*.distcp", "checkpoint*", "eval")
    shutil.copytree(model.path, evaluated_run.path, ignore=heavy, dirs_exist_ok=True)
    eval_dir = os.path.join(evaluated_run.path, "eval")
    result = run_step(
        "evaluate",
        recipe=recipe,
        data=data.path,
        checkpoint=model.path,
        out=eval_dir,
        parent_run_id=parent_run_id,
        require_tracking=require_tracking,
        mlflow_experiment=experiment,
        pipeline_run_id=pipeline_run_id,
        metrics=metrics,
        result_file=os.path.join(eval_dir, "eval.json"),
    )
    log_confusion(confusion, result)
    for key in ("precision", "compile", "strategy", "config_id"):
        if key in model.metadata:
            evaluated_run.metadata[key] = model.metadata[key]
    return float(result.get("metrics", result)["accuracy"])

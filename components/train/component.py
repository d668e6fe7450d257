"""KFP component: ``ampflow train`` on one device into a Model artifact (the run directory).

from components.train import train
train_task = train(recipe="tweets-bow", data=prep_task.outputs["data"], precision="bf16-mixed",
                   settings=["max_steps=8", "warmup_steps=2"])
"""

# No `from __future__ import annotations` here: KFP reads the annotations as types.
from typing import List, Optional  # noqa: UP035 - KFP reads these annotations to type the inputs

from kfp import dsl
from kfp.dsl import Dataset, Input, Metrics, Model, Output

from components import TRAINING_IMAGE


@dsl.component(base_image=TRAINING_IMAGE, install_kfp_package=False)
def train(
    recipe: str,
    data: Input[Dataset],
    model: Output[Model],
    metrics: Output[Metrics],
    precision: str = "32-true",
    compile: bool = False,
    strategy: str = "single",
    settings: Optional[List[str]] = None,  # noqa: UP006, UP045
    parent_run_id: str = "",
    require_tracking: bool = False,
    cache_dir: str = "",
    experiment: str = "",
    pipeline_run_id: str = "",
) -> str:
    """Train one configuration; the run directory (result.json, checkpoint.pt) is the `model` artifact.

    settings: ``key=value`` configuration overrides, as ``ampflow train --set``;
    experiment: the MLflow experiment ("" = ``ampflow/<recipe>``).
    Returns the configuration id (e.g. ``bf16-mixed-compiled``).
    """
    import os

    from ampflow.config import config_id
    from ampflow.integrations.kfp import run_step

    run_step(
        "train",
        recipe=recipe,
        data=data.path,
        out=model.path,
        precision=precision,
        strategy=strategy,
        compile=compile,
        parent_run_id=parent_run_id,
        require_tracking=require_tracking,
        settings=settings,
        cache_dir=cache_dir,
        mlflow_experiment=experiment,
        pipeline_run_id=pipeline_run_id,
        metrics=metrics,
        result_file=os.path.join(model.path, "result.json"),
    )
    cid = config_id(precision, compile, strategy)
    model.metadata.update(precision=precision, compile=compile, strategy=strategy, config_id=cid)
    return cid

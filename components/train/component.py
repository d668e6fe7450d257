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
    pipeline_run_id: str = "",
) -> str:
    """Train one configuration; the run directory (result.json, checkpoint.pt) is the `model` artifact.

    settings: ``key=value`` configuration overrides, as ``ampflow train --set``.
    Returns the configuration id (e.g. ``bf16-mixed-compiled``).
    """
    import json
    import math
    import os

    from ampflow.cli import main
    from ampflow.commands import step_argv

    if pipeline_run_id:
        os.environ["MLFLOW_RUN_CONTEXT"] = json.dumps({"ampflow.pipeline_run_id": pipeline_run_id})
    if cache_dir and os.path.isdir(cache_dir):
        # a retried or repeated train reuses compiled kernels and downloaded weights
        os.environ.setdefault("HF_HOME", os.path.join(cache_dir, "huggingface"))
        os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", os.path.join(cache_dir, "inductor"))
        os.environ.setdefault("XDG_CACHE_HOME", cache_dir)

    overrides = {}
    for pair in settings or []:
        key, sep, value = pair.partition("=")
        if not sep:
            raise ValueError(f"settings: expected key=value, got {pair!r}")
        overrides[key.strip()] = value.strip()
    argv = step_argv(
        "train",
        recipe=recipe,
        data=data.path,
        out=model.path,
        precision=precision,
        strategy=strategy,
        compile=compile,
        parent_run_id=parent_run_id or None,
        require_tracking=require_tracking,
        overrides=overrides,
    )
    print("running:", " ".join(argv), flush=True)
    rc = main(argv[1:])
    if rc != 0:
        raise RuntimeError(f"ampflow train exited {rc}")

    with open(os.path.join(model.path, "result.json"), encoding="utf-8") as fh:
        result = json.load(fh)
    figures = result.get("metrics", result)
    for name, value in sorted(figures.items()):
        if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
            metrics.log_metric(name, value)
    model.metadata["precision"] = precision
    model.metadata["compile"] = compile
    model.metadata["strategy"] = strategy
    config_id = f"{precision}{'-compiled' if compile else ''}"
    model.metadata["config_id"] = config_id
    return config_id

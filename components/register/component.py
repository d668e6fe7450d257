"""KFP component: ``ampflow register`` the recommended model; `champion` moves only when it earns it.

from components.register import register
register(summary=compare_task.outputs["summary"], model_name="tweets-bow")
"""

# No `from __future__ import annotations` here: KFP reads the annotations as types.
from kfp import dsl
from kfp.dsl import Artifact, Input

from components import TRAINING_IMAGE


@dsl.component(base_image=TRAINING_IMAGE, install_kfp_package=False)
def register(
    summary: Input[Artifact],
    model_name: str = "",
    tolerance: float = 0.5,
    pipeline_run_id: str = "",
) -> None:
    """Register the model that `summary` (compare's summary.json) recommends under `model_name`
    ("" = ``ampflow-<recipe>``).

    The step refuses to move the `champion` alias when the candidate does not match the current
    champion within `tolerance`; that is a normal outcome (exit 0), not a failed task.
    """
    from ampflow.integrations.kfp import run_step

    run_step(
        "register",
        summary=summary.path,
        model_name=model_name,
        tolerance=tolerance,
        pipeline_run_id=pipeline_run_id,
    )

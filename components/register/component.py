"""KFP component: ``ampflow register`` the recommended model; `champion` moves only when it earns it.

from components.register import register
register(summary=compare_task.outputs["summary"], data=prep_task.outputs["data"], model_name="tweets-bow")
"""

# No `from __future__ import annotations` here: KFP reads the annotations as types.
from kfp import dsl
from kfp.dsl import Artifact, Dataset, Input

from components import TRAINING_IMAGE


@dsl.component(base_image=TRAINING_IMAGE, install_kfp_package=False)
def register(
    summary: Input[Artifact],
    data: Input[Dataset],
    model_name: str = "",
    tolerance: float = 0.5,
    allow_unloadable_champion: bool = False,
    pipeline_run_id: str = "",
) -> None:
    """Register the model that `summary` (compare's summary.json) recommends under `model_name`
    ("" = ``ampflow-<recipe>``, sanitized for module:function recipes).

    The candidate and the current `champion` are both scored on `data`'s test split (the prepared
    dataset of this run); the alias moves only when the candidate is within `tolerance` percentage
    points and not significantly worse. Refusing is a normal outcome (exit 0), not a failed task. A
    champion that cannot be loaded blocks promotion unless `allow_unloadable_champion`.
    """
    from ampflow.integrations.kfp import run_step

    run_step(
        "register",
        summary=summary.path,
        data=data.path,
        model_name=model_name,
        tolerance=tolerance,
        allow_unloadable_champion=allow_unloadable_champion,
        pipeline_run_id=pipeline_run_id,
    )

"""KFP component: ``ampflow register`` the recommended model; `champion` moves only when it earns it.

from components.register import register
register(summary=compare_task.outputs["summary"], data=prep_task.outputs["data"], model_name="tweets-bow")
register(..., champion=imported.output, champion_version=lookup.outputs["version"])  # lineage: the champion
"""

# No `from __future__ import annotations` here: KFP reads the annotations as types.
from kfp import dsl
from kfp.dsl import Artifact, Dataset, Input, Model, Output

from components import TRAINING_IMAGE


@dsl.component(base_image=TRAINING_IMAGE, install_kfp_package=False)
def register(
    summary: Input[Artifact],
    data: Input[Dataset],
    decision: Output[Artifact],
    model_name: str = "",
    tolerance: float = 0.5,
    allow_unloadable_champion: bool = False,
    champion: Input[Model] = None,
    champion_version: str = "",
    pipeline_run_id: str = "",
) -> None:
    """Register the model that `summary` (compare's summary.json) recommends under `model_name`
    ("" = ``ampflow-<recipe>``, sanitized for module:function recipes).

    The candidate and the current `champion` are both scored on `data`'s test split (the prepared
    dataset of this run); the alias moves only when the candidate is within `tolerance` percentage
    points and not significantly worse. Refusing is a normal outcome (exit 0), not a failed task. A
    champion that cannot be loaded blocks promotion unless `allow_unloadable_champion`.
    `champion`: the current champion as an imported Model (``dsl.importer``), version
    `champion_version`, for lineage only: the step loads the champion by its alias. `decision` gets
    register.json; its metadata name the new version, whether it was promoted, and the champion it
    was compared with (``champion_uri``, and ``champion_matches`` false when the alias moved between
    the import and the comparison).
    """
    import json
    import os
    import shutil

    from ampflow.integrations.kfp import run_step

    if champion is not None:
        print(f"champion (imported): v{champion_version or '?'} at {champion.uri}", flush=True)
    result_file = os.path.join(os.path.dirname(summary.path), "register.json")
    result = run_step(
        "register",
        summary=summary.path,
        data=data.path,
        model_name=model_name,
        tolerance=tolerance,
        allow_unloadable_champion=allow_unloadable_champion,
        pipeline_run_id=pipeline_run_id,
        result_file=result_file,
    )
    shutil.copyfile(result_file, decision.path)
    compared = (result.get("champion_before") or {}).get("version")
    decision.metadata.update(
        model_name=result.get("model_name", ""),
        version=result.get("version", ""),
        promoted=bool(result.get("promoted")),
        champion_version=compared or "",
    )
    if champion is not None:
        matches = compared is not None and str(compared) == str(champion_version)
        decision.metadata.update(champion_uri=champion.uri, champion_matches=matches)
        if not matches:
            print(
                f"warning: the imported champion is v{champion_version or '?'}, but register compared "
                f"against {'v' + str(compared) if compared else 'no champion'}: the alias moved in between",
                flush=True,
            )
    print("decision:", json.dumps(dict(decision.metadata), sort_keys=True), flush=True)

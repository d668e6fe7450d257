"""KFP component: ``ampflow register`` the recommended model; `champion` moves only when it earns it.

from components.register import register
register(summary=compare_task.outputs["summary"], data=prep_task.outputs["data"], model_name="tweets-bow")
register(..., champion=imported.output, champion_version=lookup.outputs["version"])  # scored: that version
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
    `champion`: the current champion as an imported Model (``dsl.importer``), for lineage;
    `champion_version`: its version, passed to the step as ``--champion-version`` when not "", so
    the step scores exactly that version and promotes only if the alias still names it when the
    decision is taken (else: registered, not promoted, the reason names both versions). `decision`
    gets register.json; its metadata name the new version, whether it was promoted, the champion it
    was compared with (``champion_version``) and, with an imported champion, ``champion_uri`` and
    ``champion_matches`` (true whenever register scored a champion: the imported one).
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
        champion_version=champion_version,  # "" is left out: the step then reads the alias
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
        if not matches:  # cannot happen with --champion-version; said loudly if it ever does
            print(
                f"warning: the imported champion is v{champion_version or '?'}, but register compared "
                f"against {'v' + str(compared) if compared else 'no champion'}",
                flush=True,
            )
    print("decision:", json.dumps(dict(decision.metadata), sort_keys=True), flush=True)

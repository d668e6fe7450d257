"""KFP component: ``ampflow compare`` the evaluated runs; the report shows in the KFP UI.

from components.compare import compare
compare_task = compare(runs=dsl.Collected(eval_task.outputs["evaluated_run"]), tolerance=0.5)
compare_task = compare(run=eval_task.outputs["evaluated_run"], baseline="bf16-mixed",
                       experiment="ampflow", recipe="tweets-bow")   # one candidate vs history
"""

# No `from __future__ import annotations` here: KFP reads the annotations as types.
from typing import List, Optional  # noqa: UP035 - KFP reads these annotations

from kfp import dsl
from kfp.dsl import HTML, Artifact, Input, Markdown, Metrics, Output

from components import TRAINING_IMAGE


@dsl.component(base_image=TRAINING_IMAGE, install_kfp_package=False)
def compare(
    report_html: Output[HTML],
    report_md: Output[Markdown],
    summary: Output[Artifact],
    metrics: Output[Metrics],
    runs: Optional[Input[List[Artifact]]] = None,  # noqa: UP006, UP045
    run: Optional[Input[Artifact]] = None,  # noqa: UP045
    baseline: str = "32-true",
    tolerance: float = 0.5,
    experiment: str = "",
    recipe: str = "",
    sweep: str = "",
    pipeline_run_id: str = "",
) -> bool:
    """Compare evaluated run directories (`runs` from a ParallelFor, or one `run`) against `baseline`.

    tolerance: accuracy tolerance in percentage points. `sweep` (a parent run id) or `experiment` with
    `recipe` (its latest sweep) replace `runs` (compare takes exactly one input). The regression check
    against earlier sweeps of the recipe on the same hardware is compare's own.
    Returns whether a configuration passes and nothing regressed (the retrain pipeline gates register
    on it); the recommended configuration id is the `summary` artifact's `recommended` metadata.
    One return value on purpose: kfp.local resolves only a task's single ``Output`` in a condition.
    """
    import os
    import tempfile

    from ampflow.integrations.kfp import publish_comparison, run_step

    run_dirs = [a.path for a in (runs or [])] + ([run.path] if run is not None else [])
    if not run_dirs and not (sweep or experiment):
        raise ValueError("compare: give `runs`, `run`, `sweep` or `experiment`")
    out = tempfile.mkdtemp(prefix="ampflow-compare-")
    result = run_step(
        "compare",
        runs=run_dirs,
        out=out,
        baseline=baseline,
        tolerance=tolerance,
        experiment=experiment,
        recipe=recipe,
        sweep=sweep,
        pipeline_run_id=pipeline_run_id,
        result_file=os.path.join(out, "summary.json"),
    )
    publish_comparison(out, summary=summary, report_md=report_md, report_html=report_html, metrics=metrics)
    # a regression against earlier sweeps of the recipe on this hardware blocks promotion
    return bool(result.get("recommended")) and not result.get("regressed")

"""KFP component: ``ampflow compare`` the evaluated runs; the report shows in the KFP UI.

from components.compare import compare
compare_task = compare(runs=dsl.Collected(eval_task.outputs["evaluated_run"]), tolerance=0.5)
compare_task = compare(run=eval_task.outputs["evaluated_run"], baseline="bf16-mixed",
                       record_sweep=True, fail_on_regression=True)   # one candidate vs earlier runs
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
    record_sweep: bool = False,
    fail_on_regression: bool = False,
    pipeline_run_id: str = "",
) -> bool:
    """Compare evaluated run directories (`runs` from a ParallelFor, or one `run`) against `baseline`.

    tolerance: accuracy tolerance in percentage points. `sweep` (a parent run id) or `experiment` with
    `recipe` (its latest sweep) replace `runs` (compare takes exactly one input). `record_sweep`
    records the runs as one sweep (the parent run `ampflow bench` creates, tagged with the pipeline run
    id), so that the regression check of later runs sees them. The regression check against earlier
    sweeps of the recipe on the same hardware is compare's own; `fail_on_regression` fails the task
    (compare exits 3) when it finds one, after the reports are published.
    Returns the champion gate's decision (``ampflow.compare.gate``; the retrain pipeline gates register
    on it, and the `summary` artifact's `gate` metadata says what it checked); the recommended
    configuration id is the `summary` artifact's `recommended` metadata.
    One return value on purpose: kfp.local resolves only a task's single ``Output`` in a condition.
    """
    import json
    import os
    import tempfile

    from ampflow.compare.gate import gate_decision
    from ampflow.integrations.kfp import StepFailed, publish_comparison, run_step

    run_dirs = [a.path for a in (runs or [])] + ([run.path] if run is not None else [])
    if not run_dirs and not (sweep or experiment):
        raise ValueError("compare: give `runs`, `run`, `sweep` or `experiment`")
    out = tempfile.mkdtemp(prefix="ampflow-compare-")
    summary_file = os.path.join(out, "summary.json")
    try:
        run_step(
            "compare",
            runs=run_dirs,
            out=out,
            baseline=baseline,
            tolerance=tolerance,
            experiment=experiment,
            recipe=recipe,
            sweep=sweep,
            record_sweep=record_sweep and bool(run_dirs),
            fail_on_regression=fail_on_regression,
            pipeline_run_id=pipeline_run_id,
        )
    except StepFailed as exc:
        # a regression (exit 3) still leaves its report where users look, then fails the task
        if exc.returncode == 3 and os.path.exists(summary_file):
            publish_comparison(
                out, summary=summary, report_md=report_md, report_html=report_html, metrics=metrics
            )
        raise
    publish_comparison(out, summary=summary, report_md=report_md, report_html=report_html, metrics=metrics)
    with open(summary_file, encoding="utf-8") as fh:
        decision = gate_decision(json.load(fh))
    print(f"champion gate: {'pass' if decision.passes else 'stop'}: {decision.why}", flush=True)
    summary.metadata["gate"] = decision.why
    summary.metadata["gate_checks"] = decision.checks
    return decision.passes

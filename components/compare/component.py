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
    import json
    import math
    import os
    import shutil
    import tempfile

    from ampflow.cli import main
    from ampflow.commands import step_argv

    if pipeline_run_id:
        os.environ["MLFLOW_RUN_CONTEXT"] = json.dumps({"ampflow.pipeline_run_id": pipeline_run_id})
    run_dirs = [a.path for a in (runs or [])] + ([run.path] if run is not None else [])
    if not run_dirs and not (sweep or experiment):
        raise ValueError("compare: give `runs`, `run`, `sweep` or `experiment`")
    out = tempfile.mkdtemp(prefix="ampflow-compare-")
    argv = step_argv(
        "compare",
        runs=run_dirs or None,
        out=out,
        baseline=baseline,
        tolerance=tolerance,
        experiment=experiment or None,
        recipe=recipe or None,
        sweep=sweep or None,
    )
    print("running:", " ".join(argv), flush=True)
    rc = main(argv[1:])
    if rc != 0:
        raise RuntimeError(f"ampflow compare exited {rc}")

    with open(os.path.join(out, "summary.json"), encoding="utf-8") as fh:
        result = json.load(fh)
    shutil.copyfile(os.path.join(out, "summary.json"), summary.path)
    shutil.copyfile(os.path.join(out, "report.md"), report_md.path)
    if os.path.exists(os.path.join(out, "report.html")):
        shutil.copyfile(os.path.join(out, "report.html"), report_html.path)
    else:  # the report's plots need the tracking extra; the UI still gets the table
        import html

        with (
            open(os.path.join(out, "report.md"), encoding="utf-8") as fh,
            open(report_html.path, "w", encoding="utf-8") as dst,
        ):
            dst.write(f"<!doctype html><meta charset=utf-8><pre>{html.escape(fh.read())}</pre>\n")

    recommended = result.get("recommended") or ""
    # a regression against earlier sweeps of the recipe on this hardware blocks promotion
    passed = bool(recommended) and not result.get("regressed")
    metrics.log_metric("configurations", float(len(result.get("configs") or [])))
    metrics.log_metric("regressions", float(len(result.get("regressions") or [])))
    for row in result.get("configs") or []:
        for key in ("speedup", "memory_ratio", "accuracy_delta_pp"):
            value = row.get(key)
            if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
                metrics.log_metric(f"{row['config_id']}/{key}", float(value))
    summary.metadata["recommended"] = recommended
    summary.metadata["regressed"] = bool(result.get("regressed"))
    return passed

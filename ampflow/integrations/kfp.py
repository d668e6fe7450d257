"""What every KFP component does around its step: run context, argv, exit code, Metrics.

KFP ships only a component function's own source into the pod, so the code the components share
lives here, in the installed package, and each component imports it inside its body::

    from ampflow.integrations.kfp import run_step
    result = run_step("train", recipe=recipe, data=data.path, out=model.path, precision=precision,
                      settings=settings, pipeline_run_id=pipeline_run_id, metrics=metrics,
                      result_file=os.path.join(model.path, "result.json"))

Owns :data:`PIPELINE_RUN_TAG` (the one spelling of the MLflow tag that ties a step's runs to its KFP
pipeline run), the KFP conventions for step options ("" and [] mean "not given") and the translation
of result figures into a KFP ``Metrics`` artifact. The argv itself comes from
:func:`ampflow.commands.plan_step`, as for the CLI and Airflow. Imports neither kfp, torch nor mlflow
at module level: the Metrics artifact is any object with ``log_metric(name, value)``.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable, Mapping
from typing import Any

from ampflow.tracking.schema import TAG_PIPELINE_RUN_ID

# Every MLflow run a KFP step starts carries this tag (through MLflow's MLFLOW_RUN_CONTEXT), so the
# exit handler can find and close the runs a killed step left RUNNING.
PIPELINE_RUN_TAG = TAG_PIPELINE_RUN_ID


def parse_settings(settings: Iterable[str] | None) -> dict[str, str]:
    """``["max_steps=8", ...]`` (a pipeline's ``settings`` parameter) as ``--set`` overrides.

    Values stay strings: the step parses them by the field's type. Raises ValueError on an item
    without ``=``; unknown keys fail in :func:`ampflow.commands.plan_step`.
    """
    overrides = {}
    for pair in settings or []:
        key, sep, value = str(pair).partition("=")
        if not sep or not key.strip():
            raise ValueError(f"settings: expected key=value, got {pair!r}")
        overrides[key.strip()] = value.strip()
    return overrides


def use_cache_dir(cache_dir: str) -> None:
    """Point the Hugging Face, inductor and XDG caches at the data-cache PVC when it is mounted.

    A retried or repeated step then reuses downloaded weights and compiled kernels. Variables the
    image already sets win; a folder that is not there (kfp.local, no PVC) changes nothing.
    """
    if not cache_dir or not os.path.isdir(cache_dir):
        return
    os.environ.setdefault("HF_HOME", os.path.join(cache_dir, "huggingface"))
    os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", os.path.join(cache_dir, "inductor"))
    os.environ.setdefault("XDG_CACHE_HOME", cache_dir)


def log_figures(metrics: Any, figures: Mapping[str, Any], prefix: str = "") -> int:
    """Log the finite numbers of ``figures`` to a KFP ``Metrics`` artifact; return how many.

    Booleans, strings, NaN and infinities are skipped (the KFP UI shows numbers only).
    """
    logged = 0
    for name, value in sorted(figures.items()):
        if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
            metrics.log_metric(f"{prefix}{name}", float(value))
            logged += 1
    return logged


class StepFailed(RuntimeError):
    """``ampflow <step>`` exited non-zero; ``returncode`` is its exit code (README: exit codes)."""

    def __init__(self, step: str, returncode: int):
        super().__init__(f"ampflow {step} exited {returncode}")
        self.step = step
        self.returncode = returncode


def _given(value: Any) -> bool:
    # a KFP parameter cannot be None: "" and [] / {} are how a pipeline says "not given"
    return value is not None and not (isinstance(value, str | list | tuple | dict) and not value)


def run_step(
    step: str,
    *,
    pipeline_run_id: str = "",
    mlflow_experiment: str = "",
    cache_dir: str = "",
    settings: Iterable[str] | None = None,
    metrics: Any = None,
    result_file: str | None = None,
    distributed: bool = False,
    launch: Mapping[str, Any] | None = None,
    **options: Any,
) -> dict[str, Any]:
    """Run ``ampflow <step>`` in this process as a KFP task; return ``result_file``'s JSON ({} if none).

    - ``pipeline_run_id`` tags every MLflow run the step starts with :data:`PIPELINE_RUN_TAG`;
      ``mlflow_experiment`` (a pipeline's ``experiment`` parameter) is the MLflow experiment they go to
      (``AMPFLOW_EXPERIMENT``; "" keeps ``ampflow/<recipe>``); ``cache_dir`` is handed to
      :func:`use_cache_dir`.
    - ``options`` are the step's options by keyword name; ``""`` and empty lists are left out, so a
      pipeline's defaults leave the step's own defaults alone. ``settings`` become ``--set`` overrides.
      ``distributed`` and ``launch`` go to :func:`ampflow.commands.plan_step` (``train`` becomes
      ``launch``, a Kubeflow job).
    - A non-zero exit raises :class:`StepFailed` (a RuntimeError), which fails the KFP task.
    - ``result_file`` (result.json, eval.json, summary.json) is read after the step; with ``metrics``
      its figures (its ``metrics`` block when it has one) are logged there.
    """
    from ampflow import cli
    from ampflow.commands import plan_step

    if pipeline_run_id:
        os.environ["MLFLOW_RUN_CONTEXT"] = json.dumps({PIPELINE_RUN_TAG: pipeline_run_id})
    if mlflow_experiment:
        os.environ["AMPFLOW_EXPERIMENT"] = mlflow_experiment
    use_cache_dir(cache_dir)
    plan = plan_step(
        step,
        {k: v for k, v in options.items() if _given(v)},
        overrides=parse_settings(settings),
        distributed=distributed,
        launch={k: v for k, v in (launch or {}).items() if _given(v)},
    )
    argv = plan.argv()
    print("running:", " ".join(argv), flush=True)
    # looked up on the module at call time, so that a test can stand in for the CLI
    rc = cli.main(argv[1:])
    if rc != 0:
        raise StepFailed(plan.step, rc)
    if not result_file:
        return {}
    with open(result_file, encoding="utf-8") as fh:
        result = json.load(fh)
    if metrics is not None:
        log_figures(metrics, result.get("metrics", result))
    return result


def publish_comparison(out: str, *, summary: Any, report_md: Any, report_html: Any, metrics: Any) -> None:
    """Hand ``ampflow compare``'s output folder to the compare component's KFP artifacts.

    summary.json and report.md are copied as they are; report.html too when the step wrote one (its
    plots need the tracking extra), else an HTML page holding the Markdown table, so that the KFP UI
    always has something to render. Per-configuration speedup, memory ratio and accuracy delta go to
    ``metrics``; the recommended configuration and the regression flag become ``summary`` metadata.
    """
    import html
    import shutil

    shutil.copyfile(os.path.join(out, "summary.json"), summary.path)
    shutil.copyfile(os.path.join(out, "report.md"), report_md.path)
    page = os.path.join(out, "report.html")
    if os.path.exists(page):
        shutil.copyfile(page, report_html.path)
    else:
        with open(os.path.join(out, "report.md"), encoding="utf-8") as fh:
            table = fh.read()
        with open(report_html.path, "w", encoding="utf-8") as dst:
            dst.write(f"<!doctype html><meta charset=utf-8><pre>{html.escape(table)}</pre>\n")

    with open(os.path.join(out, "summary.json"), encoding="utf-8") as fh:
        result = json.load(fh)
    configs = result.get("configs") or []
    log_figures(
        metrics, {"configurations": len(configs), "regressions": len(result.get("regressions") or [])}
    )
    for row in configs:
        keys = ("speedup", "memory_ratio", "accuracy_delta_pp")
        log_figures(metrics, {k: row.get(k) for k in keys}, prefix=f"{row['config_id']}/")
    summary.metadata["recommended"] = result.get("recommended") or ""
    summary.metadata["regressed"] = bool(result.get("regressed"))


def log_confusion(confusion: Any, result: Mapping[str, Any]) -> bool:
    """eval.json's confusion matrix (rows true labels, columns predictions, in ``labels`` order) into a
    KFP ``ClassificationMetrics`` artifact, which the KFP UI draws; False when eval.json has none."""
    matrix = result.get("confusion_matrix")
    if not matrix:
        return False
    labels = [str(x) for x in (result.get("labels") or range(len(matrix)))]
    if len(labels) != len(matrix) or any(len(row) != len(matrix) for row in matrix):
        raise ValueError(f"eval.json: a {len(matrix)}-row confusion matrix for {len(labels)} labels")
    confusion.log_confusion_matrix(labels, [[int(v) for v in row] for row in matrix])
    return True

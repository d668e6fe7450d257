"""The one tracking schema: how a run's config, result.json and eval.json map onto MLflow.

params   the resolved RunConfig fields under their own names (recipe, precision, compile, batch_size,
         strategy, ...) plus world_size, device, device_name, torch_version, ampflow_version,
         dataset_hash, fp32_matmul_precision, bf16_emulated
step     ``<kind>/<name>`` per optimizer step, e.g. train/loss, train/lr, train/step_time_s,
metrics  train/samples_per_s (the engine picks the names; the tracker adds the prefix); per validation
         (``val_every``) train/val_accuracy and train/train_clock_s at the step it followed
summary  the engine's result figures under their result.json names (samples_per_s, tokens_per_s,
metrics  step_time_p50_s, peak_memory_bytes, mfu, final_train_loss, loss_scale, skipped_steps, ...)
         plus accuracy, macro_f1, ece, eval_loss, eval_n from eval.json
tags     ampflow.kind, ampflow.recipe, ampflow.precision, ampflow.config_id, ampflow.sweep_id,
         ampflow.hardware (fingerprint) and ampflow.hardware_desc, mlflow.parentRunId for children
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import platform
import shutil
import subprocess
from functools import lru_cache
from typing import Any

from ampflow.config import config_id  # noqa: F401 - re-exported: the tag value schema names

TAG_KIND = "ampflow.kind"
TAG_SWEEP = "ampflow.sweep_id"
TAG_HARDWARE = "ampflow.hardware"
TAG_HARDWARE_DESC = "ampflow.hardware_desc"
TAG_RECIPE = "ampflow.recipe"
TAG_PRECISION = "ampflow.precision"
TAG_CONFIG_ID = "ampflow.config_id"
TAG_RUN_UID = "ampflow.run_uid"
TAG_MODEL_URI = "ampflow.model_uri"
TAG_MODEL_INPUTS = "ampflow.model_inputs"
TAG_DATASET_HASH = "ampflow.dataset_hash"
# set on a training run that a --resume continued (after a kill, a stop or an extension)
TAG_RESUMED = "ampflow.resumed"
# a model saved while the server was away carries this uid, so its replay makes one logged model
TAG_MODEL_UID = "ampflow.model_uid"
# every ampflow experiment is a model-training one: MLflow 3.17's UI opens an experiment without this
# tag on its GenAI (traces) view, where none of ampflow's runs, metrics or models show
EXPERIMENT_TAGS = {"mlflow.experimentKind": "custom_model_development"}
TAG_PARENT = "mlflow.parentRunId"
# the KFP pipeline run whose step started a run (set through MLFLOW_RUN_CONTEXT by
# ampflow.integrations.kfp.run_step); the pipelines' exit handler closes the runs it tags
TAG_PIPELINE_RUN_ID = "ampflow.pipeline_run_id"
# the Airflow task whose step started a run (set through MLFLOW_RUN_CONTEXT); the DAGs' clean-up
# task closes the runs of its DAG run by TAG_AIRFLOW_RUN_ID
TAG_AIRFLOW_DAG_ID = "ampflow.airflow_dag_id"
TAG_AIRFLOW_RUN_ID = "ampflow.airflow_run_id"
TAG_AIRFLOW_TASK_ID = "ampflow.airflow_task_id"

# result.json "metrics" that are logged as summary metrics (anything numeric there is, these are
# the documented ones)
SUMMARY_METRICS = (
    "samples_per_s",
    "samples_per_s_per_device",
    "tokens_per_s",
    "step_time_p50_s",
    "step_time_p90_s",
    "step_time_p99_s",
    "data_wait_frac",
    "peak_memory_bytes",
    "compile_s",
    "recompiles",
    "flops_per_sample",
    "mfu",
    "final_train_loss",
    "loss_scale",
    "skipped_steps",
    "steps",
    "timed_steps",
    "batch_size",
    "train_wall_s",
    # time to a target accuracy, energy and cost (engine.validation, engine.energy); null ones left out
    "validation_s",
    "steps_to_target",
    "time_to_target_s",
    "final_val_accuracy",
    "energy_j",
    "joules_per_sample",
    "cost_per_run",
    "cost_per_1k_samples",
    "cost_to_target",
    # distributed runs (engine.comms; engine.pipeline): exposed communication, the pipeline bubble
    "comm_time_share",
    "comm_time_share_max",
    "comm_collective_share",
    "pp_bubble_fraction",
)
EVAL_METRICS = {
    "accuracy": "accuracy",
    "macro_f1": "macro_f1",
    "ece": "ece",
    "loss": "eval_loss",
    "n": "eval_n",
}
RESULT_PARAMS = (
    "world_size",
    "device",
    "device_name",
    "dataset_hash",
    "fp32_matmul_precision",
    "bf16_emulated",
    # where MFU's peak FLOP/s came from: table, probe or user (the figure is metric mfu_peak_flops)
    "mfu_peak_source",
)


def finite(value: Any) -> float | None:
    """A metric value MLflow can store and a report can compute with, or None."""
    if value is None or isinstance(value, bool | str):
        return None
    try:
        v = float(value)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


def param_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict | list | tuple):
        return json.dumps(value, sort_keys=True)
    return str(value)


def config_params(config: Any) -> dict[str, str]:
    """Params from a RunConfig (or its dict); unset (None) and unresolved ("auto") fields are left out
    so that the resolved value logged later does not conflict with them."""
    if config is None:
        return {}
    data = config.to_dict() if hasattr(config, "to_dict") else dict(config)
    return {k: param_value(v) for k, v in data.items() if v is not None and v != "auto"}


def result_params(result: dict[str, Any]) -> dict[str, str]:
    params = config_params(result.get("config") or {})
    for key in ("recipe", "precision", "compile", "strategy"):
        if result.get(key) is not None:
            params[key] = param_value(result[key])
    for key in RESULT_PARAMS:
        if result.get(key) is not None:
            params[key] = param_value(result[key])
    for key in ("torch_version", "ampflow_version"):  # the engine writes them flat; the brief nests them
        if result.get(key) is not None:
            params[key] = str(result[key])
    versions = result.get("versions") or {}
    for name, value in versions.items():
        if value is not None:
            params[f"{name}_version"] = str(value)
    metrics = result.get("metrics") or {}
    if metrics.get("batch_size") is not None:
        params["batch_size"] = param_value(metrics["batch_size"])
    return params


def result_metrics(result: dict[str, Any]) -> dict[str, float]:
    out = {}
    for key, value in (result.get("metrics") or {}).items():
        v = finite(value)
        if v is not None:
            out[key] = v
    return out


def eval_metrics(result: dict[str, Any]) -> dict[str, float]:
    out = {}
    for key, name in EVAL_METRICS.items():
        v = finite(result.get(key))
        if v is not None:
            out[name] = v
    return out


@lru_cache(maxsize=1)
def hardware() -> tuple[str, str]:
    """(fingerprint, description) of this machine: CPU model and count, GPU models and count.

    Read from /proc and nvidia-smi rather than torch, so a sweep's parent process (which never
    imports torch) and its training children agree.
    """
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            for line in fh:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    gpus: list[str] = []
    smi = shutil.which("nvidia-smi")
    if smi:
        try:
            out = subprocess.run(  # noqa: S603 - a fixed argv, no shell
                [smi, "--query-gpu=name", "--format=csv,noheader"],
                capture_output=True,
                text=True,
                timeout=10,
                check=False,
            ).stdout
            gpus = [g.strip() for g in out.splitlines() if g.strip()]
        except (OSError, subprocess.SubprocessError):
            gpus = []
    desc = f"{os.cpu_count()}x {cpu}"
    if gpus:
        desc += f"; {len(gpus)}x {gpus[0]}"
    fp = os.environ.get("AMPFLOW_HARDWARE_FINGERPRINT") or hashlib.sha256(desc.encode()).hexdigest()[:12]
    return fp, desc

"""KFP v2 components: short wrappers that run one ``ampflow <step>`` inside the training image.

Each component calls :func:`ampflow.integrations.kfp.run_step`, which sets the MLflow run context,
builds the argv through :func:`ampflow.commands.plan_step` (the one planner that the CLI, Airflow and
the PyTorchJob launcher share), runs :func:`ampflow.cli.main` in-process, fails the task on a non-zero
exit and logs the step's figures to the KFP Metrics. No training logic lives here, and nothing heavy
is imported at module level: a pipeline compiles where neither torch nor mlflow is installed.

KFP ships only a component function's own source into the pod, so each function imports what it
needs inside its body, from the installed ``ampflow`` package, never from this one.
"""

from __future__ import annotations

# The MLflow tag that ties every run a pipeline run starts to that pipeline run (exit handler);
# defined beside run_step, which sets it, because a component's pod cannot import this package.
from ampflow.integrations.kfp import PIPELINE_RUN_TAG

__all__ = ["CACHE_MOUNT", "CPU_IMAGE", "PIPELINE_RUN_TAG", "TRAINING_IMAGE"]

# The training image the components run in. Pipelines override it per run through their `image`
# parameter (task.set_container_image); this default is what a component runs in when used alone.
TRAINING_IMAGE = "ghcr.io/ampflow/ampflow-train:0.1.0-cuda12.8"
CPU_IMAGE = "ghcr.io/ampflow/ampflow-cpu:0.1.0"

# Where the pipelines mount the data-cache PVC; components point the caches they know about
# (Hugging Face, torch inductor, XDG) at it when the folder exists, and ignore it otherwise.
CACHE_MOUNT = "/mnt/ampflow-cache"

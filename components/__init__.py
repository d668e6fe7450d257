"""KFP v2 components: thin wrappers that run one ``ampflow <step>`` inside the training image.

Each component builds its argv with :func:`ampflow.commands.step_argv` (the one argv builder that the
CLI, Airflow and the PyTorchJob launcher share) and calls :func:`ampflow.cli.main` in-process; a
non-zero exit raises so that the KFP task fails. No training logic lives here, and nothing heavy is
imported at module level: a pipeline compiles where neither torch nor mlflow is installed.

KFP ships only a component function's own source into the pod, so each function imports what it
needs inside its body and cannot call helpers defined in this package.
"""

from __future__ import annotations

# The training image the components run in. Pipelines override it per run through their `image`
# parameter (task.set_container_image); this default is what a component runs in when used alone.
TRAINING_IMAGE = "ghcr.io/ampflow/ampflow-train:0.1.0-cuda12.8"
CPU_IMAGE = "ghcr.io/ampflow/ampflow-cpu:0.1.0"

# Where the pipelines mount the data-cache PVC; components point the caches they know about
# (Hugging Face, torch inductor, XDG) at it when the folder exists, and ignore it otherwise.
CACHE_MOUNT = "/mnt/ampflow-cache"

# The MLflow tag that ties every run a pipeline run starts to that pipeline run (exit handler).
PIPELINE_RUN_TAG = "ampflow.pipeline_run_id"

"""The training engine: trainer, precision policies, parallel set-up, checkpointed state, throughput
window, batch-size search, evaluation and model export.

Modules here may import torch at module level; the steps (``ampflow.steps.train`` / ``evaluate``)
import them lazily, inside ``run``, so that the CLI, KFP compiles and Airflow parsing stay torch-free.
"""

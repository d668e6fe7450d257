"""Glue between ampflow's steps and the orchestrators that run them (KFP: :mod:`ampflow.integrations.kfp`).

Lives inside the installed package because an orchestrator ships only a task function's own source
into its pod: whatever that function shares with the others must be importable from ``ampflow``.
Torch-free and mlflow-free, like the rest of the core.
"""

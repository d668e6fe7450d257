"""Shared test set-up. Tests keep torch to one thread: the machine has two cores."""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("MLFLOW_ENABLE_SYSTEM_METRICS_LOGGING", "false")

# Fixtures owned by each part of the tree live in their own plugin modules.
pytest_plugins = [
    p
    for p in ("tests.fixtures_mlflow",)
    if os.path.exists(os.path.join(os.path.dirname(__file__), p.split(".")[-1] + ".py"))
]

"""Shared test set-up. Tests keep torch to one thread: the machine has two cores."""

from __future__ import annotations

import os

import pytest

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


@pytest.fixture(autouse=True)
def _no_leaked_mlflow_experiment(monkeypatch):
    """MLflow's ``set_experiment`` writes ``MLFLOW_EXPERIMENT_ID`` into this process's environment; a
    later test's child process (another store) would inherit an experiment id its store lacks. Every
    test starts without one, and whatever it sets is undone after it."""
    monkeypatch.delenv("MLFLOW_EXPERIMENT_ID", raising=False)

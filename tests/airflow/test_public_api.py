"""The Airflow skin uses Airflow's public interface only, and never runs an operator inside another.

    .venv-airflow/bin/python -m pytest -q tests/airflow/test_public_api.py

Parses (never imports) airflow_ampflow/*.py and dags/*.py. Public, per Airflow 3's "Public Interface
of Airflow" (https://airflow.apache.org/docs/apache-airflow/stable/public-airflow-interface.html) and
the Task SDK reference: ``airflow.sdk`` and its documented modules ``airflow.sdk.exceptions`` and
``airflow.sdk.log``; ``airflow.triggers.base`` for triggers (the SDK has no trigger base in 3.3);
providers' operator, hook and trigger modules. Not: ``airflow.sdk.bases``/``definitions``/
``execution_time``/``_shared``, ``airflow.models``, ``airflow.utils``, ``airflow.exceptions``.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from tests.airflow.conftest import DAGS, ROOT

FILES = sorted((ROOT / "airflow_ampflow").glob("*.py")) + sorted(DAGS.glob("*.py"))
PUBLIC = ("airflow.sdk", "airflow.sdk.exceptions", "airflow.sdk.log", "airflow.triggers.base")
PUBLIC_PROVIDER_PARTS = ("operators", "hooks", "triggers", "sensors")


def is_public(module: str) -> bool:
    if module in PUBLIC:
        return True
    parts = module.split(".")
    # airflow.providers.<name...>.<operators|hooks|triggers|sensors>.<module>
    return module.startswith("airflow.providers.") and any(p in PUBLIC_PROVIDER_PARTS for p in parts[2:])


def airflow_imports(tree: ast.AST) -> list[tuple[int, str]]:
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names if a.name.split(".")[0] == "airflow"]
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "airflow":
            found.append((node.lineno, node.module))
    return found


def foreign_execute_calls(tree: ast.AST) -> list[int]:
    """Lines calling ``X.execute(...)`` on another operator: allowed are ``super().execute(...)`` and
    ``SomeBase.execute(self, ...)`` (this operator's own inherited execute)."""
    bad = []
    for node in ast.walk(tree):
        if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)):
            continue
        if node.func.attr not in ("execute", "execute_sync", "execute_async", "execute_resumable"):
            continue
        target = node.func.value
        if isinstance(target, ast.Call) and isinstance(target.func, ast.Name) and target.func.id == "super":
            continue
        if isinstance(target, ast.Name) and target.id == "self":
            continue  # this operator's own method
        first = node.args[0] if node.args else None
        if isinstance(target, ast.Name) and isinstance(first, ast.Name) and first.id == "self":
            continue  # Base.execute(self, context): the inherited implementation, on this operator
        bad.append(node.lineno)
    return bad


def test_the_checks_catch_what_they_look_for():
    sample = ast.parse(
        "from airflow.sdk.bases.resumablejobmixin import ResumableJobMixin\n"
        "from airflow.models import DagRun\n"
        "from airflow.providers.cncf.kubernetes.operators.pod import KubernetesPodOperator\n"
        "def execute(self, context):\n"
        "    KubernetesPodOperator(task_id='x').execute(context)\n"
        "    self._pod_op.execute(context)\n"
        "    super().execute(context)\n"
        "    KubernetesPodOperator.execute(self, context)\n"
    )
    assert [m for _, m in airflow_imports(sample) if not is_public(m)] == [
        "airflow.sdk.bases.resumablejobmixin",
        "airflow.models",
    ]
    assert foreign_execute_calls(sample) == [5, 6]


@pytest.mark.parametrize("path", FILES, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_imports_only_airflows_public_interface(path: Path):
    tree = ast.parse(path.read_text())
    private = [f"line {n}: {m}" for n, m in airflow_imports(tree) if not is_public(m)]
    assert private == [], f"{path.name} imports non-public Airflow modules"


@pytest.mark.parametrize("path", FILES, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_no_operator_runs_inside_another(path: Path):
    assert foreign_execute_calls(ast.parse(path.read_text())) == []

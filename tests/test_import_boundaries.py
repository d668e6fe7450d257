"""The torch-free core: config, argv builder, kube manifests, CLI parsing and step modules.

An Airflow scheduler parses DAG files every few seconds and a KFP compile runs where no GPU stack is
installed; both import these modules. Each check runs in a fresh interpreter so that nothing this
test process already imported can hide a heavy import.
"""

from __future__ import annotations

import json
import pkgutil
import subprocess
import sys
from pathlib import Path

import pytest

import ampflow
import ampflow.steps

ROOT = Path(__file__).resolve().parents[1]
HEAVY = ("torch", "mlflow", "transformers", "pandas", "sklearn")


def _loaded_after(code: str) -> list[str]:
    probe = code + f"\nimport sys, json; print(json.dumps([m for m in {HEAVY!r} if m in sys.modules]))"
    out = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def _light_modules() -> list[str]:
    names = [
        "ampflow",
        "ampflow.config",
        "ampflow.commands",
        "ampflow.cli",
        "ampflow.data",
        "ampflow.data.manifest",
        "ampflow.data.splits",
        "ampflow.data.batching",
        "ampflow.io",
        "ampflow.recipes",
        "ampflow.tracking",
    ]
    names += [f"ampflow.steps.{m.name}" for m in pkgutil.iter_modules(ampflow.steps.__path__)]
    kube = Path(ampflow.__file__).parent / "kube"
    names += [f"ampflow.kube.{m.name}" for m in pkgutil.iter_modules([str(kube)])]
    return names


@pytest.mark.parametrize("module", _light_modules())
def test_module_imports_without_heavy_dependencies(module):
    assert _loaded_after(f"import {module}") == []


def test_cli_help_loads_no_training_stack():
    code = "import contextlib, io\nfrom ampflow.cli import build_parser\nbuild_parser().format_help()"
    assert _loaded_after(code) == []

"""``ampflow register``: the alias ``champion`` moves only when the candidate matches or beats it within
the tolerance; refusing is a normal outcome. Real `mlflow server` (session fixture), real logged models.

    .venv/bin/python -m pytest tests/test_register.py -q -x
"""

from __future__ import annotations

import json

import pytest

from ampflow.cli import main
from ampflow.steps import compare
from tests.fixtures_mlflow import log_sweep

pytestmark = pytest.mark.slow


def _sweep_summary(root, accuracy):
    sweep, _ = log_sweep(root, [("32-true", 100.0, 2e8, accuracy)], model=True)
    out = root / "report"
    compare.run(sweep=sweep, out=out)
    return out / "summary.json"


def test_champion_moves_only_when_the_rule_says_so(tracking_env, mlflow_client, tmp_path, capsys):
    name = f"test-{tmp_path.name}"
    first = _sweep_summary(tmp_path / "a", 0.800)
    assert main(["register", "--summary", str(first), "--model-name", name]) == 0
    r1 = json.loads(first.with_name("register.json").read_text())
    assert r1["promoted"] is True and r1["champion_before"] is None
    assert mlflow_client.get_model_version_by_alias(name, "champion").version == r1["version"]
    v1 = mlflow_client.get_model_version(name, r1["version"])
    assert v1.tags["ampflow.precision"] == "32-true" and v1.tags["ampflow.dataset_hash"].startswith("sha256:")
    assert v1.tags["ampflow.sweep_id"] == json.loads(first.read_text())["sweep_run_id"]

    # 1 pp worse than the champion, tolerance 0.5 pp: registered, not promoted, exit 0 with a clear message
    worse = _sweep_summary(tmp_path / "b", 0.790)
    capsys.readouterr()
    assert main(["register", "--summary", str(worse), "--model-name", name, "--tolerance", "0.5"]) == 0
    assert "not promoted" in capsys.readouterr().out
    r2 = json.loads(worse.with_name("register.json").read_text())
    assert r2["promoted"] is False and r2["champion_before"]["version"] == r1["version"]
    assert mlflow_client.get_model_version_by_alias(name, "champion").version == r1["version"]

    # 0.3 pp worse: within tolerance, promoted
    close = _sweep_summary(tmp_path / "c", 0.797)
    assert main(["register", "--summary", str(close), "--model-name", name]) == 0
    r3 = json.loads(close.with_name("register.json").read_text())
    assert r3["promoted"] is True
    assert mlflow_client.get_model_version_by_alias(name, "champion").version == r3["version"]
    assert len(mlflow_client.search_model_versions(f"name = '{name}'")) == 3


def test_a_summary_without_a_tracked_run_is_bad_input(tmp_path):
    summary = tmp_path / "summary.json"
    summary.write_text(
        json.dumps({"recommended": "32-true", "configs": [{"config_id": "32-true", "run_ids": [None]}]})
    )
    assert main(["register", "--summary", str(summary)]) == 2
    assert main(["register", "--summary", str(tmp_path / "missing.json")]) == 2

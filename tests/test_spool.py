"""The spool: nothing is lost when the server is away, and nothing is sent twice.

Real `mlflow server` (session fixture): it is stopped mid-run and restarted on the same port and store.

    .venv/bin/python -m pytest tests/test_spool.py -q -x
"""

from __future__ import annotations

import json
import time

import pytest

from ampflow import tracking
from ampflow.cli import main
from ampflow.config import RunConfig
from ampflow.tracking.server import free_port
from ampflow.tracking.spool import Spool

pytestmark = pytest.mark.slow


def _steps(client, run_id, key="train/loss"):
    return sorted(h.step for h in client.get_metric_history(run_id, key))


def test_server_dies_mid_run_and_every_metric_arrives_exactly_once(tracking_env, mlflow_client, tmp_path):
    server = tracking_env
    run_dir = tmp_path / "run"
    t = tracking.start_run("train", config=RunConfig(), run_dir=run_dir)
    for step in range(50):
        t.log_metrics({"loss": 1.0 / (step + 1)}, step=step)
    assert t.flush(timeout=30)
    server.stop()
    try:
        for step in range(50, 100):  # training goes on while the server is away
            t.log_metrics({"loss": 1.0 / (step + 1)}, step=step)
        time.sleep(1.5)  # at least one failed send: these steps now sit in the spool
        pending = Spool(run_dir / "tracking").pending()
        assert any(op["op"] == "metrics" for op in pending)
    finally:
        server.start()
    for step in range(100, 150):
        t.log_metrics({"loss": 1.0 / (step + 1)}, step=step)
    t.close("FINISHED")
    assert Spool(run_dir / "tracking").pending() == []
    assert _steps(mlflow_client, t.run_id) == list(range(150))
    assert mlflow_client.get_run(t.run_id).info.status == "FINISHED"


def test_offline_run_is_replayed_by_sync_exactly_once_even_after_a_lost_ack(
    tracking_env, mlflow_client, monkeypatch, tmp_path, capsys
):
    run_dir = tmp_path / "offline"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{free_port()}")  # nobody listens there
    t = tracking.start_run("train", config=RunConfig(precision="bf16-mixed"), run_dir=run_dir)
    for step in range(30):
        t.log_metrics({"loss": 0.5, "lr": 0.1}, step=step)
    (run_dir / "result.json").write_text(json.dumps({"metrics": {"samples_per_s": 10.0}}))
    t.log_train_result(
        {"recipe": "tweets-bow", "precision": "bf16-mixed", "metrics": {"samples_per_s": 10.0}}, run_dir
    )
    t.close("FINISHED")
    assert t.run_id is None
    # the server answers again: `ampflow sync` creates the run and sends everything
    monkeypatch.setenv("MLFLOW_TRACKING_URI", tracking_env.uri)
    assert main(["sync", str(run_dir)]) == 0
    run_id = json.loads((run_dir / "tracking" / "state.json").read_text())["run_id"]
    run = mlflow_client.get_run(run_id)
    assert run.info.status == "FINISHED" and run.data.params["precision"] == "bf16-mixed"
    assert run.data.metrics["samples_per_s"] == 10.0
    assert _steps(mlflow_client, run_id) == list(range(30))
    assert "result.json" in {a.path for a in mlflow_client.list_artifacts(run_id)}
    # a second sync sends nothing
    assert main(["sync", str(run_dir)]) == 0
    assert "sent 0" in capsys.readouterr().out
    # a crash after sending but before the acknowledgement was written: replay everything again
    spool = Spool(run_dir / "tracking")
    spool.save_state(acked=0)
    assert main(["sync", str(run_dir)]) == 0
    assert json.loads((run_dir / "tracking" / "state.json").read_text())["run_id"] == run_id  # no second run
    assert _steps(mlflow_client, run_id) == list(range(30))
    assert _steps(mlflow_client, run_id, "train/lr") == list(range(30))
    exp = mlflow_client.get_experiment(run.info.experiment_id)
    assert len(mlflow_client.search_runs([exp.experiment_id])) == 1


def test_sync_says_so_when_the_server_is_still_away(monkeypatch, tmp_path):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{free_port()}")
    monkeypatch.setenv("AMPFLOW_SYSTEM_METRICS", "0")
    t = tracking.start_run("train", config=RunConfig(), run_dir=tmp_path / "r")
    t.log_metrics({"loss": 1.0}, step=0)
    t.close("FINISHED")
    assert main(["sync", str(tmp_path / "r")]) == 1
    assert Spool(tmp_path / "r" / "tracking").pending()
    assert main(["sync", str(tmp_path / "nothing")]) == 2


def test_a_model_saved_while_the_server_was_away_is_registrable_after_sync(
    tracking_env, mlflow_client, monkeypatch, tmp_path
):
    import numpy as np

    from ampflow.tracking import schema
    from tests.test_register import BLOCKS, RECIPE, BlockModel, _dataset

    data = _dataset(tmp_path / "data")
    run_dir = tmp_path / "offline"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{free_port()}")  # nobody listens there
    t = tracking.start_run("train", config=RunConfig(recipe=RECIPE), run_dir=run_dir)
    t.log_model(BlockModel(0), input_example={"x": np.zeros((2, 3 * len(BLOCKS)), np.float32)})
    t.log_summary({"accuracy": 0.8})
    t.close("FINISHED")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", tracking_env.uri)
    assert main(["sync", str(run_dir)]) == 0
    # a crash before the acknowledgements were written: the replay makes no second logged model
    Spool(run_dir / "tracking").save_state(acked=0)
    assert main(["sync", str(run_dir)]) == 0
    run = mlflow_client.get_run(json.loads((run_dir / "tracking" / "state.json").read_text())["run_id"])
    assert run.data.tags[schema.TAG_MODEL_URI].startswith("models:/")
    assert len(mlflow_client.search_logged_models([run.info.experiment_id])) == 1
    exp = mlflow_client.get_experiment(run.info.experiment_id)
    assert exp.tags["mlflow.experimentKind"] == "custom_model_development"

    summary = tmp_path / "summary.json"
    summary.write_text(json.dumps({
        "recipe": RECIPE, "recommended": "32-true",
        "configs": [{"config_id": "32-true", "precision": "32-true", "run_ids": [run.info.run_id]}],
    }))  # fmt: skip
    name = f"replayed-{tmp_path.name}"
    argv = ["register", "--summary", str(summary), "--data", str(data), "--model-name", name]
    assert main(argv) == 0
    result = json.loads((tmp_path / "register.json").read_text())
    assert result["promoted"] is True and result["accuracy"] == 0.8

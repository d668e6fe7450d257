"""The MLflow tracker against a real `mlflow server` (session fixture) and the embedded SQLite store.

.venv/bin/python -m pytest tests/test_tracking.py -q -x
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from ampflow import tracking
from ampflow.config import RunConfig
from ampflow.tracking import schema
from tests.fixtures_mlflow import make_eval, make_result

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[1]


def _write_manifest(data_dir: Path) -> None:
    data_dir.mkdir(parents=True)
    manifest = {"schema": "ampflow.dataset/1", "recipe": "tweets-bow", "rows": {"train": 80, "val": 10, "test": 10},
                "arrays": ["features", "labels"], "content_hash": "sha256:" + "cd" * 32,
                "class_balance": {"train": [40, 40]}}  # fmt: skip
    (data_dir / "manifest.json").write_text(json.dumps(manifest))


def test_parent_and_child_runs_share_one_schema(tracking_env, mlflow_client, tmp_path):
    import mlflow
    import torch

    data_dir = tmp_path / "data"
    _write_manifest(data_dir)
    parent = tracking.start_run("sweep", config=RunConfig(recipe="tweets-bow"), run_dir=tmp_path / "sweep")
    run_dir = tmp_path / "sweep" / "runs" / "bf16-mixed"
    cfg = RunConfig(recipe="tweets-bow", precision="bf16-mixed", batch_size=32, max_steps=12)
    child = tracking.start_run("train", config=cfg, run_dir=run_dir, parent_run_id=parent.run_id)
    for step in range(12):
        child.log_metrics({"loss": 1.0 / (step + 1), "lr": 0.01, "step_time_s": 0.02}, step=step)
    result = make_result("bf16-mixed", samples_per_s=123.5, peak=3 * 2**20, steps=12)
    result["data_dir"] = str(data_dir)
    (run_dir / "result.json").write_text(json.dumps(result))
    child.log_train_result(result, run_dir)
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3))
    child.log_model(model, input_example=torch.randn(2, 4))
    child.close("FINISHED")

    # evaluate runs in another process in real life; it continues the train run of its checkpoint dir
    eval_dir = run_dir / "eval"
    eval_dir.mkdir()
    ev = make_eval(0.8125, ece=0.031)
    (eval_dir / "eval.json").write_text(json.dumps(ev))
    evaluator = tracking.start_run("evaluate", config=cfg, run_dir=eval_dir, parent_run_id=parent.run_id)
    assert evaluator.run_id == child.run_id
    evaluator.log_eval_result(ev, eval_dir)
    evaluator.close("FINISHED")
    parent.close("FINISHED")

    p = mlflow_client.get_run(parent.run_id)
    c = mlflow_client.get_run(child.run_id)
    assert p.info.status == c.info.status == "FINISHED"
    assert p.data.tags[schema.TAG_KIND] == "sweep" and p.data.tags[schema.TAG_SWEEP] == parent.run_id
    assert c.data.tags[schema.TAG_PARENT] == parent.run_id and c.data.tags[schema.TAG_SWEEP] == parent.run_id
    assert c.data.tags[schema.TAG_HARDWARE] == p.data.tags[schema.TAG_HARDWARE] == schema.hardware()[0]
    assert c.info.experiment_id == p.info.experiment_id
    assert mlflow_client.get_experiment(p.info.experiment_id).name == os.environ["AMPFLOW_EXPERIMENT"]
    params = c.data.params
    for key in (
        "recipe",
        "precision",
        "compile",
        "batch_size",
        "strategy",
        "world_size",
        "device_name",
        "torch_version",
        "ampflow_version",
        "dataset_hash",
        "max_steps",
        "seed",
    ):
        assert key in params, key
    assert (
        params["precision"] == "bf16-mixed"
        and params["batch_size"] == "32"
        and params["torch_version"] == "2.13.0"
    )
    m = c.data.metrics
    assert m["samples_per_s"] == 123.5 and m["peak_memory_bytes"] == 3 * 2**20
    assert m["accuracy"] == 0.8125 and m["ece"] == 0.031 and m["eval_loss"] == 0.6 and m["skipped_steps"] == 0
    assert "mfu" not in m and "tokens_per_s" not in m  # None figures are left out, not logged as 0
    history = mlflow_client.get_metric_history(child.run_id, "train/loss")
    assert sorted(h.step for h in history) == list(range(12))
    assert len(mlflow_client.get_metric_history(child.run_id, "train/lr")) == 12
    # the dataset is a run input with the manifest's content hash
    inputs = c.inputs.dataset_inputs
    assert inputs and inputs[0].dataset.digest == ("cd" * 32)[:36]
    assert {a.path for a in mlflow_client.list_artifacts(child.run_id)} >= {"result.json", "eval"}
    # the model loads back and computes what the trained one computes
    mlflow.set_tracking_uri(tracking_env.uri)
    loaded = mlflow.pytorch.load_model(c.data.tags[schema.TAG_MODEL_URI])
    x = torch.randn(5, 4)
    assert torch.allclose(loaded(x), model(x), atol=1e-6)


def test_embedded_sqlite_store_is_the_default(monkeypatch, tmp_path):
    from mlflow.tracking import MlflowClient

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("AMPFLOW_EXPERIMENT", raising=False)
    monkeypatch.setenv("AMPFLOW_SYSTEM_METRICS", "0")
    monkeypatch.chdir(tmp_path)
    with tracking.start_run("train", config=RunConfig(recipe="mnist-cnn"), run_dir=tmp_path / "r") as t:
        t.log_metrics({"loss": 0.25}, step=3)
    assert (tmp_path / "mlruns.db").is_file()
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlruns.db'}")
    run = client.get_run(t.run_id)
    assert run.info.status == "FINISHED"
    assert client.get_experiment(run.info.experiment_id).name == "ampflow/mnist-cnn"
    assert [(h.step, h.value) for h in client.get_metric_history(t.run_id, "train/loss")] == [(3, 0.25)]


def test_a_fresh_sqlite_store_prints_no_setup_lines_but_warnings_still_show(tmp_path):
    """MLflow's INFO lines on creating a store (its tables, alembic's migration context) stay out of
    ampflow's output; a warning from the same loggers still reaches stderr. A fresh interpreter: the
    order of imports (ampflow.tracking, mlflow) is the real one."""
    script = textwrap.dedent(
        """
        import logging
        from ampflow import tracking
        from ampflow.config import RunConfig

        with tracking.start_run("train", config=RunConfig(recipe="mnist-cnn"), run_dir="r") as t:
            t.log_metrics({"loss": 0.25}, step=1)
        print("run", t.run_id)
        logging.getLogger("mlflow.store.db.utils").warning("a store warning still shows")
        logging.getLogger("alembic.runtime.migration").error("an alembic error still shows")
        """
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_TRACKING")}
    env.update(AMPFLOW_SYSTEM_METRICS="0", AMPFLOW_EXPERIMENT="quiet", PYTHONPATH=str(ROOT))
    for name in ("MLFLOW_LOGGING_LEVEL", "AMPFLOW_TRACKING"):
        env.pop(name, None)
    proc = subprocess.run(
        [sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (tmp_path / "mlruns.db").is_file() and proc.stdout.startswith("run ")
    out = proc.stdout + proc.stderr
    for noise in ("Creating initial", "Updating database tables", "Context impl", "non-transactional DDL"):
        assert noise not in out, out
    assert "a store warning still shows" in proc.stderr and "an alembic error still shows" in proc.stderr


def test_a_failing_run_is_marked_failed(tracking_env, mlflow_client, tmp_path):
    with pytest.raises(ZeroDivisionError):
        with tracking.start_run("train", config=RunConfig(), run_dir=tmp_path / "r") as t:
            t.log_metrics({"loss": 1.0}, step=0)
            _ = 1 / 0
    assert mlflow_client.get_run(t.run_id).info.status == "FAILED"


def test_sigterm_marks_the_run_killed(tracking_env, mlflow_client, tmp_path):
    """A real process gets SIGTERM mid-training; its run ends KILLED, not RUNNING."""
    script = textwrap.dedent(f"""
        import time
        from ampflow import tracking
        from ampflow.config import RunConfig
        t = tracking.start_run("train", config=RunConfig(), run_dir={str(tmp_path / "r")!r})
        try:
            print(t.run_id, flush=True)
            step = 0
            while True:
                t.log_metrics({{"loss": 1.0 / (step + 1)}}, step=step)
                step += 1
                time.sleep(0.01)
        finally:
            pass  # no close here: the tracker's SIGTERM and exit hooks must do it
    """)
    proc = subprocess.Popen(  # noqa: S603 - our own interpreter and script
        [sys.executable, "-c", script], stdout=subprocess.PIPE, text=True, env=os.environ.copy()
    )
    run_id = proc.stdout.readline().strip()
    assert run_id
    time.sleep(1.0)
    proc.send_signal(signal.SIGTERM)
    rc = proc.wait(timeout=60)
    assert rc != 0
    run = mlflow_client.get_run(run_id)
    assert run.info.status == "KILLED"
    assert len(mlflow_client.get_metric_history(run_id, "train/loss")) > 0


def test_require_tracking_fails_fast_when_the_server_is_away(monkeypatch, tmp_path):
    from ampflow.tracking.server import free_port

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{free_port()}")
    with pytest.raises(tracking.TrackingUnavailable, match="--require-tracking"):
        tracking.start_run("train", config=RunConfig(), run_dir=tmp_path / "r", require=True)
    # and without it training goes on with a spool
    t = tracking.start_run("train", config=RunConfig(), run_dir=tmp_path / "r2")
    t.log_metrics({"loss": 1.0}, step=0)
    t.close("FINISHED")
    assert t.run_id is None and (tmp_path / "r2" / "tracking" / "spool.jsonl").is_file()


def test_system_metrics_are_logged_by_default(tracking_env, mlflow_client, monkeypatch, tmp_path):
    monkeypatch.delenv("AMPFLOW_SYSTEM_METRICS")
    monkeypatch.delenv("MLFLOW_ENABLE_SYSTEM_METRICS_LOGGING", raising=False)
    monkeypatch.setenv("AMPFLOW_SYSTEM_METRICS_INTERVAL_S", "0.5")
    t = tracking.start_run("train", config=RunConfig(), run_dir=tmp_path / "r")
    time.sleep(2.0)
    t.close("FINISHED")
    keys = mlflow_client.get_run(t.run_id).data.metrics
    assert any(k.startswith("system/cpu_utilization") for k in keys), sorted(keys)


def test_a_deleted_experiment_is_a_refusal_not_an_outage(tracking_env, mlflow_client, tmp_path, capsys):
    """Issue 12, part 3: one line naming the cause and the way out; exit 2 under --require-tracking;
    nothing spooled that `ampflow sync` could never deliver."""
    from ampflow.cli import main
    from tests.recipes_fixture import NAME, write_dataset

    name = os.environ["AMPFLOW_EXPERIMENT"]
    exp_id = mlflow_client.create_experiment(name)
    mlflow_client.delete_experiment(exp_id)
    data = write_dataset(tmp_path / "data")
    argv = ["train", "--recipe", NAME, "--data", str(data), "--set", "max_steps=2"]
    assert main([*argv, "--out", str(tmp_path / "strict"), "--require-tracking"]) == 2
    err = capsys.readouterr().err
    assert f"MLflow experiment {name!r} (id {exp_id}) is deleted; restore it" in err
    assert "Traceback" not in err and "unreachable" not in err
    assert not (tmp_path / "strict" / "checkpoint.pt").exists()
    # without --require-tracking: the same line, training goes on untracked, no spool left behind
    assert main([*argv, "--out", str(tmp_path / "loose")]) == 0
    err = capsys.readouterr().err
    assert "is deleted; restore it" in err and "this run is not tracked" in err
    assert not (tmp_path / "loose" / "tracking").exists()


def test_train_names_its_mlflow_run_and_ui_link_last(tracking_env, mlflow_client, tmp_path, capsys):
    """Issue 11: the last lines name every file written, the logged model, and where the run went,
    with a link a person can open; evaluate's too."""
    from ampflow.cli import main
    from tests.recipes_fixture import NAME, write_dataset

    data = write_dataset(tmp_path / "data")
    assert (
        main(
            [
                "train",
                "--recipe",
                NAME,
                "--data",
                str(data),
                "--out",
                str(tmp_path / "r"),
                "--set",
                "max_steps=2",
            ]
        )
        == 0
    )
    lines = capsys.readouterr().out.strip().splitlines()
    run_id = json.loads((tmp_path / "r" / "tracking" / "state.json").read_text())["run_id"]
    run = mlflow_client.get_run(run_id)
    exp_id = run.info.experiment_id
    link = f"{tracking_env.uri}/#/experiments/{exp_id}/runs/{run_id}"
    assert lines[-1].startswith(f"MLflow run {run_id} (experiment ") and lines[-1].endswith(link)
    # before it, every file the run wrote and the logged model
    assert lines[-4:-1] == [
        f"result:     {tmp_path / 'r' / 'result.json'}",
        f"checkpoint: {tmp_path / 'r' / 'checkpoint.pt'}",
        f"model:      {run.data.tags['ampflow.model_uri']} (mlflow.pytorch.load_model loads it)",
    ]

    # evaluate ends the same way, on the same run
    args = ["--recipe", NAME, "--data", str(data), "--checkpoint", str(tmp_path / "r")]
    assert main(["evaluate", *args, "--out", str(tmp_path / "r" / "eval")]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[-3:-1] == [
        f"eval:        {tmp_path / 'r' / 'eval' / 'eval.json'}",
        f"predictions: {tmp_path / 'r' / 'eval' / 'predictions.jsonl'}",
    ]
    assert lines[-1].startswith(f"MLflow run {run_id} (experiment ") and lines[-1].endswith(link)

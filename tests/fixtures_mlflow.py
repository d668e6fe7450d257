"""pytest plugin: one real ``mlflow server`` on 127.0.0.1 for the whole session (about 10 s to start).

Listed in tests/conftest.py's ``pytest_plugins``. The server is ``ampflow.tracking.server.LocalServer``:
SQLite store and proxied artifacts under a session temp folder, one worker, job execution off (MLflow 3.17 starts a job runner otherwise).
``mlflow_server.restart()`` brings it back on the same port and store (the spool test uses it).
"""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory):
    from ampflow.tracking.server import LocalServer

    server = LocalServer(tmp_path_factory.mktemp("mlflow-server")).start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def tracking_env(mlflow_server, monkeypatch, tmp_path):
    """Point tracking at the session server, one experiment per test, system metrics off."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server.uri)
    monkeypatch.setenv("AMPFLOW_EXPERIMENT", f"test/{tmp_path.name}")
    monkeypatch.setenv("AMPFLOW_SYSTEM_METRICS", "0")
    monkeypatch.setenv("AMPFLOW_TRACKING_FLUSH_S", "0.2")
    return mlflow_server


@pytest.fixture
def mlflow_client(mlflow_server):
    from mlflow.tracking import MlflowClient

    return MlflowClient(mlflow_server.uri)


# -- helpers shared by the tracking tests: runs whose figures the test controls -------------------


def make_result(
    precision: str,
    *,
    samples_per_s: float,
    peak: float = 2**28,
    steps: int = 30,
    compile: bool = False,
    recipe: str = "tweets-bow",
) -> dict:
    """A result.json of schema ampflow.train.result/1 with the figures the test chooses; by default
    25 timed steps, enough for compare to speak on speed (ampflow.compare.verdict.MIN_TIMED_STEPS)."""
    return {
        "schema": "ampflow.train.result/1", "recipe": recipe, "precision": precision, "compile": compile,
        "strategy": "single", "world_size": 1, "device": "cpu", "device_name": "test-cpu",
        "bf16_emulated": precision.startswith("bf16"), "fp32_matmul_precision": "highest",
        "versions": {"torch": "2.13.0", "ampflow": "0.1.0"}, "dataset_hash": "sha256:" + "ab" * 32,
        "config": {"recipe": recipe, "precision": precision, "compile": compile, "batch_size": 32, "max_steps": steps},
        "metrics": {
            "samples_per_s": samples_per_s, "samples_per_s_per_device": samples_per_s, "tokens_per_s": None,
            "step_time_p50_s": 32 / samples_per_s, "step_time_p90_s": 1.1 * 32 / samples_per_s,
            "step_time_p99_s": 1.2 * 32 / samples_per_s, "data_wait_frac": 0.01, "peak_memory_bytes": peak,
            "compile_s": 0.0, "recompiles": 0, "flops_per_sample": 1e6, "mfu": None, "final_train_loss": 0.5,
            "loss_scale": None, "skipped_steps": 0, "steps": steps, "timed_steps": steps - 5, "batch_size": 32,
            "train_wall_s": steps * 32 / samples_per_s,
        },
        "loss_curve": [[s, 1.0 / (s + 1)] for s in range(steps)],
        "checkpoint": "checkpoint.pt",
    }  # fmt: skip


def make_eval(accuracy: float, *, macro_f1: float | None = None, ece: float = 0.05) -> dict:
    return {
        "accuracy": accuracy,
        "macro_f1": accuracy - 0.02 if macro_f1 is None else macro_f1,
        "loss": 0.6,
        "ece": ece,
        "confusion_matrix": [[5, 1], [1, 5]],
        "labels": ["neg", "pos"],
        "n": 12,
        "precision": "32-true",
    }


def log_sweep(
    root, configs, *, recipe: str = "tweets-bow", model: bool = False, predictions: dict | None = None
) -> tuple[str, list]:
    """Log a sweep the way `ampflow bench` does (parent run, then per config a train run and an evaluate
    run attached to it), with controlled figures. ``configs``: [(precision, samples_per_s, peak, accuracy)];
    ``predictions``: {precision: (labels, predictions)} written as evaluate's predictions.jsonl.
    Returns (parent run id, run directories)."""
    import json
    from pathlib import Path

    from ampflow import tracking
    from ampflow.config import RunConfig

    root = Path(root)
    parent = tracking.start_run("sweep", config=RunConfig(recipe=recipe), run_dir=root)
    dirs = []
    for i, (precision, thr, peak, acc) in enumerate(configs):
        run_dir = (
            root
            / "runs"
            / (precision if all(c[0] != precision for c in configs[:i]) else f"{precision}-r{i}")
        )
        run_dir.mkdir(parents=True)
        result = make_result(precision, samples_per_s=thr, peak=peak, recipe=recipe)
        (run_dir / "result.json").write_text(json.dumps(result))
        cfg = RunConfig(recipe=recipe, precision=precision, batch_size=32)
        t = tracking.start_run("train", config=cfg, run_dir=run_dir, parent_run_id=parent.run_id)
        for step, loss in result["loss_curve"]:
            t.log_metrics({"loss": loss, "lr": 0.01}, step=step)
        t.log_train_result(result, run_dir)
        if model:
            import torch

            torch.manual_seed(i)
            t.log_model(torch.nn.Linear(4, 3), input_example=torch.randn(2, 4))
        t.close("FINISHED")
        eval_dir = run_dir / "eval"
        eval_dir.mkdir()
        ev = make_eval(acc)
        (eval_dir / "eval.json").write_text(json.dumps(ev))
        if predictions and precision in predictions:
            from ampflow.steps.evaluate import write_predictions

            labels, preds = predictions[precision]
            examples = {"label": labels, "prediction": preds, "confidence": [1.0] * len(labels)}
            write_predictions(eval_dir / "predictions.jsonl", examples)
        e = tracking.start_run("evaluate", config=cfg, run_dir=eval_dir, parent_run_id=parent.run_id)
        e.log_eval_result(ev, eval_dir)
        e.close("FINISHED")
        dirs.append(run_dir)
    parent.close("FINISHED")
    return parent.run_id, dirs

"""Both pipelines end to end through kfp.local, logging to a real ``mlflow server`` on 127.0.0.1.

``kfp.local.SubprocessRunner(use_venv=False)`` runs every component as a subprocess of this Python,
with the real ampflow steps and tiny settings (300 tweets, 8 steps). What kfp.local cannot run is a
container or a cluster: images, resources and kfp.kubernetes settings are checked in the compiled YAML
(tests/test_pipelines_compile.py), and the PyTorchJob branch in tests/test_components.py (parity)
and by the launcher's own tests.
"""

from __future__ import annotations

import json
import os
import re
import threading
import time
import warnings
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

TINY = ["max_steps=8", "warmup_steps=2", "log_every=2"]
LIMIT = 300


@pytest.fixture
def kfp_local(tmp_path, tracking_env):
    from kfp import local

    root = tmp_path / "kfp"
    root.mkdir()
    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(root), raise_on_error=True)
    warnings.filterwarnings("ignore", message=".*no effect in the current local runner.*")
    warnings.filterwarnings("ignore", message=".*custom or non-Python base image.*")
    return root


def _experiment_runs(client):
    exp = client.get_experiment_by_name(os.environ["AMPFLOW_EXPERIMENT"])
    if exp is None:
        return []
    return client.search_runs([exp.experiment_id], max_results=500)


def _task_names(run_dir: Path) -> set[str]:
    """Tasks that ran, by component name (kfp.local numbers the copies in sub-pipelines, nested ones twice: register-3-2)."""
    return {re.sub(r"(-\d+)+$", "", p.parent.name) for p in run_dir.rglob("executor_output.json")}


def _only_run_dir(root: Path) -> Path:
    (run_dir,) = [p for p in root.iterdir() if p.is_dir()]
    return run_dir


def test_benchmark_pipeline_runs_locally_reports_and_fails_on_a_regression(
    tmp_path, tracking_env, mlflow_client, monkeypatch, capfd
):
    """A benchmark run, recorded as a sweep; then a second one, made slower (the tiny recipe sleeps in
    every forward pass; its settings stay equal, so the runs are comparable), checked against it:
    with fail_on_regression its compare step exits 3 and the run fails. The terminal gets one line
    per task state change, kfp.local's executor detail goes to the log file named at the end, and a
    failed task's last lines reach stderr."""
    from ampflow.config import SweepSpec
    from ampflow.tracking import schema
    from pipelines.local import find_task_dir, run_benchmark_locally

    monkeypatch.setenv("PYTHONPATH", str(Path(__file__).resolve().parents[1]))  # the tiny recipe
    out = tmp_path / "bench"
    capfd.readouterr()
    summary = run_benchmark_locally(
        recipe="tests.recipes_fixture:tiny",
        sweep=SweepSpec.from_lists(["32-true", "bf16-mixed"], ["off"], repeats=1, baseline="bf16-mixed"),
        out=out,
        overrides=TINY,
        tolerance=100.0,
        fail_on_regression=True,
    )
    # the sweep's baseline reaches compare, which reports it first
    assert summary["baseline"] == "bf16-mixed"
    assert [c["config_id"] for c in summary["configs"]] == ["bf16-mixed", "32-true"]
    assert summary["recommended"] in ("32-true", "bf16-mixed")
    assert (out / "report.html").read_text().lstrip().lower().startswith("<!doctype html")

    printed, errors = capfd.readouterr()
    lines = printed.splitlines()
    log = out / "kfp-local.log"
    assert "executor_input" in log.read_text() and "executor_input" not in printed + errors
    assert str(log) in lines[0] and str(log) in lines[-1] and "succeeded" in lines[-1]
    states = [re.sub(r"^kfp-local \[\s*[\d.]+ s\] ", "", line) for line in lines[1:-1]]
    assert len(states) == 2 * 7, printed  # prep, sweep-plan, 2 x (train, evaluate), compare
    tasks = [s.split(":")[0] for s in states[::2]]
    assert {tasks[0], tasks[1]} == {"prep", "sweep-plan"} and tasks[-1] == "compare", printed
    # each configuration trained, then evaluated, named by its configuration
    assert sorted(tasks[2:6:2]) == ["train 32-true", "train bf16-mixed"], printed
    assert [t.replace("evaluate", "train") for t in tasks[3:6:2]] == tasks[2:6:2], printed
    assert all(s.endswith(": running") for s in states[::2])
    assert all(re.search(r": succeeded in [\d.]+ s$", s) for s in states[1::2]), printed
    assert "32-true" in (out / "report.md").read_text()

    # the figures compare used are the ones each train task wrote into its Model artifact
    run_dir = Path(summary["kfp_run_dir"])
    results = {}
    for result in run_dir.rglob("model/result.json"):
        data = json.loads(result.read_text())
        results[data["precision"]] = data["metrics"]["samples_per_s"]
    assert set(results) == {"32-true", "bf16-mixed"}
    for config in summary["configs"]:
        assert config["figures"]["samples_per_s"]["median"] == pytest.approx(results[config["precision"]])
    compare_dir = find_task_dir(run_dir, "compare")
    assert (compare_dir / "report_html").is_file() and (compare_dir / "report_md").is_file()

    runs = _experiment_runs(mlflow_client)
    assert runs, "the steps logged nothing to the MLflow server"
    assert not [r.info.run_id for r in runs if r.info.status == "RUNNING"]
    assert summary["regressed"] is False

    monkeypatch.setenv("AMPFLOW_TINY_STEP_SLEEP", "0.05")
    capfd.readouterr()
    with pytest.raises(RuntimeError, match="FAILURE"):
        run_benchmark_locally(
            recipe="tests.recipes_fixture:tiny",
            sweep=SweepSpec.from_lists(["32-true"], ["off"], repeats=1, baseline="32-true"),
            out=tmp_path / "bench-slow",
            overrides=TINY,
            fail_on_regression=True,
        )
    printed, errors = capfd.readouterr()
    assert re.search(r"compare: failed after [\d.]+ s", errors) and "compare | " in errors
    assert "ampflow compare exited 3" in errors, errors
    assert str(tmp_path / "bench-slow" / "kfp-local.log") in errors.splitlines()[-1]

    runs = _experiment_runs(mlflow_client)
    sweeps = sorted(
        (r for r in runs if r.data.tags.get(schema.TAG_KIND) == "sweep"), key=lambda r: r.info.start_time
    )
    trained = [r for r in runs if r.data.tags.get(schema.TAG_KIND) == "train"]
    assert len(sweeps) == 2 and len(trained) == 3
    for sweep, size in zip(sweeps, (2, 1), strict=True):  # the parent `ampflow bench` creates
        assert sweep.info.status == "FINISHED" and sweep.data.tags.get(schema.TAG_PIPELINE_RUN_ID)
        assert sweep.data.params["max_steps"] == "8"
        children = [r for r in trained if r.data.tags.get(schema.TAG_PARENT) == sweep.info.run_id]
        assert len(children) == size and {c.data.tags[schema.TAG_SWEEP] for c in children} == {
            sweep.info.run_id
        }
    assert sweeps[1].data.tags["ampflow.regressed"] == "true"
    logged = {f.path for f in mlflow_client.list_artifacts(sweeps[1].info.run_id, "compare")}
    assert {"compare/table.json", "compare/summary.json"} <= logged


def test_retrain_pipeline_registers_a_passing_candidate(kfp_local, tracking_env, mlflow_client, capfd):
    """In the experiment its `experiment` parameter names; the first run of the recipe on this
    hardware has nothing earlier to regress against, and the gate says so."""
    from ampflow.tracking import schema
    from pipelines.retrain import build_retrain

    retrain = build_retrain(train_retries=0)
    experiment = os.environ["AMPFLOW_EXPERIMENT"] + "-retrain"

    retrain(
        recipe="tweets-bow",
        precision="32-true",
        settings=TINY,
        limit=LIMIT,
        tolerance=100.0,
        experiment=experiment,
        fail_on_regression=True,
    )
    run_dir = _only_run_dir(kfp_local)
    tasks = _task_names(run_dir)
    assert "train" in tasks and "train-distributed" not in tasks, tasks
    assert "register" in tasks, "a passing candidate reaches register"
    assert "champion gate: pass: 32-true: first run" in "".join(capfd.readouterr())
    versions = mlflow_client.search_model_versions("name = 'ampflow-tweets-bow'")
    assert versions, "register created no model version"
    assert not _experiment_runs(mlflow_client), "the runs belong in the `experiment` parameter's experiment"
    exp = mlflow_client.get_experiment_by_name(experiment)
    runs = mlflow_client.search_runs([exp.experiment_id])
    kinds = sorted(r.data.tags.get(schema.TAG_KIND) for r in runs)
    assert kinds == ["sweep", "train"], kinds
    assert not [r.info.run_id for r in runs if r.info.status == "RUNNING"]


def test_failing_step_fails_the_pipeline_and_leaves_no_run_running(kfp_local, tracking_env, mlflow_client):
    """A training that diverges (every loss non-finite) fails its step; the pipeline fails, the exit
    handler runs, and no MLflow run is left RUNNING."""
    from pipelines.retrain import build_retrain

    retrain = build_retrain(train_retries=0)

    diverge = [
        "max_steps=8",
        "warmup_steps=2",
        "learning_rate=1e38",
        "max_nonfinite_steps=1",
        "clip_grad_norm=none",
    ]
    with pytest.raises(RuntimeError, match="FAILURE"):
        retrain(recipe="tweets-bow", precision="32-true", settings=diverge, limit=LIMIT)
    run_dir = _only_run_dir(kfp_local)
    tasks = _task_names(run_dir)
    assert "mark-failed" in tasks, "the exit handler did not run"
    assert "register" not in tasks and "evaluate" not in tasks, tasks
    runs = _experiment_runs(mlflow_client)
    assert not [r.info.run_id for r in runs if r.info.status == "RUNNING"]


def test_killed_step_is_marked_failed_by_the_exit_handler(kfp_local, tracking_env, mlflow_client):
    """The case the exit handler exists for: the train process dies by SIGKILL (an OOM kill, an evicted
    pod), so it cannot close its own MLflow run. The exit handler finds the run by its pipeline tag."""
    import signal

    import psutil

    from components import PIPELINE_RUN_TAG
    from pipelines.retrain import build_retrain

    retrain = build_retrain(train_retries=0)

    long = ["max_steps=100000", "epochs=100000", "warmup_steps=2", "log_every=1"]
    errors: list[BaseException] = []

    def body():
        try:
            retrain(recipe="tweets-bow", precision="32-true", settings=long, limit=LIMIT)
        except BaseException as exc:  # noqa: BLE001 - handed to the test thread
            errors.append(exc)

    def kill_executors() -> int:
        children = psutil.Process().children(recursive=True)
        executors = [p for p in children if "kfp.dsl.executor_main" in " ".join(p.cmdline())]
        for proc in executors:
            proc.send_signal(signal.SIGKILL)
        return len(executors)

    thread = threading.Thread(target=body, daemon=True)
    thread.start()
    victim = None
    try:
        deadline = time.monotonic() + 300
        while victim is None and time.monotonic() < deadline and thread.is_alive():
            running = [r for r in _experiment_runs(mlflow_client) if r.info.status == "RUNNING"]
            if running:
                victim = running[0]
                break
            time.sleep(0.5)
        assert victim is not None, "the train step never showed a RUNNING run"
        assert kill_executors(), "no component process to kill"
        thread.join(timeout=300)
    finally:
        # never leave a 100000-step training behind to write into later tests' output
        if thread.is_alive():
            kill_executors()
            thread.join(timeout=60)
    assert not thread.is_alive()
    assert errors and "FAILURE" in str(errors[0])
    tagged = victim.data.tags.get(PIPELINE_RUN_TAG)
    assert tagged, (
        "runs created by ampflow.tracking carry no ampflow.pipeline_run_id tag: the tracker must merge "
        "MLflow's run-context tags (MLFLOW_RUN_CONTEXT) into create_run"
    )
    assert mlflow_client.get_run(victim.info.run_id).info.status == "FAILED"

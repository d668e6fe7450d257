"""DAG integrity: every DAG file parses cleanly, light (no torch, no mlflow), with docs, tags, retries,
validated params, and the schedule and mapping the issue asks for. No task runs here.

    .venv-airflow/bin/python -m pytest -q tests/airflow/test_dag_integrity.py
"""

from __future__ import annotations

import copy
import json
import subprocess
import sys

import pytest

from tests.airflow.conftest import DAGS


def run_plan(module, monkeypatch, **conf):
    """The DAG's `plan` task run directly on its validated params (local mode unless `conf` says
    otherwise), as a manual trigger with `conf` would run it; returns its layout."""
    dag = module.dag
    params = copy.deepcopy(dag.params)
    for key, value in {"execution_mode": "local", **conf}.items():
        params[key] = value
    ctx = {"params": params.validate(), "dag": dag, "run_id": "manual__2026-11-23T10:00:00+00:00"}
    monkeypatch.setattr(module, "get_current_context", lambda: ctx)
    return dag.task_dict["plan"].python_callable()


pytestmark = pytest.mark.airflow

DAG_FILES = sorted(DAGS.glob("*.py"))
EXPECTED = {"ampflow_retrain", "ampflow_benchmark"}


@pytest.fixture(scope="module")
def dagbag():
    from airflow.dag_processing.dagbag import DagBag

    return DagBag(dag_folder=str(DAGS))


def test_the_dags_folder_holds_the_two_dag_files_only():
    # the operator, the process runner and the pod settings live in the airflow_ampflow package
    assert {p.name for p in DAGS.iterdir() if p.name != "__pycache__"} == {f"{d}.py" for d in EXPECTED}


@pytest.mark.parametrize("path", DAG_FILES, ids=lambda p: p.name)
def test_dag_file_imports_in_a_fresh_interpreter_without_torch_or_mlflow(path):
    # a fresh interpreter: modules this test process already holds cannot hide a heavy import
    probe = (
        "import importlib.util, json, sys\n"
        f"sys.path.insert(0, {str(DAGS)!r})\n"
        f"spec = importlib.util.spec_from_file_location('dagfile', {str(path)!r})\n"
        "mod = importlib.util.module_from_spec(spec); spec.loader.exec_module(mod)\n"
        "heavy = [m for m in ('torch', 'mlflow', 'transformers', 'pandas', 'sklearn', 'kfp') if m in sys.modules]\n"
        "print(json.dumps({'heavy': heavy, 'dag': mod.dag.dag_id}))\n"
    )
    proc = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=False)  # noqa: S603
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out == {"heavy": [], "dag": path.stem}


def test_dagbag_has_no_import_errors(dagbag):
    assert dagbag.import_errors == {}
    assert set(dagbag.dag_ids) == EXPECTED


@pytest.mark.parametrize("dag_id", sorted(EXPECTED))
def test_every_dag_has_docs_tags_and_retries(dagbag, dag_id):
    dag = dagbag.dags[dag_id]
    assert dag.doc_md and len(dag.doc_md) > 200
    assert "ampflow" in dag.tags and len(dag.tags) >= 2
    for task in dag.tasks:
        assert task.retries >= 2, f"{dag_id}.{task.task_id} has retries={task.retries}"
        assert task.retry_delay.total_seconds() > 0


def test_retrain_is_scheduled_by_cron_or_by_the_training_data_asset(dagbag):
    from airflow.sdk import AssetOrTimeSchedule, CronTriggerTimetable

    dag = dagbag.dags["ampflow_retrain"]
    assert isinstance(dag.timetable, AssetOrTimeSchedule)
    assert isinstance(dag.timetable.timetable, CronTriggerTimetable)
    assert dag.timetable.timetable.expression == "0 3 * * *"
    assert [a.name for a in dag.timetable.asset_condition.objects] == ["ampflow_training_data"]


@pytest.mark.parametrize(("cron", "expected"), [("15 1 * * 1", "15 1 * * 1"), ("none", "assets only")])
def test_retrain_cron_comes_from_the_environment_variable(cron, expected):
    probe = (
        f"import sys; sys.path.insert(0, {str(DAGS)!r})\n"
        "import ampflow_retrain as m; t = m.dag.timetable\n"
        "print(t.timetable.expression if hasattr(t, 'timetable') else 'assets only')\n"
    )
    env = {**__import__("os").environ, "AIRFLOW_VAR_AMPFLOW_RETRAIN_CRON": cron}
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, env=env, check=True)  # noqa: S603
    assert out.stdout.strip().splitlines()[-1] == expected


@pytest.mark.parametrize("unpaused_at", ["04:00", "23:45", "02:59"])
def test_unpausing_retrain_never_starts_a_run_for_a_slot_that_has_passed(dagbag, monkeypatch, unpaused_at):
    """Issue 11: unpausing fired the latest cron slot at once, on the full data with default settings.
    The scheduler's own computation, on the serialized DAG, with the clock set to the unpause: the first
    run is the next 03:00 UTC, never today's 03:00 that has passed (a start_date in the past would make
    catchup=False run it; Airflow's default run_immediately runs a slot less than 2.4 h old)."""
    import airflow.timetables.trigger as trigger
    import pendulum
    from airflow.serialization.serialized_objects import DagSerialization

    dag = dagbag.dags["ampflow_retrain"]
    assert dag.start_date is None and dag.catchup is False
    hour, minute = map(int, unpaused_at.split(":"))
    now = pendulum.datetime(2026, 11, 29, hour, minute, tz="UTC")
    monkeypatch.setattr(trigger, "utcnow", lambda: now)
    scheduled = DagSerialization.from_dict(DagSerialization.to_dict(dag))
    first = scheduled.next_dagrun_info(last_automated_run_info=None).run_after
    assert first > now and first.hour == 3 and first - now <= pendulum.duration(days=1)


def test_retrain_chain_and_gate(dagbag):
    dag = dagbag.dags["ampflow_retrain"]
    chain = ["plan", "prep", "train", "evaluate", "compare", "passes", "register"]
    for up, down in zip(chain, chain[1:], strict=False):
        assert down in dag.task_dict[up].downstream_task_ids, f"{up} -> {down}"
    closer = dag.task_dict["close_mlflow_runs"]
    assert closer.is_teardown  # runs whatever happened, without deciding the run's state
    steps = {t.task_id: t.step for t in dag.tasks if hasattr(t, "step")}
    assert steps == {
        "prep": "prep",
        "train": "train",
        "evaluate": "evaluate",
        "compare": "compare",
        "register": "register",
        "close_mlflow_runs": "close-runs",
    }


def test_benchmark_maps_train_and_evaluate(dagbag):
    dag = dagbag.dags["ampflow_benchmark"]
    from airflow.sdk.definitions.mappedoperator import MappedOperator

    assert isinstance(dag.task_dict["train"], MappedOperator)
    assert isinstance(dag.task_dict["evaluate"], MappedOperator)
    assert "compare" in dag.task_dict["evaluate"].downstream_task_ids
    assert dag.task_dict["close_mlflow_runs"].is_teardown


def test_benchmark_precision_params_take_only_ampflow_precisions(dagbag):
    from airflow.sdk.exceptions import ParamValidationError

    from ampflow.config import PRECISIONS

    dag = dagbag.dags["ampflow_benchmark"]
    schema = dag.params.get_param("precisions").schema
    assert schema["items"]["enum"] == list(PRECISIONS)
    assert dag.params.get_param("baseline").schema["enum"] == list(PRECISIONS)

    def validated(conf):
        params = copy.deepcopy(dag.params)
        for key, value in conf.items():
            params[key] = value
        return params.validate()

    good = validated({"precisions": ["32-true", "bf16-true"], "compile_modes": ["off", "on"]})
    assert good["precisions"] == ["32-true", "bf16-true"]
    for bad in (
        {"precisions": ["fp64"]},
        {"precisions": []},
        {"compile_modes": ["maybe"]},
        {"baseline": "int8"},
        {"repeats": 0},
        {"execution_mode": "docker"},
    ):
        with pytest.raises(ParamValidationError):
            validated(bad)


@pytest.mark.parametrize("dag_id", ["ampflow_benchmark", "ampflow_retrain"])
def test_overrides_param_refuses_a_typo_or_a_wrong_type_at_trigger_time(dagbag, dag_id):
    """Issue 12: {"max_stepz": 5} was accepted, then failed on the worker and was retried twice."""
    from airflow.sdk.exceptions import ParamValidationError

    dag = dagbag.dags[dag_id]

    def validated(overrides):
        params = copy.deepcopy(dag.params)
        params["overrides"] = overrides
        return params.validate()

    assert validated({"max_steps": 5, "batch_size": "auto"})["overrides"] == {
        "max_steps": 5,
        "batch_size": "auto",
    }
    for bad in ({"max_stepz": 5}, {"max_steps": "five"}, {"precision": "fp4"}):
        with pytest.raises(ParamValidationError):
            validated(bad)


def test_a_bad_override_on_the_worker_fails_without_retries():
    """Whatever slips past the form (a DAG author's own overrides) fails the task, not a retry."""
    from airflow.sdk.exceptions import AirflowFailException

    from airflow_ampflow.operator import AmpflowStepOperator

    op = AmpflowStepOperator(
        task_id="t", step="train", step_options={"recipe": "r"}, overrides={"max_stepz": 5}
    )
    with pytest.raises(AirflowFailException, match="max_stepz"):
        op.plan({"params": {}, "ti": type("TI", (), {"try_number": 1})()}, "local")


def test_the_champion_gate_counts_only_real_evidence_and_says_what_it_checked():
    from ampflow.compare.gate import gate_decision

    one = {"configs": [{"config_id": "bf16-mixed"}], "recommended": "bf16-mixed", "regressions": []}
    # a single run "compared" with itself is never the reason: it passes on the regression check...
    checked = gate_decision(
        {**one, "regression_baseline": ["s1", "s2"], "regression_checked": ["bf16-mixed"]}
    )
    assert checked.passes and "none for bf16-mixed against 2 earlier sweep(s)" in checked.why
    assert "not evidence" in checked.checks[0]
    # ...stops when earlier sweeps exist but none of this configuration, and says so on a first run
    assert not gate_decision({**one, "regression_baseline": ["s1"], "regression_checked": []}).passes
    first = gate_decision({**one, "regression_baseline": []})
    assert first.passes and "first run" in first.why and "register" in first.why
    two = {**one, "configs": [{"config_id": "32-true"}, {"config_id": "bf16-mixed"}], "baseline": "32-true"}
    assert gate_decision(two).passes and "against the baseline 32-true" in gate_decision(two).why
    assert not gate_decision(
        {**two, "regressions": [{"config_id": "bf16-mixed", "message": "slower"}]}
    ).passes
    assert not gate_decision({**two, "recommended": None}).passes
    assert not gate_decision(None).passes


def test_the_register_task_announces_only_a_promotion():
    from airflow.sdk import AssetAlias

    from airflow_ampflow.assets import CHAMPION, announce_champion, champion_asset
    from airflow_ampflow.operator import AmpflowStepOperator

    assert AmpflowStepOperator(task_id="register", step="register").outlets == [CHAMPION]
    assert AmpflowStepOperator(task_id="compare", step="compare").outlets == []

    class Events(dict):
        def __missing__(self, key):
            self[key] = Added()
            return self[key]

    class Added(list):
        def add(self, asset, extra=None):
            self.append((asset, extra))

    events = Events()
    assert not announce_champion({"outlet_events": events}, {"promoted": False, "model_name": "m"})
    assert announce_champion({"outlet_events": events}, {"promoted": True, "model_name": "m", "version": "3"})
    assert events[AssetAlias("ampflow_champion")] == [
        (champion_asset("m"), {"model_name": "m", "version": "3"})
    ]


def test_benchmark_plan_parses_the_sweep_once_and_refuses_a_baseline_outside_the_precisions(monkeypatch):
    import ampflow_benchmark
    from airflow.sdk.exceptions import AirflowFailException

    def plan(**conf):
        return run_plan(ampflow_benchmark, monkeypatch, **conf)

    layout = plan(precisions=["32-true", "bf16-mixed"], compile_modes=["off", "on"], repeats=2)
    ids = [e["id"] for e in layout["sweep"]["entries"]]
    assert ids[:4] == ["32-true", "32-true-compiled", "bf16-mixed", "bf16-mixed-compiled"] and len(ids) == 8
    assert [p.rsplit("/", 1)[1] for p in layout["compare"]["runs"]] == ids
    with pytest.raises(AirflowFailException, match="baseline"):
        plan(precisions=["bf16-mixed"], baseline="32-true")


def test_benchmark_sweeps_strategies_and_refuses_a_layout_the_processes_cannot_hold(monkeypatch):
    """`strategies` is a sweep dimension checked at trigger time (names) and by plan (process count,
    a mesh override, nodes in local mode: bench's own rules) with one line and no retries; each
    configuration's train options carry its topology, one process for `single`."""
    import ampflow_benchmark
    from airflow.sdk.exceptions import AirflowFailException, ParamValidationError

    from ampflow.config import STRATEGIES

    dag = ampflow_benchmark.dag
    assert dag.params.get_param("strategies").schema["items"]["enum"] == list(STRATEGIES)

    def plan(**conf):
        return run_plan(ampflow_benchmark, monkeypatch, **conf)

    for bad in (
        {"strategies": ["zero3"]},
        {"strategies": []},
        {"strategies": ["ddp", "ddp"]},
        {"nproc_per_node": 0},
    ):
        with pytest.raises(ParamValidationError):
            plan(**bad)
    layout = plan(precisions=["bf16-mixed"], baseline="bf16-mixed", strategies=["single", "ddp", "fsdp"])
    sweep = layout["sweep"]
    assert [e["id"] for e in sweep["entries"]] == ["bf16-mixed", "bf16-mixed-ddp", "bf16-mixed-fsdp"]
    assert [p.rsplit("/", 1)[1] for p in layout["compare"]["runs"]] == [e["id"] for e in sweep["entries"]]
    options = [ampflow_benchmark.train_options(sweep, e) for e in sweep["entries"]]
    assert [(o["strategy"], o["_topology"]) for o in options] == [
        (None, [1, 1]),
        ("ddp", [1, 2]),
        ("fsdp", [1, 2]),
    ]
    assert plan(strategies=["single"], nproc_per_node=1)["sweep"]["topology"] == [
        1,
        1,
    ]  # no process count needed
    refused = {
        "at least 2": {"strategies": ["single", "ddp"], "nproc_per_node": 1},
        "covers 4 ranks": {"strategies": ["tp"], "overrides": {"mesh": "tp:4"}},
        "local mode": {"strategies": ["ddp"], "nodes": 2},
    }
    for message, conf in refused.items():
        with pytest.raises(AirflowFailException, match=message) as exc:
            plan(**conf)
        assert "\n" not in str(exc.value)
    # the user's words are the DAG's params, not ampflow bench's flags
    with pytest.raises(AirflowFailException) as exc:
        plan(**refused["at least 2"])
    assert "nproc_per_node must be at least 2 for strategies ddp (got 1); use strategies single" in str(
        exc.value
    )
    assert "--" not in str(exc.value)
    # over two nodes (kubernetes), ddp holds on two single-GPU nodes
    assert plan(strategies=["ddp"], nodes=2, nproc_per_node=1, execution_mode="kubernetes")["sweep"][
        "topology"
    ] == [2, 1]


def test_a_distributed_benchmark_configuration_runs_under_the_training_venvs_torchrun_locally(tmp_path):
    """Local mode: a train task whose own topology has 2 processes runs `python -m torch.distributed.run
    --nproc_per_node=2 ... -m ampflow train --strategy ddp` with the interpreter of AMPFLOW_BIN's venv
    (the worker's has no torch); a single configuration and every other step run `ampflow` itself."""
    from airflow_ampflow import process
    from airflow_ampflow.operator import AmpflowStepOperator

    venv = tmp_path / "venv" / "bin"
    venv.mkdir(parents=True)
    (venv / "python").write_text("")
    (venv / "python").chmod(0o755)
    ampflow = venv / "ampflow"
    ampflow.write_text(f"#!{venv / 'python'}\nimport sys\n")
    ampflow.chmod(0o755)
    assert process.training_python(str(ampflow)) == str(venv / "python")
    ampflow.write_text("#!/usr/bin/env python3\n")  # no interpreter named: the python beside it
    assert process.training_python(str(ampflow)) == str(venv / "python")

    ctx = {"params": {}, "ti": type("TI", (), {"try_number": 1})()}
    options = {"recipe": "tweets-bow", "data": "/d", "out": "/r", "precision": "32-true", "compile": False}
    ddp = AmpflowStepOperator(
        task_id="train", step="train", step_options={**options, "strategy": "ddp", "_topology": [1, 2]}
    )
    single = AmpflowStepOperator(task_id="train", step="train", step_options={**options, "_topology": [1, 1]})
    evaluate = AmpflowStepOperator(task_id="evaluate", step="evaluate", step_options={"_topology": [1, 2]})
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("AMPFLOW_BIN", str(ampflow))
        argv = ddp.argv(ctx, ddp.local_program(), "local")
        assert single.local_program() == evaluate.local_program() == (str(ampflow),)
    assert argv[:4] == [str(venv / "python"), "-m", "torch.distributed.run", "--nproc_per_node=2"]
    assert argv[4].startswith("--master_port=") and int(argv[4].split("=")[1]) > 0
    assert argv[5:] == ["-m", "ampflow", "train", "--recipe", "tweets-bow", "--data", "/d", "--out", "/r"] + [
        "--precision", "32-true", "--strategy", "ddp"
    ]  # fmt: skip


def test_retrain_runs_a_distributed_strategy_under_torchrun_in_local_mode(monkeypatch):
    """Local mode: `strategy` other than single gives the train task its own topology, [1,
    gpus_per_node], so the operator runs it under torchrun (as the benchmark DAG does) instead of one
    process that fails with "needs a launcher" after prep; a layout one machine cannot hold fails the
    plan task in one line, with no retries."""
    import ampflow_retrain
    from airflow.sdk.exceptions import AirflowFailException

    def plan(**conf):
        return run_plan(ampflow_retrain, monkeypatch, **conf)

    assert "_topology" not in plan()["train"]
    assert plan(strategy="ddp", gpus_per_node=2)["train"]["_topology"] == [1, 2]
    assert "_topology" not in plan(strategy="ddp", nodes=2, execution_mode="kubernetes")["train"]
    refused = {
        r"at least 2 \(got nodes 1, gpus_per_node 1\)": {"strategy": "ddp"},
        "set nodes to 1": {"strategy": "fsdp", "nodes": 2, "gpus_per_node": 2},
        "strategy tp: mesh": {"strategy": "tp", "gpus_per_node": 2, "overrides": {"mesh": "tp:4"}},
    }
    for message, conf in refused.items():
        with pytest.raises(AirflowFailException, match=message) as exc:
            plan(**conf)
        assert "\n" not in str(exc.value)

"""``ampflow bench`` end to end on the tiny fixture recipe: real subprocesses, real prep, real compare.

Tracking is switched off here (AMPFLOW_TRACKING=off); the tracked sweep is covered by the tracking
tests against a real MLflow server.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from ampflow import commands
from ampflow.steps import bench

ROOT = Path(__file__).resolve().parents[1]
NODROP = "tests.recipes_fixture:tiny_nodrop"


def _bench_argv(out: Path, *extra: str, recipe: str = "tests.recipes_fixture:tiny") -> list[str]:
    """``bench --recipe R --out OUT ...``: the CLI arguments, for :func:`main` or a subprocess."""
    return ["bench", "--recipe", recipe, "--out", str(out), *extra]


def _bench(out: Path, *extra: str, recipe: str = "tests.recipes_fixture:tiny") -> subprocess.CompletedProcess:
    env = dict(os.environ, AMPFLOW_TRACKING="off", PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    return subprocess.run(
        [sys.executable, "-m", "ampflow", *_bench_argv(out, *extra, recipe=recipe)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )


@pytest.mark.slow
def test_sweep_trains_every_config_and_compares_against_the_baseline(tmp_path):
    out = tmp_path / "sweep"
    proc = _bench(
        out,
        "--precisions",
        "32-true,bf16-mixed",
        "--repeats",
        "2",
        "--set",
        "max_steps=12",
        "--set",
        "warmup_steps=2",
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    summary = json.loads((out / "summary.json").read_text())
    # interleaved repeats: every config ran twice, from the same prepared data
    assert [r["id"] for r in summary["runs"]] == ["32-true", "bf16-mixed", "32-true-r1", "bf16-mixed-r1"]
    assert all(r["status"] == "ok" for r in summary["runs"])
    hashes = {
        json.loads((Path(r["run_dir"]) / "result.json").read_text())["dataset_hash"] for r in summary["runs"]
    }
    assert len(hashes) == 1
    # the same seed and data order: both repeats of 32-true end with the same training loss
    losses = [
        json.loads((Path(r["run_dir"]) / "result.json").read_text())["metrics"]["final_train_loss"]
        for r in summary["runs"]
        if r["precision"] == "32-true"
    ]
    assert losses[0] == pytest.approx(losses[1], rel=1e-6)
    by_id = {c["config_id"]: c for c in summary["configs"]}
    assert set(by_id) == {"32-true", "bf16-mixed"}
    assert by_id["32-true"]["speedup"] == pytest.approx(1.0)
    assert summary["recommended"] in by_id
    assert (out / "report.md").read_text().startswith("###")
    # the report names the row, and says so where this CPU has no native bf16 (oneDNN emulates it)
    from ampflow.engine.devices import cpu_has_native_bf16

    row = "| bf16-mixed |" if cpu_has_native_bf16() else "| bf16-mixed (bf16 emulated) |"
    assert row in proc.stdout
    # training is not silence: each configuration's progress, named, in plain lines when not a terminal
    for i, cid in enumerate(["32-true", "bf16-mixed", "32-true-r1", "bf16-mixed-r1"], 1):
        assert f"[{i}/4] {cid}: training: step 12/12\n" in proc.stdout
    # the closing lines say what to use next: the recommendation, the sweep run, the files
    tail = proc.stdout.strip().splitlines()[-5:]
    assert tail[0] == f"recommended: {summary['recommended']}" and tail[1] == "sweep run:   not tracked"
    assert tail[2:] == [
        f"{k:<12} {out / n}"
        for k, n in (("summary:", "summary.json"), ("report:", "report.md"), ("html report:", "report.html"))
    ]


@pytest.mark.slow
def test_a_failing_sweep_exits_1_and_says_where_to_look(tmp_path):
    proc = _bench(
        tmp_path / "nan",
        "--precisions",
        "32-true",
        "--set",
        "max_steps=12",
        "--set",
        "max_nonfinite_steps=2",
        recipe="tests.recipes_fixture:tiny_nan",
    )
    assert proc.returncode == 1
    assert "32-true: FAILED" in proc.stderr
    assert "train.log" in proc.stderr
    # one closing line, no traceback (a new user saw one when every configuration failed)
    assert "Traceback" not in proc.stderr
    assert (
        proc.stderr.strip().splitlines()[-1].startswith("ampflow bench: every configuration failed; see the")
    )


def test_a_second_sweep_into_the_same_out_keeps_the_first_ones_runs(tmp_path, capsys):
    """make demo twice: the old runs move aside (named by time), never overwritten nor in the way."""
    out = tmp_path / "sweep"
    bench._set_aside_previous_runs(out)  # nothing there yet: nothing moves
    assert not out.exists()
    (out / "runs" / "bf16-mixed-r1").mkdir(parents=True)
    (out / "runs" / "bf16-mixed-r1" / "result.json").write_text("{}")
    bench._set_aside_previous_runs(out)
    (kept,) = [p for p in out.iterdir() if p.name.startswith("runs-")]
    assert (kept / "bf16-mixed-r1" / "result.json").read_text() == "{}" and not (out / "runs").exists()
    assert f"kept in {kept}" in capsys.readouterr().out
    (out / "runs").mkdir()  # an empty runs folder (a sweep that failed before training) stays
    bench._set_aside_previous_runs(out)
    assert (out / "runs").is_dir() and len([p for p in out.iterdir() if p.name.startswith("runs-")]) == 1


def test_busy_machine_is_called_out_in_the_report():
    records = [
        {"id": "32-true", "busy": False, "load_per_core": 0.9},
        {"id": "bf16-mixed", "busy": True, "load_per_core": 2.4},
    ]
    note = bench._busy_note(records)
    assert "bf16-mixed (load 2.4/core)" in note and "32-true" not in note
    assert bench._busy_note(records[:1]) == ""


# -- strategies: a dimension of the sweep (issue 14) -------------------------------------------------


@pytest.mark.parametrize(
    ("extra", "named"),
    [
        (
            ["--strategies", "single,ddp", "--nproc-per-node", "1"],
            "--nproc-per-node must be at least 2 for strategies ddp (got 1); use --strategies single",
        ),
        (["--strategies", "single,zero3"], "strategy must be one of single, ddp, fsdp, tp, pp, fsdp+tp"),
        (["--strategies", "tp", "--set", "mesh=tp:4"], "mesh tp:4 covers 4 ranks but the world size is 2"),
        (
            ["--set", "strategy=ddp"],
            "--set strategy: the sweep sets strategy per configuration; use --strategies",
        ),
        (["--strategies", "ddp", "--engine", "kfp-local"], "--engine kfp-local sweeps single-process"),
    ],
)
def test_bad_strategy_sweeps_exit_2_before_anything_runs(tmp_path, capsys, extra, named):
    from ampflow.cli import main

    out = tmp_path / "b"
    assert main(_bench_argv(out, "--precisions", "32-true", *extra, recipe=NODROP)) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and named in err[0]
    assert not out.exists()


def test_bench_help_names_strategies_and_process_count(capsys):
    from ampflow.cli import main

    with pytest.raises(SystemExit):
        main(["bench", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "--strategies STRATEGIES" in text and "default: single" in text
    assert "--nproc-per-node NPROC_PER_NODE" in text and "default: 2" in text


def test_a_distributed_entry_trains_under_torchrun_and_evaluates_in_one_process(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(bench, "_run_child", lambda argv, log, label=None: calls.append(argv) or 0)
    monkeypatch.setattr(commands, "_free_port", lambda: 29611)
    ddp = bench.SweepSpec.from_words("32-true", strategies="single,ddp").entries()[1]
    record = bench._run_entry(ddp, "[2/2]", "tiny", tmp_path / "data", tmp_path, None, {"max_steps": "3"}, 3)
    train, evaluate = calls
    assert train[:7] == [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=3",
                         "--master_port=29611", "-m", "ampflow"]  # fmt: skip
    assert train[7] == "train" and train[train.index("--strategy") + 1] == "ddp"
    assert train[-2:] == ["--set", "max_steps=3"] and train[train.index("--out") + 1] == str(
        tmp_path / "runs" / "32-true-ddp"
    )
    assert evaluate[:4] == [sys.executable, "-m", "ampflow", "evaluate"]
    assert (record["id"], record["strategy"], record["nproc"], record["status"]) == (
        "32-true-ddp",
        "ddp",
        3,
        "ok",
    )
    # a single entry is the plain command it always was: no launcher, no --strategy
    calls.clear()
    bench._run_entry(
        bench.SweepSpec.from_words("32-true").entries()[0], "[1/1]", "tiny", tmp_path, tmp_path, None, {}
    )
    assert calls[0][:4] == [sys.executable, "-m", "ampflow", "train"] and "--strategy" not in calls[0]


@pytest.mark.slow
def test_a_sweep_over_strategies_compares_single_and_ddp(tmp_path):
    """One real sweep: single and ddp (2 processes, gloo) from the same data, one comparison."""
    out = tmp_path / "strategies"
    proc = _bench(out, "--precisions", "32-true", "--strategies", "single,ddp", "--set", "max_steps=6",
                  "--set", "warmup_steps=2", recipe="tests.recipes_fixture:tiny_nodrop")  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    summary = json.loads((out / "summary.json").read_text())
    assert [(r["id"], r["strategy"], r["status"]) for r in summary["runs"]] == [
        ("32-true", "single", "ok"),
        ("32-true-ddp", "ddp", "ok"),
    ]
    ddp = json.loads((out / "runs" / "32-true-ddp" / "result.json").read_text())
    assert (ddp["strategy"], ddp["world_size"]) == ("ddp", 2)
    # two configurations, never two repeats of 32-true; the baseline is the single-process run
    rows = {c["config_id"]: c for c in summary["configs"]}
    assert set(rows) == {"32-true", "32-true-ddp"} and rows["32-true"]["is_baseline"]
    assert rows["32-true-ddp"]["strategy"] == "ddp" and rows["32-true-ddp"]["repeats"] == 1
    assert (out / "runs" / "32-true-ddp" / "eval" / "eval.json").is_file()
    assert "| 32-true-ddp |" in proc.stdout


def test_the_sweep_run_records_its_strategies():
    from ampflow.tracking.sweeps import _sweep_shape, sweep_params

    common = {"recipe": "r", "precisions": ["32-true"], "compile_modes": ["off"], "repeats": 1}
    assert sweep_params(**common, baseline="32-true", tolerance=0.5)["strategies"] == "single"
    assert (
        sweep_params(**common, baseline="32-true", tolerance=0.5, strategies=["single", "ddp"])["strategies"]
        == "single,ddp"
    )
    # a pipeline's runs recorded as a sweep afterwards: the strategies come from the runs themselves
    records = [{"precision": "32-true", "compile": False, "strategy": s} for s in ("single", "ddp", "ddp")]
    assert _sweep_shape(records) == (["32-true"], ["off"], ["single", "ddp"], 2)
    assert _sweep_shape([{"precision": "32-true", "compile": True}]) == (["32-true"], ["on"], ["single"], 1)


def test_a_recipe_without_a_tensor_parallel_plan_is_refused_before_anything_trains(tmp_path, capsys):
    from ampflow.cli import main

    out = tmp_path / "b"
    argv = _bench_argv(out, "--precisions", "32-true", recipe=NODROP)
    assert main([*argv, "--strategies", "single,tp", "--set", "max_steps=2"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "strategy tp: recipe 'tests.recipes_fixture:tiny_nodrop' declares no" in err[0]
    assert (out / "data").is_dir() and not (out / "runs").exists()

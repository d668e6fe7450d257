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

from ampflow.steps import bench

ROOT = Path(__file__).resolve().parents[1]


def _bench(out: Path, *extra: str, recipe: str = "tests.recipes_fixture:tiny") -> subprocess.CompletedProcess:
    env = dict(os.environ, AMPFLOW_TRACKING="off", PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    return subprocess.run(
        [sys.executable, "-m", "ampflow", "bench", "--recipe", recipe, "--out", str(out), *extra],
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

    # a second sweep into the same directory runs, and keeps the first one's runs
    again = _bench(out, "--precisions", "32-true", "--set", "max_steps=6", "--set", "warmup_steps=2")
    assert again.returncode == 0, again.stderr[-2000:]
    kept = [p for p in out.iterdir() if p.name.startswith("runs-")]
    assert len(kept) == 1 and (kept[0] / "bf16-mixed-r1" / "result.json").is_file()
    assert json.loads((out / "summary.json").read_text())["runs"][0]["id"] == "32-true"


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


def test_busy_machine_is_called_out_in_the_report():
    records = [
        {"id": "32-true", "busy": False, "load_per_core": 0.9},
        {"id": "bf16-mixed", "busy": True, "load_per_core": 2.4},
    ]
    note = bench._busy_note(records)
    assert "bf16-mixed (load 2.4/core)" in note and "32-true" not in note
    assert bench._busy_note(records[:1]) == ""

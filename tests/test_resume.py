"""Kill-and-resume equality: a CPU run SIGKILLed after a checkpoint and resumed with ``--resume`` ends
with exactly the weights (and optimizer state) of an uninterrupted run. Real CLI processes, real SIGKILL.

The fixture model sleeps ``AMPFLOW_TINY_STEP_SLEEP`` seconds per forward pass so that the kill lands
between two checkpoints instead of racing the end of a run that takes milliseconds.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from ampflow.cli import main
from tests.recipes_fixture import NAME, write_dataset

STEPS = 40
EVERY = 10
ROOT = Path(__file__).resolve().parents[1]


def _env(sleep: str = "0", tracked: bool = False) -> dict[str, str]:
    """The child's environment: tracking off, unless ``tracked`` (then the test's MLflow server)."""
    env = dict(os.environ)
    env.update(
        {
            "AMPFLOW_TRACKING": "on" if tracked else "off",
            "OMP_NUM_THREADS": "1",
            "AMPFLOW_TINY_STEP_SLEEP": sleep,
            "PYTHONPATH": str(ROOT),
        }
    )
    return env


def _argv(data: Path, out: Path, *extra: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "ampflow",
        "train",
        "--recipe",
        NAME,
        "--data",
        str(data),
        "--out",
        str(out),
        "--set",
        f"max_steps={STEPS}",
        "--set",
        f"checkpoint_every={EVERY}",
        "--set",
        "batch_size=48",
        *extra,
    ]


def _load(run: Path) -> dict:
    return torch.load(run / "checkpoint.pt", weights_only=True)


@pytest.mark.slow
def test_sigkill_then_resume_matches_uninterrupted_run(tracking_env, mlflow_client, tmp_path):
    """Bit-identical weights, and (tracked, real server) one MLflow run: the resumed process continues
    the run the killed one left RUNNING and closes it (issue 12, part 8)."""
    # 512 samples / 48 per step: epochs roll over mid-run, so the data position must resume right
    data = write_dataset(tmp_path / "data")
    full, killed = tmp_path / "full", tmp_path / "killed"
    subprocess.run(_argv(data, full), env=_env(), check=True, capture_output=True, cwd=ROOT)  # noqa: S603

    proc = subprocess.Popen(  # noqa: S603 - fixed argv, no shell
        _argv(data, killed),
        env=_env("0.05", tracked=True),
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    ckpt = killed / "checkpoint.pt"
    deadline = time.monotonic() + 120
    while not ckpt.exists():
        assert proc.poll() is None, proc.stderr.read().decode()
        assert time.monotonic() < deadline, "no checkpoint appeared"
        time.sleep(0.01)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    state = _load(killed)
    assert 0 < state["step"] < STEPS and not state["finished"]
    assert not (killed / "result.json").exists()
    run_id = json.loads((killed / "tracking" / "state.json").read_text())["run_id"]
    assert mlflow_client.get_run(run_id).info.status == "RUNNING"  # what a SIGKILL leaves behind

    resumed = subprocess.run(  # noqa: S603 - fixed argv, no shell
        _argv(data, killed, "--resume"), env=_env(tracked=True), cwd=ROOT, capture_output=True, text=True
    )
    assert resumed.returncode == 0, resumed.stderr
    assert f"resuming {killed} from step {state['step']} (MLflow run {run_id})" in resumed.stdout
    exp = mlflow_client.get_experiment_by_name(os.environ["AMPFLOW_EXPERIMENT"])
    assert [r.info.run_id for r in mlflow_client.search_runs([exp.experiment_id])] == [run_id]
    tracked = mlflow_client.get_run(run_id)
    assert tracked.info.status == "FINISHED" and tracked.data.tags["ampflow.resumed"] == "true"
    assert tracked.data.metrics["steps"] == STEPS
    a, b = _load(full), _load(killed)
    assert b["step"] == STEPS and b["finished"]
    assert (a["epoch"], a["index"]) == (b["epoch"], b["index"])
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    for pid, s in a["optimizer"]["state"].items():
        for name, t in s.items():
            assert torch.equal(t, b["optimizer"]["state"][pid][name]), (pid, name)
    result = json.loads((killed / "result.json").read_text())
    assert result["resumed_from_step"] == state["step"]
    full_result = json.loads((full / "result.json").read_text())
    assert result["loss_curve"] == full_result["loss_curve"]  # the whole run's curve, not the tail


def test_resume_of_a_finished_run_is_a_no_op(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("AMPFLOW_TRACKING", "off")
    data = write_dataset(tmp_path / "data")
    run = tmp_path / "run"
    args = ["train", "--recipe", NAME, "--data", str(data), "--out", str(run), "--set", "max_steps=5"]
    assert main(args) == 0
    before = (run / "checkpoint.pt").read_bytes()
    assert main([*args, "--resume"]) == 0
    assert "nothing to do" in capsys.readouterr().err
    assert (run / "checkpoint.pt").read_bytes() == before


def test_resume_without_checkpoint_starts_fresh(tmp_path, monkeypatch):
    """An orchestrator may always pass --resume: the first attempt has nothing to resume."""
    monkeypatch.setenv("AMPFLOW_TRACKING", "off")
    data = write_dataset(tmp_path / "data")
    run = tmp_path / "run"
    assert (
        main(
            [
                "train",
                "--recipe",
                NAME,
                "--data",
                str(data),
                "--out",
                str(run),
                "--resume",
                "--set",
                "max_steps=3",
            ]
        )
        == 0
    )
    assert json.loads((run / "result.json").read_text())["resumed_from_step"] is None


def test_resume_extends_a_finished_run(tmp_path, monkeypatch):
    """Resuming with a larger max_steps continues from the checkpoint, like an uninterrupted longer run."""
    monkeypatch.setenv("AMPFLOW_TRACKING", "off")
    data = write_dataset(tmp_path / "data")
    base = ["train", "--recipe", NAME, "--data", str(data), "--set", "checkpoint_every=0"]
    assert main([*base, "--out", str(tmp_path / "a"), "--set", "max_steps=8"]) == 0
    assert main([*base, "--out", str(tmp_path / "a"), "--resume", "--set", "max_steps=12"]) == 0
    r = json.loads((tmp_path / "a" / "result.json").read_text())
    assert r["metrics"]["steps"] == 12 and r["resumed_from_step"] == 8 and len(r["loss_curve"]) == 12


@pytest.mark.slow
def test_sigterm_stops_cleanly_and_resume_continues(tracking_env, mlflow_client, tmp_path):
    """SIGTERM (a pod eviction) ends the run as interrupted (exit 130, the MLflow run KILLED on a real
    server), leaves the last checkpoint intact and no result.json; --resume then finishes the run."""
    data = write_dataset(tmp_path / "data")
    run = tmp_path / "run"
    proc = subprocess.Popen(  # noqa: S603 - fixed argv, no shell
        _argv(data, run),
        env=_env("0.05", tracked=True),
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    deadline = time.monotonic() + 120
    while not (run / "checkpoint.pt").exists():
        assert proc.poll() is None and time.monotonic() < deadline
        time.sleep(0.01)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err.decode()
    assert "interrupted" in err.decode()
    assert not (run / "result.json").exists()
    assert 0 < _load(run)["step"] < STEPS
    run_id = json.loads((run / "tracking" / "state.json").read_text())["run_id"]
    assert mlflow_client.get_run(run_id).info.status == "KILLED"
    resumed = subprocess.run(  # noqa: S603 - fixed argv, no shell
        _argv(data, run, "--resume"), env=_env(), cwd=ROOT, capture_output=True, text=True
    )
    assert resumed.returncode == 0, resumed.stderr
    assert json.loads((run / "result.json").read_text())["metrics"]["steps"] == STEPS

"""What the MLflow run says when its training is stopped (issue 12, parts 7 and 8), against a real
``mlflow server`` on 127.0.0.1 and real ``ampflow train`` processes:

an exception -> FAILED; a process that exits without closing its run -> FAILED; the SIGTERM handler
a program had is back afterwards. SIGTERM -> KILLED and ``kill -9`` then ``--resume`` -> one MLflow
run, FINISHED, are checked on the kill-and-resume runs of ``tests/test_resume.py``.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from ampflow import tracking
from ampflow.config import RunConfig
from tests.recipes_fixture import write_dataset

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[1]


def test_an_exception_ends_the_run_failed(tracking_env, mlflow_client, tmp_path):
    data = write_dataset(tmp_path / "data", recipe=None)
    nan = subprocess.run(  # noqa: S603 - fixed argv
        [sys.executable, "-m", "ampflow", "train", "--recipe", "tests.recipes_fixture:tiny_nan"]
        + ["--data", str(data), "--out", str(tmp_path / "failed"), "--set", "max_nonfinite_steps=2"],
        env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT), "AMPFLOW_QUIET_ERRORS": "1"},
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert nan.returncode == 1, nan.stderr
    run_id = json.loads((tmp_path / "failed" / "tracking" / "state.json").read_text())["run_id"]
    assert mlflow_client.get_run(run_id).info.status == "FAILED"


def test_exit_without_close_ends_the_run_failed(tracking_env, mlflow_client, tmp_path):
    script = textwrap.dedent(f"""
        from ampflow import tracking
        from ampflow.config import RunConfig
        t = tracking.start_run("train", config=RunConfig(), run_dir={str(tmp_path / "r")!r})
        t.log_metrics({{"loss": 1.0}}, step=0)
        print(t.run_id, flush=True)
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=ROOT)  # noqa: S603
    assert proc.returncode == 0, proc.stderr
    run_id = proc.stdout.splitlines()[0].strip()  # MLflow prints its "View run" links after it
    assert mlflow_client.get_run(run_id).info.status == "FAILED"


def test_the_previous_sigterm_handler_is_back_after_the_run(tracking_env, tmp_path):
    def mine(signum, frame):  # pragma: no cover - never delivered
        pass

    before = signal.signal(signal.SIGTERM, mine)
    try:
        t = tracking.start_run("train", config=RunConfig(), run_dir=tmp_path / "r")
        with tracking.tracked(t):
            assert signal.getsignal(signal.SIGTERM) is not mine
        t.close("FINISHED")
        assert signal.getsignal(signal.SIGTERM) is mine
    finally:
        signal.signal(signal.SIGTERM, before)

"""One writer per directory (issue 12, part 4): a second bench or train into a held folder is exit 2
naming the holder's pid; a lock left by a SIGKILLed process does not block the next run.

The holder is a real second process (flock locks belong to the open file, so a lock taken in this
process would not conflict with itself)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from ampflow import locking
from ampflow.cli import main
from ampflow.config import ConfigError
from tests.recipes_fixture import NAME, write_dataset

ROOT = Path(__file__).resolve().parents[1]
HOLD = "import sys, time; from ampflow import locking\nwith locking.hold(sys.argv[1], '--out'):\n    print('held', flush=True); time.sleep(120)"


@pytest.fixture
def holder(tmp_path):
    """A process holding the lock on tmp_path/'held'; yields (directory, process)."""
    folder = tmp_path / "held"
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(folder)], stdout=subprocess.PIPE, text=True, cwd=ROOT
    )
    assert proc.stdout.readline().strip() == "held"
    yield folder, proc
    proc.kill()
    proc.wait()


def test_second_writer_is_refused_naming_the_holder(holder):
    folder, proc = holder
    with pytest.raises(
        ConfigError, match=rf"--out {folder} is in use by another ampflow process \(pid {proc.pid}\)"
    ):
        with locking.hold(folder, "--out"):
            pass


def test_a_killed_holder_does_not_block(holder):
    folder, proc = holder
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    with locking.hold(folder, "--out") as path:
        assert path.read_text().strip() == str(os.getpid())
    # released at the end of the block: taking it again works
    with locking.hold(folder, "--out"):
        pass


def test_train_and_bench_into_a_held_folder_exit_2(holder, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("AMPFLOW_TRACKING", "off")
    folder, proc = holder
    data = write_dataset(tmp_path / "data")
    assert (
        main(["train", "--recipe", NAME, "--data", str(data), "--out", str(folder), "--set", "max_steps=2"])
        == 2
    )
    assert f"(pid {proc.pid})" in capsys.readouterr().err
    assert not (folder / "checkpoint.pt").exists()
    assert main(["bench", "--recipe", NAME, "--precisions", "32-true", "--out", str(folder)]) == 2
    assert f"(pid {proc.pid})" in capsys.readouterr().err
    assert not (folder / "data").exists()

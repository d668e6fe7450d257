"""Resume across strategies (issue 12, part 5) and checkpoint formats (issue 14): single, DDP, FSDP2.

FSDP2 writes DCP shards (``checkpoint_format=auto``) on its first link and one gathered file on its
second (``checkpoint_format=full``), so each format is read by another layout than the one that wrote it.

A chain of resumes visits every ordered pair once (single->fsdp->single->ddp->fsdp->ddp->single) with
real ``torchrun`` (2 gloo processes) and ends where an uninterrupted single-process run ends, within
the float-summation tolerance the two-process parity test uses. The recipe has no dropout, so the
only difference left between layouts is the order of float summation.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from ampflow.cli import main
from ampflow.commands import torchrun_program
from tests.checkpoints import shard_files
from tests.recipes_fixture import write_dataset

ROOT = Path(__file__).resolve().parents[1]
RECIPE = "tests.recipes_fixture:tiny_nodrop"


def _train(strategy: str, data: Path, out: Path, steps: int, *extra: str) -> dict:
    launcher = [sys.executable, "-m", "ampflow"]
    if strategy != "single":
        launcher = list(torchrun_program(2))
    argv = [*launcher, "train", "--strategy", strategy, "--recipe", RECIPE, "--data", str(data)]
    argv += ["--out", str(out), "--set", f"max_steps={steps}", "--set", "batch_size=32", *extra]
    # a constant learning rate: a schedule spans max_steps, which each link of the chain extends
    argv += ["--set", "lr_schedule=constant", "--set", "lr_warmup_steps=0"]
    if strategy == "single":  # in this process: saves an interpreter start per link
        assert main(argv[3:]) == 0, strategy
    else:
        env = {**os.environ, "AMPFLOW_TRACKING": "off", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
        proc = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=300)  # noqa: S603
        assert proc.returncode == 0, f"{strategy}: {proc.stderr[-3000:]}"
    return json.loads((out / "result.json").read_text())


@pytest.mark.slow
def test_every_strategy_pair_resumes_and_ends_like_an_uninterrupted_run(tmp_path, monkeypatch):
    monkeypatch.setenv("AMPFLOW_TRACKING", "off")
    data = write_dataset(tmp_path / "data", recipe=None)
    run = tmp_path / "chain"
    chain = ["single", "fsdp", "single", "ddp", "fsdp", "ddp", "single"]
    for i, strategy in enumerate(chain):
        steps = 2 * (i + 1)
        # the first fsdp link writes DCP shards (checkpoint_format=auto), the second one gathered file
        fmt = ["--set", "checkpoint_format=full"] if i == 4 else []
        result = _train(strategy, data, run, steps, *(["--resume"] if i else []), *fmt)
        assert result["strategy"] == strategy
        assert shard_files(run) == (["__0_0.distcp", "__1_0.distcp"] if i == 1 else []), i
        assert result["metrics"]["steps"] == steps
        assert result["resumed_from_step"] == (steps - 2 if i else None)
    straight = _train("single", data, tmp_path / "straight", 2 * len(chain))
    a = torch.load(run / "checkpoint.pt", weights_only=True)
    b = torch.load(tmp_path / "straight" / "checkpoint.pt", weights_only=True)
    assert set(a["model"]) == set(b["model"])
    for k in a["model"]:
        torch.testing.assert_close(a["model"][k], b["model"][k], atol=1e-5, rtol=1e-4)
    assert a["optimizer"]["state"].keys() == b["optimizer"]["state"].keys()
    assert len(result["loss_curve"]) == len(straight["loss_curve"])

"""The figures a run reports, pinned by their identities (issue 13, "Figures pinned by tests").

- samples/s = the timed window's samples / its wall clock, checkpoint time excluded: driven through
  :class:`ThroughputWindow` exactly as the trainer drives it, under a clock the test sets;
- the timed-step count for a given warm-up, in the window and in a real run;
- tokens/s counts the real (unpadded) tokens of exactly the timed samples: a real run of the tiny
  transformer recipe, whose sequences have known lengths, against the tokens of the samples the
  seeded order puts in the timed steps;
- the learning rate at known steps of every schedule the engine offers.

No wall-clock time is asserted: the real run is checked through identities that hold at any speed.
"""

from __future__ import annotations

import json
import math
import types
from pathlib import Path

import numpy as np
import pytest
import torch

from ampflow.cli import main
from ampflow.config import LR_SCHEDULES, RunConfig
from ampflow.data.batching import epoch_permutation
from ampflow.engine import throughput
from ampflow.engine.optim import build_optimizer, lr_lambda
from ampflow.engine.throughput import ThroughputWindow
from tests import recipes_transformer

STEP_S, BOOKKEEPING_S, DATA_S, CHECKPOINT_S = 0.5, 0.05, 0.1, 3.0


class FakeClock:
    """``time.perf_counter`` and ``time.process_time`` that move only when the test says so."""

    def __init__(self) -> None:
        self.now = 100.0

    def perf_counter(self) -> float:
        return self.now

    def process_time(self) -> float:
        return self.now / 2  # one busy thread of two: any fixed ratio shows the CPU clock is read


def drive(window: ThroughputWindow, clock: FakeClock, steps: int, grad_accum: int, checkpoint_at: int):
    """The trainer's calls for ``steps`` steps of ``grad_accum`` micro-batches each, one checkpoint
    written after step ``checkpoint_at`` (0-based); returns the (epoch, start) of every micro-batch."""
    starts_all = []
    for step in range(steps):
        timed = window.timed(step)
        starts = [(0, (step * grad_accum + k) * 8) for k in range(grad_accum)]
        starts_all.append(starts)
        window.clock_start()
        clock.now += STEP_S
        dt = window.clock_stop()
        window.record(step, timed, dt, DATA_S, starts)
        clock.now += BOOKKEEPING_S  # logging, progress: inside the window
        checkpoint = CHECKPOINT_S if step == checkpoint_at else 0.0
        clock.now += checkpoint
        window.close_step(timed, checkpoint_s=checkpoint)
    return starts_all


@pytest.fixture
def clock(monkeypatch) -> FakeClock:
    fake = FakeClock()
    monkeypatch.setattr(
        throughput,
        "time",
        types.SimpleNamespace(perf_counter=fake.perf_counter, process_time=fake.process_time),
    )
    return fake


def figures(window: ThroughputWindow, batch_size: int, tokens: int = 0) -> dict:
    return window.figures(
        batch_size=batch_size,
        world=1,
        tokens=tokens,
        flops_per_sample=None,
        peak_flops=None,
        memory=None,
        device=torch.device("cpu"),
    )


@pytest.mark.parametrize("grad_accum", [1, 2])
def test_samples_per_s_is_timed_samples_over_the_window_without_checkpoint_time(clock, grad_accum):
    window = ThroughputWindow(torch.device("cpu"), skip=2, compiled=False)
    drive(window, clock, steps=6, grad_accum=grad_accum, checkpoint_at=3)
    m = figures(window, batch_size=8, tokens=1000)
    timed_steps = 6 - 2
    wall = timed_steps * (STEP_S + BOOKKEEPING_S)  # the checkpoint's 3 s are not in it
    samples = timed_steps * grad_accum * 8
    assert m["timed_steps"] == timed_steps
    assert m["timed_wall_s"] == pytest.approx(wall, rel=1e-12)
    assert m["samples_per_s"] == pytest.approx(samples / wall, rel=1e-12)
    assert m["samples_per_s_per_device"] == pytest.approx(samples / wall, rel=1e-12)
    assert m["tokens_per_s"] == pytest.approx(1000 / wall, rel=1e-12)
    assert m["data_wait_frac"] == pytest.approx(timed_steps * DATA_S / wall, rel=1e-12)
    assert m["step_time_p50_s"] == pytest.approx(STEP_S) and m["step_time_max_s"] == pytest.approx(STEP_S)
    assert m["timed_cpu_s"] == pytest.approx((wall + CHECKPOINT_S) / 2, rel=1e-12)
    # exactly the timed steps' micro-batches are the window's samples, in order
    assert window.batches == [(0, (s * grad_accum + k) * 8) for s in range(2, 6) for k in range(grad_accum)]


@pytest.mark.parametrize("skip, compiled, steps", [(0, False, 5), (3, False, 7), (3, True, 7), (7, False, 7)])
def test_timed_step_count_for_a_given_warmup(clock, monkeypatch, skip, compiled, steps):
    monkeypatch.setattr(throughput, "dynamo_graph_count", lambda: 0)  # no compile here: skip importing dynamo
    # the trainer's skip: warmup_steps, plus the compiling first step under --compile
    window = ThroughputWindow(torch.device("cpu"), skip=skip + (1 if compiled else 0), compiled=compiled)
    drive(window, clock, steps=steps, grad_accum=1, checkpoint_at=-1)
    m = figures(window, batch_size=4)
    expected = max(0, steps - skip - (1 if compiled else 0))
    assert m["timed_steps"] == len(window.step_times) == expected
    if expected == 0:  # nothing timed: no figure rather than a division by zero
        assert m["samples_per_s"] is None and m["timed_wall_s"] == 0.0 and m["tokens_per_s"] is None
    if compiled:
        assert m["compile_s"] == pytest.approx(STEP_S)


# -- a real run: the identities hold on what `ampflow train` writes ----------------------------------

MAX_STEPS, WARMUP, BATCH, SEED = 6, 2, 8, 3


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory) -> tuple[dict, Path]:
    root = tmp_path_factory.mktemp("identities")
    data = recipes_transformer.write_dataset(root / "data")
    mp = pytest.MonkeyPatch()
    mp.setenv("AMPFLOW_TRACKING", "off")
    try:
        argv = [
            "train",
            "--recipe",
            recipes_transformer.NAME,
            "--data",
            str(data),
            "--out",
            str(root / "run"),
        ]
        for kv in (f"max_steps={MAX_STEPS}", f"warmup_steps={WARMUP}", f"batch_size={BATCH}", f"seed={SEED}",
                   "pad_to=max"):  # fmt: skip
            argv += ["--set", kv]
        assert main(argv) == 0
    finally:
        mp.undo()
    return json.loads((root / "run" / "result.json").read_text()), data


def test_real_run_times_the_steps_after_warmup_and_samples_per_s_is_their_samples_over_the_window(tiny_run):
    result, _ = tiny_run
    m = result["metrics"]
    assert m["steps"] == MAX_STEPS and m["timed_steps"] == MAX_STEPS - WARMUP
    assert m["samples_per_s"] * m["timed_wall_s"] == pytest.approx((MAX_STEPS - WARMUP) * BATCH, rel=1e-9)


def test_real_run_tokens_per_s_counts_the_real_tokens_of_exactly_the_timed_samples(tiny_run):
    result, data = tiny_run
    m = result["metrics"]
    mask = np.load(data / "train" / "attention_mask.npy")
    n = len(mask)
    assert MAX_STEPS * BATCH <= n  # one epoch: the order is the epoch-0 permutation
    timed = epoch_permutation(SEED, 0, n)[WARMUP * BATCH : MAX_STEPS * BATCH]
    real_tokens = int(mask[timed].sum())
    # the fixture pads: counting padded positions, or a sample outside the window, changes the figure
    assert real_tokens < len(timed) * mask.shape[1]
    assert real_tokens != int(
        mask[epoch_permutation(SEED, 0, n)[(WARMUP - 1) * BATCH : (MAX_STEPS - 1) * BATCH]].sum()
    )
    assert m["tokens_per_s"] * m["timed_wall_s"] == pytest.approx(real_tokens, rel=1e-9)


# -- the learning rate at known steps ---------------------------------------------------------------

# (total steps 110, warm-up 10): multiplier of the peak LR at 0-based steps 0, 4, 9, 10, 35, 60, 85, 110
STEPS = [0, 4, 9, 10, 35, 60, 85, 110]
EXPECTED = {
    "linear": [0.1, 0.5, 1.0, 1.0, 0.75, 0.5, 0.25, 0.0],
    "cosine": [
        0.1,
        0.5,
        1.0,
        1.0,
        0.5 * (1 + math.cos(math.pi / 4)),
        0.5,
        0.5 * (1 - math.cos(math.pi / 4)),
        0.0,
    ],
    "constant": [0.1, 0.5, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0],
}


def test_every_schedule_the_engine_offers_is_pinned():
    assert set(EXPECTED) == set(LR_SCHEDULES)


@pytest.mark.parametrize("schedule", LR_SCHEDULES)
def test_lr_multiplier_at_known_steps(schedule):
    f = lr_lambda(110, schedule, 10)
    assert [f(s) for s in STEPS] == pytest.approx(EXPECTED[schedule], abs=1e-12)


@pytest.mark.parametrize("schedule", LR_SCHEDULES)
def test_optimizer_lr_after_k_steps_follows_the_schedule(schedule):
    config = RunConfig(recipe="tiny", lr_schedule=schedule, lr_warmup_steps=10).resolve(
        {"batch_size": 8, "learning_rate": 0.02}
    )
    model = torch.nn.Linear(3, 2)
    optimizer, scheduler, plan = build_optimizer(model, config, total_steps=110)
    assert plan["kind"] == schedule and plan["warmup_steps"] == 10 and plan["peak_lr"] == pytest.approx(0.02)
    seen = {}
    for step in range(111):
        seen[step] = optimizer.param_groups[0]["lr"]  # the LR optimizer step `step` uses
        optimizer.step()
        scheduler.step()
    assert [seen[s] for s in STEPS] == pytest.approx([0.02 * e for e in EXPECTED[schedule]], abs=1e-12)

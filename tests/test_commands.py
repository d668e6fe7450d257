"""The one argv builder: every launcher's command must parse back into the CLI it targets."""

from __future__ import annotations

import pytest

from ampflow.cli import build_parser
from ampflow.commands import STEP_OPTIONS, step_argv


def test_train_argv_round_trips_through_the_cli_parser():
    argv = step_argv(
        "train",
        recipe="tweets-bow",
        data="/data",
        out="/runs/a",
        precision="bf16-mixed",
        compile=True,
        resume=False,
        overrides={"max_steps": 20, "batch_size": "auto"},
    )
    assert argv[:2] == ["ampflow", "train"]
    assert "--resume" not in argv
    args = build_parser().parse_args(argv[1:])
    assert args.recipe == "tweets-bow"
    assert str(args.data) == "/data"
    assert args.precision == "bf16-mixed"
    assert args.compile is True
    assert "max_steps=20" in args.overrides and "batch_size=auto" in args.overrides


def test_program_prefix_is_kept_for_torchrun():
    argv = step_argv(
        "train",
        program=("torchrun", "--nproc-per-node=2", "-m", "ampflow"),
        recipe="r",
        data="d",
        out="o",
        strategy="ddp",
    )
    assert argv[:5] == ["torchrun", "--nproc-per-node=2", "-m", "ampflow", "train"]


def test_unknown_option_and_unknown_override_fail_at_definition_time():
    with pytest.raises(ValueError, match="no option"):
        step_argv("train", recipe="r", data="d", out="o", epochz=3)
    with pytest.raises(ValueError, match="unknown configuration key"):
        step_argv("train", recipe="r", data="d", out="o", overrides={"max_stepz": 3})
    with pytest.raises(ValueError, match="unknown step"):
        step_argv("fit", recipe="r")


def test_every_step_option_is_accepted_by_the_cli():
    """Each flag the builder can emit exists on the step's parser (steps present in this checkout)."""
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "step")
    for step, (flags, switches) in STEP_OPTIONS.items():
        if step not in sub.choices:
            continue
        known = {opt for action in sub.choices[step]._actions for opt in action.option_strings}
        for name in (*flags, *switches):
            argv = step_argv(step, **{name: True if name in switches else "x"})
            emitted = [a for a in argv[2:] if a.startswith("--")]
            assert set(emitted) <= known, f"{step}: {emitted} not in {sorted(known)}"

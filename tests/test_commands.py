"""The one argv builder: every launcher's command must parse back into the CLI it targets."""

from __future__ import annotations

import pytest

from ampflow.cli import build_parser
from ampflow.commands import STEP_OPTIONS, plan_step, step_argv, torchrun_program


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


def test_torchrun_program_runs_this_python_on_a_free_port_and_refuses_bad_counts():
    import sys

    from torch.distributed.run import get_args_parser

    program = torchrun_program(3, 29611)
    assert program == (sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=3",
                       "--master_port=29611", "-m", "ampflow")  # fmt: skip
    assert torchrun_program(2, 1, python="python3")[0] == "python3"
    # torchrun's own parser reads the prefix: N processes, this port, ampflow as a module
    argv = plan_step("train", {**_TRAIN, "strategy": "ddp"}).argv(program)
    args = get_args_parser().parse_args(argv[3:])
    assert (args.nproc_per_node, args.master_port, args.module) == ("3", 29611, True)
    assert args.training_script == "ampflow" and args.training_script_args[:1] == ["train"]
    # no port given: a free one each call, a number torchrun can bind
    port = int(torchrun_program(2)[4].split("=")[1])
    assert 0 < port < 65536
    for bad in (0, -1, True, "2", 1.5):
        with pytest.raises(ValueError, match="nproc_per_node must be a positive int"):
            torchrun_program(bad)  # type: ignore[arg-type]
    for bad in (0, 65536, "29500"):
        with pytest.raises(ValueError, match="master_port must be a port number"):
            torchrun_program(2, bad)  # type: ignore[arg-type]


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


# -- plan_step: what a task runs, decided once for every skin ---------------------------------------

_TRAIN = {"recipe": "tweets-bow", "data": "/d", "out": "/r", "precision": "bf16-mixed", "strategy": "single"}


def test_plan_train_first_try_runs_train_without_resume():
    plan = plan_step("train", {**_TRAIN, "parent_run_id": "p1", "_id": "x"}, overrides={"max_steps": 5})
    assert plan.step == "train"
    assert plan.argv() == [
        *("ampflow", "train", "--recipe", "tweets-bow", "--data", "/d", "--out", "/r"),
        *("--precision", "bf16-mixed", "--strategy", "single", "--parent-run-id", "p1"),
        *("--set", "max_steps=5"),
    ]


def test_plan_train_retry_resumes():
    assert plan_step("train", _TRAIN, retry=True).argv()[-1] == "--resume"


def test_plan_distributed_train_becomes_launch_without_resume_or_parent():
    plan = plan_step(
        "train",
        {**_TRAIN, "parent_run_id": "p1", "require_tracking": True},
        overrides={"max_steps": 5},
        distributed=True,
        retry=True,
        launch={"name": "job-a", "nodes": 2, "gpus_per_node": 4, "image": None},
    )
    assert plan.step == "launch"
    assert plan.options == {
        "recipe": "tweets-bow",
        "data": "/d",
        "out": "/r",
        "precision": "bf16-mixed",
        "name": "job-a",
        "nodes": 2,
        "gpus_per_node": 4,
    }
    argv = plan.argv()
    assert "--resume" not in argv and "--strategy" not in argv and "--parent-run-id" not in argv
    assert argv[-2:] == ["--set", "max_steps=5"]


def test_plan_evaluate_keeps_only_the_overrides_evaluate_may_take():
    plan = plan_step(
        "evaluate",
        {"recipe": "r", "data": "/d", "checkpoint": "/r", "out": "/r/eval"},
        overrides={"max_steps": 5, "eval_batch_size": 512, "device": "cpu"},
    )
    assert plan.overrides == {"eval_batch_size": 512, "device": "cpu"}


def test_plan_steps_without_set_drop_overrides_and_bad_keys_fail_early():
    assert plan_step("compare", {"runs": "a,b"}, overrides={"max_steps": 5}).argv() == [
        *("ampflow", "compare", "--runs", "a,b")
    ]
    with pytest.raises(ValueError, match="max_stepz"):
        plan_step("train", _TRAIN, overrides={"max_stepz": 5})
    with pytest.raises(ValueError, match="unknown step"):
        plan_step("deploy", {})

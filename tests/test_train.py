"""``ampflow train`` through the real CLI entry (ampflow.cli.main) on the tiny fixture recipe.

Covers: a short run whose loss falls, the result schema, determinism with a seed, the data order and
global-batch semantics, batch_size=auto, gradient accumulation, non-finite abort, every bad input (exit 2,
nothing already written damaged), tracker status on failure and SIGTERM, and one tiny compiled run.
"""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from ampflow.cli import main
from ampflow.commands import torchrun_program
from ampflow.data.batching import DataOrder, Position, epoch_permutation
from ampflow.engine import autobatch
from ampflow.engine.devices import cpu_has_native_bf16
from tests.checkpoints import read_checkpoint
from tests.recipes_fixture import NAME, write_dataset

torch.set_num_threads(1)

RESULT_KEYS = {
    "schema",
    "status",
    "recipe",
    "config",
    "precision",
    "compile",
    "strategy",
    "world_size",
    "device",
    "device_name",
    "bf16_emulated",
    "fp32_matmul_precision",
    "torch_version",
    "ampflow_version",
    "dataset_hash",
    "metrics",
    "loss_curve",
    "memory_kind",
    "checkpoint",
}
METRIC_KEYS = {
    "samples_per_s",
    "samples_per_s_per_device",
    "tokens_per_s",
    "step_time_p50_s",
    "step_time_p90_s",
    "step_time_p99_s",
    "step_time_min_s",
    "step_time_max_s",
    "data_wait_frac",
    "peak_memory_bytes",
    "peak_memory_reserved_bytes",
    "compile_s",
    "recompiles",
    "flops_per_sample",
    "mfu",
    "mfu_peak_flops",
    "final_train_loss",
    "loss_scale",
    "skipped_steps",
    "steps",
    "timed_steps",
    "batch_size",
    "train_wall_s",
    "timed_wall_s",
    "timed_cpu_s",
    "checkpoint_s",
    # time to target, energy and cost (issue 13; null here: no val_every, no counter, no price)
    "validation_s",
    "steps_to_target",
    "time_to_target_s",
    "final_val_accuracy",
    "energy_j",
    "joules_per_sample",
    "cost_per_run",
    "cost_per_1k_samples",
    "cost_to_target",
    # the learning-rate rule's resolved values (issue 14; factor 1.0 under the default rule "none")
    "global_batch_size",
    "lr_peak",
    "lr_scale_factor",
    # per-rank step times and the straggler verdict (issue 16; one rank here, so no straggler)
    "per_rank_step_time_p50_s",
    "straggler_rank",
    # exposed communication (issue 14; null in one process, result.json's comm.reason says why)
    "comm_time_share",
    "comm_time_share_max",
    "comm_collective_share",
}


@pytest.fixture(autouse=True)
def _no_tracking(monkeypatch):
    monkeypatch.setenv("AMPFLOW_TRACKING", "off")


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return write_dataset(tmp_path_factory.mktemp("tiny") / "data")


def train(data: Path, out: Path, *extra: str, recipe: str = NAME) -> int:
    return main(["train", "--recipe", recipe, "--data", str(data), "--out", str(out), *extra])


def weights(run: Path) -> dict[str, torch.Tensor]:
    """The whole model of ``run``'s checkpoint, one file or DCP shards (fsdp writes shards)."""
    return read_checkpoint(run / "checkpoint.pt")["model"]


def result(run: Path) -> dict:
    return json.loads((run / "result.json").read_text())


def test_short_run_loss_falls_and_result_schema(data, tmp_path):
    run = tmp_path / "run"
    assert train(data, run, "--set", "max_steps=40", "--set", "warmup_steps=3") == 0
    r = result(run)
    assert RESULT_KEYS <= set(r)
    assert set(r["metrics"]) == METRIC_KEYS
    assert r["schema"] == "ampflow.train.result/1"
    assert r["precision"] == "32-true" and r["fp32_matmul_precision"] == "highest"
    assert r["memory_kind"] == "cpu_peak_rss" and r["metrics"]["peak_memory_bytes"] > 0
    assert r["config"]["batch_size"] == 32 and r["config"]["learning_rate"] == 0.01  # recipe defaults
    m = r["metrics"]
    assert m["steps"] == 40 and m["timed_steps"] == 37 and m["batch_size"] == 32
    # lr_scaling defaults to none: one process at the recipe's batch keeps the recipe's rate
    assert m["global_batch_size"] == 32 and m["lr_scale_factor"] == 1.0 and m["lr_peak"] == 0.01
    assert m["straggler_rank"] is None and m["per_rank_step_time_p50_s"] is None  # one rank: no gather
    # no data-sheet peak on a CPU: MFU is against this CPU's probed matmul peak, and says so
    assert r["mfu_peak_source"] == "probe" and m["mfu_peak_flops"] == r["peak_flops_per_device"] > 0
    assert m["mfu"] == pytest.approx(m["flops_per_sample"] * m["samples_per_s"] / m["mfu_peak_flops"])
    # forward 2 FLOPs per MAC; backward 4 per MAC, except the first layer: no gradient for the input
    assert m["flops_per_sample"] == pytest.approx(2 * (16 * 32 + 32 * 3) + 2 * 16 * 32 + 4 * 32 * 3, rel=0.01)
    assert 0 <= m["data_wait_frac"] < 1
    assert m["step_time_min_s"] <= m["step_time_p50_s"] <= m["step_time_p90_s"] <= m["step_time_max_s"]
    assert m["samples_per_s"] == pytest.approx(m["samples_per_s_per_device"])
    curve = [loss for _, loss in r["loss_curve"]]
    assert [s for s, _ in r["loss_curve"]] == list(range(1, 41))
    assert np.mean(curve[-5:]) < 0.8 * np.mean(curve[:5])
    assert m["final_train_loss"] == curve[-1]
    assert r["checkpoint"] == str(run / "checkpoint.pt")


def test_same_seed_same_weights_other_seed_differs(data, tmp_path):
    args = ("--set", "max_steps=12")
    assert train(data, tmp_path / "a", *args) == 0
    assert train(data, tmp_path / "b", *args) == 0
    assert train(data, tmp_path / "c", *args, "--set", "seed=1") == 0
    a, b, c = weights(tmp_path / "a"), weights(tmp_path / "b"), weights(tmp_path / "c")
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)


def test_bf16_mixed_on_cpu_marks_emulation_honestly(data, tmp_path):
    assert train(data, tmp_path / "bf", "--precision", "bf16-mixed", "--set", "max_steps=6") == 0
    r = result(tmp_path / "bf")
    assert r["precision"] == "bf16-mixed"
    assert r["bf16_emulated"] is (not cpu_has_native_bf16())
    assert r["metrics"]["loss_scale"] is None and r["metrics"]["skipped_steps"] == 0


def test_bf16_true_keeps_weights_in_bf16(data, tmp_path):
    assert train(data, tmp_path / "bt", "--precision", "bf16-true", "--set", "max_steps=4") == 0
    assert all(v.dtype == torch.bfloat16 for v in weights(tmp_path / "bt").values())


def test_data_order_is_seeded_and_global_batches_split_across_ranks():
    assert np.array_equal(epoch_permutation(0, 3, 100), epoch_permutation(0, 3, 100))
    assert not np.array_equal(epoch_permutation(0, 0, 100), epoch_permutation(0, 1, 100))
    cpu = torch.device("cpu")
    single = DataOrder(100, 8, 0, 0, 1, cpu, Position())
    ranks = [DataOrder(100, 8, 0, r, 2, cpu, Position()) for r in range(2)]
    for _ in range(30):  # crosses epoch boundaries (drop-last at 96)
        e, s = single.next_global()
        for r in ranks:
            assert r.next_global() == (e, s)
        joined = torch.cat([r.local_indices(e, s) for r in ranks])
        assert torch.equal(joined, single.local_indices(e, s))
        assert np.array_equal(joined.numpy(), single.global_indices(e, s))
    assert single.pos.epoch == 2


def test_grad_accum_counts_optimizer_steps(data, tmp_path):
    run = tmp_path / "acc"
    assert train(data, run, "--set", "max_steps=5", "--set", "grad_accum=3", "--set", "batch_size=16") == 0
    r = result(run)
    assert r["metrics"]["steps"] == 5 and len(r["loss_curve"]) == 5
    # 5 steps x 3 micro-batches x 16 samples = 240 of 512 samples: still the first epoch
    assert r["epochs_seen"] == 1


def test_batch_size_auto_reports_search(data, tmp_path):
    run = tmp_path / "auto"
    assert (
        train(data, run, "--set", "batch_size=auto", "--set", "max_steps=3", "--set", "auto_batch_max=64")
        == 0
    )
    r = result(run)
    search = r["batch_size_search"]
    assert search["trials"][0]["batch_size"] == 8
    sizes = [t["batch_size"] for t in search["trials"]]
    assert sizes == sorted(sizes) and max(sizes) <= 64
    assert r["config"]["batch_size"] == search["chosen"] == r["metrics"]["batch_size"]
    assert search["stop_reason"] in {"cap", "throughput_plateau", "memory_budget"}


def test_autobatch_search_stops_at_oom_budget_and_plateau():
    def oom_above(limit):
        def trial(bs):
            if bs > limit:
                raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate")
            return bs * 10.0, bs * 100

        return trial

    chosen, trials, reason = autobatch.search(
        oom_above(64), start=8, cap=4096, memory_budget=None, plateau=0.0
    )
    assert (chosen, reason) == (64, "out_of_memory") and trials[-1].outcome == "oom"
    chosen, _, reason = autobatch.search(oom_above(10**6), start=8, cap=4096, memory_budget=3200, plateau=0.0)
    assert (chosen, reason) == (32, "memory_budget")
    flat = lambda bs: (min(bs, 32) * 10.0, 0)  # noqa: E731 - throughput stops growing at 32
    chosen, trials, reason = autobatch.search(flat, start=8, cap=4096, memory_budget=None, plateau=0.05)
    assert (chosen, reason) == (32, "throughput_plateau") and trials[-1].batch_size == 64
    chosen, _, reason = autobatch.search(
        oom_above(10**6), start=8, cap=100, multiple=2, memory_budget=None, plateau=0.0
    )
    assert (chosen, reason) == (100, "cap")
    with pytest.raises(ValueError):
        autobatch.search(
            lambda bs: (_ for _ in ()).throw(ValueError("bug")),
            start=8,
            cap=64,
            memory_budget=None,
            plateau=0.0,
        )


def test_consecutive_nonfinite_losses_abort(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("AMPFLOW_QUIET_ERRORS", "1")
    data = write_dataset(tmp_path / "data", recipe=None)
    rc = train(
        data,
        tmp_path / "nan",
        "--set",
        "max_steps=20",
        "--set",
        "max_nonfinite_steps=3",
        recipe="tests.recipes_fixture:tiny_nan",
    )
    assert rc == 1
    err = capsys.readouterr().err
    assert "3 consecutive non-finite losses at step 3" in err
    assert not (tmp_path / "nan" / "result.json").exists()


def test_plain_log_lines_when_not_a_tty(data, tmp_path, capsys):
    extra = ("--set", "log_every=2", "--set", "warmup_steps=2")
    assert train(data, tmp_path / "log", "--set", "max_steps=6", *extra) == 0
    lines = capsys.readouterr().out.splitlines()
    progress = [x.split(" loss")[0] for x in lines if x.startswith("step ")]
    assert progress == ["step 2/6", "step 4/6", "step 6/6"]
    # a progress line's rate is its own step's, marked while the summary's window leaves it out
    assert lines[0].endswith(" samples/s this step (warm-up, untimed)")
    assert lines[1].endswith(" samples/s this step") and lines[2].endswith(" samples/s this step")
    assert " samples/s (timed window, steps 3..6, warm-up 2 excluded), step p50 " in lines[3]


# -- bad input: exit 2, one line, nothing damaged ---------------------------------------------------


@pytest.mark.parametrize(
    "extra, needle",
    [
        (("--precision", "fp12"), "precision must be one of"),
        (("--set", "batch_size=0"), "batch_size must be a positive integer"),
        (("--set", "no_such_key=1"), "unknown --set key 'no_such_key'"),
        (("--precision", "16-mixed", "--set", "device=cpu"), "precision 16-mixed"),
        (("--set", "batch_size=100000"), "exceeds the 512 training examples"),
        (("--strategy", "ddp"), "strategy ddp needs a launcher: torchrun"),
        (("--strategy", "mesh"), "strategy must be one of single, ddp, fsdp"),
    ],
)
def test_bad_config_exits_2_with_one_line(data, tmp_path, capsys, extra, needle):
    assert train(data, tmp_path / "bad", *extra) == 2
    err = capsys.readouterr().err.strip()
    assert needle in err and "\n" not in err and "Traceback" not in err
    assert not (tmp_path / "bad" / "checkpoint.pt").exists()


@pytest.mark.parametrize(
    "extra",
    [
        ("--strategy", "ddp"),
        ("--strategy", "fsdp+tp", "--set", "mesh=dp:3,tp:2"),  # said "tp:2 does not divide the world size 1"
        ("--strategy", "pp"),
    ],
)
def test_a_distributed_strategy_outside_torchrun_names_the_launcher_and_writes_nothing(
    data, tmp_path, capsys, extra
):
    """Found by a new-user trial: outside torchrun the world size is 1, so the mesh arithmetic blamed
    the mesh, and the ddp refusal came after --out was created."""
    assert train(data, tmp_path / "bad", *extra) == 2
    err = capsys.readouterr().err.strip()
    assert f"strategy {extra[1]} needs a launcher: torchrun" in err and "\n" not in err
    assert not (tmp_path / "bad").exists()


def test_unknown_recipe_and_not_a_dataset(data, tmp_path, capsys):
    assert train(data, tmp_path / "r", recipe="no-such-recipe") == 2
    assert "unknown recipe 'no-such-recipe'" in capsys.readouterr().err
    assert train(tmp_path, tmp_path / "r") == 2
    assert "not a prepared dataset" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


def test_fresh_train_refuses_to_overwrite_a_checkpoint(data, tmp_path, capsys):
    run = tmp_path / "run"
    assert train(data, run, "--set", "max_steps=3") == 0
    before = (run / "checkpoint.pt").read_bytes(), (run / "result.json").read_bytes()
    assert train(data, run, "--set", "max_steps=3") == 2
    assert "--resume" in capsys.readouterr().err
    assert before == ((run / "checkpoint.pt").read_bytes(), (run / "result.json").read_bytes())


def test_unreadable_checkpoint_on_resume_exits_2(data, tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    (run / "checkpoint.pt").write_bytes(b"not a checkpoint")
    assert train(data, run, "--resume") == 2
    assert "unreadable checkpoint" in capsys.readouterr().err
    assert (run / "checkpoint.pt").read_bytes() == b"not a checkpoint"


def test_resume_with_other_recipe_or_dataset_exits_2(tmp_path, capsys):
    # a dataset without a recorded recipe, so that the resume check (not the dataset check) speaks
    data = write_dataset(tmp_path / "data", recipe=None)
    run = tmp_path / "run"
    assert train(data, run, "--set", "max_steps=3") == 0
    before = (run / "checkpoint.pt").read_bytes()
    assert train(data, run, "--resume", recipe="tests.recipes_fixture:tiny_nan") == 2
    assert "was trained with recipe" in capsys.readouterr().err
    other = write_dataset(tmp_path / "other", seed=5, recipe=None)
    assert train(other, run, "--resume") == 2
    assert "hash differs" in capsys.readouterr().err
    assert (run / "checkpoint.pt").read_bytes() == before


# -- tracker status ---------------------------------------------------------------------------------


class RecordingTracker:
    """Records close() statuses; the wrapper under test is the real one."""

    def __init__(self) -> None:
        self.statuses: list[str] = []

    def close(self, status: str = "FINISHED") -> None:
        self.statuses.append(status)


def test_tracker_closed_failed_killed_finished():
    from ampflow.tracking import Terminated, tracked

    t = RecordingTracker()
    with pytest.raises(RuntimeError), tracked(t):
        raise RuntimeError("boom")
    with pytest.raises(Terminated), tracked(t):
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(5)  # the handler interrupts this at once
    with pytest.raises(KeyboardInterrupt), tracked(t):
        raise KeyboardInterrupt
    with tracked(t):
        pass
    assert t.statuses == ["FAILED", "KILLED", "KILLED", "FINISHED"]
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL or callable(signal.getsignal(signal.SIGTERM))


@pytest.mark.slow
def test_compiled_run_reports_compile_time_apart(data, tmp_path, capsys):
    """One tiny compiled run (the first inductor compile takes tens of seconds on 2 cores)."""
    run = tmp_path / "compiled"
    assert train(data, run, "--compile", "--set", "max_steps=4", "--set", "warmup_steps=0") == 0
    # a line before the silent compile, so a log does not look hung
    assert "step 1: compiling the model" in capsys.readouterr().out
    m = result(run)["metrics"]
    assert result(run)["compile"] is True
    assert m["compile_s"] > 0 and m["recompiles"] == 0
    assert m["timed_steps"] == 3  # the compiling step is outside the timed window
    assert m["compile_s"] > m["step_time_max_s"]


# -- distributed: real torchrun, 2 processes, gloo ----------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("strategy, extra", [("ddp", ["--set", "grad_accum=2"]), ("fsdp", [])])
def test_two_process_gloo_matches_one_process(tmp_path, strategy, extra):
    """Global batch semantics: 2 ranks x 16 samples of the same global order == 1 process x 32 samples.

    A recipe without dropout, so the only difference left is the order of float summation.
    """
    import subprocess
    import sys

    data = write_dataset(tmp_path / "data", recipe=None)
    recipe = "tests.recipes_fixture:tiny_nodrop"
    common = [
        "--recipe",
        recipe,
        "--data",
        str(data),
        "--set",
        "max_steps=10",
        "--set",
        "batch_size=32",
        # validation too: each rank scores its shard and the counts are summed (issue 13)
        "--set",
        "val_every=4",
        *extra,
    ]
    env = {
        **os.environ,
        "AMPFLOW_TRACKING": "off",
        "OMP_NUM_THREADS": "1",
        "PYTHONPATH": str(Path(__file__).resolve().parents[1]),
    }
    torchrun = [*torchrun_program(2), "train", "--strategy", strategy]
    multi = subprocess.run(  # noqa: S603 - fixed argv, no shell
        [*torchrun, *common, "--out", str(tmp_path / "multi")],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert multi.returncode == 0, multi.stderr[-3000:]
    single = subprocess.run(  # noqa: S603 - fixed argv, no shell
        [sys.executable, "-m", "ampflow", "train", *common, "--out", str(tmp_path / "one")],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert single.returncode == 0, single.stderr[-3000:]
    a, b = weights(tmp_path / "multi"), weights(tmp_path / "one")
    assert set(a) == set(b)
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=1e-5, rtol=1e-4)
    r = result(tmp_path / "multi")
    assert r["world_size"] == 2 and r["strategy"] == strategy
    assert r["metrics"]["samples_per_s_per_device"] == pytest.approx(r["metrics"]["samples_per_s"] / 2)
    one_curve = [loss for _, loss in result(tmp_path / "one")["loss_curve"]]
    multi_curve = [loss for _, loss in r["loss_curve"]]
    assert multi_curve == pytest.approx(one_curve, rel=1e-4)  # rank-averaged loss == global mean loss
    one_val, multi_val = result(tmp_path / "one")["val_curve"], r["val_curve"]
    assert [p[0] for p in multi_val] == [p[0] for p in one_val] == [4, 8, 10]
    # each rank's shard, counts summed == the whole split (128 examples), up to an example near a tie
    assert [p[2] for p in multi_val] == pytest.approx([p[2] for p in one_val], abs=1 / 128)


def test_submodules_left_in_eval_mode_are_trained_in_train_mode(tmp_path, monkeypatch):
    """A recipe whose build_model returns a pretrained submodule in eval mode (what from_pretrained
    does) still trains with dropout on: the engine calls model.train()."""
    import tests.recipes_fixture as fx

    seen: list[bool] = []
    original = fx.TinyRecipe.build_model

    def build(self, info):
        model = original(self, info)
        model.net.eval()
        model.net[2].register_forward_hook(lambda mod, args, out: seen.append(mod.training))
        return model

    monkeypatch.setattr(fx.TinyRecipe, "build_model", build)
    data = write_dataset(tmp_path / "data")
    assert train(data, tmp_path / "run", "--set", "max_steps=3") == 0
    assert seen and all(seen)


def test_set_parsed_and_config_validated_once_per_run(data, tmp_path, monkeypatch):
    """The CLI parses ``--set`` once and builds (validates) a whole RunConfig once; resolving the
    recipe's defaults derives the run's config without validating every field again."""
    from ampflow.cli import build_parser
    from ampflow.config import RunConfig
    from ampflow.steps import Paths
    from ampflow.steps import train as train_step

    built: list[RunConfig] = []
    parses: list[list[str]] = []
    real_post_init, real_parse = RunConfig.__post_init__, train_step.parse_overrides

    def post_init(self):
        built.append(self)
        real_post_init(self)

    def parse(pairs):
        parses.append(pairs)
        return real_parse(pairs)

    monkeypatch.setattr(RunConfig, "__post_init__", post_init)
    monkeypatch.setattr(train_step, "parse_overrides", parse)
    out = tmp_path / "run"
    argv = ["train", "--recipe", NAME, "--data", str(data), "--out", str(out), "--set", "max_steps=3"]
    config, explicit = train_step.config_from_args(build_parser().parse_args(argv))
    resolved, *_ = train_step.prepare(config, Paths.of(data=data, out=out), resume=False, explicit=explicit)
    assert len(parses) == 1
    assert len(built) == 1
    assert resolved.max_steps == 3 and resolved.batch_size == 32 and resolved.learning_rate == 0.01


# -- every setting given takes effect or is refused (issue 12, part 1) ------------------------------


def test_explicit_epochs_replace_the_recipes_step_cap(data, tmp_path):
    """The fixture recipe caps runs at 30 steps; 512 examples at batch 32 are 16 steps an epoch."""
    assert train(data, tmp_path / "e2", "--set", "epochs=2") == 0
    assert result(tmp_path / "e2")["metrics"]["steps"] == 32  # not the recipe's 30
    assert train(data, tmp_path / "nocap", "--set", "max_steps=none") == 0
    assert result(tmp_path / "nocap")["metrics"]["steps"] == 16  # no cap: one epoch


def test_epochs_and_max_steps_together_stop_at_whichever_comes_first():
    from ampflow.config import RunConfig

    assert RunConfig(epochs=2, max_steps=20).total_steps(16) == 20
    assert RunConfig(epochs=1, max_steps=20).total_steps(16) == 16
    assert RunConfig(max_steps=20).total_steps(16) == 20
    assert RunConfig(epochs=3).total_steps(16) == 48
    assert RunConfig().total_steps(16) == 16
    resolved = RunConfig(epochs=2).resolve({"max_steps": 400}, {"epochs"})
    assert (resolved.epochs, resolved.max_steps) == (2, None)
    assert RunConfig().resolve({"max_steps": 400}, set()).max_steps == 400
    assert RunConfig(max_steps=None).resolve({"max_steps": 400}, {"max_steps"}).max_steps is None


def test_resume_refuses_a_setting_the_checkpoint_cannot_take(data, tmp_path, capsys):
    run = tmp_path / "run"
    assert (
        train(data, run, "--set", "max_steps=4", "--set", "batch_size=auto", "--set", "auto_batch_max=64")
        == 0
    )
    before = (run / "checkpoint.pt").read_bytes()
    saved_batch = result(run)["config"]["batch_size"]
    for key, value in (("batch_size", saved_batch * 2), ("learning_rate", 1e-4)):
        capsys.readouterr()
        assert train(data, run, "--resume", "--set", "max_steps=8", "--set", f"{key}={value}") == 2
        err = capsys.readouterr().err
        assert f"--resume: {key}=" in err and "differs from the checkpoint's" in err, err
        assert (run / "checkpoint.pt").read_bytes() == before
    # the same value, `auto` for a searched batch size, and keys that may change all resume
    extra = ("--set", f"learning_rate={result(run)['config']['learning_rate']}", "--set", "batch_size=auto")
    assert train(data, run, "--resume", "--set", "max_steps=6", *extra, "--set", "auto_batch_max=64") == 0
    assert result(run)["metrics"]["steps"] == 6 and result(run)["resumed_from_step"] == 4


def test_last_line_says_when_steps_were_skipped():
    from ampflow.steps.train import summary_line

    result = {
        "recipe": "r",
        "precision": "16-mixed",
        "device_name": "cpu",
        "checkpoint": "/runs/a/checkpoint.pt",
        "metrics": {"samples_per_s": 10.0, "steps": 30, "skipped_steps": 16},
    }
    assert summary_line(result).endswith(
        "30 steps, 16 of them SKIPPED (non-finite loss or gradients) -> /runs/a/checkpoint.pt"
    )
    result["metrics"]["skipped_steps"] = 0
    assert summary_line(result).endswith(", 30 steps -> /runs/a/checkpoint.pt")
    # with val_every the last validation is on the line, and the target when one was set
    result["metrics"].update(final_val_accuracy=0.6925, steps_to_target=20)
    assert summary_line(result).endswith(", 30 steps, val accuracy 0.6925 -> /runs/a/checkpoint.pt")
    result["config"] = {"target_accuracy": 0.6}
    assert ", val accuracy 0.6925 (target 0.6: reached at step 20) -> " in summary_line(result)
    result["metrics"]["steps_to_target"] = None
    assert ", val accuracy 0.6925 (target 0.6: not reached) -> " in summary_line(result)


def test_last_line_says_which_steps_its_samples_per_s_covers():
    """The summary's samples/s is the timed window's, not a progress line's: it names the steps."""
    from ampflow.steps.train import summary_line

    result = {
        "recipe": "r",
        "precision": "32-true",
        "device_name": "cpu",
        "checkpoint": "c",
        "config": {"warmup_steps": 5},
        "metrics": {"samples_per_s": 10.0, "steps": 30, "timed_steps": 25},
    }
    line = summary_line(result)
    assert ": 10.0 samples/s (timed window, steps 6..30, warm-up 5 excluded), step p50" in line
    # a resumed run times its own steps only; a compiling step and profiled steps are named
    result.update(resumed_from_step=30, compile=True)
    result["metrics"].update(steps=60, timed_steps=22)
    line = summary_line(result)
    window = (
        "(timed window, steps 39..60, warm-up 8 excluded: warmup_steps=5, the compiling step, 2 profiled)"
    )
    assert window in line
    result["metrics"].update(timed_steps=0, samples_per_s=None)  # nothing timed: no window to name
    assert " n/a samples/s, step p50" in summary_line(result)

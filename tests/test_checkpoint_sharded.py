"""The sharded checkpoint format (issue 14): ``torch.distributed.checkpoint`` shards behind checkpoint.pt.

One process writes DCP shards here (``checkpoint_format=sharded``), so resume, evaluation and the file
rules are checked exactly, without a process group; the multi-rank writes (one shard file per rank) and
the resharding across layouts run under real torchrun in tests/test_strategies_tp_pp.py and
tests/test_resume_strategies.py.
"""

from __future__ import annotations

import json
import pickle
import shutil
from pathlib import Path

import pytest
import torch

from ampflow.cli import main
from ampflow.config import ConfigError
from ampflow.engine import checkpoint
from tests.checkpoints import read_checkpoint
from tests.recipes_fixture import NAME, write_dataset


def _train(data: Path, out: Path, steps: int, *extra: str) -> dict:
    argv = ["train", "--recipe", NAME, "--data", str(data), "--out", str(out), "--set", f"max_steps={steps}"]
    # a constant learning rate: a schedule spans max_steps, which the resumed run extends
    argv += ["--set", "lr_schedule=constant", "--set", "lr_warmup_steps=0"]
    assert main([*argv, "--set", "batch_size=48", *extra]) == 0
    return json.loads((out / "result.json").read_text())


def _evaluate_argv(data: Path, run: Path, out: Path) -> list[str]:
    return ["evaluate", "--recipe", NAME, "--data", str(data), "--checkpoint", str(run), "--out", str(out)]


def _evaluate(data: Path, run: Path, out: Path) -> dict:
    assert main(_evaluate_argv(data, run, out)) == 0
    return json.loads((out / "eval.json").read_text())


@pytest.fixture
def data(tmp_path, monkeypatch):
    monkeypatch.setenv("AMPFLOW_TRACKING", "off")
    return write_dataset(tmp_path / "data")


def test_sharded_resume_ends_bit_identical_to_a_full_uninterrupted_run(data, tmp_path):
    """Weights, AdamW moments, step counts and the learning rate (the loss curve) survive the shards
    exactly; evaluation reads the shards into a plain model and scores what the full file scores."""
    full = _train(data, tmp_path / "full", 6)
    run = tmp_path / "sharded"
    _train(data, run, 3, "--set", "checkpoint_format=sharded", "--set", "checkpoint_every=2")
    # a crash after step 4's shards were half written, before checkpoint.pt pointed at them
    torn = run / "checkpoint.dcp" / "step-00000004-0"
    torn.mkdir()
    (torn / "__0_0.distcp").write_bytes(b"half a shard")
    resumed = _train(data, run, 6, "--resume", "--set", "checkpoint_every=2")
    assert resumed["resumed_from_step"] == 3 and resumed["loss_curve"] == full["loss_curve"]

    a, b = read_checkpoint(tmp_path / "full" / "checkpoint.pt"), read_checkpoint(run / "checkpoint.pt")
    assert b["sharded"] and b["format"] == checkpoint.FORMAT_SHARDED and b["step"] == 6
    assert a["model"].keys() == b["model"].keys()
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    assert a["optimizer"]["state"].keys() == b["optimizer"]["state"].keys()
    for name, moments in a["optimizer"]["state"].items():
        for key, t in moments.items():
            assert torch.equal(torch.as_tensor(t), torch.as_tensor(b["optimizer"]["state"][name][key])), (
                name,
                key,
            )
    # the torn directory was skipped (step 4 went to ...-1) and, like every older one, removed
    assert [p.name for p in (run / "checkpoint.dcp").iterdir()] == ["step-00000006-0"]

    want = _evaluate(data, tmp_path / "full", tmp_path / "eval-full")
    got = _evaluate(data, run, tmp_path / "eval-sharded")
    for key in ("accuracy", "macro_f1", "loss", "confusion_matrix"):
        assert got[key] == want[key], key


def test_a_run_switches_format_on_resume_and_leaves_no_stale_shards(data, tmp_path):
    run = tmp_path / "run"
    _train(data, run, 2, "--set", "checkpoint_format=sharded")
    assert (run / "checkpoint.dcp").is_dir()
    result = _train(data, run, 4, "--resume", "--set", "checkpoint_format=full")
    assert result["config"]["checkpoint_format"] == "full"
    state = torch.load(run / "checkpoint.pt", weights_only=True)
    assert state["format"] == checkpoint.FORMAT and "model" in state and "shards" not in state
    assert not (run / "checkpoint.dcp").exists()


def test_missing_shards_are_bad_input_with_one_line(data, tmp_path, capsys):
    run = tmp_path / "run"
    _train(data, run, 2, "--set", "checkpoint_format=sharded")
    shutil.rmtree(run / "checkpoint.dcp")
    assert main(_evaluate_argv(data, run, tmp_path / "e")) == 2
    err = capsys.readouterr().err
    assert "shards" in err and "checkpoint.dcp" in err and "Traceback" not in err
    argv = ["train", "--recipe", NAME, "--data", str(data), "--out", str(run), "--resume"]
    assert main(argv) == 2


def test_an_unknown_checkpoint_format_is_bad_input(data, tmp_path, capsys):
    argv = ["train", "--recipe", NAME, "--data", str(data), "--out", str(tmp_path / "r")]
    assert main([*argv, "--set", "checkpoint_format=dcp"]) == 2
    err = capsys.readouterr().err
    assert "checkpoint_format" in err and "sharded" in err


class _Payload:
    """Not a plain type: ``torch.load(weights_only=True)`` must refuse to rebuild it."""


def test_shards_holding_anything_but_plain_types_are_refused(tmp_path):
    """DCP unpickles non-tensor entries with weights_only=False; ampflow's planner refuses first."""
    import torch.distributed.checkpoint as dcp

    with checkpoint._single_process_quiet():
        dcp.save({"lr": 0.5, "obj": _Payload()}, checkpoint_id=str(tmp_path / "d"), no_dist=True)
    plain = {"lr": 0.0}
    checkpoint.load_shards(tmp_path / "d", plain)
    assert plain == {"lr": 0.5}
    with pytest.raises(
        ConfigError,
        match=r"unreadable \(UnpicklingError: a corrupt shard, or an entry torch.load\(weights_only=True\) refuses\)$",
    ):
        checkpoint.load_shards(tmp_path / "d", {"obj": None})
    with pytest.raises(ConfigError, match="unreadable"):  # a key the shards do not hold
        checkpoint.load_shards(tmp_path / "d", {"momentum": 0.0})


def test_a_new_shards_directory_never_reuses_a_name(tmp_path):
    assert checkpoint.new_shards_dir(tmp_path, 40) == "checkpoint.dcp/step-00000040-0"
    (tmp_path / "checkpoint.dcp" / "step-00000040-0").mkdir(parents=True)
    assert checkpoint.new_shards_dir(tmp_path, 40) == "checkpoint.dcp/step-00000040-1"


def test_optimizer_hyperparameters_come_back_from_the_shards(tmp_path):
    """The learning rate a schedule left in the param groups (not a tensor, so not loaded in place) and
    the AdamW moments both come back; the whole path runs through ampflow.engine.state's own calls."""
    from ampflow.engine import state as train_state

    def build():
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.Linear(3, 2))
        return model, torch.optim.AdamW(model.parameters(), lr=1e-3)

    model, opt = build()
    model(torch.randn(5, 4)).sum().backward()
    opt.step()
    opt.param_groups[0]["lr"] = 0.123  # where a schedule left it
    checkpoint.save_shards(tmp_path / "d", train_state.sharded_state(model, opt))

    fresh, fresh_opt = build()
    train_state.load_optimizer(fresh_opt, fresh, {"shards": str(tmp_path / "d")}, "single")
    assert fresh_opt.param_groups[0]["lr"] == 0.123
    for p, q in zip(model.parameters(), fresh.parameters(), strict=True):
        assert torch.equal(opt.state[p]["exp_avg"], fresh_opt.state[q]["exp_avg"])
        assert torch.equal(torch.as_tensor(opt.state[p]["step"]), torch.as_tensor(fresh_opt.state[q]["step"]))


def test_the_full_format_merges_each_pipeline_stage_once_under_a_pp_x_dp_mesh():
    """Rank 0 gathers every rank's stage state; under pp:2,dp:2 each stage arrives twice."""
    from ampflow.engine.state import _merge_optimizer_states

    def stage(*names):
        return {
            "state": {n: {"exp_avg": torch.ones(1)} for n in names},
            "param_groups": [{"lr": 0.1, "params": list(names)}],
        }

    merged = _merge_optimizer_states([stage("a", "b"), stage("a", "b"), stage("c"), stage("c")])
    assert merged["param_groups"] == [{"lr": 0.1, "params": ["a", "b", "c"]}]
    assert list(merged["state"]) == ["a", "b", "c"]


def test_another_strategy_resumes_on_its_own_layout_not_the_checkpoints_mesh(data, tmp_path):
    """A checkpoint of ``pp`` on ``pp:2,dp:2`` resumed with ``--strategy single`` (the trial of issue 14:
    the saved mesh was carried over and refused the new strategy). The checkpoint here is a one-process
    run's, its config rewritten to say what a pp x dp run's says: the resume reads only the config."""
    run = tmp_path / "run"
    _train(data, run, 2, "--set", "checkpoint_format=sharded")
    path = run / "checkpoint.pt"
    state = torch.load(path, weights_only=True)
    state["config"] = {**state["config"], "strategy": "pp", "mesh": "pp:2,dp:2", "pp_schedule": "1f1b"}
    torch.save(state, path)
    result = _train(data, run, 3, "--resume", "--strategy", "single")
    assert (result["strategy"], result["mesh"], result["resumed_from_step"]) == ("single", None, 2)
    # the mesh is dropped with the strategy change (fsdp or tp would refuse pp:2,dp:2 before starting)
    assert result["config"]["mesh"] is None


class _Boom:
    """A pickle that would run ``os.getpid`` (any callable) when loaded: what a crafted .metadata does."""

    def __reduce__(self):
        import os

        return (os.getpid, ())


@pytest.mark.parametrize(
    "payload, says",
    [
        (b"junk\n", "unreadable or untrusted"),
        (pickle.dumps(_Boom()), "refused global posix.getpid"),
    ],
)
def test_a_damaged_or_crafted_shards_metadata_is_one_line_and_never_unpickled(
    data, tmp_path, capsys, payload, says
):
    """DCP reads ``.metadata`` with a plain ``pickle.load``; ampflow checks it against DCP's own classes
    first (the new-user trial of issue 14 got 26 lines of tracebacks from a junk file)."""
    run = tmp_path / "run"
    _train(data, run, 2, "--set", "checkpoint_format=sharded")
    state = torch.load(run / "checkpoint.pt", weights_only=True)
    (run / state["shards"] / ".metadata").write_bytes(payload)
    capsys.readouterr()
    assert main(_evaluate_argv(data, run, tmp_path / "e")) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and says in err[0] and ".metadata" in err[0], err


class _Reduce:
    """Pickles as ``fn(*args)``: how Python 3.11.2 writes an enum member (``getattr(Enum, "NAME")``)."""

    def __init__(self, fn, *args):
        self.fn, self.args = fn, args

    def __reduce__(self):
        return (self.fn, self.args)


def test_the_metadata_check_takes_enum_members_by_name_and_no_other_getattr(tmp_path):
    """CI's Python 3.11.2 pickles DCP's ``_MEM_FORMAT_ENCODING`` members through ``builtins.getattr``
    (3.11.7 does not); that getattr is served for DCP's enums only, never as a way to any attribute."""
    from torch.distributed.checkpoint.metadata import _MEM_FORMAT_ENCODING, Metadata

    (tmp_path / ".metadata").write_bytes(
        pickle.dumps(_Reduce(getattr, _MEM_FORMAT_ENCODING, "TORCH_CONTIGUOUS_FORMAT"))
    )
    checkpoint.check_shards_metadata(tmp_path)
    for crafted in (
        _Reduce(getattr, Metadata, "__init__"),
        _Reduce(getattr, _MEM_FORMAT_ENCODING, "__class__"),
    ):
        (tmp_path / ".metadata").write_bytes(pickle.dumps(crafted))
        with pytest.raises(ConfigError, match=r"unreadable or untrusted \(refused getattr"):
            checkpoint.check_shards_metadata(tmp_path)

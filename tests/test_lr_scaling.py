"""The batch / learning-rate rules (issue 14): the arithmetic, the resolved reference, result.json."""

from __future__ import annotations

import json
import math

import pytest
import torch

from ampflow.cli import main
from ampflow.config import ConfigError, RunConfig
from ampflow.engine import lr_scaling
from tests.recipes_fixture import NAME, write_dataset


@pytest.mark.parametrize(
    ("rule", "batch", "ref", "factor"),
    [
        ("none", 256, 32, 1.0),
        ("linear", 256, 32, 8.0),  # Goyal et al.: k x the batch, k x the rate
        ("linear", 16, 32, 0.5),
        ("sqrt", 128, 32, 2.0),  # square-root rule: 4 x the batch, 2 x the rate
        ("sqrt", 32, 32, 1.0),
    ],
)
def test_rule_arithmetic(rule, batch, ref, factor):
    assert lr_scaling.scale_factor(rule, batch, ref) == pytest.approx(factor)
    plan = lr_scaling.resolve(rule, 1e-3, batch, ref)
    assert plan["peak_lr"] == pytest.approx(1e-3 * factor)
    assert (plan["lr_scaling"], plan["global_batch"], plan["reference_batch"]) == (rule, batch, ref)


def test_bad_rule_or_batch_is_config_error():
    with pytest.raises(ConfigError, match="lr_scaling must be one of none, linear, sqrt"):
        RunConfig(lr_scaling="cubic")
    with pytest.raises(ConfigError, match="lr_reference_batch must be a positive integer"):
        RunConfig().with_overrides(["lr_reference_batch=0"])
    with pytest.raises(ConfigError):
        lr_scaling.scale_factor("linear", 0, 32)


def test_reference_defaults_to_the_recipes_batch_size_only_when_a_rule_is_on():
    defaults = {"batch_size": 64, "learning_rate": 2e-3}
    assert RunConfig().resolve(defaults).lr_reference_batch is None
    assert RunConfig(lr_scaling="sqrt").resolve(defaults).lr_reference_batch == 64
    assert RunConfig(lr_scaling="sqrt", lr_reference_batch=16).resolve(defaults).lr_reference_batch == 16
    # the "none" word is the rule's name here, not an unset value
    assert RunConfig().with_overrides(["lr_scaling=none"]).lr_scaling == "none"


def test_result_json_carries_the_resolved_rule_and_the_optimizer_uses_it(tmp_path, monkeypatch):
    monkeypatch.setenv("AMPFLOW_TRACKING", "off")
    data = write_dataset(tmp_path / "data", n_train=128, n_val=16, n_test=16)
    base = ["train", "--recipe", NAME, "--data", str(data), "--set", "max_steps=2"]
    base += ["--set", "batch_size=16", "--set", "learning_rate=0.01"]
    # global batch 16 x 4 accumulation = 64 against the tiny recipe's batch_size 32: linear doubles
    out = tmp_path / "linear"
    argv = [*base, "--out", str(out), "--set", "grad_accum=4", "--set", "lr_scaling=linear"]
    assert main(argv) == 0
    result = json.loads((out / "result.json").read_text())
    plan = result["lr_schedule"]
    assert plan["lr_scaling"] == "linear" and plan["reference_batch"] == 32 and plan["global_batch"] == 64
    assert plan["lr_scale_factor"] == 2.0 and plan["peak_lr"] == pytest.approx(0.02)
    assert result["metrics"]["lr_peak"] == pytest.approx(0.02)
    assert result["metrics"]["global_batch_size"] == 64
    # the scheduler warms up to the scaled peak, not to the configured rate
    ckpt = torch.load(out / "checkpoint.pt", weights_only=True)
    assert ckpt["scheduler"]["base_lrs"] == [pytest.approx(0.02)]
    assert ckpt["config"]["lr_scaling"] == "linear" and ckpt["config"]["learning_rate"] == 0.01

    # the default keeps the rate as given, whatever the batch
    out = tmp_path / "none"
    assert main([*base, "--out", str(out), "--set", "grad_accum=4"]) == 0
    plan = json.loads((out / "result.json").read_text())["lr_schedule"]
    assert plan["lr_scaling"] == "none" and plan["lr_scale_factor"] == 1.0
    assert math.isclose(plan["peak_lr"], 0.01)

"""RunConfig validation, overrides and sweep construction (torch-free)."""

from __future__ import annotations

import json

import pytest

from ampflow.config import ConfigError, RunConfig, parse_overrides, sweep_entries


def test_defaults_are_valid_and_round_trip_through_json():
    cfg = RunConfig(recipe="tweets-bow", precision="bf16-mixed", batch_size="auto", max_steps=10)
    again = RunConfig.from_dict(json.loads(cfg.to_json()))
    assert again == cfg


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"precision": "fp8-ish"}, "precision"),
        ({"batch_size": 0}, "batch_size"),
        ({"batch_size": -3}, "batch_size"),
        ({"max_steps": 0}, "max_steps"),
        ({"device": "tpu"}, "device"),
        ({"strategy": "zero3"}, "strategy"),
        ({"learning_rate": 0}, "learning_rate"),
        ({"grad_accum": 0}, "grad_accum"),
        ({"recipe": "bad name!"}, "recipe"),
    ],
)
def test_bad_values_name_the_field(change, field):
    with pytest.raises(ConfigError) as err:
        RunConfig(**change)
    message = str(err.value)
    assert field in message
    assert "\n" not in message


def test_precision_error_lists_allowed_values():
    with pytest.raises(ConfigError, match="32-true, tf32, 16-mixed, bf16-mixed, bf16-true, 16-true"):
        RunConfig(precision="fp64")


def test_16_true_needs_explicit_consent():
    with pytest.raises(ConfigError, match="allow_16_true"):
        RunConfig(precision="16-true")
    assert RunConfig(precision="16-true", allow_16_true=True).precision == "16-true"


def test_overrides_are_typed_by_field():
    cfg = RunConfig().with_overrides(
        ["max_steps=50", "batch_size=auto", "learning_rate=3e-4", "compile=on", "clip_grad_norm=none"]
    )
    assert cfg.max_steps == 50
    assert cfg.batch_size == "auto"
    assert cfg.learning_rate == pytest.approx(3e-4)
    assert cfg.compile is True
    assert cfg.clip_grad_norm is None
    assert RunConfig().with_overrides(["batch_size=64"]).batch_size == 64


@pytest.mark.parametrize("pair", ["nosuchkey=1", "max_steps", "=3", "max_steps=ten", "compile=maybe"])
def test_bad_overrides_are_config_errors(pair):
    with pytest.raises(ConfigError):
        parse_overrides([pair])


def test_resolve_fills_only_unset_fields():
    cfg = RunConfig(batch_size=8).resolve({"batch_size": 64, "learning_rate": 1e-3, "not_a_field": 1})
    assert cfg.batch_size == 8
    assert cfg.learning_rate == pytest.approx(1e-3)


def test_sweep_interleaves_repeats_and_names_entries_uniquely():
    entries = sweep_entries(["32-true", "bf16-mixed"], [False, True], repeats=2)
    assert [e.id for e in entries[:4]] == ["32-true", "32-true-compiled", "bf16-mixed", "bf16-mixed-compiled"]
    assert [e.repeat for e in entries] == [0, 0, 0, 0, 1, 1, 1, 1]
    assert len({e.id for e in entries}) == len(entries)
    with pytest.raises(ConfigError):
        sweep_entries(["32-true", "fp4"], [False])

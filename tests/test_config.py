"""RunConfig validation, overrides and sweep construction (torch-free)."""

from __future__ import annotations

import json

import pytest

from ampflow.config import ConfigError, RunConfig, SweepSpec, config_id, parse_overrides


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
    entries = SweepSpec.from_lists(["32-true", "bf16-mixed"], [False, True], repeats=2).entries()
    assert [e.id for e in entries[:4]] == ["32-true", "32-true-compiled", "bf16-mixed", "bf16-mixed-compiled"]
    assert [e.repeat for e in entries] == [0, 0, 0, 0, 1, 1, 1, 1]
    assert len({e.id for e in entries}) == len(entries)
    with pytest.raises(ConfigError):
        SweepSpec.from_lists(["32-true", "fp4"], [False])


def test_sweep_spec_reads_every_spelling_the_same():
    """The CLI's words, Airflow's word lists and KFP's typed lists give one sweep."""
    cli = SweepSpec.from_words("32-true, bf16-mixed", "off,on", repeats=2)
    dag = SweepSpec.from_lists(["32-true", "bf16-mixed"], ["off", "on"], 2)
    kfp = SweepSpec.from_lists(["32-true", "bf16-mixed"], [False, True], "2")
    assert cli == dag == kfp
    assert cli.compile_words == ["off", "on"]
    assert SweepSpec.from_words("32-true", "on,true,1").compile_modes == (True,)
    assert [e.to_dict() for e in cli.entries()][-1] == {
        "id": "bf16-mixed-compiled-r1",
        "precision": "bf16-mixed",
        "compile": True,
        "repeat": 1,
    }


@pytest.mark.parametrize(
    ("words", "match"),
    [
        ({"precisions": "32-true", "compile": "maybe"}, "compile must be off, on"),
        ({"precisions": "32-true,32-true"}, "precisions lists a precision twice"),
        ({"precisions": "bf16-mixed"}, "baseline '32-true' is not in precisions"),
        ({"precisions": ""}, "precision must list at least one value"),
        ({"precisions": "32-true", "repeats": 0}, "repeats must be a positive integer, got 0"),
        ({"precisions": "32-true,fp4"}, "precision must be one of"),
    ],
)
def test_sweep_spec_refuses_bad_sweeps_naming_the_field(words, match):
    with pytest.raises(ConfigError, match=match):
        SweepSpec.from_words(**words)


def test_config_id_is_one_spelling():
    assert config_id("bf16-mixed", False) == "bf16-mixed"
    assert config_id("bf16-mixed", True) == "bf16-mixed-compiled"
    assert config_id("32-true", False, "single") == "32-true"
    assert config_id("32-true", True, "fsdp") == "32-true-compiled-fsdp"
    entry = SweepSpec.from_lists(["32-true"], [True], 3).entries()[2]
    assert (entry.config_id, entry.id) == ("32-true-compiled", "32-true-compiled-r2")


def test_sweep_strategies_are_a_dimension_named_in_the_ids():
    """Strategy innermost: the layouts of one precision run back to back; single keeps the old ids."""
    spec = SweepSpec.from_words("32-true,bf16-mixed", "off,on", repeats=2, strategies="single, ddp")
    assert spec == SweepSpec.from_lists(
        ["32-true", "bf16-mixed"], [False, True], 2, strategies=["single", "ddp"]
    )
    entries = spec.entries()
    assert [e.id for e in entries[:8]] == [
        "32-true", "32-true-ddp", "32-true-compiled", "32-true-compiled-ddp",
        "bf16-mixed", "bf16-mixed-ddp", "bf16-mixed-compiled", "bf16-mixed-compiled-ddp",
    ]  # fmt: skip
    assert [e.id for e in entries[8:10]] == ["32-true-r1", "32-true-ddp-r1"]
    assert len({e.id for e in entries}) == len(entries) == 16
    assert spec.distributed and [e.distributed for e in entries[:2]] == [False, True]
    # the default is one process: the ids, the order and the pipelines' items are what they always were
    plain = SweepSpec.from_words("32-true,bf16-mixed", "off,on")
    assert plain.strategies == ("single",) and not plain.distributed
    assert [e.id for e in plain.entries()] == [e.id for e in spec.entries()[:8:2]]
    assert "strategy" not in plain.entries()[0].to_dict()
    assert entries[1].to_dict() == {
        "id": "32-true-ddp", "precision": "32-true", "compile": False, "repeat": 0, "strategy": "ddp",
    }  # fmt: skip


@pytest.mark.parametrize(
    ("strategies", "match"),
    [
        ("single,zero3", "strategy must be one of single, ddp, fsdp, tp, pp, fsdp\\+tp; got 'zero3'"),
        ("ddp,ddp", "strategies lists a strategy twice: ddp, ddp"),
        (" , ", "strategy must list at least one value"),
    ],
)
def test_sweep_spec_refuses_bad_strategies_naming_the_field(strategies, match):
    with pytest.raises(ConfigError, match=match):
        SweepSpec.from_words("32-true", strategies=strategies)
    if strategies != " , ":
        with pytest.raises(ConfigError, match=match):
            SweepSpec.from_lists(["32-true"], strategies=strategies.split(","))
    with pytest.raises(ConfigError, match="strategies must list at least one"):
        SweepSpec.from_lists(["32-true"], strategies=[])


def test_overrides_schema_is_generated_from_the_run_configuration():
    """The Airflow trigger form refuses a typo'd key or a wrong type before any task runs (issue 12)."""
    import jsonschema

    from ampflow.config import overrides_schema

    schema = overrides_schema()
    assert set(schema["properties"]) == set(RunConfig.field_names()) - {"recipe"}
    check = jsonschema.Draft7Validator(schema)
    assert not list(check.iter_errors({"max_steps": 5, "batch_size": "auto", "learning_rate": None}))
    errors = {
        next(iter(check.iter_errors(bad))).validator for bad in ({"max_stepz": 5}, {"max_steps": "five"})
    }
    assert errors == {"additionalProperties", "anyOf"}
    assert not check.is_valid({"precision": "fp4"}) and not check.is_valid({"compile": "yes"})


def test_the_recipe_is_not_a_set_key():
    """``--set recipe=tweets-bow`` beside ``--recipe tiny`` failed inside training with a KeyError
    (new-user trial); the recipe is ``--recipe`` only, and the known-keys list no longer offers it."""
    with pytest.raises(
        ConfigError, match=r"^--set recipe=\.\.\.: the recipe is given by --recipe, not --set$"
    ):
        parse_overrides(["recipe=tweets-bow"])
    with pytest.raises(ConfigError, match="unknown --set key 'nope'") as err:
        parse_overrides(["nope=1"])
    assert "recipe" not in str(err.value).split("known keys: ")[1].split(", ")


def test_every_set_key_has_a_help_line_in_train_help(capsys):
    """``ampflow train --help`` describes each ``--set`` key (the new-user trial found only types and
    defaults); the table is built from RunConfig, so a new field without a line fails here."""
    import dataclasses

    from ampflow.cli import main
    from ampflow.config import SETTING_HELP

    fields = {f.name for f in dataclasses.fields(RunConfig)} - {"recipe"}
    assert set(SETTING_HELP) == fields
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    out = capsys.readouterr().out
    assert "checkpoint_format" in out and SETTING_HELP["checkpoint_format"] in out

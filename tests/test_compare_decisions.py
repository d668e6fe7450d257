"""Decisions that cannot pass on bad evidence (issue 10): comparability, the paired accuracy test, missing
evidence, speed that cannot be told from noise, comparable regression baselines, strict JSON.

Pure and fast (no torch, no MLflow server): this is the test selection ``make mutation`` runs, so every
expected value is a literal.

    .venv/bin/python -m pytest tests/test_compare_decisions.py -q -x
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

from ampflow.cli import main
from ampflow.compare import comparable
from ampflow.compare.markdown import render_markdown
from ampflow.compare.records import load_predictions
from ampflow.compare.regression import find_regressions, previous_from_runs
from ampflow.compare.summary import compare_runs, write_reports
from ampflow.compare.verdict import MIN_TIMED_STEPS, within_noise
from ampflow.config import ConfigError, RunConfig
from ampflow.io import atomic_write_json, dumps_strict
from ampflow.steps import compare as compare_step


def strict_loads(text: str):
    """json.loads that refuses NaN/Infinity, as jq or a browser would."""

    def refuse(word):
        raise ValueError(f"not JSON: {word}")

    return json.loads(text, parse_constant=refuse)


def write_run(root: Path, name: str, *, precision="32-true", thr=100.0, acc=0.8, timed=100, data="d" * 64,
              recipe="tweets-bow", predictions=None, evaluated=True, auto_batch=False, batch=64, **settings):  # fmt: skip
    """A finished run directory: result.json (resolved config), eval/eval.json, eval/predictions.jsonl."""
    run = root / name
    run.mkdir(parents=True)
    config = RunConfig(recipe="tweets-bow", precision=precision).to_dict()
    config.update(
        {"batch_size": batch, "max_steps": 200, "learning_rate": 1e-3, "warmup_steps": 5, **settings}
    )
    result = {
        "recipe": recipe, "precision": precision, "compile": False, "strategy": "single", "config": config,
        "device": "cpu", "device_name": "cpu-x", "dataset_hash": data,
        "metrics": {"samples_per_s": thr, "peak_memory_bytes": 100.0, "timed_steps": timed, "batch_size": batch},
        "batch_size_search": {"tried": [32, 64]} if auto_batch else None,
    }  # fmt: skip
    (run / "result.json").write_text(json.dumps(result))
    if evaluated:
        (run / "eval").mkdir()
        (run / "eval" / "eval.json").write_text(json.dumps({"accuracy": acc, "macro_f1": acc, "ece": 0.05}))
        if predictions is not None:
            labels, preds = predictions
            lines = [
                json.dumps({"index": i, "label": y, "prediction": p, "confidence": 0.9})
                for i, (y, p) in enumerate(zip(labels, preds, strict=True))
            ]
            (run / "eval" / "predictions.jsonl").write_text("\n".join(lines) + "\n")
    return run


def by_id(summary):
    return {c["config_id"]: c for c in summary["configs"]}


def paired(n: int, only_ref: int, only_cand: int):
    """Labels all 0; reference wrong on the first ``only_cand`` examples, candidate wrong on the next
    ``only_ref``: (reference predictions, candidate predictions) as (labels, preds) pairs."""
    labels = [0] * n
    ref = [1] * only_cand + [0] * (n - only_cand)
    cand = [0] * only_cand + [1] * only_ref + [0] * (n - only_cand - only_ref)
    return (labels, ref), (labels, cand)


# -- comparable or refused -------------------------------------------------------------------------


def test_runs_on_different_datasets_are_refused_naming_the_field(tmp_path, capsys):
    a = write_run(tmp_path, "a", acc=0.30, data="a" * 64)
    b = write_run(tmp_path, "b", precision="bf16-mixed", thr=150.0, acc=0.8167, data="b" * 64)
    with pytest.raises(ConfigError, match=r"dataset_hash differs \(a{64} vs b{64}\)"):
        compare_runs([a, b], previous=[])
    assert main(["compare", "--runs", f"{a},{b}"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "dataset_hash" in err[0] and "--allow-mismatch dataset_hash" in err[0]
    # another recipe is refused the same way
    c = write_run(tmp_path, "c", precision="bf16-mixed", recipe="other")
    with pytest.raises(ConfigError, match=r"recipe differs \(tweets-bow vs other\)"):
        compare_runs([a, c], previous=[])


def test_different_learning_rates_are_not_repeats(tmp_path):
    a = write_run(tmp_path, "lr-small", acc=0.62, learning_rate=1e-5)
    b = write_run(tmp_path, "lr-large", acc=0.79, learning_rate=2e-3)
    with pytest.raises(
        ConfigError, match=r"runs lr-small and lr-large .*learning_rate differs \(1e-05 vs 0.002\)"
    ):
        compare_runs([a, b], previous=[])
    # allowed by a person: two configurations, never one with a 17-point "spread"; the header says so
    s = compare_runs([a, b], previous=[], allow_mismatch="learning_rate")
    assert [c["config_id"] for c in s["configs"]] == [
        "32-true[learning_rate=1e-05]",
        "32-true[learning_rate=0.002]",
    ]
    assert [c["repeats"] for c in s["configs"]] == [1, 1]
    assert s["mismatches"] == [
        {"field": "learning_rate", "values": ["1e-05", "0.002"], "runs": ["lr-small", "lr-large"]}
    ]
    md = render_markdown(s)
    assert "NOT COMPARABLE, allowed by --allow-mismatch: learning_rate differs (1e-05 vs 0.002)" in md


def test_seed_and_bookkeeping_may_differ_within_repeats(tmp_path):
    runs = [write_run(tmp_path, "r0", thr=100.0), write_run(tmp_path, "r1", thr=104.0, seed=1, log_every=1,
                                                               checkpoint_every=50, checkpoint_format="sharded")]  # fmt: skip
    s = compare_runs(runs, previous=[])
    assert [(c["config_id"], c["repeats"]) for c in s["configs"]] == [("32-true", 2)]
    assert s["compared"] == ["precision", "compile", "strategy"] and s["mismatches"] == []
    assert comparable.BOOKKEEPING_FIELDS == (
        "log_every",
        "checkpoint_every",
        "checkpoint_format",
        "allow_16_true",
        "max_nonfinite_steps",
        "peak_flops",
    )


def test_searched_batch_sizes_are_a_compared_dimension(tmp_path):
    a = write_run(tmp_path, "a", auto_batch=True, batch=64)
    b = write_run(tmp_path, "b", precision="bf16-mixed", auto_batch=True, batch=128)
    s = compare_runs([a, b], previous=[])
    assert s["compared"] == ["precision", "compile", "strategy", "batch_size"]
    assert by_id(s)["bf16-mixed"]["batch_sizes"] == [128]
    # a fixed batch size that differs is a different setting
    c = write_run(tmp_path, "c", precision="bf16-mixed", batch=128)
    with pytest.raises(ConfigError, match=r"batch_size differs \(64 vs 128\)"):
        compare_runs([write_run(tmp_path, "d", batch=64), c], previous=[])


def test_allow_mismatch_takes_only_fields_that_must_match():
    assert comparable.parse_allowed("learning_rate, dataset_hash") == ("learning_rate", "dataset_hash")
    assert comparable.parse_allowed(None) == ()
    with pytest.raises(
        ConfigError, match="--allow-mismatch 'precision': not a field that must match; one of recipe"
    ):
        comparable.parse_allowed("precision")
    with pytest.raises(ConfigError, match="'seed'"):
        comparable.parse_allowed(["seed"])


# -- nothing decided on missing evidence -----------------------------------------------------------


def test_unevaluated_baseline_means_no_recommendation_and_strict_json(tmp_path):
    base = write_run(tmp_path, "32-true", evaluated=False)
    cand = write_run(tmp_path, "bf16-mixed", precision="bf16-mixed", thr=150.0, acc=0.8)
    s = compare_runs([base, cand], previous=[])
    assert s["recommended"] is None and s["recommended_run_id"] is None
    assert s["recommendation"].startswith("no recommendation: the baseline 32-true has no accuracy figure")
    c = by_id(s)
    assert c["bf16-mixed"]["verdict"] == "unknown"
    assert c["bf16-mixed"]["reason"].startswith("the baseline 32-true has no accuracy figure")
    assert c["32-true"]["accuracy_delta_pp"] is None
    write_reports(s, tmp_path / "out")
    on_disk = strict_loads((tmp_path / "out" / "summary.json").read_text())
    assert on_disk["recommended"] is None
    # the CLI: exit 0, the reason stated
    assert main(["compare", "--runs", f"{base},{cand}"]) == 0


def test_a_candidate_without_accuracy_cannot_pass_or_be_recommended(tmp_path):
    base = write_run(tmp_path, "32-true", acc=0.8)
    cand = write_run(tmp_path, "bf16-mixed", precision="bf16-mixed", thr=300.0, evaluated=False)
    s = compare_runs([base, cand], previous=[])
    assert by_id(s)["bf16-mixed"]["verdict"] == "unknown"
    assert by_id(s)["bf16-mixed"]["reason"].startswith("bf16-mixed has no accuracy figure")
    assert s["recommended"] == "32-true"


def test_non_finite_figures_are_no_evidence(tmp_path):
    base = write_run(tmp_path, "32-true", acc=float("-inf"))
    cand = write_run(tmp_path, "bf16-mixed", precision="bf16-mixed", thr=float("nan"), acc=0.8)
    s = compare_runs([base, cand], previous=[])
    assert s["recommended"] is None
    assert by_id(s)["bf16-mixed"]["figures"]["samples_per_s"] is None
    assert "Infinity" not in dumps_strict(s) and "NaN" not in dumps_strict(s)


def test_strict_json_writer(tmp_path):
    import numpy as np

    path = tmp_path / "x.json"
    atomic_write_json(path, {"a": float("nan"), "b": [float("inf"), 1.5, np.float32(2.5)], "c": np.int64(3),
                             "d": (float("-inf"),), "e": True, "f": Path("p")})  # fmt: skip
    assert strict_loads(path.read_text()) == {
        "a": None,
        "b": [None, 1.5, 2.5],
        "c": 3,
        "d": [None],
        "e": True,
        "f": "p",
    }


# -- the boundary and the paired test --------------------------------------------------------------


@pytest.mark.parametrize(("acc", "verdict"), [(0.795, "pass"), (0.7949, "fail"), (0.8, "pass")])
def test_tolerance_boundary_without_per_example_results(tmp_path, acc, verdict):
    base = write_run(tmp_path, "32-true", acc=0.800)
    cand = write_run(tmp_path, "bf16-mixed", precision="bf16-mixed", thr=150.0, acc=acc)
    s = compare_runs([base, cand], tolerance=0.5, previous=[])
    row = by_id(s)["bf16-mixed"]
    assert row["verdict"] == verdict and row["accuracy_test"] is None
    assert "no paired test: bf16-mixed and the baseline 32-true have no per-example results" in row["reason"]
    assert s["accuracy_test"] == "tolerance-only" and s["min_detectable_pp"] is None
    assert s["recommended"] == ("bf16-mixed" if verdict == "pass" else "32-true")


def test_significantly_worse_fails_inside_the_tolerance(tmp_path):
    ref, cand = paired(2000, only_ref=8, only_cand=0)  # -0.4 pp, but all 8 discordant pairs one way
    base = write_run(tmp_path, "32-true", acc=1.0, predictions=ref)
    c = write_run(tmp_path, "bf16-mixed", precision="bf16-mixed", thr=150.0, acc=0.996, predictions=cand)
    s = compare_runs([base, c], tolerance=0.5, previous=[])
    row = by_id(s)["bf16-mixed"]
    assert row["accuracy_delta_pp"] == -0.4
    assert row["verdict"] == "fail" and "significantly worse" in row["reason"]
    assert row["accuracy_test"]["only_reference"] == 8 and row["accuracy_test"]["only_candidate"] == 0
    assert row["accuracy_test"]["p_value"] == 0.0078125
    assert s["accuracy_test"] == "mcnemar-exact" and s["min_detectable_pp"] == 0.3
    assert s["recommended"] == "32-true"
    assert "this test split can detect differences of 0.30 pp or more" in render_markdown(s)


def test_a_split_too_small_is_inconclusive_not_pass(tmp_path):
    ref, cand = paired(100, only_ref=3, only_cand=1)  # -2 pp, p = 0.625 on 4 discordant pairs
    base = write_run(tmp_path, "32-true", acc=0.99, predictions=ref)
    c = write_run(tmp_path, "bf16-mixed", precision="bf16-mixed", thr=150.0, acc=0.97, predictions=cand)
    s = compare_runs([base, c], tolerance=0.5, previous=[])
    row = by_id(s)["bf16-mixed"]
    assert row["verdict"] == "inconclusive" and row["accuracy_test"]["p_value"] == 0.625
    assert row["accuracy_test"]["min_detectable_pp"] == 6.0
    assert s["recommended"] == "32-true"


def test_identical_predictions_pass_and_other_examples_are_not_paired(tmp_path):
    ref, cand = paired(100, only_ref=0, only_cand=0)
    base = write_run(tmp_path, "32-true", acc=1.0, predictions=ref)
    c = write_run(tmp_path, "bf16-mixed", precision="bf16-mixed", thr=150.0, acc=1.0, predictions=cand)
    s = compare_runs([base, c], previous=[])
    assert (
        by_id(s)["bf16-mixed"]["verdict"] == "pass"
        and by_id(s)["bf16-mixed"]["accuracy_test"]["p_value"] == 1.0
    )
    assert s["recommended"] == "bf16-mixed"
    other = write_run(
        tmp_path, "other", precision="bf16-mixed", thr=150.0, acc=1.0, predictions=([1] * 100, [1] * 100)
    )
    row = by_id(compare_runs([base, other], previous=[]))["bf16-mixed"]
    assert row["accuracy_test"] is None and "not the same test examples" in row["reason"]
    bare = write_run(tmp_path, "bare", precision="bf16-mixed", thr=150.0, acc=1.0)
    row = by_id(compare_runs([base, bare], previous=[]))["bf16-mixed"]
    assert "no paired test: bf16-mixed has no per-example results" in row["reason"]


def test_a_broken_predictions_file_is_bad_input(tmp_path):
    path = tmp_path / "predictions.jsonl"
    path.write_text('{"index": 1, "label": 0, "prediction": 0, "confidence": 1.0}\n')
    with pytest.raises(ConfigError, match="line 1 is not an example"):
        load_predictions(path)
    assert load_predictions(tmp_path / "absent.jsonl") is None


# -- enough evidence to speak on speed -------------------------------------------------------------


@pytest.mark.parametrize(("timed", "speed", "recommended"), [(19, "inconclusive", "32-true"), (20, "faster", "bf16-mixed"),
                                                             (None, "inconclusive", "32-true")])  # fmt: skip
def test_too_few_timed_steps_make_speed_inconclusive(tmp_path, timed, speed, recommended):
    assert MIN_TIMED_STEPS == 20
    base = write_run(tmp_path, "32-true", thr=100.0, timed=100)
    cand = write_run(tmp_path, "bf16-mixed", precision="bf16-mixed", thr=150.0, timed=timed)
    s = compare_runs([base, cand], previous=[])
    row = by_id(s)["bf16-mixed"]
    assert row["speed_verdict"] == speed and s["recommended"] == recommended
    if timed == 19:
        assert row["speed_reason"] == "bf16-mixed timed only 19 steps (fewer than 20)"
        assert "speed inconclusive: bf16-mixed timed only 19 steps" in s["recommendation"]


def test_a_speedup_within_the_repeats_spread_is_inconclusive(tmp_path):
    runs = [write_run(tmp_path, "b0", thr=90.0), write_run(tmp_path, "b1", thr=110.0, seed=1),
            write_run(tmp_path, "c0", precision="bf16-mixed", thr=120.0),
            write_run(tmp_path, "c1", precision="bf16-mixed", thr=120.0, seed=1)]  # fmt: skip
    s = compare_runs(runs, previous=[])
    row = by_id(s)["bf16-mixed"]
    # 20 samples/s apart, exactly the baseline's spread: not told from noise
    assert row["throughput_within_noise"] is True and row["speed_verdict"] == "inconclusive"
    assert row["speed_reason"] == "+20.0 samples/s is within the repeats' spread (20.0 samples/s)"
    assert s["recommended"] == "32-true"
    runs[2] = write_run(tmp_path, "c2", precision="bf16-mixed", thr=120.5)
    s = compare_runs(runs, previous=[])
    assert by_id(s)["bf16-mixed"]["speed_verdict"] == "faster" and s["recommended"] == "bf16-mixed"


def test_noise_takes_the_wider_spread_of_the_two():
    def group(lo, hi, n=2):
        return {"repeats": n, "figures": {"x": {"median": (lo + hi) / 2, "min": lo, "max": hi, "n": n}}}

    assert within_noise(group(115, 115), group(90, 110), "x") is True  # 15 apart, baseline spread 20
    assert within_noise(group(90, 110), group(115, 115), "x") is True
    assert within_noise(group(131, 131), group(90, 110), "x") is False
    assert within_noise(group(1, 1, 1), group(2, 2, 1), "x") is None  # single runs cannot tell


def test_a_slower_configuration_is_not_recommended(tmp_path):
    base = write_run(tmp_path, "32-true", thr=100.0)
    cand = write_run(tmp_path, "bf16-mixed", precision="bf16-mixed", thr=99.0)
    s = compare_runs([base, cand], previous=[])
    assert by_id(s)["bf16-mixed"]["speed_verdict"] == "not_faster" and s["recommended"] == "32-true"


# -- regression baselines comparable too -----------------------------------------------------------


def test_a_quick_example_is_no_regression_baseline_for_a_full_sweep(tmp_path):
    current = compare_runs([write_run(tmp_path, "32-true", thr=50.0)], previous=[])
    ref = {"32-true": {"recipe": "tweets-bow", "dataset_hash": "h", "device_name": "cpu-x",
                       "settings": {"max_steps": "200", "limit_train_samples": "0", "seed": "0"}}}  # fmt: skip

    def run(sweep, thr, **settings):
        record = {"recipe": "tweets-bow", "dataset_hash": "h", "device_name": "cpu-x",
                  "settings": {"max_steps": "200", "limit_train_samples": "0", "seed": "3", **settings}}  # fmt: skip
        return {
            "sweep_run_id": sweep,
            "config_id": "32-true",
            "metrics": {"samples_per_s": thr},
            "record": record,
        }

    runs = [run("quick", 97.0, max_steps="30", limit_train_samples="600"), run("full", 52.0)]
    prev = previous_from_runs(runs, current_sweep=None, references=ref)
    assert prev == [
        {"sweep_run_id": "full", "configs": {"32-true": {"samples_per_s": 52.0, "accuracy": None}}}
    ]
    assert find_regressions(current["configs"], prev, throughput_drop=0.1, accuracy_drop=1.0) == []
    # without the comparability check the quick example would have flagged a 48.5 % drop
    unchecked = previous_from_runs(runs[:1], current_sweep=None)
    assert (
        find_regressions(current["configs"], unchecked, throughput_drop=0.1, accuracy_drop=1.0)[0]["change"]
        == -0.4845
    )


def test_regression_thresholds_are_exclusive_with_the_rounding_rule():
    def row(thr, acc):
        return {"config_id": "x", "figures": {"samples_per_s": {"median": thr}, "accuracy": {"median": acc}}}

    prev = [{"sweep_run_id": "a", "configs": {"x": {"samples_per_s": 100.0, "accuracy": 0.80}}}]
    assert find_regressions([row(75.0, 0.79)], prev, throughput_drop=0.25, accuracy_drop=1.0) == []
    found = find_regressions([row(74.0, 0.789)], prev, throughput_drop=0.25, accuracy_drop=1.0)
    assert [(r["metric"], r["change"]) for r in found] == [("samples_per_s", -0.26), ("accuracy", -1.1)]


# -- exit codes -----------------------------------------------------------------------


def test_fail_on_regression_exits_3(monkeypatch, capsys):
    summary = {
        "regressed": True,
        "baseline": "32-true",
        "tolerance_pp": 0.5,
        "configs": [],
        "recommendation": "r",
    }
    monkeypatch.setattr(compare_step, "run", lambda **kw: summary)
    args = argparse.Namespace(runs="a", sweep=None, experiment=None, recipe=None, out=None, baseline="32-true",
                              tolerance=0.5, throughput_drop=0.1, accuracy_drop=1.0, allow_mismatch=None, record_sweep=False,
                              fail_on_regression=True)  # fmt: skip
    assert compare_step.cli(args) == 3
    args.fail_on_regression = False
    assert compare_step.cli(args) == 0
    summary["regressed"] = False
    args.fail_on_regression = True
    assert compare_step.cli(args) == 0


# -- whole rows pinned: every key and sentence a reader or a later step relies on -------------------


def test_a_row_and_the_recommendation_in_full(tmp_path):
    ref, cand = paired(1000, only_ref=2, only_cand=1)
    runs = [write_run(tmp_path, "b0", thr=100.0, acc=0.9, predictions=ref),
            write_run(tmp_path, "c0", precision="bf16-mixed", thr=150.0, acc=0.899, predictions=cand),
            write_run(tmp_path, "c1", precision="bf16-mixed", thr=160.0, acc=0.899, seed=1)]  # fmt: skip
    s = compare_runs(runs, previous=[])
    row = {
        k: v
        for k, v in by_id(s)["bf16-mixed"].items()
        if k not in ("figures", "run_dirs", "loss_curve", "val_curve")
    }
    assert row == {
        "config_id": "bf16-mixed", "precision": "bf16-mixed", "compile": False, "strategy": "single",
        "repeats": 2, "is_baseline": False, "run_ids": [None, None], "bf16_emulated": False,
        "batch_sizes": None, "timed_steps": 100, "speedup": 1.55, "speedup_range": [1.5, 1.6],
        "throughput_within_noise": False, "memory_ratio": 1.0, "accuracy_delta_pp": -0.1,
        "accuracy_within_noise": False,
        "accuracy_test": {"test": "mcnemar-exact", "n": 1000, "only_reference": 2, "only_candidate": 1,
                          "p_value": 1.0, "alpha": 0.05, "min_detectable_pp": 0.6, "significantly_worse": False},
        "macro_f1_delta_pp": -0.1, "ece_delta": 0.0, "verdict": "pass",
        "reason": "accuracy -0.10 pp, not more than 0.5 pp below and not significantly worse (McNemar p=1 on 1000 examples, "
                  "detectable >= 0.60 pp)",
        "speed_verdict": "faster", "speed_reason": "1.55x the baseline's samples/s",
        "time_to_target": {"reached": None, "of": 2, "speedup": None, "note": "no target_accuracy set"},
    }  # fmt: skip
    assert s["recommendation"] == "bf16-mixed: fastest configuration that keeps accuracy (1.55x the baseline)"
    assert s["recommended_run_id"] is None and s["baseline"] == "32-true"
    base = by_id(s)["32-true"]
    assert (base["verdict"], base["reason"], base["speed_verdict"], base["accuracy_delta_pp"]) == (
        "baseline", "the reference configuration", "baseline", 0.0)  # fmt: skip


def test_equal_speed_is_not_faster_and_missing_speed_is_unknown(tmp_path):
    base = write_run(tmp_path, "32-true", thr=100.0)
    same = write_run(tmp_path, "bf16-mixed", precision="bf16-mixed", thr=100.0)
    s = compare_runs([base, same], previous=[])
    row = by_id(s)["bf16-mixed"]
    assert (row["speed_verdict"], row["speed_reason"]) == ("not_faster", "1.00x the baseline's samples/s")
    assert s["recommendation"] == (
        "32-true: the baseline itself (no other configuration both keeps accuracy and is faster: "
        "bf16-mixed pass, speed not_faster: 1.00x the baseline's samples/s)"
    )
    none = write_run(tmp_path, "16-mixed", precision="16-mixed", thr=None, acc=0.5)
    s = compare_runs([base, none], previous=[])
    assert (by_id(s)["16-mixed"]["speed_verdict"], by_id(s)["16-mixed"]["speed_reason"]) == (
        "unknown", "16-mixed has no throughput figure")  # fmt: skip
    assert (
        s["recommendation"]
        == "32-true: the baseline itself (no other configuration both keeps accuracy and is faster: 16-mixed fail)"
    )
    slow_base = write_run(tmp_path, "b-none", thr=None)
    s = compare_runs([slow_base, same], previous=[])
    assert by_id(s)["bf16-mixed"]["speed_reason"] == "the baseline 32-true has no throughput figure"
    nobase = write_run(tmp_path, "b-noeval", evaluated=False)
    s = compare_runs([nobase], previous=[])
    assert s["recommendation"] == (
        f"no recommendation: the baseline 32-true has no accuracy figure (not evaluated: {nobase}); "
        "no configuration can be judged against it"
    )


def test_noise_needs_repeats_on_one_side_and_both_medians():
    def group(lo, hi, n):
        return {"repeats": n, "figures": {"x": {"median": (lo + hi) / 2, "min": lo, "max": hi, "n": n}}}

    assert within_noise(group(100, 100, 2), group(95, 95, 1), "x") is False  # repeats on one side suffice
    assert within_noise(group(100, 100, 1), group(95, 95, 2), "x") is False
    assert within_noise(group(100, 100, 2), {"repeats": 2, "figures": {"x": None}}, "x") is None
    assert within_noise({"repeats": 2, "figures": {"x": None}}, group(100, 100, 2), "x") is None


def test_regressions_in_full():
    def row(thr, acc):
        return {
            "config_id": "x",
            "figures": {"samples_per_s": thr and {"median": thr}, "accuracy": acc and {"median": acc}},
        }

    prev = [{"sweep_run_id": "a", "configs": {"x": {"samples_per_s": 100.0, "accuracy": 0.80}}}]
    assert find_regressions([row(74.0, 0.78)], prev, throughput_drop=0.25, accuracy_drop=1.0) == [
        {"config_id": "x", "metric": "samples_per_s", "previous": 100.0, "current": 74.0, "change": -0.26,
         "threshold": 0.25, "message": "throughput 26.0% below the previous sweeps (100.0 -> 74.0/s)"},
        {"config_id": "x", "metric": "accuracy", "previous": 0.8, "current": 0.78, "change": -2.0,
         "threshold": 1.0, "message": "accuracy 2.00 pp below the previous sweeps (0.8000 -> 0.7800)"},
    ]  # fmt: skip
    # no current figure, or a previous figure of 0: nothing to compare, nothing flagged
    assert find_regressions([row(None, None)], prev, throughput_drop=0.25, accuracy_drop=1.0) == []
    zero = [{"sweep_run_id": "a", "configs": {"x": {"samples_per_s": 0.0, "accuracy": None}}}]
    assert find_regressions([row(50.0, 0.8)], zero, throughput_drop=0.25, accuracy_drop=1.0) == []
    assert find_regressions([row(50.0, 0.8)], [], throughput_drop=0.25, accuracy_drop=1.0) == []


def test_setting_values_as_both_sources_spell_them():
    sv = comparable.setting_value
    assert [sv(None), sv("auto"), sv(True), sv(False), sv(0.002), sv(64), sv({"b": 1, "a": [2]}), sv([1, 2])] == [
        None, None, "true", "false", "0.002", "64", '{"a": [2], "b": 1}', "[1, 2]"]  # fmt: skip
    assert comparable.settings_of({"seed": 3, "device": "auto", "batch_size": None, "not_a_field": 1}) == {
        "seed": "3"
    }
    assert comparable.settings_of({"device": "auto"}, device="cuda") == {"device": "cuda"}
    assert comparable.split_key({"settings": {"lr": None}, "dataset_hash": "abcdefabcdefabcdef"}, ["dataset_hash", "lr"]) == (
        "[dataset_hash=abcdefabcdef,lr=none]")  # fmt: skip
    assert comparable.split_key({}, []) == ""


def test_tolerance_only_reason_in_full_and_the_uncompiled_baseline(tmp_path):
    base = write_run(tmp_path, "32-true", acc=0.800)
    cand = write_run(tmp_path, "bf16-mixed", precision="bf16-mixed", thr=150.0, acc=0.795)
    row = by_id(compare_runs([base, cand], tolerance=0.5, previous=[]))["bf16-mixed"]
    assert row["reason"] == (
        "accuracy -0.50 pp, not more than 0.5 pp below (no paired test: bf16-mixed and the baseline 32-true have no "
        "per-example results (predictions.jsonl); tolerance only)"
    )
    # --baseline 32-true picks the uncompiled group even when a compiled one is seen first
    from ampflow.compare.verdict import pick_baseline

    groups = {"32-true-compiled": {"precision": "32-true", "compile": True},
              "32-true": {"precision": "32-true", "compile": False}}  # fmt: skip
    assert pick_baseline(groups, "32-true-compiled") == "32-true-compiled"
    assert pick_baseline({k: groups[k] for k in ["32-true-compiled"]}, "32-true") == "32-true-compiled"
    assert (
        pick_baseline(
            {"a": {"precision": "32-true", "compile": True}, "b": {"precision": "32-true", "compile": False}},
            "32-true",
        )
        == "b"
    )


# -- strategy is a compared dimension (issue 14: bench sweeps over strategies) -------------------------


def write_strategy_run(root: Path, name: str, strategy: str, **kw):
    """A finished run trained under ``strategy`` (result.json's strategy and config, as train writes them)."""
    run = write_run(root, name, **kw)
    result = json.loads((run / "result.json").read_text())
    result["strategy"] = result["config"]["strategy"] = strategy
    result["world_size"] = 1 if strategy == "single" else 2
    (run / "result.json").write_text(json.dumps(result))
    return run


def test_runs_differing_in_strategy_are_comparable_configurations_never_repeats(tmp_path):
    runs = [write_strategy_run(tmp_path, "single", "single", thr=100.0),
            write_strategy_run(tmp_path, "ddp", "ddp", thr=180.0),
            write_strategy_run(tmp_path, "ddp-r1", "ddp", thr=176.0, seed=1),
            write_strategy_run(tmp_path, "fsdp-bf16", "fsdp", precision="bf16-mixed", thr=150.0)]  # fmt: skip
    s = compare_runs(runs, previous=[])
    assert s["mismatches"] == [] and "strategy" in s["compared"]
    # the id names the strategy; the same precision under two strategies is two rows, the seed a repeat
    assert [(c["config_id"], c["strategy"], c["repeats"]) for c in s["configs"]] == [
        ("32-true", "single", 1),
        ("32-true-ddp", "ddp", 2),
        ("bf16-mixed-fsdp", "fsdp", 1),
    ]
    assert by_id(s)["32-true"]["is_baseline"] and by_id(s)["32-true-ddp"]["speedup"] == pytest.approx(1.78)
    assert "| 32-true-ddp |" in render_markdown(s)
    # strategy is compared, never a setting that must match: it is not something to allow
    assert "strategy" not in comparable.allowed_fields()
    # anything else that differs beside the strategy is still refused
    other = write_strategy_run(tmp_path, "ddp-lr", "ddp", learning_rate=2e-3)
    with pytest.raises(ConfigError, match=r"learning_rate differs"):
        compare_runs([runs[0], other], previous=[])


def test_without_a_single_run_the_baseline_is_the_first_strategy_listed(tmp_path):
    from ampflow.compare.verdict import group_by_config, pick_baseline

    records = [
        {"precision": "32-true", "compile": False, "strategy": s, "metrics": {}} for s in ("ddp", "fsdp")
    ]
    groups = group_by_config(records)
    assert list(groups) == ["32-true-ddp", "32-true-fsdp"]
    assert pick_baseline(groups, "32-true") == "32-true-ddp"
    assert pick_baseline(groups, "32-true-fsdp") == "32-true-fsdp"

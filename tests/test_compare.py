"""``ampflow compare``: verdict, noise, regression logic on controlled figures, and the report's numbers
against the runs' metrics in a real `mlflow server` (session fixture).

    .venv/bin/python -m pytest tests/test_compare.py -q -x
"""

from __future__ import annotations

import json
import pkgutil
import subprocess
import sys
from pathlib import Path

import pytest

import ampflow.compare
from ampflow.cli import main
from ampflow.compare.markdown import render_markdown
from ampflow.compare.regression import previous_from_runs
from ampflow.compare.summary import compare_runs
from ampflow.config import ConfigError
from ampflow.steps.compare import EXIT_REGRESSION
from tests.fixtures_mlflow import log_sweep

ROOT = Path(__file__).resolve().parents[1]


def rec(precision, thr, acc, *, peak=100.0, compile=False, ece=0.05, name=None, timed=100):
    return {"name": name or precision, "precision": precision, "compile": compile, "strategy": "single",
            "recipe": "tweets-bow", "metrics": {"samples_per_s": thr, "accuracy": acc,
                                                "macro_f1": None if acc is None else acc - 0.01,
                                                "ece": ece, "peak_memory_bytes": peak, "timed_steps": timed},
            "loss_curve": [[0, 1.0], [1, 0.5]]}  # fmt: skip


def by_id(summary):
    return {c["config_id"]: c for c in summary["configs"]}


def test_verdict_and_recommendation_follow_the_tolerance():
    runs = [rec("32-true", 100, 0.800, peak=200), rec("bf16-mixed", 150, 0.797, peak=120),
            rec("tf32", 180, 0.790, peak=200), rec("16-mixed", 170, 0.804, peak=110)]  # fmt: skip
    s = compare_runs(runs, baseline="32-true", tolerance=0.5, previous=[])
    c = by_id(s)
    assert c["32-true"]["verdict"] == "baseline"
    assert c["bf16-mixed"]["verdict"] == "pass" and c["bf16-mixed"]["speedup"] == 1.5
    assert c["bf16-mixed"]["memory_ratio"] == 0.6
    assert c["bf16-mixed"]["accuracy_delta_pp"] == pytest.approx(-0.3)
    assert c["tf32"]["verdict"] == "fail"  # fastest, but 1 pp below the baseline
    assert s["recommended"] == "16-mixed"  # the fastest that passes
    # a wider tolerance lets the fastest one through
    assert compare_runs(runs, tolerance=1.5, previous=[])["recommended"] == "tf32"
    # single runs cannot tell noise
    assert c["bf16-mixed"]["throughput_within_noise"] is None
    md = render_markdown(s)
    assert "16-mixed" in md and "**recommended**" in md and "1.50x" in md


def test_repeats_give_medians_spread_and_within_noise():
    runs = [rec("32-true", 100, 0.80), rec("32-true", 110, 0.81), rec("32-true", 90, 0.79),
            rec("bf16-mixed", 104, 0.80), rec("bf16-mixed", 96, 0.80), rec("bf16-mixed", 106, 0.80),
            rec("tf32", 150, 0.80), rec("tf32", 152, 0.80), rec("tf32", 149, 0.80)]  # fmt: skip
    c = by_id(compare_runs(runs, previous=[]))
    thr = c["32-true"]["figures"]["samples_per_s"]
    assert (thr["median"], thr["min"], thr["max"], thr["n"]) == (100, 90, 110, 3)
    assert c["bf16-mixed"]["speedup"] == 1.04 and c["bf16-mixed"]["speedup_range"] == [0.96, 1.06]
    assert c["bf16-mixed"]["throughput_within_noise"] is True  # 4/s apart, spread 20/s
    assert c["tf32"]["throughput_within_noise"] is False  # 50/s apart
    assert c["tf32"]["accuracy_within_noise"] is True


def test_regression_against_previous_sweeps():
    runs = [rec("32-true", 100, 0.80), rec("bf16-mixed", 130, 0.78)]
    previous = [
        {
            "sweep_run_id": "a",
            "configs": {
                "32-true": {"samples_per_s": 101, "accuracy": 0.80},
                "bf16-mixed": {"samples_per_s": 160, "accuracy": 0.80},
            },
        },
        {"sweep_run_id": "b", "configs": {"bf16-mixed": {"samples_per_s": 150, "accuracy": 0.799}}},
    ]
    s = compare_runs(runs, previous=previous, throughput_drop=0.10, accuracy_drop=1.0)
    flagged = {(r["config_id"], r["metric"]) for r in s["regressions"]}
    # bf16: 130 against a median of 155 (-16%), accuracy 2 pp below; 32-true: 1% slower, inside the threshold
    assert flagged == {("bf16-mixed", "samples_per_s"), ("bf16-mixed", "accuracy")}
    assert s["regressed"] is True
    assert not compare_runs(runs, previous=previous, throughput_drop=0.2, accuracy_drop=2.5)["regressed"]


def test_previous_sweeps_are_medians_of_the_newest_other_sweeps():
    def run(sweep, cid, thr, acc=None):
        return {"sweep_run_id": sweep, "config_id": cid, "metrics": {"samples_per_s": thr, "accuracy": acc}}

    runs = [run("now", "32-true", 1), run("c", "32-true", 90, 0.8), run("c", "32-true", 110), run(None, "32-true", 5),
            run("b", "bf16-mixed", 150, 0.79), run("a", "32-true", 70, 0.7)]  # fmt: skip
    prev = previous_from_runs(runs, current_sweep="now", limit=2)
    assert prev == [
        {"sweep_run_id": "c", "configs": {"32-true": {"samples_per_s": 100, "accuracy": 0.8}}},
        {"sweep_run_id": "b", "configs": {"bf16-mixed": {"samples_per_s": 150, "accuracy": 0.79}}},
    ]


def test_bad_input_is_a_config_error():
    with pytest.raises(ConfigError, match="--baseline"):
        compare_runs([rec("bf16-mixed", 1, 0.5)], baseline="32-true", previous=[])
    assert main(["compare", "--runs", "/nonexistent/run"]) == 2
    assert main(["compare"]) == 2


@pytest.mark.slow
def test_report_from_a_tracked_sweep_and_regression_gate(tracking_env, mlflow_client, tmp_path, capsys):
    # per-example results as evaluate logs them: 500 examples, bf16 gets 10 right that 32-true misses
    # and 11 wrong that it gets right (b=11, c=10): compare --sweep pairs them like run directories
    labels = [i % 3 for i in range(500)]
    wrong = lambda bad: [(y + 1) % 3 if i in bad else y for i, y in enumerate(labels)]  # noqa: E731
    predictions = {"32-true": (labels, wrong(range(100))), "bf16-mixed": (labels, wrong(range(10, 111)))}
    first, dirs = log_sweep(
        tmp_path / "s1",
        [("32-true", 100.0, 2.0e8, 0.80), ("bf16-mixed", 140.0, 1.2e8, 0.798)],
        predictions=predictions,
    )
    out = tmp_path / "report1"
    assert main(["compare", "--sweep", first, "--out", str(out), "--fail-on-regression"]) == 0
    # the closing lines say where things went: the sweep run and every file written
    tail = capsys.readouterr().out.strip().splitlines()[-5:]
    assert tail == [
        "recommended: bf16-mixed", f"sweep run:   {first}", f"summary:     {out / 'summary.json'}",
        f"report:      {out / 'report.md'}", f"html report: {out / 'report.html'}",
    ]  # fmt: skip
    s = json.loads((out / "summary.json").read_text())
    assert (
        s["schema"] == "ampflow.compare/1" and s["sweep_run_id"] == first and s["regression_baseline"] == []
    )
    # every figure in the report is the run's metric in MLflow
    for c in s["configs"]:
        (run_id,) = c["run_ids"]
        m = mlflow_client.get_run(run_id).data.metrics
        assert c["figures"]["samples_per_s"]["median"] == m["samples_per_s"]
        assert c["figures"]["peak_memory_bytes"]["median"] == m["peak_memory_bytes"]
        assert c["figures"]["accuracy"]["median"] == m["accuracy"]
        assert c["loss_curve"] and c["loss_curve"][-1][0] == 29
        # without a manifest at hand the dataset input still carries the content hash
        assert mlflow_client.get_run(run_id).inputs.dataset_inputs[0].dataset.digest == ("ab" * 32)[:36]
    assert by_id(s)["bf16-mixed"]["speedup"] == 1.4 and s["recommended"] == "bf16-mixed"
    test = by_id(s)["bf16-mixed"]["accuracy_test"]
    assert (test["n"], test["only_reference"], test["only_candidate"]) == (500, 11, 10)
    html = (out / "report.html").read_text()
    assert html.count("data:image/png;base64,") == 4 and "bf16-mixed" in html
    arts = {a.path for a in mlflow_client.list_artifacts(first, "compare")}
    # the reports, and the table and plots as MLflow views (log_table, log_figure)
    assert arts == {"compare/summary.json", "compare/report.md", "compare/report.html", "compare/table.json",
                    "compare/samples_per_s.png", "compare/accuracy.png"}  # fmt: skip
    assert mlflow_client.get_run(first).data.tags["ampflow.recommended"] == "bf16-mixed"

    # the same summary from run directories
    s_dirs = compare_runs(dirs, previous=[])
    assert by_id(s_dirs)["bf16-mixed"]["speedup"] == 1.4

    # the next scheduled sweep got slower: flagged, and the gate exits 3
    second, _ = log_sweep(
        tmp_path / "s2", [("32-true", 99.0, 2.0e8, 0.80), ("bf16-mixed", 100.0, 1.2e8, 0.797)]
    )
    out2 = tmp_path / "report2"
    assert main(["compare", "--sweep", second, "--out", str(out2), "--fail-on-regression"]) == EXIT_REGRESSION
    s2 = json.loads((out2 / "summary.json").read_text())
    assert s2["regression_baseline"] == [first]
    assert [(r["config_id"], r["metric"]) for r in s2["regressions"]] == [("bf16-mixed", "samples_per_s")]
    # without the flag a regression is reported, not fatal; by experiment + recipe finds the latest sweep
    assert main(["compare", "--experiment", tracking_env_experiment(), "--recipe", "tweets-bow"]) == 0


def tracking_env_experiment():
    import os

    return os.environ["AMPFLOW_EXPERIMENT"]


def test_compare_imports_without_mlflow_matplotlib_or_torch():
    """The Airflow scheduler's venv imports parts of ampflow.compare and has no mlflow; matplotlib
    loads only when report.html is drawn. One fresh interpreter, so nothing imported here hides it."""
    names = ["ampflow.compare", "ampflow.tracking.queries", "ampflow.steps.compare"]
    names += [f"ampflow.compare.{m.name}" for m in pkgutil.iter_modules(ampflow.compare.__path__)]
    probe = "".join(f"import {n}\n" for n in names)
    probe += "import sys\nprint([m for m in ('mlflow', 'matplotlib', 'torch') if m in sys.modules])"
    out = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip().splitlines()[-1] == "[]"


def test_a_run_that_skipped_steps_is_flagged_in_both_reports():
    """Issue 12: a run that skipped steps (non-finite losses) says so in the report, not only in its log."""
    from ampflow.compare.html import render_html
    from ampflow.compare.markdown import render_markdown

    skipping = rec("bf16-mixed", 150, 0.80)
    skipping["metrics"]["skipped_steps"] = 16
    s = compare_runs([rec("32-true", 100, 0.80), skipping], baseline="32-true", tolerance=0.5, previous=[])
    warning = "WARNING: bf16-mixed skipped 16 steps (non-finite loss or gradients)"
    assert warning in render_markdown(s)
    assert warning in render_html(s)
    clean = compare_runs([rec("32-true", 100, 0.80), rec("bf16-mixed", 150, 0.80)], previous=[])
    assert "skipped" not in render_markdown(clean)

"""Time to a target accuracy: the validation curve and training clock (scripted), the sharded validation,
real tiny runs (early stop, never reached, resume keeps the history, MLflow) and the compare report.

Never asserts on wall-clock time: clocks are scripted, and real runs are checked for consistency between
result.json's figures, its validation curve and the checkpoint.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from ampflow.cli import main
from ampflow.compare.markdown import render_markdown
from ampflow.compare.summary import compare_runs
from ampflow.config import ConfigError, RunConfig
from ampflow.engine.validation import TrainClock, ValidationCurve, due, shard_indices, val_accuracy
from tests.recipes_fixture import NAME, write_dataset

torch.set_num_threads(1)


class Ticks:
    """A clock the test moves by hand."""

    def __init__(self, t: float = 0.0):
        self.t = t

    def __call__(self) -> float:
        return self.t


# -- the pure parts ---------------------------------------------------------------------------------


def test_training_clock_counts_from_start_less_exclusions_plus_the_resumed_offset():
    ticks = Ticks(100.0)
    clock = TrainClock(offset_s=7.0, clock=ticks)
    assert clock.seconds() == 7.0  # before the first step: what the earlier process counted
    clock.start()
    ticks.t = 104.0
    clock.exclude(1.5)  # a validation
    clock.start()  # a second start does not restart the clock
    ticks.t = 110.0
    assert clock.seconds() == pytest.approx(7.0 + 10.0 - 1.5)
    assert clock.seconds(now=105.0) == pytest.approx(7.0 + 5.0 - 1.5)


def test_first_validation_at_or_above_the_target_gives_steps_and_time():
    curve = ValidationCurve(0.8)
    scripted = [(5, 1.0, 0.5), (10, 2.0, 0.79), (15, 3.0, 0.8), (20, 4.0, 0.7), (25, 5.0, 0.95)]
    firsts = [curve.record(*p) for p in scripted]
    assert firsts == [False, False, True, False, False]  # exactly at the target counts; only the first
    assert curve.figures() == {"steps_to_target": 15, "time_to_target_s": 3.0, "final_val_accuracy": 0.95}


@pytest.mark.parametrize(
    "target, accuracies",
    [(0.9, [0.5, 0.89]), (0.5, [float("nan")]), (None, [0.99]), (0.5, [])],
    ids=["below", "nan", "no-target", "no-validation"],
)
def test_never_reached_is_null_never_zero(target, accuracies):
    curve = ValidationCurve(target)
    for i, acc in enumerate(accuracies):
        curve.record(5 * (i + 1), float(i + 1), acc)
    fig = curve.figures()
    assert fig["steps_to_target"] is None and fig["time_to_target_s"] is None


def test_validation_cadence_includes_the_last_step():
    assert [s for s in range(1, 13) if due(s, 12, 5)] == [5, 10, 12]
    assert [s for s in range(1, 13) if due(s, 12, 0)] == []
    assert [s for s in range(1, 11) if due(s, 10, 5)] == [5, 10]


def test_config_ties_target_to_validation():
    with pytest.raises(ConfigError, match="val_every"):
        RunConfig(target_accuracy=0.8)
    with pytest.raises(ConfigError, match="target_accuracy"):
        RunConfig(val_every=5, stop_at_target=True)
    with pytest.raises(ConfigError, match="fraction"):
        RunConfig(val_every=5, target_accuracy=80)
    c = RunConfig().with_overrides(["val_every=5", "target_accuracy=0.8", "price_per_device_hour=2"])
    assert (c.val_every, c.target_accuracy, c.price_per_device_hour) == (5, 0.8, 2.0)


@pytest.mark.parametrize("n, world", [(10, 3), (7, 2), (2, 4), (8, 1)])
def test_shards_are_equal_sized_and_cover_every_example_once(n, world):
    shards = [shard_indices(n, r, world) for r in range(world)]
    assert len({len(idx) for idx, _ in shards}) == 1  # same forward calls on every rank (FSDP)
    counted = sorted(int(i) for idx, ok in shards for i in idx[ok])
    assert counted == list(range(n))


def test_sharded_validation_sums_to_the_whole_split_accuracy():
    """Each rank's count over n (the all-reduce is the identity in one process) adds up to the
    single-process accuracy; eval mode is used for the pass and the training mode put back."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Dropout(0.5), torch.nn.Linear(8, 3))

    class Wrap(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.net = model

        def forward(self, x):
            return self.net(x)

    net = Wrap().train()
    x, y = torch.randn(23, 4), torch.randint(0, 3, (23,))
    policy = RunConfigPolicy()
    kw = {"policy": policy, "batch_size": 5, "device": torch.device("cpu")}
    whole = val_accuracy(net, {"x": x}, y, rank=0, world=1, **kw)
    net.eval()
    expect = float((net(x).argmax(1) == y).float().mean())
    net.train()
    assert whole == pytest.approx(expect)
    parts = [val_accuracy(net, {"x": x}, y, rank=r, world=3, **kw) for r in range(3)]
    assert sum(parts) == pytest.approx(whole)
    assert net.training


class RunConfigPolicy:
    """The one policy hook validation uses: an autocast context (none, as under 32-true)."""

    def autocast(self):
        import contextlib

        return contextlib.nullcontext()


# -- real tiny runs ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return write_dataset(tmp_path_factory.mktemp("tiny-val") / "data")


def train(data: Path, out: Path, *extra: str) -> int:
    return main(
        ["train", "--recipe", NAME, "--data", str(data), "--out", str(out), "--set", "warmup_steps=2", *extra]
    )


def result(run: Path) -> dict:
    return json.loads((run / "result.json").read_text())


def test_early_stop_at_the_target_step_and_consistent_figures(data, tmp_path, monkeypatch):
    monkeypatch.setenv("AMPFLOW_TRACKING", "off")
    run = tmp_path / "run"
    assert train(data, run, "--set", "max_steps=60", "--set", "val_every=3", "--set", "target_accuracy=0.5",
                 "--set", "stop_at_target=true", "--set", "price_per_device_hour=2") == 0  # fmt: skip
    r = result(run)
    m, curve = r["metrics"], r["val_curve"]
    assert r["stopped_at_target"] is True
    assert curve[-1][2] >= 0.5 and all(p[2] < 0.5 for p in curve[:-1])  # stopped at the first reach
    assert [p[0] for p in curve] == [3 * (i + 1) for i in range(len(curve))]
    assert m["steps"] == m["steps_to_target"] == curve[-1][0] < 60
    assert m["time_to_target_s"] == curve[-1][1] > 0
    assert all(a[1] < b[1] for a, b in zip(curve, curve[1:], strict=False))  # the clock moves forward
    assert m["final_val_accuracy"] == curve[-1][2]
    assert m["validation_s"] > 0
    assert m["cost_to_target"] == pytest.approx(m["time_to_target_s"] / 3600 * 2)
    assert m["cost_per_run"] == pytest.approx(m["train_wall_s"] / 3600 * 2)
    # a retry of the finished run (orchestrators add --resume) trains nothing and keeps the result
    assert train(data, run, "--resume", "--set", "max_steps=60", "--set", "val_every=3",
                 "--set", "target_accuracy=0.5", "--set", "stop_at_target=true",
                 "--set", "price_per_device_hour=2") == 0  # fmt: skip
    assert result(run) == r


def test_never_reached_and_resume_keeps_the_validation_history(data, tmp_path, monkeypatch):
    monkeypatch.setenv("AMPFLOW_TRACKING", "off")
    run = tmp_path / "run"
    common = ("--set", "val_every=4", "--set", "target_accuracy=1.0", "--set", "checkpoint_every=4")
    assert train(data, run, "--set", "max_steps=8", *common) == 0
    first = result(run)
    assert [p[0] for p in first["val_curve"]] == [4, 8]
    assert first["metrics"]["steps_to_target"] is None and first["metrics"]["time_to_target_s"] is None
    assert first["metrics"]["cost_to_target"] is None and first["stopped_at_target"] is False
    saved = torch.load(run / "checkpoint.pt", weights_only=True)["progress"]
    assert saved["val_curve"] == first["val_curve"] and saved["train_clock_s"] >= first["val_curve"][-1][1]
    assert train(data, run, "--resume", "--set", "max_steps=12", *common) == 0
    second = result(run)
    assert second["val_curve"][:2] == first["val_curve"]  # the history survived the resume
    assert [p[0] for p in second["val_curve"]] == [4, 8, 12]
    assert second["val_curve"][2][1] > saved["train_clock_s"]  # the clock continued, not restarted


def test_validation_curve_and_figures_reach_mlflow(data, tmp_path, tracking_env, mlflow_client):
    run = tmp_path / "run"
    assert (
        train(data, run, "--set", "max_steps=8", "--set", "val_every=4", "--set", "target_accuracy=0.3") == 0
    )
    r = result(run)
    run_id = json.loads((run / "tracking" / "state.json").read_text())["run_id"]
    history = mlflow_client.get_metric_history(run_id, "train/val_accuracy")
    assert sorted((h.step, h.value) for h in history) == [(p[0], p[2]) for p in r["val_curve"]]
    logged = mlflow_client.get_run(run_id).data.metrics
    assert logged["steps_to_target"] == r["metrics"]["steps_to_target"] == 4
    assert logged["time_to_target_s"] == pytest.approx(r["metrics"]["time_to_target_s"])
    assert "energy_j" not in logged  # unavailable here: left out, never logged as 0


# -- the compare report -----------------------------------------------------------------------------


def write_run(root: Path, name: str, precision: str, tt: float | None, *, seed: int = 0, final: float = 0.85,
              jps: float | None = None, cost1k: float | None = None) -> Path:  # fmt: skip
    """A finished run directory whose time to target (None: never reached) the test chooses."""
    run = root / name
    run.mkdir(parents=True)
    config = RunConfig(recipe="tweets-bow", precision=precision, seed=seed, val_every=10, target_accuracy=0.8,
                       price_per_device_hour=2.0).to_dict()  # fmt: skip
    config.update({"batch_size": 32, "max_steps": 100, "learning_rate": 1e-3, "warmup_steps": 5})
    curve = [[10, 1.0, 0.5], [20, 2.0, final]] if tt is None else [[10, tt / 2, 0.5], [20, tt, 0.81]]
    result = {
        "recipe": "tweets-bow", "precision": precision, "compile": False, "strategy": "single", "config": config,
        "device": "cpu", "device_name": "cpu-x", "dataset_hash": "d" * 64,
        "metrics": {"samples_per_s": 100.0, "peak_memory_bytes": 1.0, "timed_steps": 50, "batch_size": 32,
                    "time_to_target_s": tt, "steps_to_target": None if tt is None else 20,
                    "final_val_accuracy": curve[-1][2], "joules_per_sample": jps, "cost_per_1k_samples": cost1k,
                    "cost_to_target": None if tt is None else tt / 3600 * 2},
        "val_curve": curve,
        "energy": {"source": None if jps is None else "rapl", "domains": [],
                   "reason": None if jps is not None else "no /sys/class/powercap"},
    }  # fmt: skip
    (run / "result.json").write_text(json.dumps(result))
    (run / "eval").mkdir()
    (run / "eval" / "eval.json").write_text(json.dumps({"accuracy": 0.8, "macro_f1": 0.8, "ece": 0.05}))
    return run


def test_compare_reports_time_to_target_speedup_and_never_reached(tmp_path):
    runs = [
        write_run(tmp_path, "b0", "32-true", 10.0, cost1k=0.5),
        write_run(tmp_path, "b1", "32-true", 12.0, seed=1, cost1k=0.5),
        write_run(tmp_path, "m0", "bf16-mixed", 5.5, cost1k=0.25),
        write_run(tmp_path, "t0", "bf16-true", None, final=0.78),
        write_run(tmp_path, "p0", "tf32", 4.0),
        write_run(tmp_path, "p1", "tf32", None, seed=1),
    ]
    s = compare_runs(runs, previous=[])
    rows = {c["config_id"]: c for c in s["configs"]}
    assert s["target_accuracy"] == 0.8 and s["val_every"] == 10
    assert s["energy_note"] == "no /sys/class/powercap"
    assert rows["32-true"]["figures"]["time_to_target_s"]["median"] == 11.0
    assert rows["32-true"]["time_to_target"]["speedup"] is None  # the baseline itself
    assert rows["bf16-mixed"]["time_to_target"]["speedup"] == 2.0  # 11 / 5.5
    never = rows["bf16-true"]["time_to_target"]
    assert (never["reached"], never["speedup"]) == (0, None)
    assert "never reached the target 0.8 (last val accuracy 0.7800)" in never["note"]
    partial = rows["tf32"]["time_to_target"]
    assert (partial["reached"], partial["of"], partial["speedup"]) == (1, 2, None)
    # reported, not decided on: the recommendation is the same as without the figures
    assert s["recommendation"].startswith("32-true")
    md = render_markdown(s)
    assert (
        "| config | samples/s | final val acc | steps to target | time to target s | speedup to target" in md
    )
    assert "| bf16-mixed | 100.0 | 0.8100 | 20 | 5.5 | 2.00x | n/a | 0.25 | 0.003056 |" in md
    assert "| bf16-true | 100.0 | 0.7800 | n/a | never | n/a |" in md
    assert "| tf32 | 100.0 (100.0-100.0) | 0.8300 (0.8100-0.8500) | 20 | 4 [1/2] | n/a |" in md
    assert "- tf32: reached the target 0.8 in only 1 of 2 runs" in md
    assert "- bf16-true: never reached the target 0.8" in md
    assert "energy unavailable: no /sys/class/powercap" in md


def test_html_report_has_the_table_and_the_time_to_accuracy_plot(tmp_path):
    pytest.importorskip("matplotlib")
    from ampflow.compare.html import render_html, render_plots

    runs = [write_run(tmp_path, "b0", "32-true", 10.0), write_run(tmp_path, "m0", "bf16-mixed", None)]
    s = compare_runs(runs, previous=[])
    assert "time_to_accuracy" in render_plots(s)
    page = render_html(s)
    assert "<h2>Time to target and cost</h2>" in page and "<td title='never reached the target 0.8" in page

"""``ampflow evaluate`` through ampflow.cli.main on the tiny fixture: eval.json content, metric maths
checked against scikit-learn and hand-computed ECE, precision carried over, bad input."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.metrics import f1_score

from ampflow.cli import main
from ampflow.engine.metrics import confusion_matrix, expected_calibration_error, macro_f1
from tests.recipes_fixture import LABELS, NAME, write_dataset

torch.set_num_threads(1)
EVAL_KEYS = {"accuracy", "macro_f1", "loss", "ece", "confusion_matrix", "labels", "n", "precision"}


@pytest.fixture(autouse=True)
def _no_tracking(monkeypatch):
    monkeypatch.setenv("AMPFLOW_TRACKING", "off")


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Iterator[tuple[Path, Path]]:
    # a module-scoped fixture cannot use the function-scoped monkeypatch; never leak the switch to
    # the tracking tests that run later in the same process
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("AMPFLOW_TRACKING", "off")
        yield _train_once(tmp_path_factory)


def _train_once(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("ev")
    data = write_dataset(root / "data")
    run = root / "run"
    assert (
        main(
            [
                "train",
                "--recipe",
                NAME,
                "--data",
                str(data),
                "--out",
                str(run),
                "--precision",
                "bf16-mixed",
                "--set",
                "max_steps=40",
            ]
        )
        == 0
    )
    return data, run


def evaluate(data: Path, run: Path, out: Path, *extra: str, recipe: str = NAME) -> int:
    return main(
        [
            "evaluate",
            "--recipe",
            recipe,
            "--data",
            str(data),
            "--checkpoint",
            str(run),
            "--out",
            str(out),
            *extra,
        ]
    )


def test_eval_json(trained, tmp_path):
    data, run = trained
    assert evaluate(data, run, tmp_path / "eval") == 0
    e = json.loads((tmp_path / "eval" / "eval.json").read_text())
    assert EVAL_KEYS <= set(e)
    assert e["precision"] == "bf16-mixed"  # the run's precision, from the checkpoint
    assert e["n"] == 192 and e["labels"] == LABELS
    cm = np.array(e["confusion_matrix"])
    assert cm.shape == (3, 3) and cm.sum() == 192
    assert e["accuracy"] == pytest.approx(np.trace(cm) / 192)
    assert e["accuracy"] > 0.5  # chance is 1/3: the trained weights were loaded
    assert 0 <= e["ece"] <= 1 and e["loss"] > 0
    assert e["macro_f1"] == pytest.approx(macro_f1(cm))
    # the per-example results beside eval.json: one line per test example, in split order, and the
    # figures above are exactly theirs (compare pairs these files for McNemar's test)
    assert e["predictions_file"] == "predictions.jsonl"
    lines = (tmp_path / "eval" / "predictions.jsonl").read_text().splitlines()
    rows = [json.loads(line) for line in lines]
    assert len(rows) == 192 and [r["index"] for r in rows] == list(range(192))
    assert sum(r["label"] == r["prediction"] for r in rows) == int(np.trace(cm))
    assert all(1 / 3 - 1e-6 <= r["confidence"] <= 1.0 for r in rows)
    from ampflow.compare.records import load_predictions

    labels, correct = load_predictions(tmp_path / "eval" / "predictions.jsonl")
    assert len(labels) == 192 and sum(correct) == int(np.trace(cm))


def test_eval_batch_size_does_not_change_results(trained, tmp_path):
    data, run = trained
    assert evaluate(data, run, tmp_path / "a", "--set", "eval_batch_size=7") == 0
    assert evaluate(data, run, tmp_path / "b") == 0
    a, b = (json.loads((tmp_path / d / "eval.json").read_text()) for d in ("a", "b"))
    assert a["confusion_matrix"] == b["confusion_matrix"]
    assert a["loss"] == pytest.approx(b["loss"], rel=1e-3)


def test_metric_maths():
    rng = np.random.default_rng(0)
    y, p = rng.integers(0, 4, 300), rng.integers(0, 4, 300)
    p[:5] = 0  # keep every class present in predictions
    cm = confusion_matrix(y, p, 4)
    assert macro_f1(cm) == pytest.approx(f1_score(y, p, average="macro"))
    # two bins used: conf 0.95 with 50% correct, conf 0.25 with all correct
    conf = np.array([0.95, 0.95, 0.25, 0.25])
    correct = np.array([1, 0, 1, 1])
    assert expected_calibration_error(conf, correct, bins=15) == pytest.approx(0.5 * 0.45 + 0.5 * 0.75)
    assert expected_calibration_error(np.array([1.0, 1.0]), np.array([1, 1])) == 0.0


def test_bad_input_exits_2(trained, tmp_path, capsys):
    data, run = trained
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "checkpoint.pt").write_bytes(b"\x00garbage")
    assert evaluate(data, bad, tmp_path / "e1") == 2
    assert "unreadable checkpoint" in capsys.readouterr().err
    assert evaluate(data, tmp_path / "missing", tmp_path / "e2") == 2
    assert "no checkpoint" in capsys.readouterr().err
    other = write_dataset(tmp_path / "other", seed=3)
    assert evaluate(other, run, tmp_path / "e3") == 2
    assert "content hash differs" in capsys.readouterr().err
    assert evaluate(data, run, tmp_path / "e4", "--set", "learning_rate=1") == 2
    assert "only eval_batch_size, device may change" in capsys.readouterr().err
    assert not any((tmp_path / d).exists() for d in ("e1", "e2", "e3", "e4"))


@pytest.mark.slow
def test_tweets_bow_subset_train_and_evaluate(tmp_path):
    """The real built-in recipe end to end on a small stratified subset of the tweets."""
    data, run = tmp_path / "data", tmp_path / "run"
    assert main(["prep", "--recipe", "tweets-bow", "--out", str(data), "--limit", "900"]) == 0
    assert (
        main(
            [
                "train",
                "--recipe",
                "tweets-bow",
                "--data",
                str(data),
                "--out",
                str(run),
                "--set",
                "max_steps=8",
                "--set",
                "warmup_steps=2",
                "--set",
                "batch_size=32",
            ]
        )
        == 0
    )
    r = json.loads((run / "result.json").read_text())
    assert r["recipe"] == "tweets-bow" and r["metrics"]["tokens_per_s"] > 0
    assert evaluate(data, run, run / "eval", recipe="tweets-bow") == 0
    e = json.loads((run / "eval" / "eval.json").read_text())
    assert e["labels"] == ["negative", "neutral", "positive"]
    assert e["n"] == sum(map(sum, e["confusion_matrix"]))

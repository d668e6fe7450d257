"""``ampflow register``: the champion and the candidate are scored on the CURRENT test split, each under
its own precision; ``champion`` moves only when :func:`ampflow.compare.stats.accuracy_verdict` says
"pass". Real `mlflow server` (session fixture), real pt2 models logged by the tracker.

The models read their prediction from the data: the test split's ``x`` holds, for each model, a
one-hot block of what that model predicts, so every model's per-example correctness (and hence both
accuracies and McNemar's discordant pairs) is chosen here, exactly.

    .venv/bin/python -m pytest tests/test_register.py -q -x
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from ampflow import tracking
from ampflow.cli import main
from ampflow.config import RunConfig
from ampflow.data.manifest import MANIFEST, SCHEMA, hash_arrays
from ampflow.io import atomic_write_json
from ampflow.steps import register
from ampflow.tracking import schema

pytestmark = pytest.mark.slow

RECIPE = "tests.recipes_fixture:tiny"
N = 1000
BLOCKS = {"A": 0, "B": 1, "C": 2}
# examples each model gets right, out of N: A 800 (the champion); B 795 = A minus 10, plus 5 that A
# misses (b=10, c=5: not significant, exactly 0.5 pp below); C 794 (b=11, c=5: one example past it)
RIGHT = {
    "A": set(range(800)),
    "B": set(range(10, 805)),
    "C": set(range(11, 805)),
}


class BlockModel(torch.nn.Module):
    """Predicts what its block of ``x`` says; ``block=None``: always class 0 (about a third right)."""

    def __init__(self, block: int | None):
        super().__init__()
        self.linear = torch.nn.Linear(3 * len(BLOCKS), 3)
        with torch.no_grad():
            self.linear.weight.zero_()
            self.linear.bias.zero_()
            if block is None:
                self.linear.bias[0] = 1.0
            else:
                self.linear.weight[:, 3 * block : 3 * block + 3] = torch.eye(3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x)


def _dataset(root):
    labels = np.arange(N) % 3
    x = np.zeros((N, 3 * len(BLOCKS)), np.float32)
    for name, block in BLOCKS.items():
        pred = np.where(np.isin(np.arange(N), list(RIGHT[name])), labels, (labels + 1) % 3)
        x[np.arange(N), 3 * block + pred] = 1.0
    arrays = {"test": {"x": x, "labels": labels.astype(np.int64)}}
    (root / "test").mkdir(parents=True)
    for name, arr in arrays["test"].items():
        np.save(root / "test" / f"{name}.npy", arr)
    atomic_write_json(
        root / MANIFEST,
        {"schema": SCHEMA, "recipe": RECIPE, "arrays": ["x", "labels"], "rows": {"test": N},
         "label_names": ["a", "b", "c"], "content_hash": hash_arrays(arrays),
         "info": {"num_features": x.shape[1], "num_classes": 3}},
    )  # fmt: skip
    return root


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return _dataset(tmp_path_factory.mktemp("register-data"))


def _candidate(root, model, *, accuracy, precision="32-true", uri=None):
    """A train run the way train + evaluate leave it (the stored accuracy is whatever the caller says it
    measured back then), and the summary.json that recommends it. Returns the summary path."""
    run_dir = root / "run"
    t = tracking.start_run("train", config=RunConfig(recipe=RECIPE, precision=precision), run_dir=run_dir)
    t.log_params({"dataset_hash": "sha256:" + "ab" * 32})
    if model is not None:
        t.log_model(model, input_example={"x": np.zeros((2, 3 * len(BLOCKS)), np.float32)})
    if accuracy is not None:
        t.log_summary({"accuracy": accuracy})
    t.close("FINISHED")
    summary = {
        "recipe": RECIPE, "recommended": precision, "sweep_run_id": None, "tracking_uri": uri,
        "configs": [{"config_id": precision, "precision": precision, "run_ids": [t.run_id]}],
    }  # fmt: skip
    path = root / "summary.json"
    path.write_text(json.dumps(summary))
    return path


def _register(summary, data, *extra):
    code = main(["register", "--summary", str(summary), "--data", str(data), *extra])
    text = summary.with_name("register.json").read_text()
    # strict JSON: NaN or Infinity anywhere would raise here
    return code, json.loads(text, parse_constant=lambda c: pytest.fail(f"{c} in register.json"))


def test_the_current_test_split_decides(tracking_env, mlflow_client, data, tmp_path):
    name = register.default_model_name(RECIPE)  # a module:function recipe: default name must work
    assert name.startswith("ampflow-tests.recipes_fixture-tiny-")

    code, r1 = _register(_candidate(tmp_path / "a", BlockModel(0), accuracy=0.80), data)
    assert code == 0 and r1["promoted"] is True and r1["champion_before"] is None
    assert r1["model_name"] == name and r1["accuracy"] == 0.8

    # stored 0.99 (measured on some other data), 0.334 on the current split: significantly worse
    code, r2 = _register(_candidate(tmp_path / "d", BlockModel(None), accuracy=0.99), data)
    assert code == 0 and r2["promoted"] is False and r2["verdict"] == "fail"
    assert r2["champion_before"]["accuracy"] == 0.8 and r2["paired_test"]["significantly_worse"] is True
    assert mlflow_client.get_model_version_by_alias(name, "champion").version == r1["version"]
    # both figures and the paired test on the version and on the candidate's run
    v2 = mlflow_client.get_model_version(name, r2["version"])
    assert float(v2.tags["ampflow.promotion.champion_accuracy"]) == 0.8
    assert float(v2.tags["ampflow.promotion.candidate_accuracy"]) == r2["accuracy"] < 0.34
    assert float(v2.tags["ampflow.promotion.mcnemar_p"]) < 0.05
    assert v2.tags["ampflow.promotion.dataset_hash"] == r2["dataset_hash"]
    assert r2["dataset_hash"].startswith("sha256:")
    run2 = mlflow_client.get_run(r2["run_id"])
    assert run2.data.metrics["promotion/champion_accuracy"] == 0.8
    assert run2.data.tags["ampflow.promotion.dataset_hash"] == r2["dataset_hash"]
    assert run2.data.tags["ampflow.promotion.promoted"] == "false"

    # one example past the tolerance: 0.794 vs 0.800 = -0.6 pp, not significant -> inconclusive, kept out
    code, r3 = _register(_candidate(tmp_path / "c", BlockModel(2), accuracy=0.99), data)
    assert (code, r3["promoted"], r3["verdict"], r3["delta_pp"]) == (0, False, "inconclusive", -0.6)

    # the champion looked better only on its old test set (stored 0.80 > 0.70); on the current split
    # the candidate is exactly at the tolerance: 0.795 vs 0.800 -> -0.5 pp, promoted. bf16-mixed: its own
    code, r4 = _register(
        _candidate(tmp_path / "b", BlockModel(1), accuracy=0.70, precision="bf16-mixed"), data
    )
    assert (code, r4["promoted"], r4["verdict"], r4["delta_pp"]) == (0, True, "pass", -0.5)
    assert r4["accuracy"] == 0.795 and r4["precision"] == "bf16-mixed"
    assert r4["champion_before"] == {"version": r1["version"], "accuracy": 0.8, "precision": "32-true",
                                     "unloadable": None}  # fmt: skip
    assert mlflow_client.get_model_version_by_alias(name, "champion").version == r4["version"]


def test_boundary_literals_follow_the_shared_rule():
    from ampflow.compare.stats import mcnemar

    not_significant = mcnemar([True] * 10 + [False] * 5, [False] * 10 + [True] * 5)
    assert register.decide(0.795, 0.800, 0.5, not_significant)[:2] == (True, "pass")
    assert register.decide(0.794, 0.800, 0.5, not_significant)[:2] == (False, "inconclusive")
    assert register.decide(0.795, 0.800, 0.5, None)[3] == -0.5


def test_bad_input_exits_2_before_anything_is_registered(tracking_env, mlflow_client, data, tmp_path, capsys):
    # never evaluated: no accuracy figure -> exit 2, one line, nothing registered
    summary = _candidate(tmp_path / "u", BlockModel(0), accuracy=None)
    name = f"unevaluated-{tmp_path.name}"
    assert main(["register", "--summary", str(summary), "--data", str(data), "--model-name", name]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "accuracy" in err and "Traceback" not in err
    assert not mlflow_client.search_registered_models(f"name = '{name}'")

    # an invalid --model-name is refused before any MLflow client exists
    import mlflow.tracking

    def no_server(*a, **k):
        raise AssertionError("the server was contacted")

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(mlflow.tracking, "MlflowClient", no_server)
        for bad in ("a/b", "my:digits", "..x", " "):
            argv = ["register", "--summary", str(summary), "--data", str(data), "--model-name", bad]
            assert main(argv) == 2
            assert "--model-name" in capsys.readouterr().err

    # default names are valid MLflow names, stable, and distinct for distinct references
    from mlflow.utils.validation import _validate_model_name

    for ref in ("examples.my_recipe:digits", "tweets-bow", "a/b:c", "..x"):
        n = register.default_model_name(ref)
        _validate_model_name(n)
        register.check_model_name(n)
        assert n == register.default_model_name(ref)
    assert register.default_model_name("tweets-bow") == "ampflow-tweets-bow"
    assert register.default_model_name("my:digits") != register.default_model_name("my-digits")


class Untraceable(BlockModel):
    """Data-dependent control flow: torch.export cannot trace it, the tracker logs a pickle."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if float(x.sum()) > -1.0:
            return self.linear(x)
        return -self.linear(x)


def test_an_unloadable_champion_blocks_promotion_unless_allowed(
    tracking_env, mlflow_client, data, tmp_path, capsys, monkeypatch
):
    name = f"unloadable-{tmp_path.name}"
    # pt2 export fails while the server answers: a pickle is logged, no "unreachable", no offline copy
    t = tracking.start_run("train", config=RunConfig(recipe=RECIPE), run_dir=tmp_path / "p")
    t.log_model(Untraceable(0), input_example={"x": np.zeros((2, 3 * len(BLOCKS)), np.float32)})
    assert t.writer.down_since is None
    t.close("FINISHED")
    assert "unreachable" not in capsys.readouterr().err
    assert not list((tmp_path / "p" / "tracking").glob("model-*"))
    run = mlflow_client.get_run(t.run_id)
    assert run.data.tags["ampflow.model_format"] == "pickle"
    model_uri = run.data.tags[schema.TAG_MODEL_URI]
    # it becomes champion by hand; where MLflow may not unpickle (hardened hosts) it cannot be scored
    mlflow_client.create_registered_model(name)
    logged = mlflow_client.get_logged_model(model_uri.split("/", 1)[1])
    mv = mlflow_client.create_model_version(
        name, logged.artifact_location, run_id=t.run_id, model_id=logged.model_id,
        tags={schema.TAG_PRECISION: "32-true"},
    )  # fmt: skip
    mlflow_client.set_registered_model_alias(name, "champion", mv.version)

    summary = _candidate(tmp_path / "a", BlockModel(0), accuracy=0.8)
    monkeypatch.setenv("MLFLOW_ALLOW_PICKLE_DESERIALIZATION", "false")
    code, r = _register(summary, data, "--model-name", name)
    assert (code, r["promoted"]) == (0, False)
    assert r["champion_before"]["unloadable"] and "--allow-unloadable-champion" in r["reason"]
    assert "cannot be loaded" in capsys.readouterr().err
    code, r = _register(summary, data, "--model-name", name, "--allow-unloadable-champion")
    assert (code, r["promoted"]) == (0, True)
    assert mlflow_client.get_model_version_by_alias(name, "champion").version == r["version"]
    assert math.isclose(r["accuracy"], 0.8)


def test_a_summary_without_a_tracked_run_is_bad_input(data, tmp_path):
    summary = tmp_path / "summary.json"
    summary.write_text(
        json.dumps(
            {
                "recipe": RECIPE,
                "recommended": "32-true",
                "configs": [{"config_id": "32-true", "run_ids": [None]}],
            }
        )
    )
    assert main(["register", "--summary", str(summary), "--data", str(data)]) == 2
    assert main(["register", "--summary", str(tmp_path / "missing.json"), "--data", str(data)]) == 2
    assert main(["register", "--summary", str(summary), "--data", str(tmp_path)]) == 2  # no manifest


def test_a_promotion_stands_only_if_the_alias_did_not_move_meanwhile(
    tracking_env, mlflow_client, data, tmp_path, monkeypatch
):
    """Two retrain runs deciding at once: while this register scores, another one moves the alias (done
    here, on the real server, at the moment the decision is taken). The candidate that beat the
    champion it was scored against must not replace a champion nobody compared it with."""
    name = "moved-alias"
    code, r1 = _register(_candidate(tmp_path / "a", BlockModel(0), accuracy=0.8), data, "--model-name", name)
    code, r2 = _register(_candidate(tmp_path / "c", BlockModel(2), accuracy=0.8), data, "--model-name", name)
    assert (r1["promoted"], r2["promoted"]) == (True, False)

    decide = register._decision

    def racing(*args, **kwargs):
        decision = decide(*args, **kwargs)
        mlflow_client.set_registered_model_alias(name, "champion", r2["version"])
        return decision

    monkeypatch.setattr(register, "_decision", racing)
    code, r3 = _register(_candidate(tmp_path / "b", BlockModel(1), accuracy=0.8), data, "--model-name", name)
    # against v1 it passes (-0.5 pp, the tolerance), but v1 is no longer the champion
    assert code == 0 and r3["verdict"] == "pass" and r3["promoted"] is False
    assert r3["champion_before"]["version"] == r1["version"]
    assert r3["reason"].startswith(
        f"the alias moved: 'champion' moved from v{r1['version']} to v{r2['version']}"
    )
    assert mlflow_client.get_model_version_by_alias(name, "champion").version == r2["version"]
    v3 = mlflow_client.get_model_version(name, r3["version"])
    assert v3.tags["ampflow.promotion.promoted"] == "false"


# -- --champion-version: the champion the caller looked up is the one scored --------------------------


def test_champion_version_equal_to_the_alias_promotes_as_before(tracking_env, mlflow_client, data, tmp_path):
    name = f"expected-{tmp_path.name}"
    _, r1 = _register(_candidate(tmp_path / "a", BlockModel(0), accuracy=0.8), data, "--model-name", name)
    assert r1["promoted"] is True and r1["champion_expected"] is None and r1["alias_version"] is None

    extra = ("--model-name", name, "--champion-version", r1["version"])
    code, r2 = _register(_candidate(tmp_path / "b", BlockModel(1), accuracy=0.7), data, *extra)
    assert (code, r2["promoted"], r2["verdict"], r2["delta_pp"]) == (0, True, "pass", -0.5)
    assert r2["champion_before"]["version"] == r1["version"] and r2["champion_before"]["accuracy"] == 0.8
    assert (r2["champion_expected"], r2["alias_version"]) == (r1["version"], r1["version"])
    assert mlflow_client.get_model_version_by_alias(name, "champion").version == r2["version"]
    v2 = mlflow_client.get_model_version(name, r2["version"])
    assert v2.tags["ampflow.promotion.champion_expected"] == r1["version"]


def test_champion_version_the_alias_moved_from_is_scored_but_not_promoted(
    tracking_env, mlflow_client, data, tmp_path, monkeypatch, capsys
):
    """The KFP pipeline looked up and imported v1; before register runs, the alias moves to v2. Register
    scores v1 (the imported champion) and refuses to move the alias, naming both versions."""
    name = f"expected-moved-{tmp_path.name}"
    _, r1 = _register(_candidate(tmp_path / "a", BlockModel(0), accuracy=0.8), data, "--model-name", name)
    _, r2 = _register(_candidate(tmp_path / "c", BlockModel(2), accuracy=0.8), data, "--model-name", name)
    assert (r1["promoted"], r2["promoted"]) == (True, False)
    mlflow_client.set_registered_model_alias(name, "champion", r2["version"])  # moved by someone else
    v1, v2 = r1["version"], r2["version"]

    extra = ("--model-name", name, "--champion-version", v1)
    code, r3 = _register(_candidate(tmp_path / "b", BlockModel(1), accuracy=0.8), data, *extra)
    # against v1 (0.800, not v2's 0.794) it passes at the tolerance, but v1 is no longer the champion
    assert (code, r3["verdict"], r3["delta_pp"], r3["promoted"]) == (0, "pass", -0.5, False)
    assert r3["champion_before"]["version"] == v1 and r3["champion_before"]["accuracy"] == 0.8
    assert (r3["champion_expected"], r3["alias_version"]) == (v1, v2)
    assert r3["reason"].startswith(
        f"not the expected champion: --champion-version {v1} expects 'champion' to name v{v1}, "
        f"but it names v{v2}"
    )
    assert r3["message"] == f"registered {name} v{r3['version']} (32-true); not promoted: {r3['reason']}"
    assert mlflow_client.get_model_version_by_alias(name, "champion").version == v2
    tags = mlflow_client.get_model_version(name, r3["version"]).tags
    assert (tags["ampflow.promotion.promoted"], tags["ampflow.promotion.alias_version"]) == ("false", v2)
    assert tags["ampflow.promotion.champion_version"] == v1
    capsys.readouterr()

    # the alias names v1 before scoring, and moves to v2 while the decision is taken: the re-check
    mlflow_client.set_registered_model_alias(name, "champion", v1)
    decide = register._decision

    def racing(*args, **kwargs):
        decision = decide(*args, **kwargs)
        mlflow_client.set_registered_model_alias(name, "champion", v2)
        return decision

    with monkeypatch.context() as mp:
        mp.setattr(register, "_decision", racing)
        code, r4 = _register(_candidate(tmp_path / "d", BlockModel(1), accuracy=0.8), data, *extra)
    assert (code, r4["verdict"], r4["promoted"], r4["alias_version"]) == (0, "pass", False, v2)
    assert r4["reason"].startswith(f"the alias moved: 'champion' moved from v{v1} to v{v2}")
    assert mlflow_client.get_model_version_by_alias(name, "champion").version == v2

    # the champion was removed (no alias at all): v1 is still scored, nothing is promoted
    mlflow_client.delete_registered_model_alias(name, "champion")
    code, r5 = _register(_candidate(tmp_path / "e", BlockModel(1), accuracy=0.8), data, *extra)
    assert (code, r5["verdict"], r5["promoted"], r5["alias_version"]) == (0, "pass", False, None)
    assert r5["champion_before"]["version"] == v1
    assert f"expects 'champion' to name v{v1}, but it names no version" in r5["reason"]
    assert "champion" not in (mlflow_client.get_registered_model(name).aliases or {})
    # without the option, behaviour is unchanged: no champion, the candidate is promoted
    code, r6 = _register(_candidate(tmp_path / "f", BlockModel(1), accuracy=0.8), data, "--model-name", name)
    assert (r6["promoted"], r6["reason"], r6["champion_expected"]) == (True, "no champion yet", None)


def test_bad_champion_version_exits_2_before_anything_is_registered(
    tracking_env, mlflow_client, data, tmp_path, capsys
):
    import mlflow.tracking

    summary = _candidate(tmp_path / "a", BlockModel(0), accuracy=0.8)
    name = f"bad-expected-{tmp_path.name}"
    argv = ["register", "--summary", str(summary), "--data", str(data), "--model-name", name]

    def no_server(*a, **k):
        raise AssertionError("the server was contacted")

    with pytest.MonkeyPatch.context() as mp:  # refused before any MLflow client exists
        mp.setattr(mlflow.tracking, "MlflowClient", no_server)
        for bad in ("0", "-1", "abc", "1.5", "", "v3"):
            assert main([*argv, "--champion-version", bad]) == 2, bad
            err = capsys.readouterr().err.strip()
            assert len(err.splitlines()) == 1 and "Traceback" not in err, err
            assert err.count("--champion-version") == 1 and "positive integer" in err, err

    # a version the registry does not have: no such model yet, then no such version of it
    for step in ("no model", "no version"):
        assert main([*argv, "--champion-version", "7"]) == 2, step
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and "--champion-version 7" in err and "no version 7" in err, err
        if step == "no model":
            assert not mlflow_client.search_registered_models(f"name = '{name}'")
            assert main(argv) == 0  # v1, the champion
            capsys.readouterr()
    assert [v.version for v in mlflow_client.search_model_versions(f"name = '{name}'")] == ["1"]
    # leading zeros name the same version
    code, r = _register(summary, data, "--model-name", name, "--champion-version", "01")
    assert (code, r["champion_expected"], r["champion_before"]["version"]) == (0, "1", "1")

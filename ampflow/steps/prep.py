"""``ampflow prep``: read a recipe's data, dedupe, split stratified with a seed, featurize, write a dataset.

    ampflow prep --recipe tweets-bow --out data/tweets-bow
    ampflow prep --recipe mnist-cnn --out data/mnist --seed 1 --limit 500
    ampflow prep --recipe tweets-bow --source s3://bucket/reviews.parquet --out data/reviews
    PYTHONPATH=examples ampflow prep --recipe my_recipe:digits --out data/digits

Order matters and is fixed: load -> drop rows without a label -> dedupe on the recipe's
``dedupe_columns`` (before splitting, so that no text lands in both train and test) -> optional
stratified ``--limit`` subset -> encode labels as ints over the sorted label names -> stratified
80/10/10 split -> ``recipe.featurize`` fitted on train only -> ``.npy`` arrays + ``manifest.json``
(schema ``ampflow.dataset/1``, see :mod:`ampflow.data.manifest`).

The dataset is built in a temporary folder beside ``--out`` and renamed into place at the end, so a
failure never leaves half a dataset and never damages one that is already there.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ampflow.config import ConfigError, RunConfig
from ampflow.steps import Paths

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np
    import pandas as pd

HELP = "read a recipe's data or a user file, dedupe, split stratified, featurize, write a dataset directory"

SPLIT_FRACTIONS = {"train": 0.8, "val": 0.1, "test": 0.1}
MIN_PER_CLASS = 3  # one row per split at least


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--recipe", required=True, help="built-in recipe name (see `ampflow recipes`) or module:function"
    )
    p.add_argument(
        "--out", required=True, help="dataset directory to write (replaced atomically if it exists)"
    )
    p.add_argument(
        "--source",
        help="CSV, JSONL or Parquet file, local path or fsspec URI (default: the recipe's built-in data)",
    )
    p.add_argument(
        "--seed", type=int, default=0, help="seed of the split and of --limit (default: %(default)s)"
    )
    p.add_argument(
        "--limit", type=int, help="keep a stratified subset of N rows before splitting (quick runs)"
    )


def cli(args: argparse.Namespace) -> int:
    config = RunConfig(recipe=args.recipe, seed=args.seed)
    manifest = run(config, Paths.of(out=args.out, source=args.source), limit=args.limit)
    _print_summary(manifest, Path(args.out))
    return 0


def run(config: RunConfig, paths: Paths, limit: int | None = None) -> dict[str, Any]:
    """Prepare the dataset for ``config.recipe`` (seed ``config.seed``) into ``paths.out``; return the manifest."""
    import numpy as np

    from ampflow import __version__
    from ampflow.data.manifest import MANIFEST, SCHEMA, hash_arrays
    from ampflow.io import atomic_write_json, umask
    from ampflow.recipes import get_recipe

    if paths.out is None:
        raise ConfigError("--out is required: the dataset directory to write")
    out = Path(paths.out)
    _check_out(out)
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise ConfigError(f"--limit must be a positive integer, got {limit!r}")
    started = time.perf_counter()
    recipe = get_recipe(config.recipe)
    prepared = build_splits(recipe, paths.source, config.seed, limit)
    splits, split_labels, label_names = prepared.splits, prepared.labels, prepared.label_names

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.prep-"))
    try:
        # mkdtemp makes 0700; a dataset is read by other users (pods, the Airflow worker) like any folder
        tmp.chmod(0o777 & ~umask())
        arrays, info = recipe.featurize(splits, tmp)
        _check_arrays(arrays, split_labels, recipe.name)
        _check_finite(arrays, splits, prepared.source)
        for split in splits:
            arrays[split]["labels"] = split_labels[split]
            folder = tmp / split
            folder.mkdir()
            for name, arr in arrays[split].items():
                np.save(folder / f"{name}.npy", np.ascontiguousarray(arr), allow_pickle=False)
        array_names = sorted(arrays["train"])
        manifest = {
            "schema": SCHEMA,
            "recipe": recipe.name,
            "recipe_ref": config.recipe,
            "source": prepared.source,
            "seed": config.seed,
            "limit": limit,
            "source_rows": prepared.source_rows,
            "dropped": {"unlabeled": prepared.unlabeled, "duplicates": prepared.duplicates},
            "dedupe_columns": prepared.dedupe_columns,
            "split_fractions": SPLIT_FRACTIONS,
            "rows": {s: len(split_labels[s]) for s in splits},
            "class_balance": {
                s: {label_names[k]: int((split_labels[s] == k).sum()) for k in range(len(label_names))}
                for s in splits
            },
            "label_names": label_names,
            "num_classes": len(label_names),
            "arrays": array_names,
            "array_specs": {
                name: {
                    "dtype": arrays["train"][name].dtype.str,
                    "shape": list(arrays["train"][name].shape[1:]),
                }
                for name in array_names
            },
            "info": {**info, "num_classes": len(label_names), "label_names": label_names},
            "content_hash": hash_arrays(arrays),
            "created": datetime.now(UTC).isoformat(timespec="seconds"),
            "prep_seconds": round(time.perf_counter() - started, 3),
            "ampflow_version": __version__,
        }
        atomic_write_json(tmp / MANIFEST, manifest)
        _swap_into_place(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return manifest


# -- helpers --------------------------------------------------------------------------------------


@dataclass
class Prepared:
    """The cleaned, split data before featurizing (``splits`` carry encoded labels in the label column)."""

    splits: dict[str, pd.DataFrame]
    labels: dict[str, np.ndarray]
    label_names: list[str]
    source: str
    source_rows: int
    unlabeled: int
    duplicates: int
    dedupe_columns: list[str]


def build_splits(recipe: Any, source: str | None, seed: int, limit: int | None = None) -> Prepared:
    """Load, drop unlabeled rows, dedupe, optionally subset, encode labels, split 80/10/10 stratified."""
    import numpy as np

    from ampflow.recipes._io import jsonable
    from ampflow.redact import redact_uri

    df = recipe.load_source(source)
    shown_source = redact_uri(source) if source else (getattr(recipe, "builtin_source", "") or "builtin")
    where = f"--source {shown_source}" if source else f"recipe {recipe.name!r} data"
    label_col = recipe.label_column
    if label_col not in df.columns:
        found = ", ".join(map(str, df.columns[:20]))
        raise ConfigError(f"{where}: no label column {label_col!r}; columns found: {found}")
    source_rows = len(df)

    labels = df[label_col]
    has_label = labels.notna() & (labels.astype(str).str.strip() != "")
    df = df[has_label]
    unlabeled = source_rows - len(df)
    dedupe = [c for c in recipe.dedupe_columns if c in df.columns]
    before = len(df)
    if dedupe:
        # keep the first occurrence: a text labelled twice keeps the label it had first in the file
        df = df.drop_duplicates(subset=dedupe, keep="first")
    duplicates = before - len(df)
    if df.empty:
        raise ConfigError(
            f"{where}: no rows left after cleaning ({source_rows} read, {unlabeled} without label "
            f"{label_col!r}, {duplicates} duplicates)"
        )
    df = df.reset_index(drop=True)
    values = _normalize_labels(df[label_col])
    names_sorted = sorted(values.unique().tolist())
    label_names = [str(jsonable(v)) for v in names_sorted]
    codes = values.map({v: i for i, v in enumerate(names_sorted)}).to_numpy(dtype=np.int64)
    _check_class_sizes(codes, label_names, where, what="rows")

    rng = np.random.default_rng(seed)
    if limit is not None and limit < len(df):
        keep = _stratified_subset(codes, limit, rng, label_names)
        df, codes = df.iloc[keep].reset_index(drop=True), codes[keep]
    splits: dict[str, pd.DataFrame] = {}
    split_labels: dict[str, np.ndarray] = {}
    for split, idx in _stratified_split(codes, rng).items():
        part = df.iloc[idx].reset_index(drop=True)
        part[label_col] = codes[idx]
        splits[split] = part
        split_labels[split] = codes[idx]
    return Prepared(
        splits, split_labels, label_names, shown_source, source_rows, unlabeled, duplicates, dedupe
    )


def _check_out(out: Path) -> None:
    """Refuse to replace anything that is not a dataset: a wrong --out must not cost someone's folder."""
    from ampflow.data.manifest import MANIFEST

    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out}: exists and is not a directory")
    if out.is_dir() and any(out.iterdir()) and not (out / MANIFEST).is_file():
        raise ConfigError(
            f"--out {out}: exists, is not empty and holds no {MANIFEST}; refusing to replace it"
        )


def _swap_into_place(tmp: Path, out: Path) -> None:
    if not out.exists():
        os.replace(tmp, out)
        return
    # two renames: the old dataset stays whole until the new one is complete beside it
    old = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.old-"))
    os.replace(out, old / "d")
    try:
        os.replace(tmp, out)
    except BaseException:
        os.replace(old / "d", out)
        raise
    shutil.rmtree(old, ignore_errors=True)


def _normalize_labels(values: pd.Series) -> pd.Series:
    """Labels as one sortable type: integral floats (a CSV column with gaps) become ints, mixed become str."""
    import pandas as pd

    if pd.api.types.is_float_dtype(values) and (values == values.round()).all():
        return values.astype("int64")
    if pd.api.types.is_numeric_dtype(values) or pd.api.types.is_bool_dtype(values):
        return values
    return values.astype(str).str.strip()


def _check_class_sizes(codes: np.ndarray, label_names: list[str], where: str, what: str) -> None:
    import numpy as np

    counts = np.bincount(codes, minlength=len(label_names))
    small = [f"{label_names[k]!r} ({int(c)})" for k, c in enumerate(counts) if c < MIN_PER_CLASS]
    if small:
        raise ConfigError(
            f"{where}: too few {what} per class to split train/val/test: need at least {MIN_PER_CLASS} "
            f"per class, got {', '.join(small[:5])}{', ...' if len(small) > 5 else ''}"
        )


def _stratified_subset(
    codes: np.ndarray, limit: int, rng: np.random.Generator, label_names: list[str]
) -> np.ndarray:
    """Indices of ``limit`` rows with the class shares of the whole (largest remainder), >= 3 per class."""
    import numpy as np

    k = len(label_names)
    if limit < MIN_PER_CLASS * k:
        raise ConfigError(
            f"--limit {limit} is too small: need at least {MIN_PER_CLASS} rows per class for {k} classes "
            f"({MIN_PER_CLASS * k} rows)"
        )
    counts = np.bincount(codes, minlength=k)
    exact = counts * limit / counts.sum()
    quota = np.maximum(np.floor(exact).astype(int), MIN_PER_CLASS)
    order = np.argsort(-(exact - np.floor(exact)), kind="stable")
    i = 0
    while quota.sum() < limit:
        c = order[i % k]
        if quota[c] < counts[c]:
            quota[c] += 1
        i += 1
    while quota.sum() > limit:  # the minimum per class pushed us over: take from the largest quotas
        c = int(np.argmax(quota))
        quota[c] -= 1
    picks = [rng.permutation(np.flatnonzero(codes == c))[: quota[c]] for c in range(k)]
    return np.sort(np.concatenate(picks))


def _stratified_split(codes: np.ndarray, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Per class: shuffle, then 10% val, 10% test (at least one each), the rest train; then shuffle each split."""
    import numpy as np

    parts: dict[str, list[np.ndarray]] = {s: [] for s in SPLIT_FRACTIONS}
    for c in range(int(codes.max()) + 1):
        idx = rng.permutation(np.flatnonzero(codes == c))
        n = len(idx)
        n_val = max(1, round(n * SPLIT_FRACTIONS["val"]))
        n_test = max(1, round(n * SPLIT_FRACTIONS["test"]))
        parts["val"].append(idx[:n_val])
        parts["test"].append(idx[n_val : n_val + n_test])
        parts["train"].append(idx[n_val + n_test :])
    # shuffled, not class-sorted: a reader that takes the first N rows still gets every class
    return {s: rng.permutation(np.concatenate(p)) for s, p in parts.items()}


def _check_arrays(arrays: dict[str, dict[str, Any]], labels: dict[str, Any], recipe: str) -> None:
    """The featurize contract, checked here so that a user recipe's slip is named at prep, not in train."""
    if set(arrays) != set(labels):
        raise ValueError(
            f"recipe {recipe!r}: featurize returned splits {sorted(arrays)}, expected {sorted(labels)}"
        )
    names = set(arrays["train"])
    if not names:
        raise ValueError(f"recipe {recipe!r}: featurize returned no arrays")
    if "labels" in names:
        raise ValueError(f"recipe {recipe!r}: featurize must not return 'labels' (prep adds them)")
    for split, arrs in arrays.items():
        if set(arrs) != names:
            raise ValueError(
                f"recipe {recipe!r}: split {split} has arrays {sorted(arrs)}, train has {sorted(names)}"
            )
        for name, arr in arrs.items():
            if getattr(arr, "dtype", None) is None or arr.dtype.kind == "O":
                raise ValueError(f"recipe {recipe!r}: array {split}/{name} is not a numeric numpy array")
            if len(arr) != len(labels[split]):
                raise ValueError(
                    f"recipe {recipe!r}: array {split}/{name} has {len(arr)} rows, split has {len(labels[split])}"
                )


def _check_finite(arrays: dict[str, dict[str, Any]], frames: dict[str, Any], source: str) -> None:
    """Refuse features that are not finite (an empty CSV cell becomes NaN): exit 2 naming the source
    columns that hold them and how many rows.

    The rule is refusal, not a silent drop: a NaN feature turns every batch holding it into a
    non-finite loss, which the trainer skips, so a run would report "ok" on a fraction of its data.
    """
    import numpy as np

    bad_rows, total = 0, 0
    columns: dict[str, int] = {}
    for split, arrs in arrays.items():
        total += len(frames[split])
        mask = np.zeros(len(frames[split]), dtype=bool)
        for arr in arrs.values():
            if arr.dtype.kind in "fc":
                mask |= ~np.isfinite(arr.reshape(len(arr), -1)).all(axis=1)
        if not mask.any():
            continue
        bad_rows += int(mask.sum())
        rows = frames[split][mask]
        for col in rows.columns:
            n = int(rows[col].isna().sum())
            if n:
                columns[str(col)] = columns.get(str(col), 0) + n
    if bad_rows:
        named = ", ".join(f"{c!r}: {n} row{'s' if n > 1 else ''}" for c, n in sorted(columns.items()))
        named = named or "not traceable to a column"
        raise ConfigError(
            f"--source {source}: {bad_rows} of {total} rows have empty or non-finite feature values "
            f"({named}); fill or drop them in the source (training would skip every batch holding one)"
        )


def _print_summary(manifest: dict[str, Any], out: Path) -> None:
    names = manifest["label_names"]
    shown = names if len(names) <= 10 else names[:10]
    width = max(8, *(len(n) for n in shown))
    print(f"dataset {out}  recipe {manifest['recipe']}  source {manifest['source']}  seed {manifest['seed']}")
    d = manifest["dropped"]
    print(
        f"read {manifest['source_rows']} rows; dropped {d['unlabeled']} without label, {d['duplicates']} duplicates"
    )
    print(f"{'split':<6} {'rows':>7}  " + "  ".join(f"{n:>{width}}" for n in shown))
    for split, rows in manifest["rows"].items():
        bal = manifest["class_balance"][split]
        shares = "  ".join(f"{bal[n] / max(rows, 1):>{width}.1%}" for n in shown)
        print(f"{split:<6} {rows:>7}  {shares}")
    print(f"arrays {', '.join(manifest['arrays'])}  content {manifest['content_hash'][:23]}")
    sys.stdout.flush()

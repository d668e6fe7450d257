"""A tiny synthetic user recipe for fast engine tests: ``--recipe tests.recipes_fixture:tiny``.

Three Gaussian blobs in 16 dimensions, a 2-layer MLP with dropout (so that resume must restore the RNG
to reproduce the weights). ``write_dataset(dir)`` writes its prepared dataset directly in the
``ampflow.data`` format, so engine tests do not depend on ``ampflow prep`` or on real data;
:func:`write_prepared` is that writer, which the token fixtures (``tests/token_fixture.py``,
``tests/recipes_transformer.py``) share for their own arrays.

Setting ``AMPFLOW_TINY_STEP_SLEEP=0.05`` makes every forward pass sleep that long: the kill-and-resume
test uses it to have time to SIGKILL a run between two checkpoints.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import numpy as np

from ampflow.data.manifest import MANIFEST, SCHEMA, hash_arrays
from ampflow.io import atomic_write_json
from ampflow.recipes.base import BaseRecipe

NAME = "tests.recipes_fixture:tiny"
FEATURES = 16
CLASSES = 3
LABELS = ["negative", "neutral", "positive"]


class TinyRecipe(BaseRecipe):
    name = "tiny"
    description = "3 Gaussian blobs in 16-d, 2-layer MLP (test fixture)"
    label_column = "label"
    dedupe_columns = ["f0"]
    defaults: dict[str, Any] = {"batch_size": 32, "learning_rate": 0.01, "max_steps": 30}

    def load_source(self, source: str | None) -> Any:
        import pandas as pd

        x, y = blobs(600, seed=123)
        df = pd.DataFrame(x, columns=[f"f{i}" for i in range(FEATURES)])
        df["label"] = [LABELS[i] for i in y]
        return df

    def featurize(
        self, splits: dict[str, Any], out_dir: Path
    ) -> tuple[dict[str, dict[str, Any]], dict[str, Any]]:
        cols = [f"f{i}" for i in range(FEATURES)]
        arrays = {s: {"x": df[cols].to_numpy(np.float32)} for s, df in splits.items()}
        return arrays, {"num_features": FEATURES, "num_classes": CLASSES}

    dropout = 0.1

    def build_model(self, info: dict[str, Any]) -> Any:
        import torch

        p = self.dropout

        class TinyMLP(torch.nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.net = torch.nn.Sequential(
                    torch.nn.Linear(info["num_features"], 32),
                    torch.nn.ReLU(),
                    torch.nn.Dropout(p),
                    torch.nn.Linear(32, info["num_classes"]),
                )

            def forward(self, x: Any) -> Any:
                delay = float(os.environ.get("AMPFLOW_TINY_STEP_SLEEP", "0") or 0)
                if delay:
                    time.sleep(delay)
                return self.net(x)

        return TinyMLP()


class NanRecipe(TinyRecipe):
    """Every loss is NaN: the engine must abort after max_nonfinite_steps, not train on garbage."""

    def loss(self, logits: Any, labels: Any) -> Any:
        return super().loss(logits, labels) * float("nan")


class NoDropoutRecipe(TinyRecipe):
    """Deterministic forward: 1 and N processes must then agree up to float summation order."""

    dropout = 0.0


def tiny_nodrop() -> NoDropoutRecipe:
    return NoDropoutRecipe()


def tiny() -> TinyRecipe:
    return TinyRecipe()


def tiny_nan() -> NanRecipe:
    return NanRecipe()


def blobs(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    centers = np.random.default_rng(7).normal(0, 0.45, size=(CLASSES, FEATURES))
    y = rng.integers(0, CLASSES, size=n)
    x = centers[y] + rng.normal(0, 1.0, size=(n, FEATURES))
    return x.astype(np.float32), y.astype(np.int64)


def write_dataset(
    out: str | Path,
    *,
    n_train: int = 512,
    n_val: int = 128,
    n_test: int = 192,
    seed: int = 0,
    recipe: str | None = NAME,
) -> Path:
    """Write a prepared dataset (manifest + .npy arrays) for the tiny recipe; returns its directory."""
    arrays: dict[str, dict[str, np.ndarray]] = {}
    for i, (split, n) in enumerate((("train", n_train), ("val", n_val), ("test", n_test))):
        x, y = blobs(n, seed=seed * 10 + i)
        arrays[split] = {"x": x, "labels": y}
    info = {"num_features": FEATURES, "num_classes": CLASSES}
    return write_prepared(out, arrays, label_names=LABELS, info=info, recipe=recipe)


def write_prepared(
    out: str | Path,
    arrays: dict[str, dict[str, np.ndarray]],
    *,
    label_names: list[str],
    info: dict[str, Any],
    recipe: str | None = None,
) -> Path:
    """Write ``arrays`` (split -> array name -> array, ``labels`` among them) as a prepared dataset in
    the ``ampflow.data`` format: ``<split>/<name>.npy`` and a manifest with rows, class balance, label
    names, content hash and ``info`` (and ``recipe`` when given). Returns ``out``."""
    out = Path(out)
    for split, named in arrays.items():
        (out / split).mkdir(parents=True, exist_ok=True)
        for name, arr in named.items():
            np.save(out / split / f"{name}.npy", arr)
    classes = len(label_names)
    atomic_write_json(
        out / MANIFEST,
        {
            "schema": SCHEMA,
            **({"recipe": recipe} if recipe else {}),
            "arrays": list(next(iter(arrays.values()))),
            "rows": {s: int(len(a["labels"])) for s, a in arrays.items()},
            "class_balance": {
                s: np.bincount(a["labels"], minlength=classes).tolist() for s, a in arrays.items()
            },
            "label_names": list(label_names),
            "content_hash": hash_arrays(arrays),
            "info": dict(info),
        },
    )
    return out

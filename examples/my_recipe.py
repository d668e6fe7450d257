"""A user recipe: scikit-learn's 8x8 digits (or your own CSV of them) with a small MLP.

    PYTHONPATH=examples ampflow prep --recipe my_recipe:digits --out data/digits
    PYTHONPATH=examples ampflow prep --recipe my_recipe:digits --source examples/digits_sample.csv --out data/sample
    PYTHONPATH=examples ampflow train --recipe my_recipe:digits --data data/digits --out runs/digits
    PYTHONPATH=examples ampflow recipes --recipe my_recipe:digits

``my_recipe:digits`` names this module and the function that returns the recipe object. The module
must be importable where ampflow runs (PYTHONPATH here; a package installed in your training image in
a cluster). The object follows the protocol in ``ampflow/recipes/base.py``: attributes ``name``,
``description``, ``label_column``, ``dedupe_columns``, ``defaults``, and methods ``load_source``,
``featurize``, ``build_model`` (plus ``loss`` and ``tokens_in_batch``, inherited from ``BaseRecipe``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ampflow.recipes import BaseRecipe

COLUMNS = [f"p{i}" for i in range(64)]


class Digits(BaseRecipe):
    name = "digits-mlp"
    description = "MLP on scikit-learn's 1,797 8x8 digits (example user recipe)"
    label_column = "label"
    # identical images are dropped before splitting, so no image sits in both train and test
    dedupe_columns = COLUMNS
    # what a --source file must have besides the label (BaseRecipe.load_source checks and keeps them)
    feature_columns = COLUMNS
    builtin_source = "sklearn.datasets.load_digits"
    # RunConfig fields used when the user sets none: short but meaningful on a CPU
    defaults = {"batch_size": 32, "learning_rate": 3e-3, "max_steps": 150, "warmup_steps": 5}

    def load_source(self, source: str | None):
        """Built-in data when ``source`` is None; else a CSV/JSONL/Parquet path or fsspec URI."""
        if source is not None:
            return super().load_source(source)
        import pandas as pd
        from sklearn.datasets import load_digits

        bunch = load_digits()
        df = pd.DataFrame(bunch.data.astype("int64"), columns=COLUMNS)
        df[self.label_column] = bunch.target
        return df

    def featurize(self, splits: dict[str, Any], out_dir: Path):
        """One float32 array per split; the scale is a constant (pixels are 0..16), nothing fitted."""
        import numpy as np

        arrays = {
            s: {"features": (df[COLUMNS].to_numpy(dtype=np.float32) / 16.0)} for s, df in splits.items()
        }
        return arrays, {"in_features": len(COLUMNS), "hidden": 64}

    def build_model(self, info: dict[str, Any]):
        """forward(features=...) -> logits [batch, num_classes]; prep put num_classes into info."""
        from torch import nn

        class MLP(nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.net = nn.Sequential(
                    nn.Linear(info["in_features"], info["hidden"]),
                    nn.ReLU(),
                    nn.Linear(info["hidden"], info["num_classes"]),
                )

            def forward(self, features, **_):
                return self.net(features.to(self.net[0].weight.dtype))

        return MLP()


def digits() -> Digits:
    return Digits()

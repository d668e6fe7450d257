"""A tiny token recipe for the batching and streaming tests: ``--recipe tests.token_fixture:tiny_tokens``.

Right-padded token ids of width 64 with an attention mask (lengths 1..64, most of them short, like
tweets), a masked mean of embeddings and a linear head: a model whose output does not depend on how
far a batch is padded, so bucket padding changes the work and not the function. ``write_dataset(dir)``
writes its prepared dataset in the ``ampflow.data`` format directly (through the blobs fixture's
writer, :func:`tests.recipes_fixture.write_prepared`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ampflow.recipes.base import BaseRecipe
from tests.recipes_fixture import write_prepared

NAME = "tests.token_fixture:tiny_tokens"
WIDTH = 64
VOCAB = 50
CLASSES = 3


class TinyTokenRecipe(BaseRecipe):
    name = "tiny-tokens"
    description = "right-padded token ids with a mask, masked-mean embedding classifier (test fixture)"
    defaults: dict[str, Any] = {"batch_size": 16, "learning_rate": 0.05, "max_steps": 8, "pad_to": "bucket"}
    sequence_arrays = ("input_ids", "attention_mask")
    length_array = "attention_mask"

    def featurize(self, splits: dict[str, Any], out_dir: Path) -> Any:  # pragma: no cover - never prepped
        raise NotImplementedError

    def build_model(self, info: dict[str, Any]) -> Any:
        import torch

        class MaskedMean(torch.nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.embed = torch.nn.Embedding(VOCAB, 8)
                self.head = torch.nn.Linear(8, info["num_classes"])

            def forward(self, input_ids: Any, attention_mask: Any) -> Any:
                mask = attention_mask.unsqueeze(-1).to(self.embed.weight.dtype)
                pooled = (self.embed(input_ids) * mask).sum(1) / mask.sum(1).clamp_min(1)
                return self.head(pooled)

        return MaskedMean()


def tiny_tokens() -> TinyTokenRecipe:
    return TinyTokenRecipe()


def token_arrays(n: int, seed: int) -> dict[str, np.ndarray]:
    """``n`` samples: ``input_ids`` and ``attention_mask`` (n, 64) int64, ``labels`` (n,) int64."""
    rng = np.random.default_rng(seed)
    lengths = np.minimum(WIDTH, 1 + rng.geometric(1 / 20, size=n))
    ids = np.zeros((n, WIDTH), dtype=np.int64)
    mask = np.zeros((n, WIDTH), dtype=np.int64)
    for i, length in enumerate(lengths):
        ids[i, :length] = rng.integers(2, VOCAB, size=length)
        mask[i, :length] = 1
    labels = (ids[:, 0] % CLASSES).astype(np.int64)
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def write_dataset(out: str | Path, *, n_train: int = 256, n_val: int = 64, n_test: int = 64) -> Path:
    """Write the prepared dataset (manifest + .npy arrays); returns its directory."""
    arrays = {
        split: token_arrays(n, seed=i)
        for i, (split, n) in enumerate((("train", n_train), ("val", n_val), ("test", n_test)))
    }
    labels = [str(i) for i in range(CLASSES)]
    info = {"num_classes": CLASSES, "seq_len": WIDTH}
    return write_prepared(out, arrays, label_names=labels, info=info, recipe=NAME)

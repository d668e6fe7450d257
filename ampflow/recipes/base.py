"""The recipe protocol: how a platform team brings its own dataset and model.

A recipe is any object with the attributes and methods of :class:`Recipe`. Built-in recipes are
listed in :mod:`ampflow.recipes`; a user recipe is named ``package.module:function`` and the function
returns such an object (see ``examples/``). Torch is imported only inside the methods.

The data contract between ``prep`` and ``train``/``evaluate``:
- ``load_source(source)`` returns a pandas DataFrame with the columns the recipe needs plus
  ``label_column``; ``source`` is ``None`` for the recipe's built-in data, else a local path or
  fsspec URI of a CSV, JSONL or Parquet file (``BaseRecipe.load_source`` reads one and keeps
  ``feature_columns`` + ``label_column``). Prep dedupes on ``dedupe_columns`` (before splitting, so
  no duplicate straddles two splits), drops rows without a label, encodes labels as ints over the
  sorted label names (the DataFrames handed to ``featurize`` carry the encoded ints in
  ``label_column``), and splits train/val/test 80/10/10 stratified by label with the seed.
- ``featurize(splits, out_dir)`` turns each split's DataFrame into numpy arrays, fitted on the train
  split only (a vocabulary, a tokenizer's output); it returns ``(arrays, info)`` where ``arrays`` is
  ``{split: {name: ndarray}}`` with equal first dimensions and ``info`` is JSON-able (it lands in the
  dataset manifest and is passed back to ``build_model``). Files it writes into ``out_dir`` travel
  with the dataset. The ``labels`` array is added by prep, and so are ``num_classes`` and
  ``label_names`` in ``info``.
- ``build_model(info)`` returns an ``nn.Module`` whose ``forward(**inputs)`` takes every array except
  ``labels`` as a keyword tensor and returns logits ``[batch, num_classes]``.

Optional, for the mesh strategies (see :mod:`ampflow.engine.mesh`; a recipe without them is refused
for that strategy with exit 2, :mod:`ampflow.recipes.transformer` declares them for a BERT encoder):
- ``tp_plan(model, tp) -> {pattern: "colwise" | "rowwise"}`` for ``tp`` and ``fsdp+tp``: which Linear
  layers split how over ``tp`` ranks (``*`` in a pattern matches one dotted segment of a module name;
  Megatron-LM's pairing: a column split followed by a row split). Raise ConfigError for a ``tp`` the
  model cannot take (heads not divisible). With a ``sequence_parallel`` keyword it may also give the
  plan's sequence-parallel form (``sequence_parallel=true``): a style may then be any torch
  ``ParallelStyle`` (``SequenceParallel`` for norms, ``PrepareModuleInput`` for the gathers), for any
  module; a plan without the keyword is refused under ``sequence_parallel=true``.
- ``pipeline_split(model) -> (first, layers, last)`` and ``pipeline_layers(info) -> int`` for ``pp``:
  ``first(**inputs)`` returns a state tensor, each layer maps state to state, ``last(state)`` returns
  logits; each part lists in ``owns`` the submodule names it computes with; ``pipeline_layers`` gives
  ``len(layers)`` before the model exists (checked against the stage count before any process group).
- ``fsdp_units(model) -> [module, ...]`` for ``fsdp`` and ``fsdp+tp`` (optional there): the modules
  FSDP2 shards as units, one all-gather each (transformer blocks, as torchtitan does); the root keeps
  the rest. Without it every submodule holding parameters directly is a unit of its own.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from ampflow.config import ConfigError
from ampflow.recipes._io import read_table, require_columns

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np
    import pandas as pd
    import torch


@runtime_checkable
class Recipe(Protocol):
    name: str
    description: str
    label_column: str
    dedupe_columns: list[str]
    # RunConfig fields this recipe sets when the user leaves them unset (batch_size, learning_rate,
    # max_steps or epochs, ...)
    defaults: dict[str, Any]

    def load_source(self, source: str | None) -> pd.DataFrame: ...

    def featurize(
        self, splits: dict[str, pd.DataFrame], out_dir: Path
    ) -> tuple[dict[str, dict[str, np.ndarray]], dict[str, Any]]: ...

    def build_model(self, info: dict[str, Any]) -> torch.nn.Module: ...


class BaseRecipe:
    """Optional base class with the protocol's defaults: cross-entropy loss, token counting."""

    name = "base"
    description = ""
    label_column = "label"
    dedupe_columns: list[str] = ["text"]
    # the columns a user file must have besides ``label_column`` (read by the default load_source)
    feature_columns: list[str] = ["text"]
    # where the built-in data comes from, for the manifest ("" when the recipe has none)
    builtin_source = ""
    defaults: dict[str, Any] = {}
    # padding-aware batching (``--set pad_to=bucket``): the arrays of shape (n, width) whose second
    # axis is a right-padded sequence (cut to the batch's bucket length), the array whose last
    # non-zero position + 1 is a sample's length, and the bucket lengths (None: multiples of 8 up to
    # the width). A recipe without sequence arrays always pads to the width.
    sequence_arrays: tuple[str, ...] = ()
    length_array: str | None = None
    pad_buckets: tuple[int, ...] | None = None

    def load_source(self, source: str | None) -> pd.DataFrame:
        """Read a user file; recipes with built-in data override this for ``source=None``."""
        if source is None:
            raise ConfigError(f"recipe {self.name!r} has no built-in data; pass --source PATH_OR_URI")
        df = read_table(source)
        require_columns(df, [self.label_column], source, what="label column")
        require_columns(df, list(self.feature_columns), source)
        return df[[*self.feature_columns, self.label_column]]

    def loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        import torch.nn.functional as F

        return F.cross_entropy(logits.float(), labels)

    def tokens_in_batch(self, inputs: dict[str, torch.Tensor]) -> int:
        """Tokens processed by a batch, for tokens/s; 0 for non-sequence data."""
        mask = inputs.get("attention_mask")
        if mask is not None:
            return int(mask.sum().item())
        ids = inputs.get("input_ids")
        return int(ids.numel()) if ids is not None else 0

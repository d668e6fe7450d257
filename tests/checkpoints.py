"""Read a checkpoint of either format as whole tensors, for tests comparing weights across layouts.

The sharded format (``ampflow.engine.checkpoint``) is turned into one dict with DCP's own converter,
``torch.distributed.checkpoint.format_utils.dcp_to_torch_save``; its flattened optimizer keys
(``state.<param>.<key>``) are nested back into ``{"state": {param: {key: tensor}}}`` like the full format's.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch.distributed.checkpoint.format_utils import dcp_to_torch_save


def read_checkpoint(path: Path) -> dict:
    """``path``'s checkpoint.pt with ``model`` and ``optimizer["state"]`` as whole tensors, whichever
    format it was written in (a sharded one also gets ``"sharded": True``)."""
    state = torch.load(path, weights_only=True)
    if "shards" not in state:
        return state
    whole = path.parent / "whole.pt"
    dcp_to_torch_save(path.parent / state["shards"], whole)
    saved = torch.load(whole, weights_only=True)
    whole.unlink()
    optim: dict[str, dict] = {}
    for key, value in saved["optimizer"].items():
        if key.startswith("state."):
            param, name = key[len("state.") :].rsplit(".", 1)
            optim.setdefault(param, {})[name] = value
    return {**state, "model": saved["model"], "optimizer": {"state": optim}, "sharded": True}


def shard_files(run: Path) -> list[str]:
    """The ``.distcp`` file names of the DCP directory ``run``'s checkpoint.pt points to (one per
    writing rank), sorted; [] for a full-format checkpoint."""
    state = torch.load(run / "checkpoint.pt", weights_only=True)
    if "shards" not in state:
        return []
    return sorted(p.name for p in (run / state["shards"]).glob("*.distcp"))

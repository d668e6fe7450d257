"""One prepared split: as memory-mapped numpy arrays, or as tensors placed on a device once.

numpy and torch load inside the functions: importing this module costs nothing.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ampflow.config import ConfigError
from ampflow.data.manifest import read_manifest


def load_split(data_dir: str | Path, split: str) -> dict[str, Any]:
    """Arrays of one split as ``{name: ndarray}`` (memory-mapped, read-only; first axis = examples).

    Raises ConfigError when the manifest is bad or has no such split.
    """
    import numpy as np

    manifest = read_manifest(data_dir)
    names = manifest["arrays"]
    folder = Path(data_dir) / split
    if split not in manifest["rows"]:
        raise ConfigError(f"--data {data_dir}: no split {split!r}; splits: {', '.join(manifest['rows'])}")
    return {name: np.load(folder / f"{name}.npy", mmap_mode="r") for name in names}


def load_tensors(
    data_dir: str | Path, split: str, device: Any, policy: Any, limit: int = 0
) -> tuple[dict[str, Any], Any]:
    """One split as tensors on ``device`` (copied once): ``(inputs, labels)``.

    ``inputs`` maps each array name but ``labels`` to a tensor of shape ``(n, ...)`` passed through
    ``policy.convert_input`` (a :class:`ampflow.engine.precision.PrecisionPolicy`); ``labels`` is int64
    of shape ``(n,)``. ``limit`` > 0 keeps the first ``limit`` examples. Raises ConfigError when the
    split has no labels or is empty.
    """
    import numpy as np
    import torch

    arrays = load_split(data_dir, split)
    if "labels" not in arrays:
        raise ConfigError(f"--data {data_dir}: split {split!r} has no labels array")
    n = len(arrays["labels"])
    if limit:
        n = min(n, limit)
    if n == 0:
        raise ConfigError(f"--data {data_dir}: split {split!r} is empty")
    out = {}
    for name, arr in arrays.items():
        # a private writable copy: the split is memory-mapped read-only
        out[name] = torch.from_numpy(np.array(arr[:n], copy=True))
    labels = out.pop("labels").to(torch.long).to(device)
    inputs = {k: policy.convert_input(v.to(device)) for k, v in out.items()}
    return inputs, labels

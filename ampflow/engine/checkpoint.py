"""Checkpoints: one file, ``RUN/checkpoint.pt``, written atomically and loadable with weights_only=True.

Contents (plain types and tensors only, so ``torch.load(weights_only=True)`` reads them):

    format        "ampflow.checkpoint/1"
    step, epoch, index     optimizer steps done; data position (epoch, next index in its permutation)
    model, optimizer, scheduler, precision (GradScaler state + skipped steps)
    rng           torch CPU, CUDA (per device), numpy (MT19937 key as a tensor), python random
    config        the resolved RunConfig as a dict; recipe; dataset_hash
    progress      loss curve so far and counters, so a resumed run reports the whole run
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

from ampflow.config import ConfigError
from ampflow.io import atomic_open

FORMAT = "ampflow.checkpoint/1"
FILENAME = "checkpoint.pt"


def checkpoint_path(run_dir: str | Path) -> Path:
    """``RUN/checkpoint.pt`` of a run directory."""
    return Path(run_dir) / FILENAME


def rng_state() -> dict[str, Any]:
    """The process's RNG states (torch CPU, every CUDA device, numpy, Python) as tensors and plain types."""
    import numpy as np
    import torch

    kind, key, pos, has_gauss, cached = np.random.get_state()
    version, py_state, gauss_next = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "cuda": [s for s in torch.cuda.get_rng_state_all()] if torch.cuda.is_available() else [],
        "numpy": {
            "kind": str(kind),
            "key": torch.from_numpy(np.asarray(key, dtype=np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached": float(cached),
        },
        "python": {"version": int(version), "state": list(py_state), "gauss_next": gauss_next},
    }


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what :func:`rng_state` saved (CUDA states only for the devices this process has)."""
    import numpy as np
    import torch

    torch.set_rng_state(state["torch"])
    if state.get("cuda") and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"][: torch.cuda.device_count()])
    n = state["numpy"]
    np.random.set_state(
        (n["kind"], n["key"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached"])
    )
    p = state["python"]
    random.setstate((p["version"], tuple(p["state"]), p["gauss_next"]))


def save(path: str | Path, state: dict[str, Any]) -> None:
    """torch.save through a temp file, fsync, then os.replace: all or nothing."""
    import torch

    with atomic_open(path, "wb") as fh:
        torch.save({"format": FORMAT, **state}, fh)


def load(path: str | Path, *, what: str = "checkpoint") -> dict[str, Any]:
    """Load with weights_only=True; an unreadable or foreign file is bad input (exit 2)."""
    import torch

    path = Path(path)
    if path.is_dir():
        path = checkpoint_path(path)
    if not path.is_file():
        raise ConfigError(f"{what} {path}: no checkpoint there (expected {FILENAME} from `ampflow train`)")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # truncated file, pickle refused by weights_only, not a torch file ...
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ConfigError(f"{what} {path}: unreadable checkpoint ({first[:200]})") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise ConfigError(f"{what} {path}: not an ampflow checkpoint (format {FORMAT} expected)")
    return state


def check_trained_on(
    state: dict[str, Any], *, recipe: str, data_hash: str | None, path: Path, data: Path, what: str
) -> None:
    """Refuse a checkpoint of another recipe or dataset (ConfigError, exit 2).

    ``what`` names the flag that brought the checkpoint in (``--resume``, ``--checkpoint``);
    ``data_hash`` is the content hash of the dataset at ``data`` (see ampflow.data.manifest).
    """
    if state.get("recipe") != recipe:
        raise ConfigError(f"{what}: {path} was trained with recipe {state.get('recipe')!r}, not {recipe!r}")
    if state.get("dataset_hash") != data_hash:
        raise ConfigError(
            f"{what}: --data {data} is not the dataset {path} was trained on (content hash differs)"
        )

"""Checkpoints: ``RUN/checkpoint.pt``, written atomically and loadable with weights_only=True, and, in
the sharded format, the ``torch.distributed.checkpoint`` (DCP) directory it points to.

``RUN/checkpoint.pt`` holds plain types and tensors only, so ``torch.load(weights_only=True)`` reads it:

    format        "ampflow.checkpoint/1" (full) or "ampflow.checkpoint/2" (sharded)
    step, epoch, index     optimizer steps done; data position (epoch, next index in its permutation)
    model, optimizer       full format only: the whole model and the optimizer state by parameter name
    shards        sharded format only: ``checkpoint.dcp/step-<N>-<k>``, relative to RUN: the DCP
                  directory holding ``{"model": ..., "optimizer": ...}`` (optimizer flattened as
                  ``state.<param>.<key>`` / ``param_groups.<param>.<key>``), every rank's own shards
    scheduler, precision (GradScaler state + skipped steps)
    rng           torch CPU, CUDA (per device), numpy (MT19937 key as a tensor), python random
    config        the resolved RunConfig as a dict; recipe; dataset_hash
    progress      loss curve so far and counters, so a resumed run reports the whole run

A sharded checkpoint is all or nothing as well: every rank writes its shards into a new directory,
``checkpoint.pt`` is replaced to point at it only once DCP has written its ``.metadata`` (after every
rank finished), and only then are older directories removed. DCP reshards on load: the shards load into
any layout's state dict, a plain single-process model's included (evaluation, export). Non-tensor
entries of the shards are unpickled only after ``torch.load(weights_only=True)`` accepted them.
"""

from __future__ import annotations

import contextlib
import pickle
import random
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ampflow.config import ConfigError
from ampflow.io import atomic_open

FORMAT = "ampflow.checkpoint/1"
FORMAT_SHARDED = "ampflow.checkpoint/2"
FILENAME = "checkpoint.pt"
SHARDS_DIR = "checkpoint.dcp"


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
    """torch.save through a temp file, fsync, then os.replace: all or nothing.

    A ``state`` with ``shards`` (the DCP directory, relative to ``path``'s directory) is written in the
    sharded format, one with ``model`` and ``optimizer`` in the full format."""
    import torch

    fmt = FORMAT_SHARDED if "shards" in state else FORMAT
    with atomic_open(path, "wb") as fh:
        torch.save({"format": fmt, **state}, fh)


def new_shards_dir(run_dir: str | Path, step: int) -> str:
    """A fresh DCP directory name for a checkpoint of ``step``, relative to ``run_dir``
    (``checkpoint.dcp/step-00000040-0``; the suffix skips names already on disk, so the directory the
    current ``checkpoint.pt`` points to is never written over). Call on one rank and share the name."""
    k = 0
    while (Path(run_dir) / SHARDS_DIR / f"step-{step:08d}-{k}").exists():
        k += 1
    return f"{SHARDS_DIR}/step-{step:08d}-{k}"


def _dist_args() -> dict[str, Any]:
    """DCP's ``no_dist`` when this process has no process group (one process: no collectives)."""
    import torch.distributed as dist

    return {"no_dist": not (dist.is_available() and dist.is_initialized())}


def save_shards(directory: str | Path, state_dict: dict[str, Any]) -> None:
    """``torch.distributed.checkpoint.save`` of ``state_dict`` into ``directory``: a collective, every
    rank calls with its own (DTensor-sharded or replicated) entries; replicated ones are written once.
    Raises RuntimeError (exit 1) when a rank's write failed (a full disk)."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.api import CheckpointException

    try:
        with _single_process_quiet():
            dcp.save(state_dict, checkpoint_id=str(directory), **_dist_args())
    except CheckpointException as exc:  # a BaseException: it would pass every `except Exception`
        raise RuntimeError(
            f"writing checkpoint shards to {directory} failed: {_first_failure(exc)}"
        ) from None


def load_shards(directory: str | Path, state_dict: dict[str, Any], *, alone: bool = False) -> None:
    """Fill ``state_dict``'s tensors in place from the DCP ``directory``, resharded to their layout.

    A collective unless ``alone`` (one rank reading a whole model for itself, e.g. for export). Raises
    ConfigError (exit 2) when DCP cannot fill ``state_dict``: a key the checkpoint lacks (another
    model), an unreadable shard, or a non-tensor entry ``torch.load(weights_only=True)`` refuses."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.api import CheckpointException

    args = {"no_dist": True} if alone else _dist_args()
    check_shards_metadata(directory)
    try:
        with _single_process_quiet():
            dcp.load(state_dict, checkpoint_id=str(directory), planner=_weights_only_planner(), **args)
    except CheckpointException as exc:  # a BaseException: it would pass every `except Exception`
        raise ConfigError(f"checkpoint shards {directory}: unreadable ({_first_failure(exc)})") from None


def _first_failure(exc: Any) -> str:
    """The first rank's error of a DCP ``CheckpointException``, as ``Type: first line``."""
    failures = getattr(exc, "failures", {}) or {}
    first = next(iter(failures.values()), None)
    cause = first[0] if isinstance(first, tuple) else first
    if cause is None:
        return type(exc).__name__
    if isinstance(cause, pickle.UnpicklingError):
        # torch's own text goes on to suggest weights_only=False: the one thing not to do with a
        # checkpoint of unknown origin
        return "UnpicklingError: a corrupt shard, or an entry torch.load(weights_only=True) refuses"
    lines = str(cause).strip().splitlines()
    return f"{type(cause).__name__}: {lines[0][:300]}" if lines else type(cause).__name__


# what a DCP ``.metadata`` pickle may name (torch 2.13's FileSystemWriter writes these and no others)
_METADATA_GLOBALS = {
    ("torch.distributed.checkpoint.filesystem", "_StorageInfo"),
    ("torch.serialization", "_get_layout"),
    ("torch", "Size"),
    ("pathlib", "PosixPath"),
    ("pathlib", "WindowsPath"),
    ("collections", "OrderedDict"),
}


def _enum_member(cls: Any, name: str) -> Any:
    """``getattr`` as a DCP ``.metadata`` pickle may use it: a member of one of DCP's metadata enums,
    nothing else (a general getattr would let a crafted pickle walk to any callable)."""
    import enum

    if (
        isinstance(cls, type)
        and issubclass(cls, enum.Enum)
        and cls.__module__ == "torch.distributed.checkpoint.metadata"
        and isinstance(name, str)
        and name in cls.__members__
    ):
        return cls[name]
    raise pickle.UnpicklingError(f"refused getattr({getattr(cls, '__name__', type(cls).__name__)}, {name!r})")


def check_shards_metadata(directory: str | Path) -> None:
    """Refuse a DCP directory whose ``.metadata`` pickle names anything but DCP's metadata classes,
    ``torch.Size``, torch dtypes, paths and members of DCP's enums: DCP reads that file with a plain
    ``pickle.load``, which would run whatever a crafted file names. Raises ConfigError (exit 2) naming the file and the first
    refused global, or why the file is unreadable."""
    import torch

    class Allowed(pickle.Unpickler):
        def find_class(self, module: str, name: str) -> Any:
            if module in ("builtins", "__builtin__") and name == "getattr":
                # some Python 3.11 releases pickle an enum member as getattr(EnumClass, "NAME")
                return _enum_member
            known = (module, name) in _METADATA_GLOBALS
            metadata = module == "torch.distributed.checkpoint.metadata" and not name.startswith("__")
            dtype = module == "torch" and isinstance(getattr(torch, name, None), torch.dtype)
            if not (known or metadata or dtype):
                raise pickle.UnpicklingError(f"refused global {module}.{name}")
            return super().find_class(module, name)

    path = Path(directory) / ".metadata"
    try:
        with open(path, "rb") as fh:
            Allowed(fh).load()
    except Exception as exc:  # refused global, truncated or foreign file, missing file
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        raise ConfigError(f"checkpoint shards {path}: unreadable or untrusted ({first})") from None


@contextlib.contextmanager
def _single_process_quiet() -> Iterator[None]:
    """Silence DCP's warning that it "assumes the intent" of one process: ampflow passes ``no_dist`` on
    purpose (one process, or one rank reading a whole model for export)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="torch.distributed is disabled, unavailable or uninit")
        yield


def _weights_only_planner() -> Any:
    """DCP's default load planner, except that a non-tensor entry must first pass
    ``torch.load(weights_only=True)`` (DCP itself unpickles them with ``weights_only=False``)."""
    import torch
    from torch.distributed.checkpoint import DefaultLoadPlanner

    class WeightsOnly(DefaultLoadPlanner):
        def load_bytes(self, read_item: Any, value: Any) -> None:
            start = value.tell()
            torch.load(value, weights_only=True)  # raises on anything but plain types and tensors
            value.seek(start)
            super().load_bytes(read_item, value)

    return WeightsOnly()


def prune_shards(run_dir: str | Path, keep: str | None) -> None:
    """Remove every DCP directory of ``run_dir`` but ``keep`` (relative, as in ``checkpoint.pt``; None:
    all of them, once a full-format checkpoint.pt replaced a sharded one)."""
    import shutil

    root = Path(run_dir) / SHARDS_DIR
    if not root.is_dir():
        return
    if keep is None:
        shutil.rmtree(root, ignore_errors=True)
        return
    for child in root.iterdir():
        if child != Path(run_dir) / keep:
            shutil.rmtree(child, ignore_errors=True)


def load_model_weights(model: Any, state: dict[str, Any]) -> None:
    """Load a loaded checkpoint's weights into the plain ``model`` (one process, no collective), from
    ``state["model"]`` (full format) or from its shards (sharded)."""
    if "shards" not in state:
        model.load_state_dict(state["model"])
        return
    weights = model.state_dict()
    load_shards(state["shards"], {"model": weights}, alone=True)
    model.load_state_dict(weights)


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
    if not isinstance(state, dict) or state.get("format") not in (FORMAT, FORMAT_SHARDED):
        raise ConfigError(
            f"{what} {path}: not an ampflow checkpoint (format {FORMAT} or {FORMAT_SHARDED} expected)"
        )
    if state["format"] == FORMAT_SHARDED:
        shards = path.parent / str(state.get("shards"))
        if not (shards / ".metadata").is_file():
            raise ConfigError(
                f"{what} {path}: its shards {shards} are missing or incomplete (no .metadata); copy the "
                f"whole run directory, {SHARDS_DIR}/ included"
            )
        state["shards"] = str(shards)  # absolute from here on: the loaders need no run directory
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

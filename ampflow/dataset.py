"""The prepared-dataset directory: ``manifest.json`` plus one ``.npy`` file per split and array.

Layout::

    DATA/
      manifest.json          schema, recipe, row counts, class balance, content hash, recipe info
      train/labels.npy, train/<array>.npy, val/..., test/...
      (recipe artifacts, e.g. vocab.json)

numpy only (no torch), so that tooling can read a dataset without the training stack.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

from ampflow.config import ConfigError

MANIFEST = "manifest.json"
SCHEMA = "ampflow.dataset/1"
SPLITS = ("train", "val", "test")


@contextlib.contextmanager
def atomic_open(path: str | Path, mode: str = "w") -> Iterator[IO[Any]]:
    """Open a temp file beside ``path``; on a clean exit fsync it and rename it over ``path``.

    A reader (or a resumed run after a SIGKILL) sees the old file or the new one, never half of one.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, mode, **({} if "b" in mode else {"encoding": "utf-8"})) as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write a file so that a reader sees the old content or the new, never half of it."""
    with atomic_open(path, "w") as fh:
        fh.write(text)


def atomic_write_json(path: str | Path, data: Any) -> None:
    atomic_write_text(path, json.dumps(data, indent=2, sort_keys=True, default=str) + "\n")


def read_manifest(data_dir: str | Path) -> dict[str, Any]:
    path = Path(data_dir) / MANIFEST
    if not path.is_file():
        raise ConfigError(
            f"--data {data_dir}: not a prepared dataset (no {MANIFEST}); run `ampflow prep` first"
        )
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise ConfigError(f"--data {data_dir}: unreadable {MANIFEST} ({exc})") from None
    if manifest.get("schema") != SCHEMA:
        raise ConfigError(f"--data {data_dir}: manifest schema {manifest.get('schema')!r}, expected {SCHEMA}")
    return manifest


def load_split(data_dir: str | Path, split: str) -> dict[str, Any]:
    """Arrays of one split as ``{name: ndarray}`` (memory-mapped, read-only)."""
    import numpy as np

    manifest = read_manifest(data_dir)
    names = manifest["arrays"]
    folder = Path(data_dir) / split
    if split not in manifest["rows"]:
        raise ConfigError(f"--data {data_dir}: no split {split!r}; splits: {', '.join(manifest['rows'])}")
    return {name: np.load(folder / f"{name}.npy", mmap_mode="r") for name in names}


def hash_arrays(arrays: dict[str, dict[str, Any]]) -> str:
    """Content hash of the prepared arrays (split, name, dtype, shape and bytes), order-independent of dicts."""
    h = hashlib.sha256()
    for split in sorted(arrays):
        for name in sorted(arrays[split]):
            a = arrays[split][name]
            h.update(f"{split}/{name}/{a.dtype.str}/{a.shape}".encode())
            h.update(memoryview(a.tobytes()))
    return "sha256:" + h.hexdigest()

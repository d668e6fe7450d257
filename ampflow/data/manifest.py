"""The prepared-dataset directory's ``manifest.json``: reading, checking, content hash, recipe info.

Layout::

    DATA/
      manifest.json          schema, recipe, row counts, class balance, content hash, recipe info
      train/labels.npy, train/<array>.npy, val/..., test/...
      (recipe artifacts, e.g. vocab.json)

Standard library only (numpy arrays are passed in, never imported here).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from ampflow.config import ConfigError, RunConfig

MANIFEST = "manifest.json"
SCHEMA = "ampflow.dataset/1"
SPLITS = ("train", "val", "test")


def read_manifest(data_dir: str | Path) -> dict[str, Any]:
    """The parsed ``DATA/manifest.json``.

    Raises ConfigError when the file is missing, unreadable, or not of schema :data:`SCHEMA`.
    """
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


def hash_arrays(arrays: dict[str, dict[str, Any]]) -> str:
    """Content hash of the prepared arrays (split, name, dtype, shape and bytes), order-independent of dicts.

    ``arrays`` is ``{split: {name: ndarray}}``; returns ``"sha256:<hex>"``.
    """
    h = hashlib.sha256()
    for split in sorted(arrays):
        for name in sorted(arrays[split]):
            a = arrays[split][name]
            h.update(f"{split}/{name}/{a.dtype.str}/{a.shape}".encode())
            h.update(memoryview(a.tobytes()))
    return "sha256:" + h.hexdigest()


def dataset_hash(manifest: dict[str, Any]) -> str | None:
    """The manifest's content hash (``content_hash``, or ``hash`` in older manifests); None when absent."""
    return manifest.get("content_hash") or manifest.get("hash")


def dataset_info(manifest: dict[str, Any]) -> dict[str, Any]:
    """What the recipe's featurize returned (vocab size, classes ...), passed back to ``build_model``."""
    info = manifest.get("info")
    if info is None:
        info = manifest.get("recipe_info", {})
    return dict(info or {})


def label_names(manifest: dict[str, Any], num_classes: int) -> list[str]:
    """``num_classes`` class names from the manifest, or ``"0"``, ``"1"``, ... when it has none that fit."""
    for key in ("label_names", "labels", "classes"):
        names = manifest.get(key)
        if isinstance(names, list) and len(names) == num_classes:
            return [str(n) for n in names]
    return [str(i) for i in range(num_classes)]


def check_dataset_recipe(manifest: dict[str, Any], config: RunConfig, recipe: Any, data_dir: Any) -> None:
    """Refuse a dataset prepared by another recipe than ``config.recipe`` (ConfigError, exit 2)."""
    prepared_by = manifest.get("recipe")
    if prepared_by and prepared_by not in {config.recipe, getattr(recipe, "name", None)}:
        raise ConfigError(
            f"--data {data_dir} was prepared by recipe {prepared_by!r}, not {config.recipe!r}; "
            f"prep it with --recipe {config.recipe} or pass --recipe {prepared_by}"
        )

"""Atomic file writes: a reader (or a run resumed after a SIGKILL) sees the old file or the new one.

Owns the write-to-temp, fsync, rename dance used for ``manifest.json``, ``result.json``, ``eval.json``,
checkpoints, the tracking spool and compiled pipelines. Standard library only.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any


@contextlib.contextmanager
def atomic_open(path: str | Path, mode: str = "w") -> Iterator[IO[Any]]:
    """Open a temp file beside ``path``; on a clean exit fsync it and rename it over ``path``.

    ``mode`` is ``"w"`` (UTF-8 text) or ``"wb"``. Missing parent folders are created. On an exception
    the temp file is removed and ``path`` is left as it was; the exception propagates.
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
    """Write ``text`` (UTF-8) so that a reader sees the old content or the new, never half of it."""
    with atomic_open(path, "w") as fh:
        fh.write(text)


def atomic_write_json(path: str | Path, data: Any) -> None:
    """Write ``data`` as indented, key-sorted JSON (``default=str`` for paths and the like), atomically."""
    atomic_write_text(path, json.dumps(data, indent=2, sort_keys=True, default=str) + "\n")

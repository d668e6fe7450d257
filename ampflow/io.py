"""Atomic file writes: a reader (or a run resumed after a SIGKILL) sees the old file or the new one.

Owns the write-to-temp, fsync, rename dance used for ``manifest.json``, ``result.json``, ``eval.json``,
checkpoints, the tracking spool and compiled pipelines, and the one JSON writer: strict JSON (RFC 8259),
where a non-finite float is written as ``null`` (never ``NaN``/``Infinity``, which strict parsers such
as jq, JavaScript or Go reject). Standard library only.
"""

from __future__ import annotations

import contextlib
import json
import math
import numbers
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any


def umask() -> int:
    """The process's file-mode creation mask, read without changing it (``/proc/self/status`` on
    Linux; elsewhere set and restored at once, which another thread could observe)."""
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_open(path: str | Path, mode: str = "w") -> Iterator[IO[Any]]:
    """Open a temp file beside ``path``; on a clean exit fsync it and rename it over ``path``.

    ``mode`` is ``"w"`` (UTF-8 text) or ``"wb"``. Missing parent folders are created; the file's
    permissions follow the umask, like a plain ``open``. On an exception
    the temp file is removed and ``path`` is left as it was; the exception propagates.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        # mkstemp makes 0600; the file is shared like any other (a prep pod writes, the training
        # image's user and the Airflow worker read), so it follows the umask as open() would
        os.fchmod(fd, 0o666 & ~umask())
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


def finite_json(data: Any) -> Any:
    """``data`` with every non-finite float (NaN, +-inf) replaced by None, recursively.

    Dicts, lists and tuples are rebuilt (tuples as lists); numpy scalars become Python ``int``/``float``
    (they are registered as :mod:`numbers` types); anything else is returned as it is.
    """
    if isinstance(data, dict):
        return {k: finite_json(v) for k, v in data.items()}
    if isinstance(data, list | tuple):
        return [finite_json(v) for v in data]
    if isinstance(data, bool) or data is None or isinstance(data, str):
        return data
    if isinstance(data, numbers.Integral):
        return int(data)
    if isinstance(data, numbers.Real):
        value = float(data)
        return value if math.isfinite(value) else None
    return data


def dumps_strict(data: Any, **kwargs: Any) -> str:
    """Strict JSON text of ``data``: non-finite floats become ``null`` (:func:`finite_json`), and
    ``allow_nan=False`` makes any that slipped through an error rather than ``NaN`` in the file.
    ``kwargs`` go to :func:`json.dumps` (``default=str`` unless given)."""
    kwargs.setdefault("default", str)
    return json.dumps(finite_json(data), allow_nan=False, **kwargs)


def atomic_write_json(path: str | Path, data: Any) -> None:
    """Write ``data`` as indented, key-sorted strict JSON (:func:`dumps_strict`), atomically.

    Non-finite floats are written as ``null``; paths and the like as their ``str``.
    """
    atomic_write_text(path, dumps_strict(data, indent=2, sort_keys=True) + "\n")

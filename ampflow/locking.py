"""One writer per directory: an advisory lock held for the life of the process.

Owns :func:`hold`, used by ``ampflow bench`` on its ``--out`` and by ``ampflow train`` on its run
directory, so that two sweeps started into one folder cannot mix each other's runs, reports and MLflow
runs. The lock is ``flock`` on ``<dir>/.ampflow.lock``: the kernel drops it when the holder dies,
so a lock left by a SIGKILLed process never blocks the resume that follows. Standard library only.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator
from pathlib import Path

from ampflow.config import ConfigError

LOCK_FILE = ".ampflow.lock"


@contextlib.contextmanager
def hold(directory: str | Path, what: str) -> Iterator[Path]:
    """Hold the directory's lock (creating the directory) until the block ends; yields the lock path.

    ``what`` names the option the directory came from (``--out``) for the message. Raises ConfigError
    (exit 2), naming the holder's pid, when another live process holds it.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / LOCK_FILE
    fh = open(path, "a+", encoding="ascii")  # noqa: SIM115 - held open for the life of the block
    try:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        fh.seek(0)
        holder = fh.read().strip() or "unknown"
        fh.close()
        raise ConfigError(
            f"{what} {directory} is in use by another ampflow process (pid {holder}); "
            f"wait for it to end or choose another {what}"
        ) from None
    try:
        fh.seek(0)
        fh.truncate()
        fh.write(f"{os.getpid()}\n")
        fh.flush()
        yield path
    finally:
        fcntl.flock(fh.fileno(), fcntl.LOCK_UN)
        fh.close()

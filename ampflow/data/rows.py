"""Row reads from a ``.npy`` file with ``pread``: the streaming path's disk access.

``ampflow prep`` writes each split as ``.npy`` arrays (first axis = examples), which the in-memory path
opens with ``np.load(mmap_mode="r")``. The streaming path reads the same files differently: it parses
the header once and reads the rows a batch needs with positioned reads (``os.preadv``) into a fresh
buffer. Nothing is mapped, so the training process's resident memory stays at the batches it holds,
whatever the file's size (a memory map's touched pages would count as resident until the kernel
reclaims them, and a mapping counts fully against an address-space limit). The bytes pass through the
page cache, which the kernel sizes to the memory left (a cgroup limit included).

numpy only; no torch.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any


class RowFile:
    """One C-ordered ``.npy`` file, read a set of rows at a time.

    ``shape``, ``dtype``, ``row_shape`` and ``row_bytes`` describe it; the file descriptor opens on
    first read in each process (a DataLoader worker opens its own) and is never pickled.
    Raises ValueError for a Fortran-ordered or object array (prep writes neither).
    """

    def __init__(self, path: str | Path):
        import numpy as np

        self.path = str(path)
        with open(self.path, "rb") as f:
            version = np.lib.format.read_magic(f)
            read_header = (
                np.lib.format.read_array_header_1_0
                if version == (1, 0)
                else np.lib.format.read_array_header_2_0
            )
            shape, fortran, dtype = read_header(f)
            self.offset = f.tell()
        if fortran or dtype.hasobject:
            raise ValueError(f"{self.path}: row reads need a C-ordered array of plain values")
        self.shape, self.dtype = tuple(shape), dtype
        self.row_shape = self.shape[1:]
        self.row_bytes = int(dtype.itemsize * int(np.prod(self.row_shape, dtype=np.int64)))
        self._fd: int | None = None
        self._pid = -1

    def __len__(self) -> int:
        return self.shape[0]

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_fd": None, "_pid": -1}

    @property
    def nbytes(self) -> int:
        return len(self) * self.row_bytes

    def _descriptor(self) -> int:
        if self._fd is None or self._pid != os.getpid():
            self._fd, self._pid = os.open(self.path, os.O_RDONLY), os.getpid()
        return self._fd

    def close(self) -> None:
        if self._fd is not None and self._pid == os.getpid():
            os.close(self._fd)
        self._fd = None

    def _read(self, out: memoryview, offset: int) -> None:
        fd, done = self._descriptor(), 0
        while done < len(out):
            got = os.preadv(fd, [out[done:]], offset + done)
            if got <= 0:
                raise OSError(f"{self.path}: short read at byte {offset + done} (file truncated?)")
            done += got

    def read_range(self, lo: int, hi: int) -> Any:
        """Rows ``lo:hi`` as a new ndarray of shape ``(hi - lo, *row_shape)``."""
        import numpy as np

        hi = min(hi, len(self))
        out = np.empty((max(0, hi - lo), *self.row_shape), dtype=self.dtype)
        if out.size:
            self._read(memoryview(out.reshape(-1).view(np.uint8)), self.offset + lo * self.row_bytes)
        return out

    def take(self, idx: Any) -> Any:
        """Rows ``idx`` (any order, int array) as a new ndarray of shape ``(len(idx), *row_shape)``.

        Reads in file order, one read per run of consecutive rows. Raises IndexError out of range.
        """
        import numpy as np

        idx = np.asarray(idx, dtype=np.int64)
        if idx.size and (idx.min() < 0 or idx.max() >= len(self)):
            raise IndexError(f"{self.path}: row index out of range 0..{len(self) - 1}")
        order = np.argsort(idx, kind="stable")
        ordered = idx[order]
        rows = np.empty((len(idx), *self.row_shape), dtype=self.dtype)
        flat = memoryview(rows.reshape(-1).view(np.uint8))
        pos = 0
        for run in np.split(ordered, np.flatnonzero(np.diff(ordered) != 1) + 1) if idx.size else []:
            nbytes = len(run) * self.row_bytes
            self._read(flat[pos : pos + nbytes], self.offset + int(run[0]) * self.row_bytes)
            pos += nbytes
        out = np.empty_like(rows)
        out[order] = rows
        return out


def sequence_extent(rows: Any) -> Any:
    """Per row of a 2-D array, the last non-zero position + 1 (0 for an all-zero row): an int64 ndarray.

    The length of a right-padded sequence (pad id 0, or an attention mask), never shorter than its
    real tokens even when a zero id sits among them.
    """
    import numpy as np

    nz = np.asarray(rows) != 0
    width = nz.shape[1]
    last = width - np.argmax(nz[:, ::-1], axis=1)
    return np.where(nz.any(axis=1), last, 0).astype(np.int64)

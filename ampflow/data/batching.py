"""The data order of a run: a seeded per-epoch permutation, cut into global micro-batches.

The order depends only on ``(seed, epoch)``, so it is the same for every precision mode, for one
process or N, and across a resume. Under DDP/FSDP each rank takes its contiguous slice of every
global micro-batch. numpy and torch load inside the functions.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


def epoch_permutation(seed: int, epoch: int, n: int) -> Any:
    """The data order of one epoch: an int64 ndarray, a permutation of ``range(n)``."""
    import numpy as np

    return np.random.default_rng([seed, epoch]).permutation(n)


@dataclass
class Position:
    """Where a run stands: optimizer steps done and the next sample position in the epoch's permutation."""

    step: int = 0
    epoch: int = 0
    index: int = 0  # next global sample position in this epoch's permutation


class DataOrder:
    """Global micro-batches of ``batch`` samples from the seeded permutation; each rank takes its slice.

    ``batch`` is the global micro-batch size and must be a multiple of ``world``; ``pos`` is advanced
    in place by :meth:`next_global`, so the caller's :class:`Position` is what a checkpoint saves.
    """

    def __init__(self, n: int, batch: int, seed: int, rank: int, world: int, device: Any, pos: Position):
        self.n, self.batch, self.seed = n, batch, seed
        self.local = batch // world
        self.lo = rank * self.local
        self.device = device
        self.pos = pos
        self._perm_epoch = -1
        self._perm = None

    def _perm_for(self, epoch: int) -> Any:
        import torch

        if self._perm_epoch != epoch:
            self._perm = torch.from_numpy(epoch_permutation(self.seed, epoch, self.n)).to(self.device)
            self._perm_epoch = epoch
        return self._perm

    def next_global(self) -> tuple[int, int]:
        """Advance the position by one global micro-batch; returns (epoch, start) of that batch."""
        if self.pos.index + self.batch > self.n:  # drop the last partial batch: fixed shapes
            self.pos.epoch += 1
            self.pos.index = 0
        start = (self.pos.epoch, self.pos.index)
        self.pos.index += self.batch
        return start

    def local_indices(self, epoch: int, start: int) -> Any:
        """This rank's sample indices of the micro-batch at ``(epoch, start)``: a tensor on the device."""
        perm = self._perm_for(epoch)
        return perm[start + self.lo : start + self.lo + self.local]

    def global_indices(self, epoch: int, start: int) -> Any:
        """All ranks' sample indices of the micro-batch at ``(epoch, start)``: an ndarray of ``batch``."""
        return epoch_permutation(self.seed, epoch, self.n)[start : start + self.batch]

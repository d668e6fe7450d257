"""The data order of a run: a seeded per-epoch order, cut into global micro-batches.

Two orders, chosen by the ``pad_to`` setting:

- ``max`` (fixed padding): the epoch's seeded permutation, every batch padded to the split's width;
- ``bucket`` (padding-aware): the same permutation cut into mega-batches of ``MEGA_BATCHES`` x batch
  samples, each sorted by sequence length, cut into batches, and the batches shuffled with the seed
  (the ``group_by_length`` scheme of Hugging Face's Trainer). Each batch is padded to its longest
  sequence rounded up to one of a few bucket lengths (:func:`bucket_length`), so a compiled model
  sees a bounded set of shapes.

Either order depends only on ``(seed, epoch, n, batch, lengths)``, so it is the same for every
precision mode, for one process or N, and across a resume: a :class:`Position` (the next sample
position in the epoch's order) replays exactly the remaining batches. Under DDP/FSDP each rank takes
its contiguous slice of every global micro-batch and pads it to the global batch's bucket, so every
rank runs the same shape. numpy and torch load inside the functions.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

# mega-batch size in batches: large enough that a sorted mega-batch gives tight length groups,
# small enough that the batches still mix the whole length range across an epoch (HF uses 50)
MEGA_BATCHES = 50
# bucket lengths are multiples of this (and the split's width). 8 keeps tensor-core friendly shapes
# (fp16/bf16 GEMMs want dimensions that are multiples of 8) and wastes half the padding 16 did: on
# tweets-minilm (mean 32.6 real tokens) a batch pads to 36.6 positions on average, against 40.5 with
# steps of 16 and 64 without buckets (benchmarks/bench_padding.py measures what that buys)
BUCKET_STEP = 8


def epoch_permutation(seed: int, epoch: int, n: int) -> Any:
    """The data order of one epoch: an int64 ndarray, a permutation of ``range(n)``."""
    import numpy as np

    return np.random.default_rng([seed, epoch]).permutation(n)


def default_buckets(width: int, step: int = BUCKET_STEP) -> tuple[int, ...]:
    """Bucket lengths for sequences padded to ``width`` positions: ``step, 2*step, ..., width``.

    ``default_buckets(64) == (8, 16, 24, 32, 40, 48, 56, 64)``; ``default_buckets(20, 16) == (16, 20)``.
    """
    if width < 1:
        raise ValueError(f"sequence width must be positive, got {width}")
    return (*range(step, width, step), width)


def bucket_length(longest: int, buckets: Sequence[int]) -> int:
    """The padded length of a batch whose longest sequence has ``longest`` tokens.

    The smallest bucket >= ``longest`` (33 -> 48 with buckets 16/32/48/64); the largest bucket when
    none is long enough (the split's width, which no sequence exceeds).
    """
    for b in sorted(buckets):
        if b >= longest:
            return int(b)
    return int(max(buckets))


def length_grouped_order(seed: int, epoch: int, lengths: Any, batch: int, mega: int = MEGA_BATCHES) -> Any:
    """The length-grouped order of one epoch: an int64 ndarray, a permutation of ``range(len(lengths))``.

    The epoch's seeded permutation is cut into mega-batches of ``mega * batch`` samples, each sorted by
    ``lengths`` (stable, so ties keep the permutation's order), cut into batches of ``batch``, and the
    full batches are shuffled with a second seeded generator. The ``n % batch`` samples that make no
    full batch come last (the run drops them, as the fixed order does).
    """
    import numpy as np

    lengths = np.asarray(lengths)
    n = len(lengths)
    perm = epoch_permutation(seed, epoch, n)
    span = max(1, mega) * batch
    grouped = (
        np.concatenate(
            [
                chunk[np.argsort(lengths[chunk], kind="stable")]
                for chunk in np.split(perm, range(span, n, span))
            ]
        )
        if n
        else perm
    )
    full = n // batch
    batches = grouped[: full * batch].reshape(full, batch)
    shuffled = batches[np.random.default_rng([seed, epoch, 1]).permutation(full)]
    return np.concatenate([shuffled.reshape(-1), grouped[full * batch :]])


@dataclass
class Position:
    """Where a run stands: optimizer steps done and the next sample position in the epoch's order."""

    step: int = 0
    epoch: int = 0
    index: int = 0  # next global sample position in this epoch's order


class DataOrder:
    """Global micro-batches of ``batch`` samples from the seeded order; each rank takes its slice.

    ``batch`` is the global micro-batch size and must be a multiple of ``world``; ``pos`` is advanced
    in place by :meth:`next_global`, so the caller's :class:`Position` is what a checkpoint saves.
    ``lengths`` (an ``(n,)`` int array of sequence lengths) and ``buckets`` switch on the
    length-grouped order and bucket padding; without them the order is the plain permutation.
    """

    def __init__(
        self,
        n: int,
        batch: int,
        seed: int,
        rank: int,
        world: int,
        device: Any,
        pos: Position,
        lengths: Any = None,
        buckets: Sequence[int] | None = None,
    ):
        self.n, self.batch, self.seed = n, batch, seed
        self.local = batch // world
        self.lo = rank * self.local
        self.device = device
        self.pos = pos
        self.lengths = lengths
        self.buckets = tuple(buckets) if buckets else None
        if (lengths is None) != (self.buckets is None):
            raise ValueError(
                "lengths and buckets go together (both for bucketing, neither for fixed padding)"
            )
        self._epoch = -1
        self._order = None  # ndarray of the cached epoch
        self._order_dev = None  # the same on the device

    @property
    def bucketing(self) -> bool:
        return self.buckets is not None

    def epoch_order(self, epoch: int) -> Any:
        """The whole order of ``epoch`` (an int64 ndarray of ``n``), cached for the current epoch."""
        if self._epoch != epoch:
            if self.bucketing:
                self._order = length_grouped_order(self.seed, epoch, self.lengths, self.batch)
            else:
                self._order = epoch_permutation(self.seed, epoch, self.n)
            self._order_dev = None
            self._epoch = epoch
        return self._order

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
        import torch

        order = self.epoch_order(epoch)
        if self._order_dev is None:
            self._order_dev = torch.from_numpy(order).to(self.device)
        return self._order_dev[start + self.lo : start + self.lo + self.local]

    def local_array(self, epoch: int, start: int) -> Any:
        """This rank's sample indices of the micro-batch at ``(epoch, start)``: an int64 ndarray."""
        return self.epoch_order(epoch)[start + self.lo : start + self.lo + self.local]

    def global_indices(self, epoch: int, start: int) -> Any:
        """All ranks' sample indices of the micro-batch at ``(epoch, start)``: an ndarray of ``batch``."""
        return self.epoch_order(epoch)[start : start + self.batch]

    def pad_length(self, epoch: int, start: int) -> int | None:
        """Positions the micro-batch at ``(epoch, start)`` is padded to on every rank (its global
        longest sequence, rounded up to a bucket); None under fixed padding (the split's width)."""
        if not self.bucketing:
            return None
        return bucket_length(int(self.lengths[self.global_indices(epoch, start)].max()), self.buckets)

    def clone(self) -> DataOrder:
        """An independent order from a copy of the current position (its own cache and position)."""
        pos = Position(self.pos.step, self.pos.epoch, self.pos.index)
        twin = DataOrder(self.n, self.batch, self.seed, 0, 1, self.device, pos, self.lengths, self.buckets)
        twin.local, twin.lo = self.local, self.lo
        return twin

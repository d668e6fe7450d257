"""``batch_size=auto``: a doubling search, as Lightning's batch-size finder, measured with real steps.

Start small and double while the next size still fits: stop at CUDA out-of-memory (the failed size is
discarded, the cache emptied), at the CPU memory budget (peak RSS above ``auto_batch_memory_budget``),
when doubling gains less than ``auto_batch_plateau`` in samples/s, or at the cap (``auto_batch_max``
and the number of training examples). The chosen size is the fastest trial that fitted.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


@dataclass
class Trial:
    batch_size: int
    samples_per_s: float | None
    peak_memory_bytes: int | None
    outcome: str  # ok, oom, over_budget

    def to_dict(self) -> dict[str, Any]:
        return {
            "batch_size": self.batch_size,
            "samples_per_s": self.samples_per_s,
            "peak_memory_bytes": self.peak_memory_bytes,
            "outcome": self.outcome,
        }


def is_oom(exc: BaseException) -> bool:
    import torch

    if isinstance(exc, torch.OutOfMemoryError):
        return True
    return isinstance(exc, RuntimeError) and "out of memory" in str(exc).lower()


def search(
    trial: Callable[[int], tuple[float, int | None]],
    *,
    start: int,
    cap: int,
    multiple: int = 1,
    memory_budget: int | None,
    plateau: float,
    on_oom: Callable[[], None] | None = None,
) -> tuple[int, list[Trial], str]:
    """Return ``(chosen, trials, stop_reason)``. ``trial(bs)`` returns (samples/s, peak bytes) or raises OOM.

    ``multiple``: every size is a multiple of it (the world size, so each rank gets an equal share).
    """
    cap = max(multiple, cap - cap % multiple)
    bs = max(multiple, min(start - start % multiple or multiple, cap))
    trials: list[Trial] = []
    reason = "cap"
    while True:
        try:
            sps, peak = trial(bs)
        except Exception as exc:
            if not is_oom(exc):
                raise
            if on_oom is not None:
                on_oom()
            trials.append(Trial(bs, None, None, "oom"))
            reason = "out_of_memory"
            break
        if memory_budget is not None and peak is not None and peak > memory_budget:
            trials.append(Trial(bs, sps, peak, "over_budget"))
            reason = "memory_budget"
            break
        ok = [t for t in trials if t.outcome == "ok"]
        trials.append(Trial(bs, sps, peak, "ok"))
        if ok and sps < max(t.samples_per_s or 0.0 for t in ok) * (1.0 + plateau):
            reason = "throughput_plateau"
            break
        if bs >= cap:
            reason = "cap"
            break
        bs = min(bs * 2, cap)
    ok = [t for t in trials if t.outcome == "ok"]
    if not ok:
        raise RuntimeError(
            f"batch_size=auto: even batch size {trials[0].batch_size} does not fit ({trials[0].outcome})"
        )
    chosen = max(ok, key=lambda t: t.samples_per_s or 0.0).batch_size
    return chosen, trials, reason

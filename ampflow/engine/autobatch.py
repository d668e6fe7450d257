"""``batch_size=auto``: a doubling search, as Lightning's batch-size finder, measured with real steps.

Start small and double while the next size still fits: stop at CUDA out-of-memory (the failed size is
discarded, the cache emptied), at the CPU memory budget (peak RSS above ``auto_batch_memory_budget``),
when doubling gains less than ``auto_batch_plateau`` in samples/s, or at the cap (``auto_batch_max``
and the number of training examples). The chosen size is the fastest trial that fitted.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from ampflow.data.batching import epoch_permutation
from ampflow.engine import parallel
from ampflow.engine.devices import MemoryMeter
from ampflow.engine.precision import PrecisionPolicy
from ampflow.engine.step import Stepper, sync


@dataclass
class Trial:
    """One tried batch size: its samples/s and peak bytes (None when it did not fit) and ``ok`` / ``oom`` / ``over_budget``."""

    batch_size: int
    samples_per_s: float | None
    peak_memory_bytes: int | None
    outcome: str  # ok, oom, over_budget

    def to_dict(self) -> dict[str, Any]:
        """The JSON form result.json's ``batch_size_search.trials`` holds."""
        return {
            "batch_size": self.batch_size,
            "samples_per_s": self.samples_per_s,
            "peak_memory_bytes": self.peak_memory_bytes,
            "outcome": self.outcome,
        }


def is_oom(exc: BaseException) -> bool:
    """Whether ``exc`` is a device out-of-memory (``torch.OutOfMemoryError`` or a RuntimeError saying so)."""
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


AUTO_BATCH_START = 8
AUTO_BATCH_TRIAL_STEPS = 3


def search_batch_size(
    config: Any,
    model: Any,
    inputs: dict[str, Any],
    labels: Any,
    loss_fn: Any,
    policy: Any,
    device: Any,
    world: int,
) -> tuple[int, dict[str, Any]]:
    """Run :func:`search` with real optimizer steps on copies of ``model`` (its weights and RNG untouched).

    Returns ``(global batch size, report)``; the report is result.json's ``batch_size_search``. Every
    rank runs the same trials and agrees on their outcome (slowest throughput, largest memory).
    """
    n = int(labels.shape[0])
    meter = MemoryMeter(device)

    def trial(bs: int) -> tuple[float, int | None]:
        return _trial(config, model, inputs, labels, loss_fn, policy, device, world, meter, bs)

    def on_oom() -> None:
        if device.type == "cuda":
            torch.cuda.empty_cache()

    cap = min(config.auto_batch_max, n // config.grad_accum)
    chosen, trials, reason = search(
        trial,
        start=AUTO_BATCH_START * world,
        cap=cap,
        multiple=world,
        memory_budget=config.auto_batch_memory_budget if device.type == "cpu" else None,
        plateau=config.auto_batch_plateau,
        on_oom=on_oom,
    )
    return chosen, {
        "chosen": chosen,
        "stop_reason": reason,
        "trials": [t.to_dict() for t in trials],
        "note": "trials ran without torch.compile",
    }


def _trial(
    config, model, inputs, labels, loss_fn, policy, device, world, meter, bs
) -> tuple[float, int | None]:
    """Samples/s and peak bytes of ``bs`` on a copy of the model; raises out-of-memory on every rank."""
    devices = [device] if device.type == "cuda" else []
    oom: BaseException | None = None
    times: list[float] = []
    peak = None
    with torch.random.fork_rng(devices=devices):
        try:
            times, peak = _timed_steps(
                config, model, inputs, labels, loss_fn, policy, device, world, meter, bs
            )
        except Exception as exc:
            if not is_oom(exc):
                raise
            oom = exc
    # every rank must agree on an out-of-memory, or the others would wait in the next collective
    if parallel.all_reduce([1.0 if oom is not None else 0.0], "max", device)[0]:
        raise oom if oom is not None else torch.OutOfMemoryError("out of memory on another rank")
    sps = bs * config.grad_accum / (sum(times) / len(times))
    # every rank must agree: slowest throughput, largest memory
    sps = parallel.all_reduce([sps], "min", device)[0]
    peak = int(parallel.all_reduce([peak or 0], "max", device)[0]) or peak
    return sps, peak


def _timed_steps(config, model, inputs, labels, loss_fn, policy, device, world, meter, bs):
    """``AUTO_BATCH_TRIAL_STEPS`` timed steps (after one warm-up step) on a copy: (times, peak bytes)."""
    n = int(labels.shape[0])
    probe = copy.deepcopy(model)
    opt = torch.optim.AdamW(probe.parameters(), lr=1e-6)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    scaler = torch.amp.GradScaler(device.type) if policy.scaler else None
    trial_policy = PrecisionPolicy(policy.mode, policy.device_type, policy.spec, scaler)
    st = Stepper(
        probe,
        opt,
        sched,
        trial_policy,
        loss_fn,
        inputs,
        labels,
        device,
        config.clip_grad_norm,
        config.grad_accum,
    )
    perm = torch.from_numpy(epoch_permutation(config.seed, 0, n)).to(device)
    local, accum = bs // world, config.grad_accum
    meter.reset()
    times = []
    try:
        for i in range(1 + AUTO_BATCH_TRIAL_STEPS):
            lo = (i * bs * accum) % max(1, n - bs * accum + 1)
            micro = [perm[lo + j * bs : lo + j * bs + local] for j in range(accum)]
            sync(device)
            t0 = time.perf_counter()
            st(micro)
            sync(device)
            if i:  # the first step warms caches and the allocator
                times.append(time.perf_counter() - t0)
        return times, meter.read().peak_bytes
    finally:
        del probe, opt, st

"""The timed steady-state window of a run, and the speed figures computed from it.

Only steps after ``warmup_steps`` (and after the compiling first step under ``--compile``) are
timed. Each step's clock is read after a CUDA synchronise; the data fetch is timed apart. The
window's wall clock includes the loop's own bookkeeping (logging, progress, tracking) but not the
checkpoints written inside it, and peak memory is read over the window only.
"""

from __future__ import annotations

import time
from typing import Any

from ampflow.engine import parallel
from ampflow.engine.devices import MemoryMeter, MemoryReading
from ampflow.engine.metrics import dynamo_graph_count, percentile, step_time_stats
from ampflow.engine.step import sync


class ThroughputWindow:
    """Step times, data-wait times, the batches of the timed window and its memory peak.

    ``skip`` is the number of leading steps (of this process's run) left out of the window;
    ``compiled`` says whether the first step compiles (its time is reported as ``compile_s``).
    """

    def __init__(self, device: Any, skip: int, compiled: bool):
        self.device, self.skip, self.compiled = device, skip, compiled
        self._t0 = self._c0 = 0.0
        self.meter = MemoryMeter(device)
        self.memory_reset = False
        self.step_times: list[float] = []
        self.data_times: list[float] = []
        self.batches: list[tuple[int, int]] = []  # (epoch, start) of each timed global micro-batch
        self.compile_s: float | None = None
        self.graphs_after_compile: int | None = None
        self.start: float | None = None
        self.end = 0.0
        self.cpu_start = self.cpu_end = 0.0
        self.checkpoint_s = 0.0  # checkpoint seconds inside the window, taken out of its wall clock

    def timed(self, local_step: int) -> bool:
        """Whether step ``local_step`` (0 = this process's first) is timed; resets memory at the first."""
        timed = local_step >= self.skip
        if timed and not self.memory_reset:
            self.meter.reset()
            self.memory_reset = True
        return timed

    def clock_start(self) -> None:
        """Start a step's clock (wall and process CPU) once the device has drained."""
        sync(self.device)
        self._t0, self._c0 = time.perf_counter(), time.process_time()

    def clock_stop(self) -> float:
        """Wall seconds since :meth:`clock_start`, the device's queued work included."""
        sync(self.device)
        return time.perf_counter() - self._t0

    def record(
        self, local_step: int, timed: bool, dt: float, data_s: float, starts: list[tuple[int, int]]
    ) -> None:
        """One step of ``dt`` seconds (``data_s`` of them gathering inputs) over the batches ``starts``."""
        if self.compiled and local_step == 0:
            self.compile_s = dt
            self.graphs_after_compile = dynamo_graph_count()
        if timed:
            self.step_times.append(dt)
            self.data_times.append(data_s)
            self.batches.extend(starts)

    def close_step(self, timed: bool, checkpoint_s: float) -> None:
        """End of the step whose clock last started, after its bookkeeping and ``checkpoint_s`` seconds
        of checkpoint writing (taken out of the window)."""
        if not timed:
            return
        self.checkpoint_s += checkpoint_s
        self.end, self.cpu_end = time.perf_counter(), time.process_time()
        if self.start is None:
            self.start, self.cpu_start = self._t0, self._c0

    def memory(self) -> MemoryReading | None:
        """The memory peak over the window (None when no step was timed)."""
        return self.meter.read() if self.memory_reset else None

    @property
    def seconds(self) -> float:
        """Wall seconds of the window, checkpoints excluded (0.0 when nothing was timed)."""
        return (self.end - self.start - self.checkpoint_s) if self.start is not None else 0.0

    def recompiles(self) -> int | None:
        """Graphs compiled after the first step (None without ``--compile``)."""
        if not self.compiled:
            return None
        if not self.graphs_after_compile:
            return 0
        return max(0, dynamo_graph_count() - self.graphs_after_compile)

    def figures(
        self,
        *,
        batch_size: int,
        world: int,
        tokens: int,
        flops_per_sample: float | None,
        peak_flops: float | None,
        memory: MemoryReading | None,
        device: Any,
    ) -> dict[str, Any]:
        """The window's figures, result.json ``metrics`` keys.

        ``batch_size`` is the global micro-batch; samples/s and tokens/s count every rank; MFU is
        achieved FLOP/s over ``world`` x ``peak_flops``; memory is the largest peak of any rank (bytes).
        """
        timed_s = self.seconds
        samples = len(self.batches) * batch_size
        sps = samples / timed_s if timed_s > 0 else None
        peak = memory.peak_bytes if memory else None
        reserved = memory.reserved_bytes if memory else None
        if world > 1:  # the largest peak of any rank (0 stands for "no reading")
            peak, reserved = (
                int(v) or None for v in parallel.all_reduce([peak or 0, reserved or 0], "max", device)
            )
        per_rank = per_rank_step_p50(self.step_times, device) if world > 1 else None
        stats = step_time_stats(self.step_times)
        mfu = (
            flops_per_sample * sps / (world * peak_flops)
            if (flops_per_sample and sps and peak_flops)
            else None
        )
        return {
            "samples_per_s": sps,
            "samples_per_s_per_device": sps / world if sps else None,
            "tokens_per_s": tokens / timed_s if tokens and timed_s > 0 else None,
            **stats,
            "per_rank_step_time_p50_s": per_rank,
            "straggler_rank": straggler_rank(per_rank, stats["step_time_p90_s"], stats["step_time_p50_s"]),
            "data_wait_frac": sum(self.data_times) / timed_s if timed_s > 0 else None,
            "peak_memory_bytes": peak,
            "peak_memory_reserved_bytes": reserved,
            "compile_s": self.compile_s,
            "recompiles": self.recompiles(),
            "flops_per_sample": flops_per_sample,
            "mfu": mfu,
            "timed_steps": len(self.step_times),
            "timed_wall_s": timed_s,
            # process CPU time of the window: with one thread, a load-independent cost figure
            "timed_cpu_s": (self.cpu_end - self.cpu_start) if self.start is not None else None,
        }


def per_rank_step_p50(step_times: list[float], device: Any) -> list[float | None]:
    """Every rank's step-time p50 (seconds), in rank order, on every rank: a collective, all ranks call.

    Gathered through a sum all-reduce of one slot per rank (None for a rank that timed no step).
    In synchronous DDP/FSDP the gradient collectives make the ranks' wall step times converge, so
    what separates a straggler here is its own work outside them: data loading, host stalls, a
    slower device before the first collective of the step.
    """
    import torch.distributed as dist

    p50 = percentile(step_times, 50)
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return [p50]
    slots = [0.0] * dist.get_world_size()
    slots[dist.get_rank()] = -1.0 if p50 is None else p50
    return [None if v < 0 else v for v in parallel.all_reduce(slots, "sum", device)]


def straggler_rank(
    per_rank_p50: list[float | None] | None, p90: float | None, p50: float | None
) -> int | None:
    """The rank whose step-time p50 exceeds every other rank's by more than the run's step-time spread
    (p90 - p50, seconds), or None: fewer than two ranks timed, no spread known, or no rank stands out.

    Pure. A difference within the spread is noise, not a straggler (GUIDE: "within noise").
    """
    timed = [(t, r) for r, t in enumerate(per_rank_p50 or []) if t is not None]
    if len(timed) < 2 or p90 is None or p50 is None:
        return None
    timed.sort(reverse=True)
    (slowest, rank), (runner_up, _) = timed[0], timed[1]
    return rank if slowest - runner_up > p90 - p50 else None

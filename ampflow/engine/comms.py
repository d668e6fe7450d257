"""Exposed communication time: the share of a training step its collectives are not hidden behind compute.

``comm_time_share`` in result.json ``metrics`` (and so in MLflow), for every distributed strategy
(ddp, fsdp, tp, pp, fsdp+tp); ``null`` with ``comm.reason`` saying why where nothing is measured
(``single``, one process, ``comm_profile_steps=0``, a run too short to spare the profiled steps).

**Which steps.** The ``comm_profile_steps`` (default 2) optimizer steps right after the warm-up (and
after the compiling step under ``--compile``) run under ``torch.profiler``; result.json's
``comm.profiled_steps`` names them. They are left out of the throughput window: samples/s, tokens/s,
the step-time percentiles, MFU, peak memory and energy are figures of the steps after them, so the
profiler's overhead touches none of those (``timed_steps`` = steps run - warm-up - profiled steps, and
samples/s x timed_wall_s = the timed steps' samples still holds). A run with no step left to time after
them is not profiled (``comm.reason`` says how many steps it needs).

**What counts** (HolisticTraceAnalysis's comm/compute overlap, per rank, over the profiled steps):

- CUDA (NCCL): the device timeline. ``comm`` is the union of the kernels whose name has ``nccl``
  (or ``rccl``), ``compute`` the union of every other kernel (copies and memsets are neither);
  exposed communication is ``comm`` minus ``compute``: time a collective ran and no compute kernel did.
- CPU (gloo): collectives run on gloo's own threads while the training thread computes. ``comm`` is
  the union of the collective events on any thread (``gloo:*``, ``c10d::*``, ``_c10d_functional::*``
  with its ``wait_tensor``, ``record_param_comms``); ``compute`` is the union of the operator events on
  the training thread (aten operators and generated autograd nodes), less the collective and wait
  events nested in them. Events that run Python around their operators are not compute themselves,
  because a gloo wait records no event and may sit inside them: ``record_function`` scopes (such as
  ``FSDP::pre_forward``), the autograd engine's per-node wrapper, Python autograd Functions' nodes
  (FSDP2's post-backward reduce) and DTensor's Python dispatch; the operators inside them count.
  Exposed communication is a collective in flight while the training thread runs no operator: waiting
  for DDP's last gradient bucket after backward, for an FSDP all-gather or reduce-scatter, a
  tensor-parallel all-reduce, a pipeline ``recv`` or a slower peer.

``comm_time_share`` = exposed seconds / wall seconds of the profiled steps (each step from its start
to the end of its loss all-reduce), computed on each rank and averaged over ranks;
``comm_time_share_max`` is the largest rank's, ``comm_collective_share`` the share with any collective
in flight, hidden or not (so ``1 - comm_time_share / comm_collective_share`` of the collective time
overlapped compute).

Limits, said plainly: on a CPU the Python time between operators counts as idle (a collective running
then counts as exposed), and a hidden collective still takes CPU cores from compute; under ``pp`` a
stage waiting for its neighbour's activations sits in a ``recv``, so the pipeline bubble is part of the
share; two profiled steps of a short or noisy run are an estimate, not a benchmark.

``AMPFLOW_COMM_TRACE_DIR=DIR`` makes each rank write its profile there as a Chrome trace
(``comm_profile_rank<N>.json``), to check the figure by eye in Perfetto or with HolisticTraceAnalysis.
"""

from __future__ import annotations

import contextlib
import os
import re
import sys
from collections.abc import Iterable, Iterator
from typing import Any

from ampflow.engine import parallel

STEP_EVENT = "ampflow.comm_profile_step"
# a directory: each rank writes its profile there as a Chrome trace (comm_profile_rank<N>.json)
TRACE_ENV = "AMPFLOW_COMM_TRACE_DIR"
# CPU events that are communication: issued collectives (the training thread enqueues, gloo's threads
# run them), functional collectives and their waits, and the profiler's comms record
_COMM_PREFIXES = ("gloo:", "nccl:", "c10d::", "_c10d_functional::", "c10d_functional::", "record_param_comms")
# operator events that run Python around the operators they hold, which may wait on a collective
# without a recorded event (a gloo work's wait() records none): the autograd engine's wrapper of one
# node (it runs the node's hooks), the node of a Python autograd Function (``<Class>Backward``, no
# number: FSDP2's RegisterPostBackwardFunctionBackward reduces and waits there; generated C++ nodes are
# ``<Op>Backward<N>``) and a tensor subclass's Python dispatch (DTensor). The operators inside them
# are recorded on their own and count as compute.
_ENGINE_WRAPPER = "autograd::engine::evaluate_function"
_PYTHON_NODE = re.compile(r"Backward$")
_PYTHON_DISPATCH = "PythonSubclass"
_DEVICE_COMM = ("nccl", "rccl")
# device events that are not kernels: copies, memsets, the GPU-side mirror of a record_function scope
_DEVICE_NOT_KERNEL = ("gpu_memcpy", "gpu_memset", "gpu_user_annotation")

Interval = tuple[int, int]


# -- interval arithmetic (pure) ---------------------------------------------------------------


def union(intervals: Iterable[Interval]) -> list[Interval]:
    """Sorted, disjoint intervals covering the same points as ``intervals`` (empty ones dropped)."""
    out: list[list[int]] = []
    for a, b in sorted(i for i in intervals if i[1] > i[0]):
        if out and a <= out[-1][1]:
            out[-1][1] = max(out[-1][1], b)
        else:
            out.append([a, b])
    return [(a, b) for a, b in out]


def subtract(base: list[Interval], cut: list[Interval]) -> list[Interval]:
    """The points of ``base`` not in ``cut`` (both sorted and disjoint, as :func:`union` returns)."""
    out: list[Interval] = []
    j = 0
    for a, b in base:
        start = a
        while j < len(cut) and cut[j][1] <= start:
            j += 1
        k = j
        while k < len(cut) and cut[k][0] < b:
            if cut[k][0] > start:
                out.append((start, cut[k][0]))
            start = max(start, cut[k][1])
            k += 1
        if start < b:
            out.append((start, b))
    return out


def intersect(a: list[Interval], b: list[Interval]) -> list[Interval]:
    """The points in both (sorted, disjoint) interval lists."""
    return subtract(a, subtract(a, b))


def measure(intervals: list[Interval]) -> int:
    return sum(b - a for a, b in intervals)


def exposed(steps: list[Interval], comm: list[Interval], compute: list[Interval]) -> tuple[float, float]:
    """``(exposed share, collective share)`` of the wall time of ``steps``.

    Exposed: time inside the steps where some ``comm`` interval runs and no ``compute`` one does;
    collective: time inside the steps where some ``comm`` interval runs. Intervals in any order,
    overlapping or not; 0.0 for both when the steps have no length.
    """
    window = union(steps)
    wall = measure(window)
    if wall <= 0:
        return 0.0, 0.0
    comm_in = intersect(union(comm), window)
    bare = subtract(comm_in, union(compute))
    return measure(bare) / wall, measure(comm_in) / wall


# -- reading a profile ------------------------------------------------------------------------


def _span(e: Any) -> Interval:
    start = int(e.start_ns())
    return start, start + int(e.duration_ns())


def is_comm_name(name: str) -> bool:
    return name.startswith(_COMM_PREFIXES)


def _may_block(name: str) -> bool:
    return name.startswith(_ENGINE_WRAPPER) or name == _PYTHON_DISPATCH or bool(_PYTHON_NODE.search(name))


def classify(
    events: Iterable[Any], device_kind: str
) -> tuple[list[Interval], list[Interval], list[Interval]]:
    """``(steps, comm, compute)`` intervals (ns) of the profiler's kineto ``events``.

    ``device_kind`` ``cuda`` reads the device timeline, ``cpu`` the host threads (module docstring).
    An event needs ``name()``, ``start_ns()``, ``duration_ns()``, ``start_thread_id()``,
    ``device_type()``, ``activity_type()`` and ``is_user_annotation()``.
    """
    from torch.autograd import DeviceType

    events = list(events)
    # the host's step scopes (kineto mirrors a scope on the GPU timeline too: not those)
    step_events = [e for e in events if e.name() == STEP_EVENT and e.device_type() == DeviceType.CPU]
    steps = [_span(e) for e in step_events]
    comm: list[Interval] = []
    compute: list[Interval] = []
    if device_kind == "cuda":
        for e in events:
            if (
                e.device_type() != DeviceType.CUDA
                or e.is_user_annotation()
                or e.activity_type() in _DEVICE_NOT_KERNEL
                or e.name().startswith(("Memcpy", "Memset"))
            ):
                continue
            name = e.name().lower()
            (comm if any(k in name for k in _DEVICE_COMM) else compute).append(_span(e))
        return steps, comm, compute
    threads = {e.start_thread_id() for e in step_events}
    blocked: list[Interval] = []
    for e in events:
        if e.device_type() != DeviceType.CPU:
            continue
        name = e.name()
        if is_comm_name(name):
            comm.append(_span(e))
            if e.start_thread_id() in threads:
                blocked.append(_span(e))
        elif e.start_thread_id() in threads and not e.is_user_annotation() and not _may_block(name):
            compute.append(_span(e))
    return steps, comm, subtract(union(compute), union(blocked))


# -- the probe the trainer drives -------------------------------------------------------------


@contextlib.contextmanager
def _quiet_stderr() -> Iterator[None]:
    """Kineto prints two lines per start/stop on fd 2 (``USDT: ... profiler_start``): keep them out of
    the run's log. Only around the profiler's start and stop, never around training."""
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError):  # no real fd 2 (captured): nothing to hide
        yield
        return
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


class CommProbe:
    """Profiles ``steps`` optimizer steps after the first ``first`` of this process and measures them.

    ``strategy``, ``world`` and ``device`` decide whether there is anything to measure;
    ``steps_left`` is the number of steps this process will run (the probe profiles only when at
    least one step is left to time after it). :attr:`steps` is how many steps the throughput window
    must skip beyond the warm-up (0 when not profiling).
    """

    def __init__(self, strategy: str, world: int, device: Any, steps: int, first: int, steps_left: int):
        self.device, self.first, self.planned = device, first, int(steps)
        self.reason: str | None = None
        if strategy == "single" or world < 2:
            self.reason = "one process: no collectives"
        elif self.planned <= 0:
            self.reason = "comm_profile_steps=0: not measured"
        elif device.type not in ("cpu", "cuda"):
            self.reason = f"not measured on a {device.type} device"
        elif steps_left - first <= self.planned:
            self.reason = (
                f"run too short to measure: the {self.planned} profiled steps follow the {first} warm-up "
                f"steps and must leave a step to time (run at least {first + self.planned + 1} steps, or "
                "lower warmup_steps)"
            )
        self.steps = self.planned if self.reason is None else 0
        self.profiled: list[int] = []  # the global step numbers profiled
        self.share: float | None = None
        self.collective: float | None = None
        self._prof: Any = None

    def due(self, local_step: int) -> bool:
        return self.steps > 0 and self.first <= local_step < self.first + self.steps

    @contextlib.contextmanager
    def around(self, local_step: int, global_step: int) -> Iterator[None]:
        """Profile the step run inside when it is one of the profiled steps (else do nothing).

        ``global_step``: the step number the step will have once done (result.json's numbering).
        Every rank runs the same steps through here.
        """
        if not self.due(local_step) or self.reason is not None:
            yield
            return
        from torch.profiler import record_function

        if self._prof is None:
            self._start()
        if self._prof is None:  # the profiler would not start: train on, unmeasured
            yield
            return
        with record_function(STEP_EVENT):
            yield
        self.profiled.append(global_step)
        if local_step == self.first + self.steps - 1:
            self._finish()

    def _start(self) -> None:
        from torch.profiler import ProfilerActivity, profile

        activities = [ProfilerActivity.CPU]
        if self.device.type == "cuda":
            activities.append(ProfilerActivity.CUDA)
        prof = profile(activities=activities, record_shapes=False, profile_memory=False, with_stack=False)
        try:
            with _quiet_stderr():
                prof.start()
        except Exception as exc:  # pragma: no cover - a profiler that cannot start on this machine
            self.reason = f"torch.profiler did not start: {exc}"
            return
        self._prof = prof

    def _finish(self) -> None:
        prof, self._prof = self._prof, None
        try:
            with _quiet_stderr():
                prof.stop()
            trace_dir = os.environ.get(TRACE_ENV)
            if trace_dir:  # the raw profile, for Perfetto or HolisticTraceAnalysis
                os.makedirs(trace_dir, exist_ok=True)
                prof.export_chrome_trace(os.path.join(trace_dir, f"comm_profile_rank{_rank()}.json"))
            events = prof.profiler.kineto_results.events()
            steps, comm, compute = classify(events, self.device.type)
        except Exception as exc:  # pragma: no cover - a trace this reader does not understand
            self.reason = f"profile not readable: {exc}"
            return
        if len(steps) != len(self.profiled):
            self.reason = f"the profile holds {len(steps)} of the {len(self.profiled)} profiled steps"
            return
        if self.device.type == "cuda" and not (comm or compute):
            self.reason = "the profile holds no CUDA kernels (is CUPTI available to torch.profiler?)"
            return
        self.share, self.collective = exposed(steps, comm, compute)

    def close(self) -> None:
        """Stop a profile the run ended inside (a target reached, an error): nothing is measured."""
        if self._prof is not None:
            prof, self._prof = self._prof, None
            with contextlib.suppress(Exception), _quiet_stderr():
                prof.stop()
            if self.reason is None:
                self.reason = "the run ended during the profiled steps"

    def figures(self) -> tuple[dict[str, Any], dict[str, Any]]:
        """``(metrics, info)``: the result.json metrics (mean and max over ranks) and its ``comm``
        block ``{method, profiled_steps, per_rank, reason}``. Collective: every rank calls."""
        share = self.share if self.reason is None else None
        per_rank = _gather(share, self.device)
        if self.reason is None and any(v is None for v in per_rank):
            self.reason = "not measured on every rank"
        measured = [v for v in per_rank if v is not None]
        collective = _gather(self.collective if share is not None else None, self.device)
        ok = self.reason is None and bool(measured)
        metrics = {
            "comm_time_share": sum(measured) / len(measured) if ok else None,
            "comm_time_share_max": max(measured) if ok else None,
            "comm_collective_share": (
                sum(v for v in collective if v is not None) / len(measured) if ok else None
            ),
        }
        info = {
            "method": "torch.profiler, exposed collective time / wall time of the profiled steps "
            + ("(device kernels)" if self.device.type == "cuda" else "(host threads)"),
            "profiled_steps": list(self.profiled) if ok else [],
            "per_rank": per_rank if ok else [],
            "reason": self.reason,
        }
        return metrics, info


def _gather(value: float | None, device: Any) -> list[float | None]:
    """Every rank's ``value`` in rank order (None where a rank has none): a collective, all ranks call."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return [value]
    slots = [0.0] * dist.get_world_size()
    slots[dist.get_rank()] = -1.0 if value is None else value
    return [None if v < 0 else v for v in parallel.all_reduce(slots, "sum", device)]


def _rank() -> int:
    import torch.distributed as dist

    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0

"""The exposed-communication share (``comm_time_share``, :mod:`ampflow.engine.comms`) on known timelines.

The arithmetic (collective time not covered by compute, over the profiled steps' wall) and the reading
of a profile (which events are communication, which compute, on CPU threads and on a CUDA timeline)
are pinned on hand-made events with known answers; one real in-process profile checks the reader
against torch.profiler's own events. The real 2-process runs are in tests/test_strategies_tp_pp.py.
"""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch
from torch.autograd import DeviceType

from ampflow.engine import comms


@dataclass
class Ev:
    """The parts of a kineto event the reader uses (times in ns)."""

    label: str
    start: int
    end: int
    thread: int = 1
    device: DeviceType = DeviceType.CPU
    activity: str = "cpu_op"
    annotation: bool = False

    def name(self) -> str:
        return self.label

    def start_ns(self) -> int:
        return self.start

    def duration_ns(self) -> int:
        return self.end - self.start

    def start_thread_id(self) -> int:
        return self.thread

    def device_type(self) -> DeviceType:
        return self.device

    def activity_type(self) -> str:
        return self.activity

    def is_user_annotation(self) -> bool:
        return self.annotation


def step(start: int, end: int) -> Ev:
    return Ev(comms.STEP_EVENT, start, end, annotation=True, activity="user_annotation")


def test_interval_arithmetic():
    assert comms.union([(5, 9), (0, 3), (2, 4), (9, 10), (7, 7)]) == [(0, 4), (5, 10)]
    assert comms.subtract([(0, 10), (20, 30)], [(2, 4), (8, 22), (29, 40)]) == [(0, 2), (4, 8), (22, 29)]
    assert comms.intersect([(0, 10)], [(5, 15)]) == [(5, 10)]
    # steps of 100, collectives 60 of it (two overlapping threads), compute covering 25 of those
    share, collective = comms.exposed(
        steps=[(0, 100)], comm=[(10, 30), (50, 90), (60, 70)], compute=[(0, 20), (40, 60), (85, 100)]
    )
    assert (share, collective) == (pytest.approx(0.35), pytest.approx(0.6))
    # time outside the steps counts in neither the numerator nor the wall
    assert comms.exposed([(0, 10), (20, 30)], comm=[(5, 25)], compute=[]) == (pytest.approx(0.5),) * 2
    assert comms.exposed([], comm=[(0, 1)], compute=[]) == (0.0, 0.0)


def test_cpu_profile_compute_is_the_training_threads_operators_and_waits_are_not():
    events = [
        step(0, 100),
        # forward: an operator on the training thread, a gloo all-reduce hidden under it on gloo's thread
        Ev("aten::mm", 0, 20),
        Ev("gloo:all_reduce", 10, 20, thread=7, annotation=True),
        # a Python autograd Function's node (FSDP2's post-backward) issues a reduction and waits for it
        # without a recorded wait: only the operators inside it are compute
        Ev("autograd::engine::evaluate_function: RegisterPostBackwardFunctionBackward", 40, 90),
        Ev("RegisterPostBackwardFunctionBackward", 40, 90),
        Ev("aten::copy_", 40, 45),
        Ev("c10d::allreduce_", 45, 50),
        Ev("gloo:all_reduce", 46, 80, thread=7, annotation=True),
        # a record_function scope is not compute either, a functional collective's wait inside an
        # operator is communication
        Ev("FSDP::pre_forward", 90, 100, annotation=True, activity="user_annotation"),
        Ev("PythonSubclass", 90, 100),
        Ev("aten::add", 90, 100),
        Ev("_c10d_functional::wait_tensor", 95, 98),
        # another thread's operators do not hide the training thread's waits
        Ev("aten::mm", 50, 80, thread=9),
    ]
    steps, comm, compute = comms.classify(events, "cpu")
    assert steps == [(0, 100)]
    assert comms.union(compute) == [(0, 20), (40, 45), (90, 95), (98, 100)]
    # exposed: the enqueue 45-50, the unrecorded wait 50-80, the functional wait 95-98
    assert comms.exposed(steps, comm, compute) == (pytest.approx(0.38), pytest.approx(0.48))


def test_cuda_profile_reads_the_device_timeline():
    kernel = {"device": DeviceType.CUDA, "activity": "kernel", "thread": 0}
    events = [
        step(0, 100),
        Ev("ampere_sgemm_128x64_nn", 0, 30, **kernel),
        Ev("ncclDevKernel_AllReduce_Sum_f32_RING_LL", 10, 50, **kernel),
        # a copy is neither compute nor communication; host events do not count on CUDA
        Ev("Memcpy DtoD (Device -> Device)", 30, 60, device=DeviceType.CUDA, activity="gpu_memcpy"),
        Ev("aten::mm", 0, 100),
        # the GPU-side mirror of the step scope is neither a step nor compute
        Ev(comms.STEP_EVENT, 0, 100, device=DeviceType.CUDA, activity="gpu_user_annotation", annotation=True),
        Ev("ncclKernel_ReduceScatter_RING_LL_Sum_float", 70, 80, **kernel),
        Ev("void at::native::elementwise_kernel", 75, 100, **kernel),
    ]
    steps, comm, compute = comms.classify(events, "cuda")
    assert steps == [(0, 100)]
    # exposed: 30-50 of the all-reduce, 70-75 of the reduce-scatter
    assert comms.exposed(steps, comm, compute) == (pytest.approx(0.25), pytest.approx(0.5))


@pytest.mark.parametrize(
    ("strategy", "world", "steps", "first", "left", "reason"),
    [
        ("single", 1, 2, 0, 10, "one process: no collectives"),
        ("ddp", 1, 2, 0, 10, "one process: no collectives"),
        ("ddp", 2, 0, 0, 10, "comm_profile_steps=0: not measured"),
        ("ddp", 2, 2, 5, 7, "run at least 8 steps, or lower warmup_steps"),
        ("fsdp+tp", 4, 2, 5, 8, None),
    ],
)
def test_probe_profiles_only_where_there_is_something_to_measure_and_a_step_left_to_time(
    strategy, world, steps, first, left, reason
):
    probe = comms.CommProbe(strategy, world, torch.device("cpu"), steps, first, left)
    if reason is None:
        assert probe.reason is None and probe.steps == steps
        assert [probe.due(s) for s in range(first - 1, first + steps + 1)] == [False, True, True, False]
    else:
        assert reason in probe.reason and probe.steps == 0 and not probe.due(first)
        metrics, info = probe.figures()
        assert metrics["comm_time_share"] is None and info["reason"] == probe.reason


def test_a_real_profile_of_a_step_without_collectives_reads_zero():
    """torch.profiler's own events through the reader (no process group: no collective runs)."""
    probe = comms.CommProbe("ddp", 2, torch.device("cpu"), steps=2, first=1, steps_left=4)
    model = torch.nn.Linear(64, 64)
    for local in range(4):
        with probe.around(local, local + 1):
            model(torch.randn(32, 64)).sum().backward()
    assert probe.reason is None and probe.profiled == [2, 3]
    assert (probe.share, probe.collective) == (0.0, 0.0)
    metrics, info = probe.figures()
    assert (
        metrics["comm_time_share"] == 0.0 and info["profiled_steps"] == [2, 3] and info["per_rank"] == [0.0]
    )


def test_a_run_ending_inside_the_profile_reports_why():
    probe = comms.CommProbe("ddp", 2, torch.device("cpu"), steps=2, first=0, steps_left=4)
    with probe.around(0, 1):
        pass
    probe.close()
    metrics, info = probe.figures()
    assert metrics["comm_time_share"] is None
    assert info["reason"] == "the run ended during the profiled steps"

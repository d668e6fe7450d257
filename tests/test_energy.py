"""Energy counters and cost: the RAPL arithmetic on a fake powercap tree (wrap-around included), the NVML
arithmetic on a stand-in for pynvml (no GPU here), the meter's pauses, and the cost formulas."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from ampflow.engine.energy import (
    EnergyMeter,
    EnergyUnavailable,
    NvmlCounter,
    RaplCounter,
    cost_figures,
    energy_figures,
    meter_for,
    wrapped_delta,
)


class Ticks:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def powercap(root: Path, packages: dict[str, tuple[int, int]]) -> Path:
    """A fake /sys/class/powercap: ``{dir: (energy_uj, max_energy_range_uj)}`` plus the entries a
    real tree has that must not be summed (a DRAM sub-domain, the MMIO duplicate of package 0)."""
    for name, (energy, rng) in {
        **packages,
        "intel-rapl:0:0": (5, 10**9),
        "intel-rapl-mmio:0": (7, 10**9),
    }.items():
        d = root / name
        d.mkdir(parents=True, exist_ok=True)
        (d / "energy_uj").write_text(f"{energy}\n")
        (d / "max_energy_range_uj").write_text(f"{rng}\n")
        (d / "name").write_text("dram\n" if name.count(":") == 2 else "package-0\n")
    return root


def set_energy(root: Path, name: str, value: int) -> None:
    (root / name / "energy_uj").write_text(f"{value}\n")


def test_wrapped_delta():
    assert wrapped_delta(100, 250, 1000) == 150
    assert wrapped_delta(900, 100, 1000) == 200  # wrapped once at the range
    with pytest.raises(ValueError, match="backwards"):
        wrapped_delta(900, 100, 0)


def test_rapl_sums_packages_only_and_handles_a_wrap(tmp_path):
    root = powercap(tmp_path, {"intel-rapl:0": (1_000_000, 10**12), "intel-rapl:1": (900_000, 1_000_000)})
    counter = RaplCounter(root)
    assert counter.domains == ["intel-rapl:0:package-0", "intel-rapl:1:package-0"]
    ticks = Ticks()
    meter = EnergyMeter(counter, clock=ticks)
    meter.resume()
    set_energy(root, "intel-rapl:0", 3_500_000)  # +2.5 J
    set_energy(root, "intel-rapl:1", 400_000)  # wrapped: +0.5 J
    set_energy(root, "intel-rapl:0:0", 10**8)  # the DRAM sub-domain moves too: not counted
    meter.pause()
    assert meter.joules == pytest.approx(3.0)
    # paused (a validation, a checkpoint): what happens now is left out
    set_energy(root, "intel-rapl:0", 9_500_000)
    meter.resume()
    set_energy(root, "intel-rapl:0", 10_500_000)  # +1 J
    meter.pause()
    assert meter.joules == pytest.approx(4.0) and meter.source == "rapl"


def test_ticks_read_a_wrapping_counter_before_it_can_wrap_twice(tmp_path):
    root = powercap(tmp_path, {"intel-rapl:0": (900, 1000)})
    ticks = Ticks()
    meter = EnergyMeter(RaplCounter(root), clock=ticks, tick_s=5.0)
    meter.resume()
    set_energy(root, "intel-rapl:0", 400)  # +500 uJ, wrapped
    ticks.t = 4.0
    meter.tick()  # too soon: no read
    ticks.t = 6.0
    meter.tick()
    set_energy(root, "intel-rapl:0", 300)  # +900 uJ, wrapped again since the tick
    meter.pause()
    assert meter.joules == pytest.approx(1400e-6)  # one delta 900 -> 300 would have said 400 uJ


def test_paused_context_resumes_only_a_running_meter(tmp_path):
    root = powercap(tmp_path, {"intel-rapl:0": (0, 10**9)})
    meter = EnergyMeter(RaplCounter(root))
    with meter.paused():
        pass
    assert not meter.running  # validation during warm-up must not start the meter
    meter.resume()
    with meter.paused():
        assert not meter.running
    assert meter.running


def test_unreadable_rapl_is_unavailable_with_the_reason(tmp_path):
    assert "no " in meter_for(torch.device("cpu"), powercap=tmp_path / "absent").reason
    root = powercap(tmp_path / "pc", {"intel-rapl:0": (0, 10**9)})
    (root / "intel-rapl:0" / "energy_uj").unlink()
    (root / "intel-rapl:0" / "energy_uj").mkdir()  # unreadable as a file (root reads any mode)
    meter = meter_for(torch.device("cpu"), powercap=root)
    assert meter.joules is None and "energy_uj" in meter.reason
    meter.resume()
    meter.pause()
    assert meter.joules is None  # never a guess, never 0
    assert meter_for(torch.device("cpu"), local_rank=1, powercap=root).joules == 0.0  # local rank 0 reads


def test_a_counter_that_fails_mid_run_makes_the_figure_null(tmp_path):
    root = powercap(tmp_path, {"intel-rapl:0": (0, 10**9)})
    meter = EnergyMeter(RaplCounter(root))
    meter.resume()
    (root / "intel-rapl:0" / "energy_uj").unlink()
    meter.pause()
    assert meter.joules is None and "energy_uj" in meter.reason


class FakeNvml:
    """A stand-in for pynvml: the calls NvmlCounter makes, scripted readings in millijoules."""

    class NVMLError(Exception):
        pass

    def __init__(self, readings: list[int], *, supported: bool = True):
        self.readings, self.supported, self.asked = list(readings), supported, []

    def nvmlInit(self):
        pass

    def nvmlDeviceGetHandleByUUID(self, uuid):
        self.asked.append(uuid)
        return "handle"

    def nvmlDeviceGetHandleByIndex(self, index):
        return "handle"

    def nvmlDeviceGetName(self, handle):
        return b"NVIDIA H100 80GB HBM3"

    def nvmlDeviceGetTotalEnergyConsumption(self, handle):
        if not self.supported:
            raise self.NVMLError("Not Supported")
        return self.readings.pop(0)


def test_nvml_counter_millijoules_to_joules():
    nvml = FakeNvml([1_000_000, 1_000_000, 1_250_500])  # the constructor's probe, then resume, pause
    counter = NvmlCounter(nvml, uuid="1a2b-3c")
    assert nvml.asked == ["GPU-1a2b-3c"] and counter.domains == ["NVIDIA H100 80GB HBM3"]
    meter = EnergyMeter(counter)
    meter.resume()
    meter.pause()
    assert meter.joules == pytest.approx(250.5) and meter.source == "nvml"


def test_nvml_unsupported_or_reset_is_unavailable():
    with pytest.raises(EnergyUnavailable, match="Not Supported"):
        NvmlCounter(FakeNvml([], supported=False))
    meter = EnergyMeter(NvmlCounter(FakeNvml([5_000, 5_000, 1_000])))  # went backwards: driver reloaded
    meter.resume()
    meter.pause()
    assert meter.joules is None and "backwards" in meter.reason


def test_energy_and_cost_figures():
    assert energy_figures(120.0, 400) == {"energy_j": 120.0, "joules_per_sample": 0.3}
    assert energy_figures(None, 400) == {"energy_j": None, "joules_per_sample": None}
    assert energy_figures(5.0, 0)["joules_per_sample"] is None
    c = cost_figures(2.0, devices=4, train_wall_s=1800.0, samples_per_s=100.0, time_to_target_s=900.0)
    # devices x hours x price: 4 x 0.5 h x 2; 1000 samples at 100/s = 10 s; 4 x 0.25 h x 2
    assert c["cost_per_run"] == pytest.approx(4.0)
    assert c["cost_per_1k_samples"] == pytest.approx(4 * 10 / 3600 * 2)
    assert c["cost_to_target"] == pytest.approx(2.0)
    none = cost_figures(None, devices=4, train_wall_s=1800.0, samples_per_s=100.0, time_to_target_s=900.0)
    assert set(none.values()) == {None}
    partial = cost_figures(1.0, devices=1, train_wall_s=3600.0, samples_per_s=None, time_to_target_s=None)
    assert partial == {"cost_per_run": 1.0, "cost_per_1k_samples": None, "cost_to_target": None}

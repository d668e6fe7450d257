"""MFU's denominator: the GPU table's name matching, the user override, the cached matmul probe, and
the MFU arithmetic of the throughput window."""

from __future__ import annotations

import json

import pytest
import torch

from ampflow.config import ConfigError, RunConfig, parse_peak_flops
from ampflow.engine import devices, peaks
from ampflow.engine.throughput import ThroughputWindow

CPU = torch.device("cpu")


@pytest.fixture(autouse=True)
def _own_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("AMPFLOW_CACHE_DIR", str(tmp_path / "cache"))


@pytest.mark.parametrize(
    "name, label",
    [
        ("NVIDIA L40S", "NVIDIA L40S"),
        ("NVIDIA L40", "NVIDIA L40"),
        ("NVIDIA L4", "NVIDIA L4"),
        ("NVIDIA H100 NVL", "NVIDIA H100 NVL"),
        ("NVIDIA H100 80GB HBM3", "NVIDIA H100 SXM"),
        ("NVIDIA H100 PCIe", "NVIDIA H100 PCIe"),
        ("NVIDIA H200 NVL", "NVIDIA H200 NVL"),
        ("NVIDIA B200", "NVIDIA B200"),
        ("NVIDIA A100-SXM4-80GB", "NVIDIA A100 (40/80 GB, SXM or PCIe)"),
        ("NVIDIA A100-PCIE-40GB", "NVIDIA A100 (40/80 GB, SXM or PCIe)"),
        ("NVIDIA A10", "NVIDIA A10"),
        ("Tesla V100S-PCIE-32GB", "NVIDIA V100S PCIe"),
        ("Tesla V100-SXM2-16GB", "NVIDIA V100 SXM2"),
        ("NVIDIA RTX 6000 Ada Generation", "NVIDIA RTX 6000 Ada Generation"),
        # not in the table: no silent near-miss (A10G is not an A10, Turing's RTX 6000 is not the Ada one)
        ("NVIDIA A10G", None),
        ("Quadro RTX 6000", None),
        ("NVIDIA GeForce RTX 3090", None),
        ("AMD EPYC 7B13", None),
    ],
)
def test_gpu_names_match_whole_tokens_most_specific_first(name, label):
    hit = peaks.match_gpu(name)
    assert (hit.label if hit else None) == label


def test_table_figures_are_dense_per_dtype():
    # H100 SXM data sheet: BF16 1,979 TF with sparsity -> 989.5 dense; NVL and PCIe are lower parts
    assert peaks.table_peak("NVIDIA H100 80GB HBM3", "bf16")[0] == pytest.approx(989.5e12)
    assert peaks.table_peak("NVIDIA H100 NVL", "bf16")[0] == pytest.approx(835.5e12)
    assert peaks.table_peak("NVIDIA H100 PCIe", "fp8")[0] == pytest.approx(1513e12)
    assert peaks.table_peak("NVIDIA L40S", "fp8")[0] == pytest.approx(733e12)
    assert peaks.table_peak("NVIDIA L4", "tf32")[0] == pytest.approx(60e12)
    assert peaks.table_peak("NVIDIA B200", "bf16")[0] == pytest.approx(2250e12)
    # no fp8 on Ampere; a GPU without TF32 runs tf32 mode in plain FP32
    assert peaks.table_peak("NVIDIA A100-SXM4-80GB", "fp8") is None
    assert peaks.table_peak("Tesla T4", "tf32")[0] == pytest.approx(8.1e12)
    assert "data sheet" in peaks.table_peak("NVIDIA B200", "fp8")[1]


def test_a_cuda_device_reads_the_table(monkeypatch):
    monkeypatch.setattr(devices, "device_name", lambda d: "NVIDIA H100 NVL")
    peak = peaks.resolve_peak(torch.device("cuda"), "bf16", probe=False)
    assert (peak.flops, peak.source) == (pytest.approx(835.5e12), "table")


def test_user_override_wins_number_or_per_dtype(monkeypatch):
    monkeypatch.setattr(devices, "device_name", lambda d: "NVIDIA H100 80GB HBM3")
    cuda = torch.device("cuda")
    assert peaks.resolve_peak(cuda, "bf16", 1e15).to_dict()["source"] == "user"
    per_dtype = "bf16:7e14,fp32:5e13"
    assert peaks.resolve_peak(cuda, "fp32", per_dtype).flops == 5e13
    # a dtype the setting does not name falls back to the table
    assert peaks.resolve_peak(cuda, "tf32", per_dtype).source == "table"
    assert RunConfig().with_overrides(["peak_flops=fp8:2e15"]).peak_flops == "fp8:2e15"
    assert parse_peak_flops(3e14) == {"*": 3e14}


@pytest.mark.parametrize("bad", ["fast", "bf17:1e12", "bf16:0", "-5", "bf16=1e12"])
def test_bad_peak_setting_is_one_line_naming_the_field(bad):
    with pytest.raises(ConfigError, match=r"^peak_flops must be .*fp32, tf32, fp16, bf16, fp8"):
        RunConfig().with_overrides([f"peak_flops={bad}"])


def test_probe_runs_once_then_reads_the_cache(monkeypatch, tmp_path):
    first = peaks.resolve_peak(CPU, "fp32", probe_max_n=64)
    assert first.source == "probe" and first.flops > 0 and "64x64" in first.detail
    cache = json.loads((tmp_path / "cache" / peaks.CACHE_FILE).read_text())
    (key,) = cache
    assert key.endswith("| fp32") and f"threads {torch.get_num_threads()}" in key

    def no_probe(*a, **k):
        raise AssertionError("probed again")

    monkeypatch.setattr(peaks, "probe_matmul_peak", no_probe)
    again = peaks.resolve_peak(CPU, "fp32", probe_max_n=64)
    assert again.flops == first.flops and again.source == "probe"
    # another dtype is another key: read-only resolution reports no peak rather than guess
    missing = peaks.resolve_peak(CPU, "bf16", probe=False)
    assert missing.flops is None and missing.source is None


def test_fp8_has_no_cpu_probe():
    assert peaks.probe_matmul_peak(CPU, "fp8", max_n=64) is None


def test_the_peer_benchmark_reads_bf16_speed_from_the_engine_probe(monkeypatch):
    """bench_peers' emulated-bf16 rule takes its fp32/bf16 GFLOP/s from :func:`peaks.probe_matmul_peak`
    (one matmul probe in the project), in the shape ``choose_precisions`` and peers.json keep."""
    from benchmarks.bench_peers import choose_precisions, matmul_gflops

    asked = []

    def probe(device, compute, *, max_n=None):
        asked.append((device.type, compute))
        return {"fp32": 28e9, "bf16": 0.3e9}[compute], "probed"

    monkeypatch.setattr(peaks, "probe_matmul_peak", probe)
    rates = matmul_gflops(threads=0)
    assert asked == [("cpu", "fp32"), ("cpu", "bf16")]
    assert rates == pytest.approx({"fp32": 28.0, "bf16": 0.3})
    kept, line = choose_precisions(None, True, rates)
    assert kept == ["32-true"] and "93x slower than fp32 (0.3 against 28.0 GFLOP/s)" in line
    # a dtype the probe cannot measure: no rates, so nothing is left out
    monkeypatch.setattr(peaks, "probe_matmul_peak", lambda device, compute, **kw: None)
    assert matmul_gflops(threads=0) is None
    assert choose_precisions(None, True, None)[0] == ["32-true", "bf16-mixed", "bf16-true"]


def test_mfu_is_achieved_flops_over_devices_times_peak():
    w = ThroughputWindow(CPU, skip=0, compiled=False)
    w.start, w.end = 10.0, 12.0  # a 2 s window
    w.batches = [(0, 0)] * 5  # 5 global micro-batches of 8: 20 samples/s
    fig = w.figures(
        batch_size=8,
        world=1,
        tokens=0,
        flops_per_sample=3e9,
        peak_flops=1.2e12,
        memory=None,
        device=CPU,
    )
    assert fig["samples_per_s"] == pytest.approx(20.0)
    assert fig["mfu"] == pytest.approx(3e9 * 20.0 / 1.2e12)
    unknown = w.figures(
        batch_size=8, world=1, tokens=0, flops_per_sample=3e9, peak_flops=None, memory=None, device=CPU
    )
    assert unknown["mfu"] is None


def test_an_mfu_above_one_is_never_reported(monkeypatch, tmp_path):
    """Found by a new user: a probe taken while the machine was busy stayed cached and a tp run
    reported MFU 1.20. The cached peak is a lower bound: it is probed again and the larger kept."""
    stale = peaks.Peak(23.5e9, "probe", "256x256 fp32 matmul", "fp32")
    monkeypatch.setattr(peaks, "probe_matmul_peak", lambda *a, **k: (69.8e9, "fresh probe"))
    mfu, peak, note = peaks.check_mfu(1.2036, stale, CPU)
    assert peak.flops == 69.8e9 and mfu == pytest.approx(1.2036 * 23.5 / 69.8)
    assert note.startswith("MFU: the cached fp32 peak (23.5 GFLOP/s) was below this run's rate (28.3)")
    (entry,) = json.loads((tmp_path / "cache" / peaks.CACHE_FILE).read_text()).values()
    assert entry["flops"] == 69.8e9
    # still above the fresh probe, or a table/user peak: the FLOP count or the peak is wrong
    mfu, _, note = peaks.check_mfu(3.5, stale, CPU)
    assert mfu is None and note.startswith("MFU not reported: the timed window ran at 82.2 GFLOP/s")
    user = peaks.Peak(1e9, "user", "the peak_flops setting", "fp32")
    assert peaks.check_mfu(1.01, user, CPU)[0] is None
    # at or below 1: untouched, no probe
    monkeypatch.setattr(peaks, "probe_matmul_peak", lambda *a, **k: pytest.fail("probed"))
    assert peaks.check_mfu(0.42, stale, CPU) == (0.42, stale, "")

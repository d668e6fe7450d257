"""Peak dense FLOP/s per device and compute dtype: MFU's denominator, and where each figure came from.

    peak = resolve_peak(device, "bf16", config.peak_flops)   # Peak(flops, source, detail, dtype)
    mfu = flops_per_sample * samples_per_s / (world * peak.flops)

Three sources, in this order:

- ``user``: the ``peak_flops`` setting (a number for the run's compute dtype, or per dtype
  ``"bf16:9.895e14,fp32:6.7e13"``);
- ``table``: the vendor's data sheet for a known GPU (:data:`GPU_PEAKS`, dense figures: NVIDIA's
  sheets print Tensor Core figures "with sparsity", which are halved here);
- ``probe``: any other device (every CPU, an unlisted GPU, a dtype the table lacks): the best of a
  few square matmuls in that dtype, measured once and cached in ``<cache dir>/peak_flops.json`` keyed
  by device name, torch version, CUDA version and thread count. A probed peak is what this device
  reaches on a large dense matmul, not a data-sheet figure.

GPU names are matched on whole tokens of ``torch.cuda.get_device_name`` (upper-cased, split on
spaces, ``-`` and ``_``), most specific entry first, so ``NVIDIA L40S`` is not an ``L4`` and
``NVIDIA H100 NVL`` is not the SXM part. Torch is imported inside the functions.
"""

from __future__ import annotations

import json
import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ampflow.config import PEAK_DTYPES, parse_peak_flops

T = 1e12


@dataclass(frozen=True)
class GpuPeak:
    """One GPU model: the name tokens that identify it, dense FLOP/s per dtype and the data sheet.

    ``tokens`` must all appear as whole tokens of the device name; ``flops`` maps a compute dtype
    (fp32 = plain FP32 cores; tf32, fp16, bf16, fp8 = Tensor Cores, FP32 accumulate) to FLOP/s.
    """

    tokens: tuple[str, ...]
    label: str
    flops: dict[str, float]
    source: str
    excludes: tuple[str, ...] = field(default=())


def _tc(fp32: float, tf32: float, half: float, fp8: float | None = None) -> dict[str, float]:
    """Dense FLOP/s from dense TFLOPS: FP32 cores, then Tensor Cores (TF32, FP16 = BF16, FP8)."""
    out = {"fp32": fp32 * T, "tf32": tf32 * T, "bf16": half * T, "fp16": half * T}
    if fp8 is not None:
        out["fp8"] = fp8 * T
    return out


# Dense peaks per GPU model, in TFLOPS. NVIDIA's data sheets quote Tensor Core figures "with sparsity"
# (marked *); the dense figure is half of that, or the first of the two figures where a sheet prints
# "dense | sparse*". Each source names the sheet and the figures it prints.
GPU_PEAKS: tuple[GpuPeak, ...] = (
    GpuPeak(("B200",), "NVIDIA B200", _tc(75, 1125, 2250, 4500),
            "NVIDIA HGX B200 data sheet, 8 GPUs: FP32 600 TF, TF32 18 PF*, FP16/BF16 36 PF*, FP8 72 PF*; per GPU, halved"),
    GpuPeak(("H200", "NVL"), "NVIDIA H200 NVL", _tc(60, 417.5, 835.5, 1670.5),
            "NVIDIA H200 data sheet, H200 NVL: FP32 60 TF, TF32 835*, BF16/FP16 1,671*, FP8 3,341* TF"),
    GpuPeak(("H200",), "NVIDIA H200 SXM", _tc(67, 494.5, 989.5, 1979),
            "NVIDIA H200 data sheet, H200 SXM: FP32 67 TF, TF32 989*, BF16/FP16 1,979*, FP8 3,958* TF"),
    GpuPeak(("GH200",), "NVIDIA GH200", _tc(67, 494.5, 989.5, 1979),
            "NVIDIA GH200 Grace Hopper data sheet: FP32 67 TF, TF32 989*, BF16/FP16 1,979*, FP8 3,958* TF"),
    GpuPeak(("H100", "NVL"), "NVIDIA H100 NVL", _tc(60, 417.5, 835.5, 1670.5),
            "NVIDIA H100 data sheet, H100 NVL: FP32 60 TF, TF32 835*, BF16/FP16 1,671*, FP8 3,341* TF"),
    GpuPeak(("H100", "PCIE"), "NVIDIA H100 PCIe", _tc(51, 378, 756.5, 1513),
            "NVIDIA H100 data sheet, H100 PCIe: FP32 51 TF, TF32 756*, BF16/FP16 1,513*, FP8 3,026* TF"),
    GpuPeak(("H100",), "NVIDIA H100 SXM", _tc(67, 494.5, 989.5, 1979),
            "NVIDIA H100 data sheet, H100 SXM: FP32 67 TF, TF32 989*, BF16/FP16 1,979*, FP8 3,958* TF"),
    GpuPeak(("A100",), "NVIDIA A100 (40/80 GB, SXM or PCIe)", _tc(19.5, 156, 312),
            "NVIDIA A100 data sheet: FP32 19.5 TF, TF32 156 | 312*, BF16/FP16 312 | 624* TF (SXM and PCIe alike)"),
    GpuPeak(("A30",), "NVIDIA A30", _tc(10.3, 82, 165),
            "NVIDIA A30 data sheet: FP32 10.3 TF, TF32 82 | 165*, BF16/FP16 165 | 330* TF"),
    GpuPeak(("A10",), "NVIDIA A10", _tc(31.2, 62.5, 125),
            "NVIDIA A10 data sheet: FP32 31.2 TF, TF32 62.5 | 125*, BF16/FP16 125 | 250* TF"),
    GpuPeak(("L40S",), "NVIDIA L40S", _tc(91.6, 183, 362.05, 733),
            "NVIDIA L40S data sheet: FP32 91.6 TF, TF32 183 | 366*, BF16/FP16 362.05 | 733*, FP8 733 | 1,466* TF"),
    GpuPeak(("L40",), "NVIDIA L40", _tc(90.5, 90.5, 181.05, 362),
            "NVIDIA L40 data sheet: FP32 90.5 TF, TF32 90.5 | 181*, BF16/FP16 181.05 | 362.1*, FP8 362 | 724* TF"),
    GpuPeak(("L4",), "NVIDIA L4", _tc(30.3, 60, 121, 242.5),
            "NVIDIA L4 data sheet: FP32 30.3 TF, TF32 120*, BF16/FP16 242*, FP8 485* TF"),
    GpuPeak(("RTX", "6000", "ADA"), "NVIDIA RTX 6000 Ada Generation", _tc(91.1, 91.1, 364.2, 728.5),
            "NVIDIA Ada GPU architecture whitepaper, RTX 6000 Ada, FP32 accumulate: FP32 91.1, TF32 91.1 | 182.1*, "
            "BF16/FP16 364.2 | 728.4*, FP8 728.5 | 1,457* TF"),
    GpuPeak(("RTX", "4090"), "NVIDIA GeForce RTX 4090", _tc(82.6, 82.6, 165.2, 330.3),
            "NVIDIA Ada GPU architecture whitepaper, GeForce RTX 4090, FP32 accumulate: FP32 82.6, TF32 82.6 | 165.2*, "
            "BF16/FP16 165.2 | 330.4*, FP8 330.3 | 660.6* TF", excludes=("D",)),
    # Volta and Turing: FP16 Tensor Cores only (no TF32, no bf16 hardware), no sparsity
    GpuPeak(("V100S",), "NVIDIA V100S PCIe", {"fp32": 16.4 * T, "fp16": 130 * T},
            "NVIDIA V100 data sheet, V100S PCIe: FP32 16.4 TF, Tensor 130 TF"),
    GpuPeak(("V100", "PCIE"), "NVIDIA V100 PCIe", {"fp32": 14 * T, "fp16": 112 * T},
            "NVIDIA V100 data sheet, V100 PCIe: FP32 14 TF, Tensor 112 TF"),
    GpuPeak(("V100",), "NVIDIA V100 SXM2", {"fp32": 15.7 * T, "fp16": 125 * T},
            "NVIDIA V100 data sheet, V100 SXM2: FP32 15.7 TF, Tensor 125 TF"),
    GpuPeak(("T4",), "NVIDIA T4", {"fp32": 8.1 * T, "fp16": 65 * T},
            "NVIDIA T4 data sheet: FP32 8.1 TF, mixed FP16/FP32 65 TF"),
)  # fmt: skip


def name_tokens(name: str) -> set[str]:
    """The whole tokens of a device name: ``"NVIDIA H100 80GB HBM3"`` -> {NVIDIA, H100, 80GB, HBM3}."""
    return {t for t in re.split(r"[\s\-_/,()]+", name.upper()) if t}


def match_gpu(name: str) -> GpuPeak | None:
    """The table entry for a CUDA device name, or None: every token of an entry must be a whole token
    of the name and none of its ``excludes``; among matches the one with the most tokens wins."""
    tokens = name_tokens(name)
    hits = [g for g in GPU_PEAKS if set(g.tokens) <= tokens and not set(g.excludes) & tokens]
    return max(hits, key=lambda g: len(g.tokens)) if hits else None


def table_peak(name: str, compute: str) -> tuple[float, str] | None:
    """``(FLOP/s, data sheet)`` for ``compute`` on the GPU called ``name``, or None.

    A GPU without TF32 (Volta, Turing) runs ``tf32`` modes in plain FP32, so its fp32 figure serves.
    """
    gpu = match_gpu(name)
    if gpu is None:
        return None
    value = gpu.flops.get(compute)
    if value is None and compute == "tf32" and "fp32" in gpu.flops:
        value = gpu.flops["fp32"]
    if value is None:
        return None
    return value, f"{gpu.label}: {gpu.source}"


@dataclass(frozen=True)
class Peak:
    """The peak used for MFU: FLOP/s of one device (None: unknown), ``table``/``probe``/``user``, what."""

    flops: float | None
    source: str | None
    detail: str
    dtype: str

    def to_dict(self) -> dict[str, Any]:
        return {"flops": self.flops, "source": self.source, "detail": self.detail, "dtype": self.dtype}


def resolve_peak(
    device: Any, compute: str, override: Any = None, *, probe: bool = True, probe_max_n: int | None = None
) -> Peak:
    """The peak dense FLOP/s of one ``device`` for ``compute`` (one of ``PEAK_DTYPES``).

    ``override`` is the ``peak_flops`` setting (a number, a ``dtype:number`` list, or None). Without
    an override or a table entry the device is probed (cached; ``probe=False`` skips the measurement
    and reads only the cache). ``probe_max_n`` caps the probe's matrix size (tests).
    """
    user = parse_peak_flops(override)
    value = user.get(compute, user.get("*"))
    if value is not None:
        return Peak(value, "user", "the peak_flops setting", compute)
    name = _device_name(device)
    if device.type == "cuda":
        hit = table_peak(name, compute)
        if hit is not None:
            return Peak(hit[0], "table", hit[1], compute)
    key = cache_key(device, name, compute)
    cached = read_cache().get(key)
    if cached:
        return Peak(float(cached["flops"]), "probe", cached.get("detail", "measured matmul peak"), compute)
    if not probe:
        return Peak(None, None, "no table entry and no probed peak", compute)
    measured = probe_matmul_peak(device, compute, max_n=probe_max_n)
    if measured is None:
        return Peak(None, None, f"{compute} matmul not measurable on {name}", compute)
    return _remember(key, *measured, compute)


def check_mfu(
    mfu: float | None, peak: Peak, device: Any, *, probe_max_n: int | None = None
) -> tuple[float | None, Peak, str]:
    """``(mfu, peak, note)``: an MFU above 1 is impossible, so it is never reported as measured.

    A probed peak is a lower bound (a probe taken while other work ran reads low, and the cache keeps
    it): when the timed window's rate exceeds it, the device is probed again, the cache keeps the larger
    of the two, and MFU is recomputed against it. If the window still runs faster than the peak (or
    the peak came from the table or the ``peak_flops`` setting), the FLOP count or the peak is wrong:
    MFU is None and ``note`` says why. ``note`` is "" when nothing changed; ``mfu`` is a fraction.
    """
    if mfu is None or mfu <= 1.0 or not peak.flops:
        return mfu, peak, ""
    achieved = mfu * peak.flops
    if peak.source == "probe":
        measured = probe_matmul_peak(device, peak.dtype, max_n=probe_max_n)
        if measured is not None and measured[0] > peak.flops:
            fresh = _remember(cache_key(device, _device_name(device), peak.dtype), *measured, peak.dtype)
            flops = measured[0]
            note = (
                f"MFU: the cached {peak.dtype} peak ({peak.flops / 1e9:.1f} GFLOP/s) was below this run's rate "
                f"({achieved / 1e9:.1f}); probed again: {flops / 1e9:.1f} GFLOP/s, cached"
            )
            if achieved <= flops:
                return achieved / flops, fresh, note
            peak = fresh
    return (
        None,
        peak,
        (
            f"MFU not reported: the timed window ran at {achieved / 1e9:.1f} GFLOP/s per device, above the "
            f"{peak.dtype} peak of {peak.flops / 1e9:.1f} ({peak.source}: {peak.detail}); the FLOP count or the "
            "peak is wrong: set peak_flops to the device's real peak"
        ),
    )


def _remember(key: str, flops: float, detail: str, compute: str) -> Peak:
    """Cache a probe under ``key`` (with when it was measured) and return it as a Peak."""
    write_cache(key, {"flops": flops, "detail": detail, "measured_at": time.strftime("%Y-%m-%dT%H:%M:%S")})
    return Peak(flops, "probe", detail, compute)


def _device_name(device: Any) -> str:
    from ampflow.engine.devices import device_name

    return device_name(device)


def device_peaks(device: Any, override: Any = None, *, probe: bool = True) -> dict[str, Peak]:
    """:func:`resolve_peak` for every dtype the device can run (fp8 only on fp8-capable GPUs)."""
    from ampflow.engine.precision import fp8_unsupported_reason

    out = {}
    for dtype in PEAK_DTYPES:
        if dtype == "fp8" and fp8_unsupported_reason(device, need_torchao=False):
            continue
        out[dtype] = resolve_peak(device, dtype, override, probe=probe)
    return out


# -- the probe ----------------------------------------------------------------------------------

PROBE_BUDGET_S = 1.0  # per dtype: repeats stop once this much time has gone into timed matmuls
CPU_MAX_N, CUDA_MAX_N = 2048, 8192
# grow the matrix until one product takes at least this long (launch and clock overheads vanish)
MIN_OP_S = {"cpu": 0.02, "cuda": 0.001}


def _matmul_dtype(compute: str) -> Any:
    import torch

    return {"fp32": torch.float32, "tf32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}.get(
        compute
    )


def probe_matmul_peak(device: Any, compute: str, *, max_n: int | None = None) -> tuple[float, str] | None:
    """``(FLOP/s, description)`` of the best square ``n x n`` matmul in ``compute``, or None.

    The size doubles from 128 (CPU) or 1024 (CUDA) while one product takes under ``MIN_OP_S`` and
    ``n`` stays within ``max_n``; then products repeat for about ``PROBE_BUDGET_S`` and the fastest
    counts (``2 n^3`` FLOPs). ``tf32`` runs fp32 inputs under ``torch.set_float32_matmul_precision
    ("high")``, restored afterwards. fp8 is probed on CUDA through ``torch._scaled_mm`` (e4m3 inputs,
    bf16 output); None where it cannot run (CPU, older GPUs).
    """
    import torch

    kind = device.type
    cap = max_n or (CUDA_MAX_N if kind == "cuda" else CPU_MAX_N)
    if compute == "fp8":
        if kind != "cuda":
            return None
        return _probe_fp8(device, cap)
    dtype = _matmul_dtype(compute)
    if dtype is None:
        return None
    before = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("high" if compute == "tf32" else "highest")
    try:

        def make(n: int) -> Any:
            a = torch.randn(n, n, device=device).to(dtype)
            b = torch.randn(n, n, device=device).to(dtype)
            return lambda: torch.mm(a, b)

        return _time_square(make, device, min(128 if kind == "cpu" else 1024, cap), cap, compute)
    finally:
        torch.set_float32_matmul_precision(before)


def _probe_fp8(device: Any, cap: int) -> tuple[float, str] | None:
    import torch

    def make(n: int) -> Any:
        a = torch.randn(n, n, device=device).to(torch.float8_e4m3fn)
        b = torch.randn(n, n, device=device).to(torch.float8_e4m3fn).t()  # column-major, as cuBLASLt needs
        one = torch.ones((), device=device)
        return lambda: torch._scaled_mm(a, b, scale_a=one, scale_b=one, out_dtype=torch.bfloat16)

    try:
        return _time_square(make, device, min(1024, cap), cap, "fp8")
    except (RuntimeError, TypeError, AttributeError):  # no fp8 GEMM on this device or build
        return None


def _time_square(make: Any, device: Any, n: int, cap: int, compute: str) -> tuple[float, str]:
    """Grow ``n`` (doubling up to ``cap``) until a timed call is slow enough to time, then take the best.

    A timed call runs the product once on a CPU and 10 times back to back on CUDA (so a launch and a
    synchronise weigh nothing); each size is judged on the best of 3 calls, so a moment of CPU
    contention does not stop the growth early.
    """
    from ampflow.engine.step import sync

    reps = 10 if device.type == "cuda" else 1

    def once(op: Any) -> float:
        sync(device)
        t0 = time.perf_counter()
        for _ in range(reps):
            op()
        sync(device)
        return (time.perf_counter() - t0) / reps

    min_op = MIN_OP_S.get(device.type, 0.02)
    op = make(n)
    once(op)  # warm-up: kernel selection, allocator, lazy initialisation
    best = min(once(op) for _ in range(3))
    while best < min_op and n * 2 <= cap:
        n *= 2
        op = make(n)
        once(op)
        best = min(once(op) for _ in range(3))
    spent, runs = best * 3, 3
    while spent < PROBE_BUDGET_S and runs < 50:
        dt = once(op)
        best, spent, runs = min(best, dt), spent + dt, runs + 1
    flops = 2.0 * n**3 / best
    return flops, f"probed: best of {runs} {n}x{n} {compute} matmuls on this device"


# -- the cache ----------------------------------------------------------------------------------

CACHE_FILE = "peak_flops.json"


def cache_dir() -> Path:
    """``$AMPFLOW_CACHE_DIR``, else ``$XDG_CACHE_HOME/ampflow``, else ``~/.cache/ampflow``."""
    explicit = os.environ.get("AMPFLOW_CACHE_DIR")
    if explicit:
        return Path(explicit)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "ampflow"


def cache_key(device: Any, name: str, compute: str) -> str:
    """Device name, torch (and CUDA) version and thread count: a probe holds for exactly these."""
    import torch

    if device.type == "cuda":
        where = f"cuda {torch.version.cuda}"
    else:
        where = f"threads {torch.get_num_threads()}"
    return f"{name} | torch {torch.__version__} | {where} | {compute}"


def read_cache() -> dict[str, Any]:
    """The cached probes (``{}`` when there is no cache file or it is unreadable)."""
    try:
        data = json.loads((cache_dir() / CACHE_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def write_cache(key: str, entry: dict[str, Any]) -> None:
    """Add one probe to the cache, atomically; an unwritable cache directory only costs a re-probe."""
    from ampflow.io import atomic_write_json

    data = read_cache()
    data[key] = entry
    try:
        atomic_write_json(cache_dir() / CACHE_FILE, data)
    except OSError:
        pass

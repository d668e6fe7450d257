"""Devices: which one to use, what it can do natively, and peak-memory meters (peak FLOP/s: peaks.py)."""

from __future__ import annotations

import os
import resource
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ampflow.config import ConfigError


def resolve_device(name: str, local_rank: int = 0) -> Any:
    """``auto`` -> cuda when available, else cpu. Asking for cuda where there is none is bad input."""
    import torch

    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError("device cuda: no CUDA device is available here; use --set device=cpu or auto")
        torch.cuda.set_device(local_rank)
        return torch.device("cuda", local_rank)
    return torch.device("cpu")


def device_name(device: Any) -> str:
    """A human name of ``device``: the CUDA device's name, else the CPU model from /proc/cpuinfo (or the platform)."""
    import torch

    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform

    return platform.processor() or platform.machine() or "cpu"


def _cpu_flags() -> set[str]:
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as fh:
            for line in fh:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def cpu_has_native_bf16() -> bool:
    """True when the CPU has bf16 dot-product instructions (AVX512_BF16 or AMX-BF16).

    Without them oneDNN converts bf16 to fp32 around every op: correct but slower than fp32.
    """
    import torch

    flags = _cpu_flags()
    if flags & {"avx512_bf16", "amx_bf16"}:
        return True
    try:
        capability = torch.backends.cpu.get_cpu_capability()
    except Exception:  # older builds
        capability = ""
    return "AMX" in capability or "BF16" in capability


def bf16_native(device: Any) -> bool:
    """Whether ``device`` computes bf16 in hardware (else bf16 modes are emulated: correct, slower)."""
    import torch

    if device.type == "cuda":
        try:
            return bool(torch.cuda.is_bf16_supported(including_emulation=False))
        except TypeError:  # pragma: no cover - builds before the keyword
            return bool(torch.cuda.is_bf16_supported())
    return cpu_has_native_bf16()


@dataclass
class MemoryReading:
    """A memory peak in bytes (``reserved_bytes`` is CUDA's caching-allocator reservation, None on CPU)."""

    peak_bytes: int | None
    reserved_bytes: int | None
    kind: str  # "cuda_max_allocated" or "cpu_peak_rss"


class MemoryMeter:
    """Peak memory of one phase. CUDA: the caching allocator's peaks. CPU: the process's peak RSS.

    On Linux, writing 5 to /proc/self/clear_refs resets the kernel's high-water mark (VmHWM), so CPU
    peaks are per phase too; where that is refused the reading is the process-lifetime peak.
    """

    def __init__(self, device: Any):
        self.device = device
        self.cpu_reset_ok = False

    def reset(self) -> None:
        """Start a phase: reset the peaks (after a CUDA synchronise)."""
        import torch

        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            return
        try:
            Path("/proc/self/clear_refs").write_text("5")
            self.cpu_reset_ok = True
        except OSError:
            self.cpu_reset_ok = False

    def read(self) -> MemoryReading:
        """The peaks since :meth:`reset` (CUDA: allocated and reserved; CPU: peak RSS)."""
        import torch

        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            return MemoryReading(
                int(torch.cuda.max_memory_allocated(self.device)),
                int(torch.cuda.max_memory_reserved(self.device)),
                "cuda_max_allocated",
            )
        return MemoryReading(cpu_peak_rss(), None, "cpu_peak_rss")


def cpu_peak_rss() -> int:
    """The process's peak resident set in bytes (VmHWM, else getrusage's lifetime peak)."""
    try:
        with open("/proc/self/status", encoding="utf-8") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    # ru_maxrss is KiB on Linux (bytes on macOS); lifetime peak
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(rss if os.uname().sysname == "Darwin" else rss * 1024)

"""Energy over the timed window from the hardware's own counters, and cost from a price per device-hour.

Energy is read, never estimated: either a cumulative counter the hardware keeps is readable, or the
figures are null with the reason (result.json ``energy.reason``).

- **CUDA** (:class:`NvmlCounter`): ``nvmlDeviceGetTotalEnergyConsumption``, the GPU board's energy in
  millijoules since the driver was loaded (NVML, Volta and newer), through ``pynvml``
  (``nvidia-ml-py``) when it is importable. Each rank reads its own GPU, matched to NVML by UUID (NVML
  numbers GPUs ignoring ``CUDA_VISIBLE_DEVICES``); the ranks' joules are summed. The host CPU is not
  included. The machine ampflow was built on has no GPU: this path is checked by unit tests of its
  arithmetic with a stand-in for the library, not against a real board.
- **CPU** (:class:`RaplCounter`): the powercap RAPL package domains, ``/sys/class/powercap/intel-rapl:N
  /energy_uj`` (microjoules; AMD's driver exposes the same files), summed over packages. Sub-domains
  (``intel-rapl:N:M``: core, uncore, DRAM) are not added (the package already holds core and uncore;
  DRAM is left out). The counter wraps at ``max_energy_range_uj``: a reading below the previous one
  adds the range; the meter reads at least every :data:`TICK_S` seconds so that no more than one wrap
  falls between two readings. Package energy is the whole socket's, whatever else runs on it; under
  torchrun only local rank 0 of a machine reads it (the ranks share the sockets). Since 2020
  (CVE-2020-8694) ``energy_uj`` is readable by root only on most kernels: the reason then says so.

Units: joules (J) for energy; cost in the unit of ``price_per_device_hour`` (currency-free), devices x
hours x price.
"""

from __future__ import annotations

import contextlib
import re
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Protocol

POWERCAP = Path("/sys/class/powercap")
# read a running counter at least this often (s): a RAPL package counter with the smallest common range
# (65.5 kJ) wraps after 5 s only above 13 kW
TICK_S = 5.0
_PACKAGE_RE = re.compile(r"^intel-rapl:\d+$")


class EnergyUnavailable(Exception):
    """No energy counter can be read here; the message says why (result.json ``energy.reason``)."""


class Counter(Protocol):
    """A cumulative energy counter: raw readings per domain, and the joules between two readings."""

    source: str
    domains: list[str]

    def read(self) -> list[int]: ...

    def joules(self, before: list[int], after: list[int]) -> float: ...


def wrapped_delta(before: int, after: int, max_range: int) -> int:
    """``after - before`` of a counter that wraps to 0 past ``max_range`` (at most one wrap between the
    two readings: :data:`TICK_S`). Raises ValueError when ``after < before`` and the counter has no
    range (``max_range`` <= 0): it went backwards, and nothing says by how much."""
    if after >= before:
        return after - before
    if max_range <= 0:
        raise ValueError(f"energy counter went backwards ({before} -> {after}) and has no wrap range")
    return max_range - before + after


class RaplCounter:
    """The RAPL package domains under ``root`` (default ``/sys/class/powercap``), microjoules.

    Raises :class:`EnergyUnavailable` when there is no powercap tree, no package domain, or a domain's
    ``energy_uj`` cannot be read (the reason names the file and the error)."""

    source = "rapl"

    def __init__(self, root: str | Path = POWERCAP):
        root = Path(root)
        if not root.is_dir():
            raise EnergyUnavailable(f"no {root} (no RAPL powercap interface on this machine or container)")
        dirs = sorted(d for d in root.iterdir() if _PACKAGE_RE.match(d.name))
        if not dirs:
            raise EnergyUnavailable(f"no RAPL package domain (intel-rapl:N) under {root}")
        self.files = [d / "energy_uj" for d in dirs]
        self.ranges = []
        self.domains = []
        for d in dirs:
            try:
                self.ranges.append(int((d / "max_energy_range_uj").read_text().strip()))
                name = (d / "name").read_text().strip() if (d / "name").is_file() else d.name
            except (OSError, ValueError) as exc:
                raise EnergyUnavailable(f"cannot read {d}/max_energy_range_uj: {exc}") from None
            self.domains.append(f"{d.name}:{name}")
        self.read()  # readable now, or unavailable (energy_uj is root-only on most kernels since 2020)

    def read(self) -> list[int]:
        out = []
        for f in self.files:
            try:
                out.append(int(f.read_text().strip()))
            except (OSError, ValueError) as exc:
                raise EnergyUnavailable(f"cannot read {f}: {exc}") from None
        return out

    def joules(self, before: list[int], after: list[int]) -> float:
        return sum(wrapped_delta(b, a, r) for b, a, r in zip(before, after, self.ranges, strict=True)) / 1e6


class NvmlCounter:
    """One GPU's NVML total-energy counter (millijoules since the driver loaded, Volta+).

    ``nvml`` is the ``pynvml`` module (tests pass a stand-in); ``uuid`` the GPU's UUID as torch reports
    it (``torch.cuda.get_device_properties(i).uuid``), matched against NVML's ``GPU-<uuid>``; ``index``,
    the NVML index to use when no UUID is given. Raises :class:`EnergyUnavailable` when NVML fails or
    the GPU does not support the counter (pre-Volta)."""

    source = "nvml"

    def __init__(self, nvml: Any, *, uuid: str | None = None, index: int = 0):
        self.nvml = nvml
        try:
            nvml.nvmlInit()
            if uuid:
                text = uuid if uuid.startswith("GPU-") else f"GPU-{uuid}"
                self.handle = nvml.nvmlDeviceGetHandleByUUID(text)
            else:
                self.handle = nvml.nvmlDeviceGetHandleByIndex(index)
            name = nvml.nvmlDeviceGetName(self.handle)
            self.domains = [name.decode() if isinstance(name, bytes) else str(name)]
            self.read()
        except EnergyUnavailable:
            raise
        except Exception as exc:  # pynvml raises NVMLError subclasses (NotSupported on pre-Volta GPUs)
            raise EnergyUnavailable(f"NVML total energy counter not readable: {exc}") from None

    def read(self) -> list[int]:
        try:
            return [int(self.nvml.nvmlDeviceGetTotalEnergyConsumption(self.handle))]
        except Exception as exc:
            raise EnergyUnavailable(f"NVML total energy counter not readable: {exc}") from None

    def joules(self, before: list[int], after: list[int]) -> float:
        # a 64-bit millijoule counter: it does not wrap; going backwards means the driver reloaded
        return sum(wrapped_delta(b, a, 0) for b, a in zip(before, after, strict=True)) / 1e3


class EnergyMeter:
    """Joules of ``counter`` over the spans between :meth:`resume` and :meth:`pause`.

    ``counter`` None: nothing to read here, either because none is readable (``reason`` says why) or
    because another rank reads it (``reason`` None: this rank contributes 0 J). ``clock``: the time
    source for :meth:`tick`. A counter that fails or goes backwards mid-run makes :attr:`joules` None
    and sets ``reason``.
    """

    def __init__(
        self,
        counter: Counter | None,
        reason: str | None = None,
        *,
        clock: Callable[[], float] = time.perf_counter,
        tick_s: float = TICK_S,
    ):
        self.counter, self.reason, self.clock, self.tick_s = counter, reason, clock, tick_s
        self.total_j = 0.0
        self.running = False
        self._last: list[int] = []
        self._last_t = 0.0

    @property
    def source(self) -> str | None:
        return self.counter.source if self.counter is not None else None

    def _read(self) -> list[int] | None:
        try:
            return self.counter.read()  # type: ignore[union-attr]
        except EnergyUnavailable as exc:
            self._fail(str(exc))
            return None

    def _fail(self, reason: str) -> None:
        self.reason, self.counter, self.running = reason, None, False

    def resume(self) -> None:
        """Start (or restart) counting; no-op while running or without a counter."""
        if self.running or self.counter is None:
            return
        now = self._read()
        if now is not None:
            self._last, self._last_t, self.running = now, self.clock(), True

    def _accumulate(self) -> None:
        now = self._read()
        if now is None:
            return
        try:
            self.total_j += self.counter.joules(self._last, now)  # type: ignore[union-attr]
        except ValueError as exc:
            self._fail(str(exc))
            return
        self._last, self._last_t = now, self.clock()

    def pause(self) -> None:
        """Stop counting, adding the span since the last reading; no-op when not running."""
        if self.running:
            self._accumulate()
            self.running = False

    def tick(self) -> None:
        """Cheap when called every step: reads the counter only every ``tick_s`` seconds while running,
        so a wrapping counter (RAPL) is read before it can wrap twice."""
        if self.running and self.clock() - self._last_t >= self.tick_s:
            self._accumulate()

    @contextlib.contextmanager
    def paused(self) -> Iterator[None]:
        """Leave the enclosed work (validation, a checkpoint) out; resumes only if it was running."""
        was = self.running
        self.pause()
        try:
            yield
        finally:
            if was:
                self.resume()

    @property
    def joules(self) -> float | None:
        """Joules counted so far; None when this rank's counter is unavailable (``reason``)."""
        if self.counter is None and self.reason is not None:
            return None
        return self.total_j


def meter_for(device: Any, local_rank: int = 0, *, powercap: str | Path = POWERCAP) -> EnergyMeter:
    """The energy meter of this rank: NVML for a CUDA device, RAPL for the CPU (local rank 0 only).

    Never raises: an unreadable counter gives a meter whose ``reason`` says why."""
    if device.type == "cuda":
        try:
            import pynvml
        except ImportError:
            return EnergyMeter(None, "pynvml (nvidia-ml-py) is not installed: no NVML energy counter")
        try:
            import torch

            uuid = str(torch.cuda.get_device_properties(device).uuid)
        except Exception:  # torch builds without the uuid property
            uuid = None
        try:
            return EnergyMeter(NvmlCounter(pynvml, uuid=uuid, index=device.index or 0))
        except EnergyUnavailable as exc:
            return EnergyMeter(None, str(exc))
    if device.type != "cpu":
        return EnergyMeter(None, f"no energy counter for device type {device.type}")
    if local_rank != 0:
        return EnergyMeter(None, None)  # local rank 0 reads the sockets this machine's ranks share
    try:
        return EnergyMeter(RaplCounter(powercap))
    except EnergyUnavailable as exc:
        return EnergyMeter(None, str(exc))


def energy_figures(joules: float | None, samples: int) -> dict[str, float | None]:
    """result.json ``metrics`` keys: ``energy_j`` (J over the timed window, every device) and
    ``joules_per_sample`` (``energy_j`` / the window's ``samples``); None when unmeasured or no sample."""
    return {
        "energy_j": joules,
        "joules_per_sample": joules / samples if joules is not None and samples > 0 else None,
    }


def cost_figures(
    price_per_device_hour: float | None,
    *,
    devices: int,
    train_wall_s: float | None,
    samples_per_s: float | None,
    time_to_target_s: float | None,
) -> dict[str, float | None]:
    """result.json ``metrics`` keys, each ``devices x hours x price`` (None without a price or a clock):

    - ``cost_per_run``: hours of ``train_wall_s``, the trainer's wall clock in this process, from set-up
      to the result (a resumed run counts its own process only);
    - ``cost_per_1k_samples``: hours the timed window's steady-state throughput takes for 1,000
      samples (``1000 / samples_per_s``; ``samples_per_s`` counts every device);
    - ``cost_to_target``: hours of ``time_to_target_s`` (the training clock, :mod:`.validation`).
    """

    def cost(seconds: float | None) -> float | None:
        if price_per_device_hour is None or seconds is None:
            return None
        return devices * seconds / 3600.0 * price_per_device_hour

    return {
        "cost_per_run": cost(train_wall_s),
        "cost_per_1k_samples": cost(1000.0 / samples_per_s) if samples_per_s else None,
        "cost_to_target": cost(time_to_target_s),
    }

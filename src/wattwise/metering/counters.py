"""Hardware energy counters: NVML (NVIDIA GPU) and RAPL (CPU package), read where available.

Each counter returns cumulative joules or ``None`` when it cannot be read on this machine; the
caller then falls back to an estimate and labels it so.

Usage::

    counter = open_counter("rapl")
    if counter is not None:
        before = counter.read()
"""

from __future__ import annotations

import ctypes
from pathlib import Path
from typing import Protocol

RAPL_ROOT = Path("/sys/class/powercap")


class EnergyCounter(Protocol):
    def read(self) -> float | None: ...


class RaplCounter:
    """Sum of the CPU package domains' ``energy_uj`` counters, wrap-around corrected."""

    def __init__(self, *, domains: list[Path]) -> None:
        self._domains = domains
        self._last: list[int] = [0] * len(domains)
        self._wraps: list[int] = [0] * len(domains)
        self._ranges = [_read_int(d / "max_energy_range_uj") or 0 for d in domains]

    def read(self) -> float | None:
        total = 0.0
        for i, domain in enumerate(self._domains):
            value = _read_int(domain / "energy_uj")
            if value is None:
                return None
            if value < self._last[i]:
                self._wraps[i] += 1
            self._last[i] = value
            total += value + self._wraps[i] * self._ranges[i]
        return total / 1e6


class NvmlCounter:
    """Total energy of one NVIDIA GPU since driver load (``nvmlDeviceGetTotalEnergyConsumption``)."""

    def __init__(self, *, lib: ctypes.CDLL, handle: ctypes.c_void_p) -> None:
        self._lib = lib
        self._handle = handle

    def read(self) -> float | None:
        millijoules = ctypes.c_ulonglong()
        if self._lib.nvmlDeviceGetTotalEnergyConsumption(self._handle, ctypes.byref(millijoules)):
            return None
        return millijoules.value / 1000.0


def _read_int(path: Path) -> int | None:
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return None


def _open_rapl() -> RaplCounter | None:
    domains = sorted(p for p in RAPL_ROOT.glob("intel-rapl:[0-9]*") if ":" not in p.name[len("intel-rapl:"):])
    if not domains or any(_read_int(d / "energy_uj") is None for d in domains):
        return None
    return RaplCounter(domains=domains)


def _open_nvml(index: int = 0) -> NvmlCounter | None:
    try:
        lib = ctypes.CDLL("libnvidia-ml.so.1")
    except OSError:
        return None
    handle = ctypes.c_void_p()
    if lib.nvmlInit_v2() or lib.nvmlDeviceGetHandleByIndex_v2(index, ctypes.byref(handle)):
        return None
    counter = NvmlCounter(lib=lib, handle=handle)
    return counter if counter.read() is not None else None


def open_counter(kind: str) -> EnergyCounter | None:
    """The named counter (``nvml`` or ``rapl``) if this machine can read it, else ``None``."""
    if kind == "rapl":
        return _open_rapl()
    if kind == "nvml":
        return _open_nvml()
    return None

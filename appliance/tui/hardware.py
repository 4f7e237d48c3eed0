"""Hardware health for the dashboard: psutil for the host, NVML for NVIDIA GPUs.

Every reading is a value or None, never an exception: a metric the machine does not offer
(no GPU, no temperature sensors, a query the driver refuses) is a normal state here, shown
as unavailable. Sampling blocks briefly (NVML, /proc), so the app calls `sample()` off its
UI thread.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, TypeVar

import psutil

T = TypeVar("T")

# NVML's enum values, so a fake provider need not define them (they are fixed by the C API).
_NVML_TEMPERATURE_GPU = 0
_NVML_CLOCK_SM = 1
_NVML_CLOCK_MEM = 2


@dataclass(frozen=True)
class GpuSample:
    index: int
    name: str
    util_pct: float | None = None
    mem_used_bytes: int | None = None
    mem_total_bytes: int | None = None
    temp_c: float | None = None
    power_w: float | None = None
    power_limit_w: float | None = None
    sm_clock_mhz: int | None = None
    mem_clock_mhz: int | None = None

    @property
    def mem_pct(self) -> float | None:
        if self.mem_used_bytes is None or not self.mem_total_bytes:
            return None
        return 100.0 * self.mem_used_bytes / self.mem_total_bytes


@dataclass(frozen=True)
class GpuStatus:
    available: bool
    reason: str = ""
    """Why no GPU figures are shown, when `available` is False."""
    gpus: tuple[GpuSample, ...] = ()


@dataclass(frozen=True)
class HostSample:
    cpu_pct: tuple[float, ...] = ()
    """Per core, since the previous sample."""
    ram_used_bytes: int | None = None
    ram_total_bytes: int | None = None
    swap_used_bytes: int | None = None
    swap_total_bytes: int | None = None
    disk_path: str = ""
    disk_used_bytes: int | None = None
    disk_total_bytes: int | None = None
    temps_c: tuple[tuple[str, float], ...] = ()
    """(sensor label, degrees) for CPU sensors the kernel exposes; empty where it exposes none."""


@dataclass(frozen=True)
class HardwareSample:
    host: HostSample = field(default_factory=HostSample)
    gpu: GpuStatus = field(default_factory=lambda: GpuStatus(available=False, reason="not sampled yet"))


def _safe(call: Callable[[], T], default: T | None = None) -> T | None:
    try:
        return call()
    except Exception:  # noqa: BLE001 - any failed reading is a missing value, by design
        return default


class GpuMonitor:
    """NVML through `nvml`, an object with pynvml's function names (the real module by default).

    Initialised on the first sample; if that fails (no driver, no library), every later sample
    reports the same reason without trying again, since a driver does not appear at run time.
    """

    def __init__(self, nvml: Any | None = None) -> None:
        self._nvml = nvml
        self._ready = False
        self._failure: str | None = None

    def _start(self) -> None:
        if self._ready or self._failure:
            return
        try:
            if self._nvml is None:
                import pynvml  # on first use only: an injected provider never needs the package

                self._nvml = pynvml
            self._nvml.nvmlInit()
            self._ready = True
        except Exception as exc:  # noqa: BLE001 - NVMLError_LibraryNotFound, DriverNotLoaded, ImportError …
            self._failure = str(exc) or exc.__class__.__name__

    def sample(self) -> GpuStatus:
        self._start()
        if not self._ready:
            return GpuStatus(available=False, reason=self._failure or "NVML not initialised")
        nvml = self._nvml
        count = _safe(nvml.nvmlDeviceGetCount)
        if not count:
            return GpuStatus(available=False, reason="NVML found no GPUs")
        return GpuStatus(available=True, gpus=tuple(self._device(i) for i in range(count)))

    def _device(self, index: int) -> GpuSample:
        nvml = self._nvml
        handle = _safe(lambda: nvml.nvmlDeviceGetHandleByIndex(index))
        if handle is None:
            return GpuSample(index=index, name="unreadable")
        name = _safe(lambda: nvml.nvmlDeviceGetName(handle), "GPU")
        if isinstance(name, bytes):  # older pynvml returns bytes
            name = name.decode(errors="replace")
        memory = _safe(lambda: nvml.nvmlDeviceGetMemoryInfo(handle))
        power_mw = _safe(lambda: nvml.nvmlDeviceGetPowerUsage(handle))
        limit_mw = _safe(lambda: nvml.nvmlDeviceGetEnforcedPowerLimit(handle))
        return GpuSample(
            index=index,
            name=str(name),
            util_pct=_safe(lambda: float(nvml.nvmlDeviceGetUtilizationRates(handle).gpu)),
            mem_used_bytes=getattr(memory, "used", None),
            mem_total_bytes=getattr(memory, "total", None),
            temp_c=_safe(lambda: float(nvml.nvmlDeviceGetTemperature(handle, _NVML_TEMPERATURE_GPU))),
            power_w=power_mw / 1000 if power_mw is not None else None,
            power_limit_w=limit_mw / 1000 if limit_mw is not None else None,
            sm_clock_mhz=_safe(lambda: int(nvml.nvmlDeviceGetClockInfo(handle, _NVML_CLOCK_SM))),
            mem_clock_mhz=_safe(lambda: int(nvml.nvmlDeviceGetClockInfo(handle, _NVML_CLOCK_MEM))),
        )

    def close(self) -> None:
        if self._ready:
            _safe(self._nvml.nvmlShutdown)
            self._ready = False


# Sensor chips that report the CPU package or cores, by driver name (Intel, AMD, ARM boards).
_CPU_SENSORS = ("coretemp", "k10temp", "zenpower", "cpu_thermal", "cpu-thermal", "soc_thermal", "acpitz")


def cpu_temperatures() -> tuple[tuple[str, float], ...]:
    """CPU sensor readings the kernel exposes (Linux hwmon); empty in VMs and containers without them."""
    read = getattr(psutil, "sensors_temperatures", None)
    sensors = _safe(read, {}) if read else {}
    found: list[tuple[str, float]] = []
    for chip, entries in (sensors or {}).items():
        if chip not in _CPU_SENSORS:
            continue
        for n, entry in enumerate(entries):
            if entry.current is not None:
                found.append((entry.label or f"{chip}{n}", float(entry.current)))
    return tuple(found)


class HardwareMonitor:
    """Samples the host and the GPUs; `disk_path` is the folder whose file system is reported."""

    def __init__(self, disk_path: Path, gpu: GpuMonitor | None = None) -> None:
        self.disk_path = disk_path
        self.gpu = gpu or GpuMonitor()
        # cpu_percent(interval=None) measures since the previous call: prime it so the first sample is real.
        _safe(lambda: psutil.cpu_percent(interval=None, percpu=True))

    def sample(self) -> HardwareSample:
        """One reading of everything; never raises."""
        return HardwareSample(host=self._host(), gpu=self.gpu.sample())

    def _host(self) -> HostSample:
        ram = _safe(psutil.virtual_memory)
        swap = _safe(psutil.swap_memory)
        disk_path = self._existing(self.disk_path)
        disk = _safe(lambda: psutil.disk_usage(str(disk_path)))
        return HostSample(
            cpu_pct=tuple(_safe(lambda: psutil.cpu_percent(interval=None, percpu=True), []) or ()),
            ram_used_bytes=(ram.total - ram.available) if ram else None,
            ram_total_bytes=ram.total if ram else None,
            swap_used_bytes=swap.used if swap else None,
            swap_total_bytes=swap.total if swap else None,
            disk_path=str(self.disk_path),
            disk_used_bytes=disk.used if disk else None,
            disk_total_bytes=disk.total if disk else None,
            temps_c=cpu_temperatures(),
        )

    @staticmethod
    def _existing(path: Path) -> Path:
        # Before the daemon's first run the state folder may not exist yet; its file system is the parent's.
        for candidate in (path, *path.parents):
            if candidate.exists():
                return candidate
        return Path("/")

    def close(self) -> None:
        self.gpu.close()

"""The dashboard's arithmetic, pure: snapshots of /v1/stats in, rates, histories, levels and alerts out.

Nothing here does I/O or reads a clock; callers pass the time in. A snapshot is read as a
`StatsSnapshot` that is not strict (`as_snapshot`): a daemon of another version, or a half-written
answer, gives missing values, never an exception. `pick` and `number` do the same for /v1/models.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field, fields
from typing import Any, Iterable, Literal, Mapping

from ..protocol.stats import StatsSnapshot
from .hardware import HardwareSample

ROUTES = ("cache", "student", "teacher")

Level = Literal["ok", "warn", "crit", "na"]


def pick(data: Any, *path: str | int, default: Any = None) -> Any:
    """`data[path[0]][path[1]]…`, or `default` where a step is missing or not a container."""
    for key in path:
        if isinstance(data, Mapping) and key in data:
            data = data[key]
        elif isinstance(data, (list, tuple)) and isinstance(key, int) and -len(data) <= key < len(data):
            data = data[key]
        else:
            return default
    return data


def number(data: Any, *path: str | int) -> float | None:
    """The finite number at `path`, or None (bools, strings, NaN and missing fields all count as absent)."""
    value = pick(data, *path)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return float(value)


def as_snapshot(stats: StatsSnapshot | Mapping[str, Any] | None) -> StatsSnapshot:
    """A /v1/stats snapshot as its record, read leniently: fields of the wrong type count as missing."""
    return stats if isinstance(stats, StatsSnapshot) else StatsSnapshot.from_json(stats, strict=False)


NO_STATS = as_snapshot({})
"""No snapshot yet: every section unreported."""


def percent(used: float | None, total: float | None) -> float | None:
    """used/total as a percentage; None when either is unknown or the total is zero."""
    if used is None or not total:
        return None
    return 100.0 * used / total


@dataclass(frozen=True)
class Counters:
    """The daemon's monotonic counters from one snapshot (or the difference of two)."""

    requests: float = 0.0
    prompt_tokens: float = 0.0
    completion_tokens: float = 0.0
    cancelled: float = 0.0
    degraded: float = 0.0
    cost_usd: float = 0.0
    saved_usd: float = 0.0
    by_route: Mapping[str, float] = field(default_factory=dict)

    @classmethod
    def of(cls, stats: Any) -> "Counters":
        """Read the counters of a /v1/stats snapshot; missing ones are zero."""
        daemon = as_snapshot(stats).counters
        scalars = {f.name: float(getattr(daemon, f.name)) for f in fields(cls) if f.name != "by_route"}
        return cls(**scalars, by_route={route: float(n) for route, n in daemon.by_route.items()})

    def _pairs(self, other: "Counters") -> Iterable[tuple[float, float]]:
        for f in fields(self):
            if f.name != "by_route":
                yield getattr(self, f.name), getattr(other, f.name)
        for route in set(self.by_route) | set(other.by_route):
            yield self.by_route.get(route, 0.0), other.by_route.get(route, 0.0)

    def below(self, other: "Counters") -> bool:
        """True if any counter is smaller than in `other`: the daemon restarted in between."""
        return any(mine < theirs for mine, theirs in self._pairs(other))

    def since(self, base: "Counters") -> "Counters":
        """These counters minus `base` (what happened since a reset)."""
        scalars = {f.name: getattr(self, f.name) - getattr(base, f.name) for f in fields(self) if f.name != "by_route"}
        routes = {r: v - base.by_route.get(r, 0.0) for r, v in self.by_route.items()}
        return Counters(**scalars, by_route=routes)

    @property
    def answered(self) -> float:
        return sum(self.by_route.values())

    @property
    def hit_rate(self) -> float | None:
        """Share of answers that came from the cache; None before the first answer."""
        return self.by_route.get("cache", 0.0) / self.answered if self.answered else None


@dataclass(frozen=True)
class Rates:
    tokens_per_s: float
    """Completion (generated) tokens per second."""
    requests_per_s: float


def rates(prev: Counters, cur: Counters, elapsed_s: float | None) -> Rates | None:
    """Per-second rates between two snapshots; None when time did not advance or counters went back."""
    if not elapsed_s or elapsed_s <= 0 or cur.below(prev):
        return None
    return Rates(
        tokens_per_s=(cur.completion_tokens - prev.completion_tokens) / elapsed_s,
        requests_per_s=(cur.requests - prev.requests) / elapsed_s,
    )


def elapsed(prev_stats: Any, cur_stats: Any, prev_t: float, cur_t: float) -> float | None:
    """Seconds between two snapshots: the daemon's own uptime difference (free of fetch jitter), else ours."""
    before, after = as_snapshot(prev_stats).counters.uptime_s, as_snapshot(cur_stats).counters.uptime_s
    if before is not None and after is not None and after > before:
        return after - before
    return cur_t - prev_t if cur_t > prev_t else None


@dataclass(frozen=True)
class View:
    """What the dashboard shows after one snapshot."""

    stats: StatsSnapshot
    counters: Counters
    """Since the last reset (or the daemon's start)."""
    rates: Rates | None
    tokens_history: tuple[float, ...]
    requests_history: tuple[float, ...]


class Tracker:
    """Successive snapshots → rates, sparkline histories and counters since a reset (`r`).

    Resetting only moves this view's baseline; the daemon's counters are untouched.
    """

    def __init__(self, history: int = 180) -> None:
        self._tokens: deque[float] = deque(maxlen=history)
        self._requests: deque[float] = deque(maxlen=history)
        self._prev: tuple[StatsSnapshot, Counters, float] | None = None
        """The snapshot rates are measured from; dropped when the daemon goes away."""
        self._last: tuple[StatsSnapshot, Counters] | None = None
        self._baseline = Counters()

    def update(self, stats: StatsSnapshot | Mapping[str, Any], now: float) -> View:
        """Take the next snapshot, fetched at `now` (seconds on any clock that only goes forward)."""
        stats = as_snapshot(stats)
        current = Counters.of(stats)
        if current.below(self._baseline):  # the daemon restarted: its counters start again from zero
            self._baseline = Counters()
        rate = None
        if self._prev is not None:
            prev_stats, prev_counters, prev_t = self._prev
            rate = rates(prev_counters, current, elapsed(prev_stats, stats, prev_t, now))
        if rate is not None:
            self._tokens.append(rate.tokens_per_s)
            self._requests.append(rate.requests_per_s)
        self._prev = (stats, current, now)
        self._last = (stats, current)
        return View(stats, current.since(self._baseline), rate, tuple(self._tokens), tuple(self._requests))

    def reset(self) -> View | None:
        """Zero the view: counters count from the last snapshot, sparklines start empty.

        Returns that last snapshot's view as it now reads (all zero), or None before the first one.
        """
        self._tokens.clear()
        self._requests.clear()
        if self._last is None:
            return None
        stats, counters = self._last
        self._baseline = counters
        return View(stats, counters.since(counters), None, (), ())

    def disconnected(self) -> None:
        """The daemon went away: the next snapshot starts new rates instead of spanning the gap."""
        self._prev = None


def histogram(values: Iterable[Any], bins: int = 10) -> list[int]:
    """Counts of confidences in `bins` equal slices of [0, 1]; non-numbers are skipped, outliers clamped."""
    counts = [0] * bins
    for value in values if isinstance(values, Iterable) else ():
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            continue
        counts[min(bins - 1, max(0, int(value * bins)))] += 1
    return counts


def numbers(values: Any) -> list[float]:
    """The finite numbers in a list field (empty when the field is not a list)."""
    if not isinstance(values, (list, tuple)):
        return []
    return [float(v) for v in values if not isinstance(v, bool) and isinstance(v, (int, float)) and math.isfinite(v)]


def share_below(values: list[float], threshold: float | None) -> float | None:
    """Fraction of `values` under `threshold` (what would go to the teacher)."""
    if threshold is None or not values:
        return None
    return sum(v < threshold for v in values) / len(values)


def median(values: list[float]) -> float | None:
    """The middle value (mean of the two middle ones for an even count); None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    mid = len(ordered) // 2
    return ordered[mid] if len(ordered) % 2 else (ordered[mid - 1] + ordered[mid]) / 2


@dataclass(frozen=True)
class Thresholds:
    """Where colours turn yellow and red, and where the alert line speaks up."""

    usage_warn_pct: float = 75.0
    usage_crit_pct: float = 90.0
    gpu_warm_c: float = 75.0
    gpu_hot_c: float = 85.0
    cpu_warm_c: float = 80.0
    cpu_hot_c: float = 90.0
    memory_full_pct: float = 95.0
    budget_warn_pct: float = 90.0


def level(value: float | None, warn: float, crit: float) -> Level:
    """ok / warn / crit for a reading against two thresholds; na when there is no reading."""
    if value is None:
        return "na"
    return "crit" if value >= crit else "warn" if value >= warn else "ok"


def alerts(hardware: HardwareSample | None, stats: Any, t: Thresholds = Thresholds()) -> list[str]:
    """Short warnings for the alert line, most urgent first; empty when all is well."""
    hot: list[str] = []
    full: list[str] = []
    if hardware is not None:
        for gpu in hardware.gpu.gpus if hardware.gpu.available else ():
            if gpu.temp_c is not None and gpu.temp_c >= t.gpu_hot_c:
                hot.append(f"GPU{gpu.index} hot: {gpu.temp_c:.0f}°C")
            if (mem := gpu.mem_pct) is not None and mem >= t.memory_full_pct:
                full.append(f"GPU{gpu.index} memory {mem:.0f}% full")
        host = hardware.host
        cpu_hot = [c for _, c in host.temps_c if c >= t.cpu_hot_c]
        if cpu_hot:
            hot.append(f"CPU hot: {max(cpu_hot):.0f}°C")
        if (ram := percent(host.ram_used_bytes, host.ram_total_bytes)) is not None and ram >= t.memory_full_pct:
            full.append(f"RAM {ram:.0f}% full")
        if (disk := percent(host.disk_used_bytes, host.disk_total_bytes)) is not None and disk >= t.memory_full_pct:
            full.append(f"disk {disk:.0f}% full")
    snapshot = as_snapshot(stats)
    stores = snapshot.storage.stores if snapshot.storage else {}
    failing = sorted(name for name, state in stores.items() if state.failing)
    if failing:
        # Ahead of heat and memory: every answer from now on may be lost from the cache and the log.
        hot.insert(0, f"cannot write {', '.join(failing)}: disk full?")
    teacher = snapshot.teacher
    spent, budget = (teacher.spent_today, teacher.budget) if teacher else (None, None)
    money: list[str] = []
    if spent is not None and budget:
        used = 100.0 * spent / budget
        if used >= 100.0:
            money.append("teacher budget spent: the student answers alone")
        elif used >= t.budget_warn_pct:
            money.append(f"teacher budget {used:.0f}% spent")
    return hot + full + money

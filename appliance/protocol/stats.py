"""The /v1/stats document as typed records: what the daemon writes and what the dashboard reads.

The daemon assembles it from seven producers (its counters, the cache, the teacher, each student's
scheduler, the stores' health, the HTTP server's connections, the process); `StatsSnapshot.build`
converts their dicts in one place, `to_json` writes the document and `from_json` reads it back.

Reading a snapshot:

* A field the JSON lacks (an older daemon, a producer that does not keep it) takes the default its
  record declares, and nowhere else: counts of what happened read as 0, anything else as None or
  empty. `reported(name)` tells such a default from a value that was sent.
* A record remembers which fields its JSON lacked and `to_json` leaves them out again, so a document
  read and written back is the document that was read.
* A value of the wrong type raises ValueError naming the field (`students[0].batching.steps`). With
  `strict=False` (the dashboard, which must outlive a daemon of another version or a half-written
  answer) it is read as null where the field may be null and as missing elsewhere, entries of a list
  or map that do not fit are skipped, and NaN or an infinity is no number.

Keys unknown to these records (a newer daemon's) are ignored.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields
from typing import Any, Callable, Iterable, Mapping, Self

Convert = Callable[[object, str, bool], Any]
"""(JSON value, its path for messages, strict) -> the field's value; raises `_WrongType`."""


class _WrongType(ValueError):
    pass


def _kind(value: object) -> str:
    """A JSON value's type, as a message names it."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, (list, tuple)):
        return "an array"
    if isinstance(value, Mapping):
        return "an object"
    return type(value).__name__


def _wrong(path: str, expected: str, value: object) -> _WrongType:
    return _WrongType(f"/v1/stats: {path or 'the snapshot'} must be {expected}, not {_kind(value)}")


def _join(path: str, key: str | int) -> str:
    if isinstance(key, int):
        return f"{path}[{key}]"
    return f"{path}.{key}" if path else key


# --- converters ------------------------------------------------------------------------------------

def _int(value: object, path: str, strict: bool) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise _wrong(path, "an integer", value)
    return value


def _number(value: object, path: str, strict: bool) -> float:
    """An int or a float, kept as it came (so it is written back the same)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (not strict and not math.isfinite(value)):
        raise _wrong(path, "a number", value)
    return value


def _str(value: object, path: str, strict: bool) -> str:
    if not isinstance(value, str):
        raise _wrong(path, "a string", value)
    return value


def _bool(value: object, path: str, strict: bool) -> bool:
    if not isinstance(value, bool):
        raise _wrong(path, "true or false", value)
    return value


def _map(convert: Convert) -> Convert:
    """A JSON object of values that each `convert` reads, as a dict."""

    def read(value: object, path: str, strict: bool) -> dict[str, Any]:
        if not isinstance(value, Mapping):
            raise _wrong(path, "an object", value)
        out: dict[str, Any] = {}
        for key, item in value.items():
            try:
                out[str(key)] = convert(item, _join(path, str(key)), strict)
            except _WrongType:
                if strict:
                    raise
        return out

    return read


def _list(convert: Convert) -> Convert:
    """A JSON array of values that each `convert` reads, as a tuple."""

    def read(value: object, path: str, strict: bool) -> tuple[Any, ...]:
        if not isinstance(value, (list, tuple)):
            raise _wrong(path, "an array", value)
        out = []
        for i, item in enumerate(value):
            try:
                out.append(convert(item, _join(path, i), strict))
            except _WrongType:
                if strict:
                    raise
        return tuple(out)

    return read


def _record(cls: type[_Record]) -> Convert:
    return cls._read


@dataclass(frozen=True)
class _Spec:
    convert: Convert
    nullable: bool
    """The daemon may write null here (then a wrong type reads as null where not strict)."""
    flatten: bool
    """A record whose keys sit in the parent object, not under the field's name."""


def _field(convert: Convert, default: object = None, *, factory: Callable[[], object] | None = None,
           nullable: bool = False, flatten: bool = False) -> Any:
    metadata = {"json": _Spec(convert, nullable, flatten)}
    if factory is not None:
        return field(default_factory=factory, metadata=metadata)
    return field(default=default, metadata=metadata)


# --- records ---------------------------------------------------------------------------------------

@dataclass(frozen=True)
class _Record:
    """A part of the document: its JSON fields are declared with `_field`; see the module's docstring."""

    absent: frozenset[str] = field(default=frozenset(), repr=False, kw_only=True)
    """Fields the JSON it was read from did not have: defaults here, and left out of `to_json`. Empty for a
    record made in code, which reports every field."""

    def reported(self, name: str) -> bool:
        """Whether the snapshot carried field `name` (rather than it reading as its default)."""
        return name not in self.absent

    @classmethod
    def from_json(cls, data: object, *, strict: bool = True) -> Self:
        """Read this part of a snapshot; see the module's docstring for missing fields and wrong types.

        Not strict, something that is not an object at all reads as an empty one.
        """
        try:
            return cls._read(data, "", strict)
        except _WrongType:
            if strict:
                raise
            return cls._read({}, "", strict)

    @classmethod
    def _read(cls, data: object, path: str, strict: bool) -> Self:
        if not isinstance(data, Mapping):
            raise _wrong(path, "an object", data)
        values: dict[str, Any] = {}
        absent = set()
        for f in fields(cls):
            spec = f.metadata.get("json")
            if not isinstance(spec, _Spec):
                continue
            if spec.flatten:
                values[f.name] = spec.convert(data, path, strict)
                continue
            if f.name not in data:
                absent.add(f.name)
                continue
            value = data[f.name]
            if value is None and spec.nullable:
                values[f.name] = None
                continue
            try:
                values[f.name] = spec.convert(value, _join(path, f.name), strict)
            except _WrongType:
                if strict:
                    raise
                if spec.nullable:
                    values[f.name] = None
                else:
                    absent.add(f.name)
        return cls(**values, absent=frozenset(absent))

    def to_json(self) -> dict[str, Any]:
        """This part as the daemon writes it (JSON types only: lists, dicts, str, numbers, bools, None)."""
        out: dict[str, Any] = {}
        for f in fields(self):
            spec = f.metadata.get("json")
            if not isinstance(spec, _Spec):
                continue
            value = getattr(self, f.name)
            if spec.flatten:
                out.update(value.to_json())
            elif f.name not in self.absent:
                out[f.name] = _dump(value)
        return out


def _dump(value: object) -> object:
    if isinstance(value, _Record):
        return value.to_json()
    if isinstance(value, (tuple, list)):
        return [_dump(v) for v in value]
    if isinstance(value, Mapping):
        return {k: _dump(v) for k, v in value.items()}
    return value


@dataclass(frozen=True)
class Percentiles(_Record):
    """Latency percentiles in seconds (`stats.percentiles`); null before the first answer."""

    p50: float | None = _field(_number, nullable=True)
    p95: float | None = _field(_number, nullable=True)


@dataclass(frozen=True)
class DaemonCounters(_Record):
    """The daemon's own counters (`Stats.snapshot`), at the top level of the document."""

    uptime_s: float | None = _field(_number)
    requests: int = _field(_int, 0)
    by_route: Mapping[str, int] = _field(_map(_int), factory=dict)
    """Answers per route (cache, student, teacher); a route with none is left out."""
    by_status: Mapping[str, int] = _field(_map(_int), factory=dict)
    """HTTP answers per status code (the code as a string)."""
    prompt_tokens: int = _field(_int, 0)
    completion_tokens: int = _field(_int, 0)
    cancelled: int = _field(_int, 0)
    latency_s: Percentiles = _field(_record(Percentiles), factory=Percentiles)
    latency_by_route: Mapping[str, Percentiles] = _field(_map(_record(Percentiles)), factory=dict)
    cost_usd: float = _field(_number, 0.0)
    saved_usd: float = _field(_number, 0.0)
    degraded: int = _field(_int, 0)
    cache_hit_rate: float | None = _field(_number, nullable=True)
    confidence_recent: tuple[float, ...] | None = _field(_list(_number))
    """The newest student confidences (up to 100); None when not reported, empty before the first."""


@dataclass(frozen=True)
class CacheStats(_Record):
    """The semantic cache's `stats()`."""

    entries: int | None = _field(_int)
    namespaces: Mapping[str, int] = _field(_map(_int), factory=dict)
    hits: int | None = _field(_int)
    misses: int | None = _field(_int)
    uncovered: int | None = _field(_int)
    """Lookups the cache could not read (fail-closed misses)."""
    rejected_neighbours: int | None = _field(_int)
    lifetime_hits: int | None = _field(_int)
    bytes_on_disk: int | None = _field(_int)
    index_vectors: int | None = _field(_int)
    embedder: str | None = _field(_str)
    path: str | None = _field(_str)


@dataclass(frozen=True)
class TeacherStatus(_Record):
    """`teacher_status`: provider "none" when no teacher is configured; never the key."""

    provider: str | None = _field(_str)
    model: str | None = _field(_str, nullable=True)
    spent_today: float | None = _field(_number, nullable=True)
    budget: float | None = _field(_number, nullable=True)


@dataclass(frozen=True)
class BatchingStats(_Record):
    """A student's `Scheduler.stats()`; the engine counters are null where the engine does not keep them."""

    parallel: int | None = _field(_int)
    running: int | None = _field(_int)
    waiting: int | None = _field(_int)
    steps: int | None = _field(_int)
    mean_batch: float | None = _field(_number, nullable=True)
    max_batch: int | None = _field(_int)
    prompt_tokens_reused: int | None = _field(_int, nullable=True)
    prompt_tokens_computed: int | None = _field(_int, nullable=True)
    interrupted_steps: int | None = _field(_int, nullable=True)


@dataclass(frozen=True)
class StudentStats(_Record):
    name: str | None = _field(_str)
    batching: BatchingStats = _field(_record(BatchingStats), factory=BatchingStats)


@dataclass(frozen=True)
class StoreHealth(_Record):
    """One store's writes (`storage_health`); failing from a failed write until the next good one."""

    writes: int = _field(_int, 0)
    write_failures: int = _field(_int, 0)
    failing: bool = _field(_bool, False)
    last_error: str | None = _field(_str, nullable=True)
    last_failure_at: float | None = _field(_number, nullable=True)


@dataclass(frozen=True)
class StorageStatus(_Record):
    """`StorageHealth.snapshot()`: whether every store can still be written."""

    ok: bool | None = _field(_bool)
    stores: Mapping[str, StoreHealth] = _field(_map(_record(StoreHealth)), factory=dict)


@dataclass(frozen=True)
class ConnectionCounts(_Record):
    """`ConnectionStats.snapshot()`: open connections, the limit, and how many were refused for it."""

    open: int | None = _field(_int)
    max: int | None = _field(_int)
    refused: int | None = _field(_int)


@dataclass(frozen=True)
class ProcessStats(_Record):
    rss_bytes: int | None = _field(_int)
    """The daemon's resident memory."""


@dataclass(frozen=True)
class StatsSnapshot(_Record):
    """The whole /v1/stats document: the counters at the top level, then one object per section.

    `cache` is null when the cache is off and `connections` when no HTTP server reports them; a
    section an older daemon does not send reads as None (`reported` tells which).
    """

    counters: DaemonCounters = _field(_record(DaemonCounters), factory=DaemonCounters, flatten=True)
    cache: CacheStats | None = _field(_record(CacheStats), nullable=True)
    teacher: TeacherStatus | None = _field(_record(TeacherStatus))
    confidence_threshold: float | None = _field(_number)
    students: tuple[StudentStats, ...] = _field(_list(_record(StudentStats)), factory=tuple)
    storage: StorageStatus | None = _field(_record(StorageStatus))
    connections: ConnectionCounts | None = _field(_record(ConnectionCounts), nullable=True)
    process: ProcessStats | None = _field(_record(ProcessStats))

    @classmethod
    def build(cls, counters: Mapping[str, object], *, cache: Mapping[str, object] | None,
              teacher: Mapping[str, object], confidence_threshold: float,
              students: Iterable[tuple[str, Mapping[str, object]]], storage: Mapping[str, object],
              connections: Mapping[str, object] | None, rss_bytes: int) -> StatsSnapshot:
        """The document from what its producers return (the daemon's one conversion); ValueError names a
        field a producer got wrong."""
        return cls(
            counters=DaemonCounters._read(counters, "", True),
            cache=None if cache is None else CacheStats._read(cache, "cache", True),
            teacher=TeacherStatus._read(teacher, "teacher", True),
            confidence_threshold=_number(confidence_threshold, "confidence_threshold", True),
            students=tuple(StudentStats(name=_str(name, f"students[{i}].name", True),
                                        batching=BatchingStats._read(batching, f"students[{i}].batching", True))
                           for i, (name, batching) in enumerate(students)),
            storage=StorageStatus._read(storage, "storage", True),
            connections=None if connections is None else ConnectionCounts._read(connections, "connections", True),
            process=ProcessStats(rss_bytes=_int(rss_bytes, "process.rss_bytes", True)),
        )

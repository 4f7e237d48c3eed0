"""The /v1/stats document's records: built from the daemon's producers, written, read back; older
snapshots read with defaults; wrong types named."""

from __future__ import annotations

import asyncio
import json
import math
import re
from types import SimpleNamespace

import pytest

from appliance.server.api import Api
from appliance.server.http import ConnectionStats
from appliance.server.stats import Stats
from appliance.protocol.stats import (BatchingStats, CacheStats, ConnectionCounts, DaemonCounters, Percentiles,
                                    StatsSnapshot, StoreHealth, TeacherStatus)
from appliance.storage.health import StorageHealth
from appliance.teacher import teacher_status

from .test_stats import answer, fake_router


def busy_stats() -> Stats:
    stats = Stats()
    for route, elapsed, score in (("cache", 0.01, None), ("student", 0.8, 0.6), ("student", 1.2, 0.1),
                                  ("teacher", 2.5, None)):
        stats.record_answer(answer(route, elapsed, score))
        stats.record_status(200)
    stats.record_status(429)
    stats.cancelled = 1
    return stats


SCHEDULER = {"parallel": 8, "running": 1, "waiting": 0, "steps": 42, "mean_batch": 1.5, "max_batch": 3,
             "prompt_tokens_reused": 120, "prompt_tokens_computed": 80, "interrupted_steps": 2}
ONNX_SCHEDULER = {**SCHEDULER, "mean_batch": None, "prompt_tokens_reused": None, "prompt_tokens_computed": None,
                  "interrupted_steps": None}
CACHE = {"entries": 12, "namespaces": {"1000": 10, "key:ci": 2}, "hits": 3, "misses": 9, "uncovered": 1,
         "rejected_neighbours": 0, "lifetime_hits": 30, "bytes_on_disk": 81920, "index_vectors": 12,
         "embedder": "hash-256", "path": "/var/lib/athanor/cache.sqlite"}


def daemon_snapshot() -> StatsSnapshot:
    health = StorageHealth(clock=lambda: 1700000000.5)
    health.wrote("cache")
    health.failed("distill_log", OSError(28, "No space left on device"))
    teacher = SimpleNamespace(name="gemini", provider="gemini", model="gemini-2.5-flash",
                              guard=SimpleNamespace(ledger=SimpleNamespace(spent_today=lambda: 0.25, daily_budget_usd=1.0)))
    return StatsSnapshot.build(
        busy_stats().snapshot(), cache=CACHE, teacher=teacher_status(teacher), confidence_threshold=0.2,
        students=[("smollm2-135m", SCHEDULER), ("tiny-onnx", ONNX_SCHEDULER)], storage=health.snapshot(),
        connections=ConnectionStats(max=64, open=3, refused=1).snapshot(), rss_bytes=512 * 1024 * 1024)


def test_round_trip_through_json():
    record = daemon_snapshot()
    wire = json.loads(json.dumps(record.to_json()))
    assert StatsSnapshot.from_json(wire) == record
    assert StatsSnapshot.from_json(wire).to_json() == wire
    assert record.counters.by_route == {"cache": 1, "student": 2, "teacher": 1}
    assert record.counters.latency_by_route["student"] == Percentiles(p50=1.2, p95=1.2)
    assert record.students[1].batching == BatchingStats(parallel=8, running=1, waiting=0, steps=42, max_batch=3)
    assert record.storage is not None and record.storage.ok is False
    assert record.storage.stores["distill_log"].failing and "disk is full" in str(record.storage.stores["distill_log"].last_error)
    assert record.connections == ConnectionCounts(open=3, max=64, refused=1)


def test_the_record_writes_what_the_daemon_wrote_before_it():
    stats, health = busy_stats(), StorageHealth()
    counters = stats.snapshot()
    # /v1/stats as stats_view assembled it by hand before the record existed.
    by_hand = {**counters, "cache": CACHE, "teacher": teacher_status(None), "confidence_threshold": 0.2,
               "students": [{"name": "smollm2-135m", "batching": SCHEDULER}], "storage": health.snapshot(),
               "connections": None, "process": {"rss_bytes": 1234}}
    record = StatsSnapshot.build(counters, cache=CACHE, teacher=teacher_status(None), confidence_threshold=0.2,
                                 students=[("smollm2-135m", SCHEDULER)], storage=health.snapshot(), connections=None,
                                 rss_bytes=1234)
    assert json.dumps(record.to_json()) == json.dumps(by_hand)  # same keys, same order, same values


def test_stats_view_serves_the_record(tmp_path):
    api = Api(fake_router(tmp_path), default_max_tokens=16, stats=busy_stats())
    body = json.loads(asyncio.run(api.stats_view(None)).body)
    record = StatsSnapshot.from_json(body)
    assert record.to_json() == body
    assert record.counters.requests == 5 and record.counters.by_status == {"200": 4, "429": 1}
    assert record.cache is None and record.reported("cache") and record.connections is None
    # The fake scheduler reports three fields: the others are not made up.
    assert body["students"][0]["batching"] == {"parallel": 8, "running": 0, "waiting": 0}
    assert not record.students[0].batching.reported("steps") and record.students[0].batching.steps is None


def test_an_older_snapshot_reads_with_defaults():
    old = {"uptime_s": 12.5, "requests": 3, "by_route": {"student": 3}, "prompt_tokens": 30,
           "completion_tokens": 12, "latency_s": {"p50": 0.5, "p95": 0.9}, "cost_usd": 0.0,
           "cache": {"entries": 4, "hits": 1, "misses": 2, "bytes_on_disk": 4096},
           "teacher": {"provider": "none", "model": None, "spent_today": 0.0, "budget": 0.0}}
    record = StatsSnapshot.from_json(old)
    counters = record.counters
    assert counters.requests == 3 and counters.cancelled == 0 and counters.degraded == 0 and counters.saved_usd == 0.0
    assert counters.by_status == {} and counters.latency_by_route == {}
    assert counters.cache_hit_rate is None and counters.confidence_recent is None
    assert not counters.reported("cancelled") and counters.reported("requests")
    assert record.cache == CacheStats(entries=4, hits=1, misses=2, bytes_on_disk=4096,
                                      absent=frozenset(record.cache.absent if record.cache else ()))
    assert record.cache is not None and record.cache.uncovered is None and record.cache.namespaces == {}
    assert record.students == () and record.storage is None and record.process is None
    assert record.confidence_threshold is None and record.connections is None
    assert not record.reported("students") and not record.reported("connections")
    assert record.to_json() == old  # nothing the older daemon did not send is made up


def test_an_empty_snapshot_reads_as_nothing_reported():
    record = StatsSnapshot.from_json({})
    assert record.counters == DaemonCounters.from_json({}) and record.counters.uptime_s is None
    assert record.to_json() == {}
    assert record != StatsSnapshot()  # a record made in code reports every field


@pytest.mark.parametrize("patch, field", [
    ({"requests": "3"}, "requests"),
    ({"requests": True}, "requests"),                 # a bool is no count
    ({"by_route": {"student": 2.5}}, "by_route.student"),
    ({"latency_s": []}, "latency_s"),
    ({"latency_by_route": {"cache": {"p50": "fast"}}}, "latency_by_route.cache.p50"),
    ({"confidence_recent": [0.5, "x"]}, "confidence_recent[1]"),
    ({"cache": "on"}, "cache"),
    ({"cache": {"entries": 1.5}}, "cache.entries"),
    ({"teacher": {"provider": "gemini", "spent_today": "0.25"}}, "teacher.spent_today"),
    ({"students": [{"name": "a", "batching": {"steps": None}}]}, "students[0].batching.steps"),
    ({"storage": {"ok": True, "stores": {"cache": {"failing": "yes"}}}}, "storage.stores.cache.failing"),
    ({"connections": {"open": -1.0}}, "connections.open"),
    ({"process": None}, "process"),
])
def test_a_wrong_type_raises_naming_the_field(patch, field):
    wire = {**daemon_snapshot().to_json(), **patch}
    with pytest.raises(ValueError, match=f"^/v1/stats: {re.escape(field)} must be "):
        StatsSnapshot.from_json(wire)


def test_not_an_object_raises_unless_lenient():
    with pytest.raises(ValueError, match="the snapshot must be an object, not an array"):
        StatsSnapshot.from_json([1, 2])
    assert StatsSnapshot.from_json([1, 2], strict=False) == StatsSnapshot.from_json({})


def test_a_producer_with_the_wrong_type_is_named_when_the_daemon_builds():
    with pytest.raises(ValueError, match=r"students\[0\]\.batching\.running must be an integer"):
        StatsSnapshot.build(Stats().snapshot(), cache=None, teacher=teacher_status(None), confidence_threshold=0.2,
                            students=[("s", {**SCHEDULER, "running": "1"})], storage=StorageHealth().snapshot(),
                            connections=None, rss_bytes=1)


def test_lenient_reading_drops_what_does_not_fit():
    record = StatsSnapshot.from_json({
        "uptime_s": "soon", "requests": 3, "cost_usd": math.nan, "by_route": {"cache": 2, "student": "many"},
        "latency_s": [], "latency_by_route": {"x": 1, "student": {"p50": "fast", "p95": 1.5}},
        "confidence_recent": ["x", None, 0.5, True, math.inf], "teacher": "gemini", "cache": "on",
        "storage": {"stores": {"cache": {"failing": True}, "log": "broken"}}, "connections": 5,
    }, strict=False)
    counters = record.counters
    assert counters.uptime_s is None and not counters.reported("uptime_s") and counters.requests == 3
    assert counters.cost_usd == 0.0 and counters.by_route == {"cache": 2}
    assert counters.latency_s == Percentiles() and not counters.reported("latency_s")
    assert set(counters.latency_by_route) == {"student"}
    assert counters.latency_by_route["student"].p50 is None and counters.latency_by_route["student"].p95 == 1.5
    assert counters.confidence_recent == (0.5,)
    # Wrong where null is allowed reads as null (reported); elsewhere as missing.
    assert record.teacher is None and not record.reported("teacher")
    assert record.cache is None and record.reported("cache") and record.connections is None
    assert record.storage is not None and list(record.storage.stores) == ["cache"]
    assert record.storage.stores["cache"] == StoreHealth.from_json({"failing": True})
    assert TeacherStatus.from_json({"provider": 5}, strict=False).provider is None

"""`GET /metrics`: Prometheus text format, with names in the style of vLLM's (`athanor:` prefix).

Answers feed counters and histograms as they finish; what is a state rather than an event (queues,
batches, prefix reuse, the cache's counters) is read from the live objects at scrape time by a
collector, so the answer path does no extra work for it. Each daemon has its own registry.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Iterator

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

# Seconds; vLLM's buckets trimmed to what a CPU appliance sees (a cache hit to a long teacher answer).
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 40.0, 80.0)
TTFT_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


@dataclass(frozen=True)
class StudentLive:
    name: str
    running: int
    waiting: int
    mean_batch: float | None
    prompt_tokens_reused: int | None
    prompt_tokens_computed: int | None


@dataclass(frozen=True)
class LiveFigures:
    """What a scrape reads from the running daemon."""

    students: list[StudentLive]
    cache: dict[str, Any] | None
    """The cache's `stats()` (None when the cache is off)."""


class _LiveCollector(Collector):
    def __init__(self, read: Callable[[], LiveFigures]) -> None:
        self._read = read

    def collect(self) -> Iterator[Any]:
        live = self._read()
        running = GaugeMetricFamily("athanor:num_requests_running", "Requests decoding now.", labels=["model_name"])
        waiting = GaugeMetricFamily("athanor:num_requests_waiting", "Requests queued for a sequence slot.",
                                    labels=["model_name"])
        batch = GaugeMetricFamily("athanor:mean_batch_size", "Sequences per decode step, mean since start.",
                                  labels=["model_name"])
        reused = CounterMetricFamily("athanor:prefix_cache_reused_tokens", "Prompt tokens whose KV cells were reused.",
                                     labels=["model_name"])
        computed = CounterMetricFamily("athanor:prefix_cache_computed_tokens", "Prompt tokens computed afresh.",
                                       labels=["model_name"])
        for s in live.students:
            running.add_metric([s.name], s.running)
            waiting.add_metric([s.name], s.waiting)
            if s.mean_batch is not None:
                batch.add_metric([s.name], s.mean_batch)
            if s.prompt_tokens_reused is not None:
                reused.add_metric([s.name], s.prompt_tokens_reused)
            if s.prompt_tokens_computed is not None:
                computed.add_metric([s.name], s.prompt_tokens_computed)
        yield from (running, waiting, batch, reused, computed)
        if live.cache is not None:
            lookups = CounterMetricFamily("athanor:semantic_cache_lookups", "Cache lookups since start, by result.",
                                          labels=["result"])
            for key, result in (("hits", "hit"), ("misses", "miss"), ("uncovered", "uncovered")):
                lookups.add_metric([result], live.cache.get(key, 0))
            yield lookups
            entries = GaugeMetricFamily("athanor:semantic_cache_entries", "Answers stored in the cache.")
            entries.add_metric([], live.cache.get("entries", 0))
            yield entries


class Metrics:
    def __init__(self, read_live: Callable[[], LiveFigures]) -> None:
        # No auto_describe: it would collect (read the live daemon) at registration, before it is running.
        self.registry = CollectorRegistry()
        r = self.registry
        self.http_requests = Counter("athanor:http_requests", "HTTP requests answered, by status.", ["status"],
                                     registry=r)
        self.answers = Counter("athanor:answers", "Chat answers, by where they came from.", ["route"], registry=r)
        self.prompt_tokens = Counter("athanor:prompt_tokens", "Prompt tokens of chat answers.", registry=r)
        self.generation_tokens = Counter("athanor:generation_tokens", "Tokens generated (or served from the cache).",
                                         registry=r)
        self.teacher_spend = Counter("athanor:teacher_spend_usd", "USD the teacher charged for answers.", registry=r)
        self.saved = Counter("athanor:saved_usd", "USD the teacher would have charged for the cache's and the "
                                                  "student's answers.", registry=r)
        self.latency = Histogram("athanor:e2e_request_latency_seconds", "Request to last token, by route.", ["route"],
                                 buckets=LATENCY_BUCKETS, registry=r)
        self.queue_time = Histogram("athanor:request_queue_time_seconds", "Time waiting for a sequence slot.",
                                    buckets=LATENCY_BUCKETS, registry=r)
        self.ttft = Histogram("athanor:time_to_first_token_seconds", "Request to first streamed token.",
                              buckets=TTFT_BUCKETS, registry=r)
        r.register(_LiveCollector(read_live))

    def observe_answer(self, route: str, prompt_tokens: int, completion_tokens: int, elapsed_s: float,
                       queued_s: float, cost_usd: float, saved_usd: float) -> None:
        self.answers.labels(route).inc()
        self.prompt_tokens.inc(prompt_tokens)
        self.generation_tokens.inc(completion_tokens)
        self.latency.labels(route).observe(elapsed_s)
        self.queue_time.observe(queued_s)
        if cost_usd > 0:
            self.teacher_spend.inc(cost_usd)
        if saved_usd > 0:
            self.saved.inc(saved_usd)

    def exposition(self) -> tuple[bytes, str]:
        """(body, content type) for a scrape."""
        return generate_latest(self.registry), CONTENT_TYPE_LATEST

"""Counters the daemon keeps for /healthz and /v1/stats (pure bookkeeping, no I/O)."""

from __future__ import annotations

import time
from collections import Counter, deque
from dataclasses import dataclass, field


@dataclass
class Stats:
    started_at: float = field(default_factory=time.time)
    requests: int = 0
    by_route: Counter = field(default_factory=Counter)
    by_status: Counter = field(default_factory=Counter)
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cancelled: int = 0
    latencies_s: deque = field(default_factory=lambda: deque(maxlen=1024))

    def record_answer(self, route: str, prompt_tokens: int, completion_tokens: int, elapsed_s: float) -> None:
        self.by_route[route] += 1
        self.prompt_tokens += prompt_tokens
        self.completion_tokens += completion_tokens
        self.latencies_s.append(elapsed_s)

    def record_status(self, status: int) -> None:
        self.requests += 1
        self.by_status[status] += 1

    def snapshot(self) -> dict:
        ordered = sorted(self.latencies_s)

        def quantile(q: float) -> float | None:
            return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else None

        return {
            "uptime_s": time.time() - self.started_at,
            "requests": self.requests,
            "by_route": dict(self.by_route),
            "by_status": {str(k): v for k, v in self.by_status.items()},
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "cancelled": self.cancelled,
            "latency_s": {"p50": quantile(0.5), "p95": quantile(0.95)},
        }

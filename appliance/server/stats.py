"""Counters the daemon keeps for /healthz and /v1/stats (pure bookkeeping, no I/O)."""

from __future__ import annotations

import re
import time
from collections import Counter, defaultdict, deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Iterable

if TYPE_CHECKING:
    from ..routing.router import Answer


@dataclass
class Stats:
    started_at: float = field(default_factory=time.time)
    requests: int = 0
    by_route: Counter[str] = field(default_factory=Counter)
    by_status: Counter[int] = field(default_factory=Counter)
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cancelled: int = 0
    latencies_s: deque[float] = field(default_factory=lambda: deque(maxlen=1024))
    route_latencies_s: defaultdict[str, deque[float]] = field(default_factory=lambda: defaultdict(lambda: deque(maxlen=1024)))
    cost_usd: float = 0.0
    saved_usd: float = 0.0
    degraded: int = 0
    confidences: deque[float] = field(default_factory=lambda: deque(maxlen=1024))

    def record_answer(self, answer: "Answer") -> None:
        completion = answer.completion
        self.by_route[answer.route] += 1
        self.prompt_tokens += completion.prompt_tokens
        self.completion_tokens += completion.completion_tokens
        self.latencies_s.append(answer.elapsed_s)
        self.route_latencies_s[answer.route].append(answer.elapsed_s)
        self.cost_usd += answer.cost_usd
        self.saved_usd += answer.saved_usd
        self.degraded += answer.degraded
        if answer.confidence is not None:
            self.confidences.append(answer.confidence.score)

    def record_status(self, status: int) -> None:
        self.requests += 1
        self.by_status[status] += 1

    def snapshot(self) -> dict[str, Any]:
        return {
            "uptime_s": time.time() - self.started_at,
            "requests": self.requests,
            "by_route": dict(self.by_route),
            "by_status": {str(k): v for k, v in self.by_status.items()},
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "cancelled": self.cancelled,
            "latency_s": percentiles(self.latencies_s),
            "latency_by_route": {route: percentiles(values) for route, values in self.route_latencies_s.items()},
            "cost_usd": self.cost_usd,
            "saved_usd": self.saved_usd,
            "degraded": self.degraded,
            "cache_hit_rate": self.by_route["cache"] / answered if (answered := sum(self.by_route.values())) else None,
            "confidence_recent": list(self.confidences)[-100:],
        }


def percentiles(values: Iterable[float]) -> dict[str, float | None]:
    """p50 and p95 of `values` (nearest rank); None for both when there are none."""
    ordered = sorted(values)

    def quantile(q: float) -> float | None:
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else None

    return {"p50": quantile(0.5), "p95": quantile(0.95)}


# llama.cpp's model description ends with its file-type name: "llama 135M Q4_1",
# "llama 8B Q4_K - Medium", "qwen2 0.5B all F32", "llama 1B IQ3_S mix - 3.66 bpw".
_QUANT = re.compile(r"\b(?:all )?((?:I|T)?Q\d+_[0-9A-Z]+|BF16|F16|F32|MXFP4)(?: mix)?(?: - (Small|Medium|Large))?\b")


def quant_type(description: str | None) -> str | None:
    """The quantisation named in a llama.cpp model description, in file-name form (`Q4_K_M`); None if absent."""
    match = _QUANT.search(description or "")
    if match is None:
        return None
    name, size = match.groups()
    return f"{name}_{size[0]}" if size else name

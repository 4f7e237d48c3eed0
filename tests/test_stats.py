"""The daemon's counters (`Stats`), the quant type read from llama.cpp's description, and what
/v1/stats and /v1/models add for the dashboard."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from types import SimpleNamespace

import pytest

from appliance.routing.router import Router, Routing
from appliance.server.api import Api
from appliance.server.stats import Stats, percentiles, quant_type
from appliance.storage.health import StorageHealth


def answer(route: str, elapsed_s: float, score: float | None = None, tokens: int = 3):
    completion = SimpleNamespace(prompt_tokens=5, completion_tokens=tokens)
    confidence = SimpleNamespace(score=score) if score is not None else None
    return SimpleNamespace(route=route, completion=completion, elapsed_s=elapsed_s, cost_usd=0.001 if route ==
                           "teacher" else 0.0, saved_usd=0.002, degraded=False, confidence=confidence)


def test_percentiles_nearest_rank():
    assert percentiles([]) == {"p50": None, "p95": None}
    assert percentiles([3.0]) == {"p50": 3.0, "p95": 3.0}
    assert percentiles([float(i) for i in range(1, 101)]) == {"p50": 51.0, "p95": 96.0}


def test_latency_is_kept_per_route_and_overall():
    stats = Stats()
    for elapsed in (0.01, 0.02, 0.03):
        stats.record_answer(answer("cache", elapsed))
    for elapsed in (1.0, 2.0):
        stats.record_answer(answer("student", elapsed, score=0.5))
    snapshot = stats.snapshot()
    assert snapshot["latency_by_route"] == {"cache": {"p50": 0.02, "p95": 0.03},
                                            "student": {"p50": 2.0, "p95": 2.0}}
    assert snapshot["latency_s"] == {"p50": 0.03, "p95": 2.0}
    assert "teacher" not in snapshot["latency_by_route"]  # a route with no answers has no entry, not zeros
    assert snapshot["by_route"] == {"cache": 3, "student": 2}
    assert snapshot["cache_hit_rate"] == pytest.approx(0.6)
    assert snapshot["confidence_recent"] == [0.5, 0.5]
    json.dumps(snapshot)  # it goes out as JSON as it is


def test_route_latency_window_is_bounded():
    stats = Stats()
    for i in range(2000):
        stats.record_answer(answer("student", float(i)))
    assert len(stats.route_latencies_s["student"]) == 1024
    assert stats.snapshot()["latency_by_route"]["student"]["p50"] >= 976  # only the newest 1024 count


@pytest.mark.parametrize("description, quant", [
    ("llama 135M Q4_1", "Q4_1"),                       # the embedded SmolLM2
    ("llama 8B Q4_K - Medium", "Q4_K_M"),              # llama.cpp spells K-quant sizes out
    ("llama 7B Q3_K - Large", "Q3_K_L"),
    ("llama 7B Q2_K - Small", "Q2_K_S"),
    ("llama 7B Q6_K", "Q6_K"),
    ("qwen2 0.5B all F32", "F32"),                     # "all F32": an unquantised export
    ("gemma 2B F16", "F16"),
    ("llama 135M BF16 (guessed)", "BF16"),             # the file did not say; llama.cpp guessed
    ("llama 1B IQ3_S mix - 3.66 bpw", "IQ3_S"),        # the bpw figure is not part of the name
    ("llama 1B IQ2_XXS - 2.0625 bpw", "IQ2_XXS"),
    ("llama 1B TQ1_0 - 1.69 bpw ternary", "TQ1_0"),
    ("llama 135M", None),                              # It's a trap: no file type at all
    ("", None),
    (None, None),
])
def test_quant_type(description, quant):
    assert quant_type(description) == quant


def fake_router(tmp_path: Path):
    model_file = tmp_path / "student.gguf"
    model_file.write_bytes(b"GGUF")
    info = SimpleNamespace(path=model_file, size_bytes=4, n_params=135_000_000, n_ctx=2048,
                           description="llama 135M Q4_1", gpu_offload=False)
    scheduler = SimpleNamespace(stats=lambda: {"parallel": 8, "running": 0, "waiting": 0})
    student = SimpleNamespace(name="smollm2-135m", info=info, scheduler=scheduler)
    # A real router over a stand-in student: the API reads it only through the router's own methods.
    return Router({"smollm2-135m": student}, "smollm2-135m", Routing(confidence_threshold=0.2, storage=StorageHealth()))


def test_models_name_their_quant_type(tmp_path):
    api = Api(fake_router(tmp_path), default_max_tokens=16)
    response = asyncio.run(api.models(None))
    entry = json.loads(response.body)["data"][0]["athanor"]
    assert entry["quant"] == "Q4_1" and entry["default"] is True


def test_stats_report_the_daemons_memory(tmp_path):
    api = Api(fake_router(tmp_path), default_max_tokens=16)
    body = json.loads(asyncio.run(api.stats_view(None)).body)
    assert body["process"]["rss_bytes"] > 1 << 20
    assert body["students"] == [{"name": "smollm2-135m", "batching": {"parallel": 8, "running": 0, "waiting": 0}}]
    assert body["latency_by_route"] == {}
    assert body["cache"] is None and body["teacher"]["provider"] == "none"
    assert body["storage"] == {"ok": True, "stores": {}}

"""`/metrics`' figures: answers as counters and histograms, live state read at scrape time."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

from appliance.server.metrics import LiveFigures, Metrics, StudentLive


def _samples(metrics: Metrics) -> dict:
    body, content_type = metrics.exposition()
    assert content_type.startswith("text/plain")
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(body.decode()) for s in family.samples}


def test_answers_and_live_state_in_vllm_style_names():
    live = LiveFigures([StudentLive("s", running=2, waiting=3, mean_batch=1.5, prompt_tokens_reused=40,
                                    prompt_tokens_computed=60)],
                       {"hits": 7, "misses": 5, "uncovered": 1, "entries": 12})
    metrics = Metrics(lambda: live)
    metrics.observe_answer("cache", 10, 20, 0.004, 0.0, 0.0, 0.002)
    metrics.observe_answer("teacher", 10, 30, 1.5, 0.1, 0.003, 0.0)
    got = _samples(metrics)
    assert got[("athanor:answers_total", (("route", "cache"),))] == 1
    assert got[("athanor:generation_tokens_total", ())] == 50
    assert got[("athanor:teacher_spend_usd_total", ())] == 0.003 and got[("athanor:saved_usd_total", ())] == 0.002
    assert got[("athanor:e2e_request_latency_seconds_bucket", (("le", "0.005"), ("route", "cache")))] == 1
    assert got[("athanor:e2e_request_latency_seconds_bucket", (("le", "1.0"), ("route", "teacher")))] == 0
    assert got[("athanor:num_requests_running", (("model_name", "s"),))] == 2
    assert got[("athanor:num_requests_waiting", (("model_name", "s"),))] == 3
    assert got[("athanor:prefix_cache_reused_tokens_total", (("model_name", "s"),))] == 40
    assert got[("athanor:semantic_cache_lookups_total", (("result", "miss"),))] == 5
    assert got[("athanor:semantic_cache_entries", ())] == 12
    # Without a cache there is no cache family at all, rather than zeros that look like a cold cache.
    bare = _samples(Metrics(lambda: LiveFigures([], None)))
    assert not any(name.startswith("athanor:semantic_cache") for name, _ in bare)

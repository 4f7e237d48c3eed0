"""The dashboard's pure parts: field access, rates, the tracker, levels, alerts, histograms, panel text."""

from __future__ import annotations

import math

import pytest

from appliance.tui import panels
from appliance.tui.hardware import GpuSample, GpuStatus, HardwareSample, HostSample
from appliance.tui.metrics import (Counters, Thresholds, Tracker, alerts, elapsed, histogram, level, median, number,
                                   numbers, percent, pick, rates, share_below)

GIB = 1024 ** 3


def snap(uptime=10.0, requests=0, completion_tokens=0, **by_route):
    return {"uptime_s": uptime, "requests": requests, "completion_tokens": completion_tokens,
            "prompt_tokens": 2 * completion_tokens, "by_route": by_route}


@pytest.mark.parametrize("data, path, expected", [
    ({"a": {"b": 1}}, ("a", "b"), 1),
    ({"a": {"b": 1}}, ("a", "c"), None),
    ({"a": None}, ("a", "b"), None),        # a null section, as "cache" is when the cache is off
    ({"a": "text"}, ("a", "b"), None),      # a string where an object was expected
    ({"a": [5, 6]}, ("a", 1), 6),
    ({"a": [5, 6]}, ("a", 2), None),        # past the end of a list
    (None, ("a",), None),
])
def test_pick(data, path, expected):
    assert pick(data, *path) == expected


@pytest.mark.parametrize("value, expected", [
    (3, 3.0),
    (2.5, 2.5),
    (True, None),            # bool is an int in Python, but never a count here
    ("7", None),
    (None, None),
    (float("nan"), None),
    (float("inf"), None),
])
def test_number(value, expected):
    assert number({"x": value}, "x") == expected


def test_percent_handles_unknown_and_zero_totals():
    assert percent(1, 4) == 25.0
    assert percent(None, 4) is None
    assert percent(1, 0) is None  # no swap configured


def test_counters_read_missing_fields_as_zero_and_skip_bad_routes():
    counters = Counters.of({"requests": 5, "by_route": {"cache": 2, "student": "many", "teacher": None}})
    assert counters.requests == 5 and counters.completion_tokens == 0
    assert counters.by_route == {"cache": 2.0}
    assert Counters.of({"by_route": [1, 2]}).by_route == {}
    assert Counters.of("not even an object") == Counters()


def test_counters_since_and_hit_rate():
    before = Counters.of(snap(requests=10, cache=2, student=8))
    after = Counters.of(snap(requests=15, cache=5, student=10))
    delta = after.since(before)
    assert delta.requests == 5 and delta.by_route == {"cache": 3.0, "student": 2.0}
    assert delta.hit_rate == pytest.approx(0.6)
    assert Counters().hit_rate is None  # no answers yet: no rate, not 0 %


def test_rates_over_the_daemons_own_clock():
    prev, cur = snap(uptime=100, requests=10, completion_tokens=500), snap(uptime=102, requests=14,
                                                                        completion_tokens=700)
    # The daemon's uptime says 2 s even though our fetches were 2.5 s apart (jitter).
    seconds = elapsed(prev, cur, prev_t=0.0, cur_t=2.5)
    assert seconds == 2.0
    result = rates(Counters.of(prev), Counters.of(cur), seconds)
    assert result.tokens_per_s == 100.0 and result.requests_per_s == 2.0


def test_elapsed_falls_back_to_our_clock_and_refuses_zero():
    assert elapsed({}, {}, 1.0, 2.5) == 1.5            # an old daemon without uptime_s
    assert elapsed({"uptime_s": 5}, {"uptime_s": 5}, 1.0, 1.0) is None
    assert elapsed({"uptime_s": 50}, {"uptime_s": 3}, 1.0, 2.0) == 1.0  # restarted: uptime went back


def test_rates_are_none_when_counters_go_back():
    # A restarted daemon counts from zero again; a negative rate would be nonsense.
    assert rates(Counters.of(snap(requests=50)), Counters.of(snap(requests=2)), 1.0) is None
    assert rates(Counters(), Counters(), 0.0) is None


def test_tracker_builds_histories_resets_and_survives_restarts():
    tracker = Tracker(history=3)
    first = tracker.update(snap(uptime=10, requests=10, completion_tokens=100), now=0.0)
    assert first.rates is None and first.tokens_history == ()
    for i in range(1, 5):
        view = tracker.update(snap(uptime=10 + i, requests=10 + i, completion_tokens=100 + 10 * i), now=float(i))
    assert view.rates.tokens_per_s == 10.0
    assert view.tokens_history == (10.0, 10.0, 10.0)  # ring buffer of 3
    assert view.counters.requests == 14

    reset = tracker.reset()
    assert reset.counters.requests == 0 and reset.tokens_history == () and reset.rates is None
    view = tracker.update(snap(uptime=15, requests=17, completion_tokens=150), now=5.0)
    assert view.counters.requests == 3 and view.tokens_history == (10.0,)

    tracker.disconnected()
    # The daemon came back restarted: counters below the reset baseline mean a fresh start.
    view = tracker.update(snap(uptime=1, requests=2, completion_tokens=5), now=60.0)
    assert view.rates is None and view.counters.requests == 2


def test_reset_before_any_snapshot_is_harmless():
    assert Tracker().reset() is None


def test_reset_while_disconnected_still_moves_the_baseline():
    tracker = Tracker()
    tracker.update(snap(requests=10), now=0.0)
    tracker.disconnected()
    assert tracker.reset().counters.requests == 0
    assert tracker.update(snap(uptime=20, requests=12), now=1.0).counters.requests == 2


@pytest.mark.parametrize("value, expected", [
    (None, "na"),
    (10.0, "ok"),
    (75.0, "warn"),   # thresholds are inclusive
    (89.9, "warn"),
    (90.0, "crit"),
])
def test_level(value, expected):
    assert level(value, 75.0, 90.0) == expected


def test_histogram_bins_clamps_and_skips_junk():
    counts = histogram([0.0, 0.05, 0.5, 0.99, 1.0, 1.7, -0.2, "x", None, True, math.nan], bins=10)
    assert counts == [3, 0, 0, 0, 0, 1, 0, 0, 0, 3]  # 1.0 and 1.7 land in the last bin, -0.2 in the first
    assert histogram(None) == [0] * 10


def test_confidence_summaries():
    values = numbers([0.1, "x", 0.3, None, 0.5, 0.9])
    assert values == [0.1, 0.3, 0.5, 0.9]
    assert share_below(values, 0.2) == 0.25
    assert share_below(values, None) is None
    assert median(values) == pytest.approx(0.4)
    assert median([]) is None
    assert numbers("oops") == []


def hardware(temp=60.0, gpu_used=10 * GIB, ram_used=4 * GIB, disk_used=10 * GIB, cpu_temp=50.0):
    return HardwareSample(
        host=HostSample(cpu_pct=(10.0,), ram_used_bytes=ram_used, ram_total_bytes=16 * GIB, disk_used_bytes=disk_used,
                        disk_total_bytes=100 * GIB, temps_c=(("Package id 0", cpu_temp),)),
        gpu=GpuStatus(available=True, gpus=(GpuSample(index=0, name="H100", temp_c=temp, mem_used_bytes=gpu_used,
                                                      mem_total_bytes=80 * GIB),)),
    )


@pytest.mark.parametrize("sample, stats, expected", [
    (hardware(), {}, []),
    (hardware(temp=85.0), {}, ["GPU0 hot: 85°C"]),
    (hardware(gpu_used=77 * GIB), {}, ["GPU0 memory 96% full"]),
    (hardware(ram_used=int(15.5 * GIB)), {}, ["RAM 97% full"]),
    (hardware(disk_used=99 * GIB), {}, ["disk 99% full"]),
    (hardware(cpu_temp=95.0), {}, ["CPU hot: 95°C"]),
    # Heat first, then fullness, then money.
    (hardware(temp=90.0, gpu_used=79 * GIB), {"teacher": {"spent_today": 0.95, "budget": 1.0}},
     ["GPU0 hot: 90°C", "GPU0 memory 99% full", "teacher budget 95% spent"]),
    (None, {"teacher": {"spent_today": 1.0, "budget": 1.0}}, ["teacher budget spent: the student answers alone"]),
    # A zero budget is "no teacher spending allowed", not a division by zero.
    (None, {"teacher": {"spent_today": 0.0, "budget": 0.0}}, []),
    (HardwareSample(), None, []),  # nothing sampled, no GPU: nothing to say
    # A store that cannot be written comes before everything else; one that recovered says nothing.
    (hardware(temp=90.0), {"storage": {"stores": {"distill_log": {"failing": True}, "cache": {"failing": True},
                                                  "spend_ledger": {"failing": False}}}},
     ["cannot write cache, distill_log: disk full?", "GPU0 hot: 90°C"]),
])
def test_alerts(sample, stats, expected):
    assert alerts(sample, stats, Thresholds()) == expected


# --- panel text ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("fn, value, expected", [
    (panels.fmt_count, 1234, "1,234"),
    (panels.fmt_count, 56_700, "56.7k"),
    (panels.fmt_count, 2_500_000, "2.5M"),
    (panels.fmt_secs, 0.004, "4.0ms"),
    (panels.fmt_secs, 0.85, "850ms"),
    (panels.fmt_secs, 2.5, "2.50s"),
    (panels.fmt_secs, None, "–"),
    (panels.fmt_bytes, 512, "512B"),
    (panels.fmt_bytes, 5 * 1024 * 1024, "5.0M"),
    (panels.fmt_bytes, 97 * 1024 * 1024, "97M"),
    (panels.fmt_usd, 0.25, "$0.25"),
    (panels.fmt_usd, 0.0012, "$0.0012"),  # tiny savings still show as more than zero
    (panels.fmt_uptime, 59, "59s"),
    (panels.fmt_uptime, 3720, "1h02m"),
    (panels.fmt_uptime, 90000, "1d01h"),
])
def test_formatting(fn, value, expected):
    assert fn(value) == expected


def test_gib_pairs():
    assert panels.fmt_pair_gib(20 * GIB, 80 * GIB) == "20/80G"
    assert panels.fmt_pair_gib(1.3 * GIB, 24 * GIB) == "1.3/24G"
    assert panels.fmt_pair_gib(None, 24 * GIB) == "–"


def test_fit_keeps_the_start_or_the_end():
    assert panels.fit("smollm2-135m-instruct", 10) == "smollm2-1…"
    assert panels.fit_left("/var/lib/athanor", 10) == "…b/athanor"
    assert panels.fit("short", 10) == "short"


def test_gpu_panel_shows_all_figures_and_missing_ones_as_dashes():
    status = GpuStatus(available=True, gpus=(
        GpuSample(index=0, name="NVIDIA H100 80GB HBM3", util_pct=45, mem_used_bytes=20 * GIB, mem_total_bytes=80 * GIB,
                  temp_c=60, power_w=250, power_limit_w=700, sm_clock_mhz=1980, mem_clock_mhz=2619),
        GpuSample(index=1, name="NVIDIA T4"),  # a GPU that refuses every query
    ))
    text = str(panels.gpu(status, Thresholds()))
    assert "GPU0 H100 80GB HBM3  util  45% 60°C" in text
    assert "mem 20/80G 250/700W 1980/2619MHz" in text
    assert "GPU1 T4" in text and "–/–W" in text


def test_gpu_panel_with_more_gpus_than_lines_says_how_many_more():
    status = GpuStatus(available=True, gpus=tuple(GpuSample(index=i, name="A100") for i in range(8)))
    text = str(panels.gpu(status, Thresholds(), lines=6))
    assert "GPU1" in text and "GPU2" not in text and "+6 more GPUs" in text


def test_gpu_panel_unavailable_is_a_message():
    text = str(panels.gpu(GpuStatus(available=False, reason="NVML Shared Library Not Found"), Thresholds()))
    assert text == "GPU unavailable\nNVML Shared Library Not Found"


def test_host_panel_many_cores_become_one_block_each():
    sample = HostSample(cpu_pct=tuple(float(i) for i in range(0, 100, 4)), ram_used_bytes=GIB, ram_total_bytes=8 * GIB,
                        swap_total_bytes=0)
    text = str(panels.host(sample, Thresholds()))
    first = text.splitlines()[0]
    assert first.startswith("cpu   48%") and "█" in first and len(first) <= 36
    assert "swap none" in text and "temp not exposed by the kernel" in text


def test_students_panel_lists_more_than_fit():
    models = [{"id": f"student-{i}", "athanor": {"quant": "Q8_0", "size_bytes": 10 ** 8}} for i in range(4)]
    text = str(panels.students(models, {"cache": None, "process": {"rss_bytes": GIB}}))
    assert text.splitlines() == [" student-0 Q8_0 95M", " +3 more", "cache off", "daemon rss 1.0G"]


def test_students_panel_shows_questions_the_cache_could_not_read():
    stats = {"cache": {"entries": 1234, "bytes_on_disk": 5 * 1024**2, "uncovered": 0}, "process": {"rss_bytes": GIB}}
    assert "unread" not in str(panels.students([], stats)) and "5.0M" in str(panels.students([], stats))
    stats["cache"]["uncovered"] = 3
    assert "cache 1,234 · 3 unread" in str(panels.students([], stats))

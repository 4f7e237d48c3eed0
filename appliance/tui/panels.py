"""Each panel's text, rendered from plain data (pure: no Textual, no I/O).

Widths are chosen for an 80×24 terminal: the two-column panels have 36 cells of content,
the three-column ones 22. Colours follow `metrics.level`: green ok, yellow warm, red hot.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

from rich.text import Text

from .hardware import GpuStatus, HostSample
from .metrics import (NO_STATS, ROUTES, Level, Thresholds, View, as_snapshot, histogram, level, median, number, percent,
                      pick, share_below)

STYLES: dict[Level, str] = {"ok": "green", "warn": "yellow", "crit": "bold red", "na": "dim"}
DASH = "–"
_BLOCKS = " ▁▂▃▄▅▆▇█"


# --- number formatting -----------------------------------------------------------------------------

def fmt_count(n: float | None) -> str:
    """`1,234`, `56.7k`, `2.5M`."""
    if n is None:
        return DASH
    if abs(n) >= 1e6:
        return f"{n / 1e6:.1f}M"
    if abs(n) >= 1e4:
        return f"{n / 1e3:.1f}k"
    return f"{n:,.0f}"


def fmt_rate(r: float | None) -> str:
    """Three significant figures or so: `0.25`, `12.3`, `318`."""
    if r is None:
        return DASH
    return f"{r:.0f}" if r >= 100 else f"{r:.1f}" if r >= 10 else f"{r:.2f}"


def fmt_secs(s: float | None) -> str:
    """`4.0ms`, `850ms`, `2.50s`, `12.3s`."""
    if s is None:
        return DASH
    if s < 0.01:
        return f"{s * 1000:.1f}ms"
    if s < 1:
        return f"{s * 1000:.0f}ms"
    return f"{s:.2f}s" if s < 10 else f"{s:.1f}s" if s < 100 else f"{s:.0f}s"


def fmt_bytes(n: float | None) -> str:
    """Binary units, one letter: `512B`, `5.0M`, `97M`."""
    if n is None:
        return DASH
    for unit in ("B", "K", "M", "G", "T"):
        if abs(n) < 1024 or unit == "T":
            return f"{n:.0f}{unit}" if unit == "B" or abs(n) >= 10 else f"{n:.1f}{unit}"
        n /= 1024
    return DASH  # unreachable; keeps type checkers content


def fmt_pair_gib(used: float | None, total: float | None) -> str:
    """`12/80G`, `1.2/24G`, `0.5/8.0G`: one decimal below 10 GiB, none above."""
    if used is None or total is None:
        return DASH
    gib = 1024 ** 3
    used_digits, total_digits = (0 if used / gib >= 10 else 1), (0 if total / gib >= 10 else 1)
    return f"{used / gib:.{used_digits}f}/{total / gib:.{total_digits}f}G"


def fmt_usd(v: float | None) -> str:
    """Cents, or four decimals for amounts under a cent (a day of cache hits saves little each)."""
    if v is None:
        return DASH
    return f"${v:.4f}" if 0 < abs(v) < 0.01 else f"${v:.2f}"


def fmt_pct(p: float | None) -> str:
    """A whole percentage."""
    return DASH if p is None else f"{p:.0f}%"


def fmt_uptime(s: float | None) -> str:
    """The two largest units: `59s`, `1h02m`, `1d01h`."""
    if s is None:
        return DASH
    s = int(s)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 86400}d{s % 86400 // 3600:02d}h"


def fit(text: str, width: int) -> str:
    """Cut `text` to `width` cells, marking the cut with an ellipsis."""
    return text if len(text) <= width else text[: max(0, width - 1)] + "…"


def fit_left(text: str, width: int) -> str:
    """Like `fit`, but keeps the end (paths are told apart by their last parts)."""
    return text if len(text) <= width else "…" + text[len(text) - width + 1:]


def bar(fraction: float | None, width: int, style: str) -> Text:
    """A horizontal gauge of `width` cells."""
    if fraction is None:
        return Text("░" * width, style="dim")
    filled = round(max(0.0, min(1.0, fraction)) * width)
    return Text.assemble(("█" * filled, style), ("░" * (width - filled), "dim"))


def _lines(*lines: Text | str) -> Text:
    return Text("\n").join(line if isinstance(line, Text) else Text(line) for line in lines)


# --- daemon panels ---------------------------------------------------------------------------------

def status_line(socket: str, *, connected: bool, paused: bool, reason: str = "", interval_s: float = 1.0) -> Text:
    """Top line: whether the daemon answers, and whether the view is paused."""
    parts: list[Text] = []
    if paused:
        parts.append(Text("⏸ PAUSED (p resumes) ", style="bold yellow"))
    if connected:
        parts.append(Text.assemble(("● ", "bold green"), "athanor  ", (socket, "dim")))
    else:
        # The reason first: the socket path can be long and is what gets cut at 80 columns.
        parts.append(Text.assemble(("✖ daemon not reachable", "bold red"), f": {reason} · retrying every "
                                   f"{interval_s:g}s · start it with `athanor serve` · ", (socket, "dim")))
    return Text("").join(parts)


def traffic_label(name: str, value: float | None) -> Text:
    """The label left of a sparkline: its name and the latest rate."""
    return Text.assemble((f"{name} ", "dim"), (f"{fmt_rate(value):>6}", "bold"))


def traffic(view: View | None) -> Text:
    """Totals under the sparklines, since the last reset."""
    if view is None:
        return _lines("requests –", "tokens –", "waiting for the daemon")
    c = view.counters
    hit = c.hit_rate
    return _lines(
        Text.assemble(("requests ", "dim"), fmt_count(c.requests), ("  cache hit ", "dim"),
                      fmt_pct(None if hit is None else 100 * hit)),
        Text.assemble(("tokens ", "dim"), fmt_count(c.prompt_tokens), (" in ", "dim"),
                      fmt_count(c.completion_tokens), (" out", "dim")),
        Text.assemble(("degraded ", "dim"), fmt_count(c.degraded), ("  cancelled ", "dim"), fmt_count(c.cancelled),
                      ("  up ", "dim"), fmt_uptime(view.stats.counters.uptime_s)),
    )


def routes(view: View | None) -> Text:
    """Answers per route since the reset, and each route's latency percentiles (the daemon's recent window)."""
    header = Text(f"{'route':<8}{'n':>7}{'%':>6}{'p50':>7}{'p95':>7}", style="dim")
    if view is None:
        return _lines(header, *(f"{r:<8}{DASH:>7}" for r in ROUTES))
    c, daemon = view.counters, view.stats.counters
    rows = [header]
    for route in ROUTES:
        n = c.by_route.get(route, 0.0)
        share = 100 * n / c.answered if c.answered else None
        latency = daemon.latency_by_route.get(route)
        p50, p95 = (latency.p50, latency.p95) if latency else (None, None)
        rows.append(Text(f"{route:<8}{fmt_count(n):>7}{fmt_pct(share):>6}{fmt_secs(p50):>7}{fmt_secs(p95):>7}"))
    p50, p95 = daemon.latency_s.p50, daemon.latency_s.p95
    rows.append(Text(f"{'all':<8}{fmt_count(c.answered):>7}{'':>6}{fmt_secs(p50):>7}{fmt_secs(p95):>7}",
                     style="bold"))
    return _lines(*rows)


def confidence(stats: Any) -> Text:
    """Histogram of recent student confidences; bars left of the threshold went (or would go) to the teacher."""
    snapshot = as_snapshot(stats)
    recent = snapshot.counters.confidence_recent
    values = [float(v) for v in recent or ()]
    threshold = snapshot.confidence_threshold
    if not values:
        known = recent is not None
        return _lines(Text("no student answers yet" if known else "confidence –", style="dim"), "", "", "")
    counts = histogram(values, bins=10)
    top = max(counts)
    bars = Text()
    for i, count in enumerate(counts):
        cell = _BLOCKS[round(count / top * (len(_BLOCKS) - 1))] if count else "▁"
        style = "red" if threshold is not None and (i + 1) / 10 <= threshold else "green"
        bars.append(cell * 2, style=style if count else "dim")
    below = share_below(values, threshold)
    return _lines(
        bars,
        Text("0        .5        1", style="dim"),
        Text.assemble((f"below {threshold:.2f} " if threshold is not None else "below – ", "dim"),
                      fmt_pct(None if below is None else 100 * below)),
        Text.assemble(("n ", "dim"), str(len(values)), ("  median ", "dim"), f"{median(values):.2f}"),
    )


def break_even(report: Mapping[str, Any] | None) -> Text:
    """When the savings repay the distillation spend (GET /v1/report): reached, or projected with `~`."""
    if not report or not isinstance(report.get("distillation_usd"), (int, float)) or report["distillation_usd"] <= 0:
        return Text("")
    when = report.get("break_even")
    if not isinstance(when, str) or len(when) < 10:
        return Text.assemble(("  break-even ", "dim"), ("not in sight", "yellow"))
    projected = report.get("break_even_projected") is True
    return Text.assemble(("  break-even ", "dim"), (f"{'~' if projected else ''}{when[5:]}",
                                                    "yellow" if projected else "bold green"))


def money(view: View | None, t: Thresholds, report: Mapping[str, Any] | None = None) -> Text:
    """Teacher spend today against its daily cap, money saved against asking the teacher everything, and
    when savings repay the distillation (harvests, labelling)."""
    teacher = (view.stats if view else NO_STATS).teacher
    provider = teacher.provider if teacher else None
    spent, budget = (teacher.spent_today, teacher.budget) if teacher else (None, None)
    if provider == "none":
        head, gauge = Text("no teacher configured", style="dim"), Text("")
    elif provider is None:  # no snapshot yet, or a daemon that does not report its teacher
        head, gauge = Text("teacher –", style="dim"), Text("")
    else:
        used = percent(spent, budget)
        style = STYLES[level(used, t.budget_warn_pct, 100.0)]
        head = Text.assemble(("today ", "dim"), fmt_usd(spent), (" of ", "dim"), fmt_usd(budget))
        gauge = bar(None if used is None else used / 100, 16, style) + Text(f" {fmt_pct(used):>4}", style=style)
    counters = view.counters if view else None
    # Saved as a share of what the teacher alone would have charged for the same answers (as `athanor report`).
    would_have = (counters.saved_usd + counters.cost_usd) if counters else 0.0
    share = percent(counters.saved_usd, would_have) if counters and would_have > 0 else None
    return _lines(
        head,
        gauge,
        Text.assemble(("saved ", "dim"), (fmt_usd(counters.saved_usd if counters else None), "bold green"),
                      (" (", "dim"), (fmt_pct(share), "bold green"), (")", "dim"), break_even(report)),
        Text.assemble(("spent ", "dim"), fmt_usd(counters.cost_usd if counters else None), ("  ", ""),
                      (fit((teacher.model if teacher else None) or "", 10), "dim")),
    )


def students(models: Sequence[Any] | None, stats: Any, width: int = 22, lines: int = 4) -> Text:
    """Loaded students (name, quant, size; `*` marks the default), then the cache and the daemon's memory."""
    rows: list[Text] = []
    listed = [m for m in (models or []) if isinstance(m, dict)]
    room = lines - 2
    for model in listed[: room if len(listed) <= room else room - 1]:
        meta = pick(model, "athanor", default={})
        mark = "*" if pick(meta, "default") is True else " "
        quant = str(pick(meta, "quant") or "?")
        size = fmt_bytes(number(meta, "size_bytes"))
        name = fit(str(pick(model, "id", default="?")), width - len(quant) - len(size) - 3)
        rows.append(Text.assemble(mark, f"{name} ", (quant, "cyan"), f" {size}"))
    if len(listed) > room:
        rows.append(Text(f" +{len(listed) - len(rows)} more", style="dim"))
    if not listed:
        rows.append(Text("students –" if models is None else "no students loaded", style="dim"))
    while len(rows) < room:
        rows.append(Text(""))
    snapshot = as_snapshot(stats)
    cache = snapshot.cache
    if cache is not None:
        unread = cache.uncovered
        # Questions the cache could not read (fail-closed misses) matter more than its size: shown
        # in its place when there are any, the panel being 22 columns wide.
        tail = (Text(f"{fmt_count(unread)} unread", style="yellow") if unread
                else Text(fmt_bytes(cache.bytes_on_disk)))
        rows.append(Text.assemble(("cache ", "dim"), fmt_count(cache.entries), (" · ", "dim"), tail))
    else:
        rows.append(Text("cache off" if snapshot.reported("cache") else "cache –", style="dim"))
    rows.append(Text.assemble(("daemon rss ", "dim"), fmt_bytes(snapshot.process.rss_bytes if snapshot.process else None)))
    return _lines(*rows)


# --- hardware panels -------------------------------------------------------------------------------

def _whole(value: float | None) -> str:
    return DASH if value is None else f"{value:.0f}"


def _styled(text: str, lvl: Level) -> Text:
    return Text(text, style=STYLES[lvl])


def gpu(status: GpuStatus | None, t: Thresholds, lines: int = 6) -> Text:
    """Two lines per GPU: utilisation and temperature; memory, power against its limit, SM/memory clocks."""
    if status is None:
        return Text("sampling…", style="dim")
    if not status.available:
        return _lines(Text("GPU unavailable", style="bold"), Text(fit(status.reason, 36), style="dim"))
    rows: list[Text] = []
    shown = status.gpus if len(status.gpus) * 2 <= lines else status.gpus[: (lines - 1) // 2]
    for g in shown:
        name = g.name.removeprefix("NVIDIA ").strip()
        temp = level(g.temp_c, t.gpu_warm_c, t.gpu_hot_c)
        rows.append(Text.assemble(
            (f"GPU{g.index} ", "bold"), f"{fit(name, 15):<15} ", ("util ", "dim"),
            _styled(f"{fmt_pct(g.util_pct):>4}", level(g.util_pct, t.usage_warn_pct, t.usage_crit_pct)), " ",
            _styled(DASH if g.temp_c is None else f"{g.temp_c:.0f}°C", temp),
        ))
        power = percent(g.power_w, g.power_limit_w)
        watts = f"{_whole(g.power_w)}/{_whole(g.power_limit_w)}W"
        clocks = f"{_whole(g.sm_clock_mhz)}/{_whole(g.mem_clock_mhz)}MHz"
        rows.append(Text.assemble(
            (" mem ", "dim"), _styled(fmt_pair_gib(g.mem_used_bytes, g.mem_total_bytes),
                                      level(g.mem_pct, t.usage_warn_pct, t.usage_crit_pct)),
            " ", _styled(watts, level(power, t.usage_warn_pct, t.usage_crit_pct)), " ", (clocks, "dim"),
        ))
    if len(shown) < len(status.gpus):
        rows.append(Text(f"+{len(status.gpus) - len(shown)} more GPUs", style="dim"))
    return _lines(*rows)


def host(sample: HostSample | None, t: Thresholds, width: int = 36) -> Text:
    """CPU per core, RAM, swap, the state folder's disk, CPU temperatures where exposed."""
    if sample is None:
        return Text("sampling…", style="dim")
    cores = sample.cpu_pct
    avg = sum(cores) / len(cores) if cores else None
    cpu = Text.assemble(("cpu  ", "dim"), _styled(f"{fmt_pct(avg):>4}", level(avg, t.usage_warn_pct, t.usage_crit_pct)),
                        " ")
    room = width - len(cpu)
    if cores and len(cores) * 4 <= room:  # few cores: numbers; many: one block per core
        for pct in cores:
            cpu.append(f"{pct:3.0f} ", style=STYLES[level(pct, t.usage_warn_pct, t.usage_crit_pct)])
    else:
        for pct in cores[:room]:
            cpu.append(_BLOCKS[max(1, round(pct / 100 * (len(_BLOCKS) - 1)))],
                       style=STYLES[level(pct, t.usage_warn_pct, t.usage_crit_pct)])

    def usage(label: str, used: int | None, total: int | None, extra: str = "") -> Text:
        pct = percent(used, total)
        if total == 0:
            return Text.assemble((f"{label:<5}", "dim"), ("none", "dim"))
        return Text.assemble((f"{label:<5}", "dim"), f"{fmt_pair_gib(used, total):<11}",
                             _styled(f"{fmt_pct(pct):>4}", level(pct, t.usage_warn_pct, t.usage_crit_pct)),
                             (f" {fit_left(extra, width - 21)}" if extra else "", "dim"))

    temps = Text("temp ", style="dim")
    if sample.temps_c:
        hottest = sorted(sample.temps_c, key=lambda item: -item[1])[:4]
        for _, celsius in hottest:
            temps.append(f"{celsius:.0f}°C ", style=STYLES[level(celsius, t.cpu_warm_c, t.cpu_hot_c)])
    else:
        temps.append("not exposed by the kernel", style="dim")
    return _lines(
        cpu,
        usage("ram", sample.ram_used_bytes, sample.ram_total_bytes),
        usage("swap", sample.swap_used_bytes, sample.swap_total_bytes),
        usage("disk", sample.disk_used_bytes, sample.disk_total_bytes, sample.disk_path),
        temps,
    )


def alert_line(messages: Sequence[str]) -> Text:
    """Bottom line: the alerts, or a quiet all-clear."""
    if not messages:
        return Text("✓ no alerts", style="dim green")
    return Text.assemble(("⚠ ", "bold red"), (" · ".join(messages), "bold red"))

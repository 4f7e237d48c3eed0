"""`athanor top`: the Textual dashboard. Widgets and key bindings; the numbers come from `metrics`,
the text from `panels`, the data from `source` (the daemon) and `hardware` (this machine).

Every refresh runs in a worker: the daemon is read with an async client and the hardware is
sampled in a thread, so neither a slow daemon nor a slow NVML call freezes the screen.
"""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path
from typing import Any, Callable, Protocol

from textual.app import App, ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.screen import ModalScreen
from textual.widgets import Footer, Sparkline, Static

from ..protocol.stats import StatsSnapshot
from . import panels
from .hardware import HardwareMonitor, HardwareSample
from .metrics import NO_STATS, Thresholds, Tracker, View, alerts
from .source import StatsSource, Unreachable

log = logging.getLogger(__name__)

MODELS_EVERY = 30
"""Refreshes between two reads of /v1/models (students change rarely; a reconnect reads it at once)."""
REPORT_EVERY = 30
"""Refreshes between reads of /v1/report: the daemon rereads its ledger at most every 30 s anyway."""


class HardwareSource(Protocol):
    def sample(self) -> HardwareSample: ...

    def close(self) -> None: ...


HELP = """\
[b]athanor top[/b] — the appliance at a glance

[b]q[/b]  quit          [b]p[/b]  pause / resume refreshing
[b]r[/b]  reset the view: counters and sparklines start from now
    (the daemon's own counters are not touched)
[b]?[/b]  this help     [b]escape[/b]  close it

[b]throughput[/b]  generated tokens/s and requests/s, last minutes
[b]routes[/b]      answers per route; latency p50/p95 per route
[b]confidence[/b]  recent student confidences; [red]red[/red] bars fall
            under the threshold and go to the teacher
[b]money[/b]       teacher spend today against the daily cap;
            saved = what the teacher would have cost, and (%)
            its share of the teacher-only bill
Colours: [green]ok[/green], [yellow]warm / busy[/yellow], [red]hot / nearly full[/red]."""


class HelpScreen(ModalScreen[None]):
    """Keys and what each panel means."""

    BINDINGS = [Binding("escape,question_mark", "dismiss", "Close help")]
    DEFAULT_CSS = """
    HelpScreen { align: center middle; }
    #help { width: 64; height: auto; border: round $accent; padding: 0 1; background: $surface; }
    """

    def compose(self) -> ComposeResult:
        yield Static(HELP, id="help")


class Dashboard(App[None]):
    """The dashboard: reads `source` and `hardware` every `interval_s` seconds."""

    TITLE = "athanor top"
    ENABLE_COMMAND_PALETTE = False  # the footer shows only the dashboard's own keys
    CSS = """
    Screen { layout: vertical; }
    #status, #alert { height: 1; padding: 0 1; text-wrap: nowrap; text-overflow: ellipsis; }
    .row { height: auto; }
    #row-traffic { height: 7; }
    #row-money { height: 6; }
    #row-hardware { height: 1fr; min-height: 8; }
    .panel {
        width: 1fr; height: 100%; padding: 0 1;
        border: round $primary; border-title-color: $accent;
        text-wrap: nowrap; text-overflow: ellipsis;
    }
    .spark-row { height: 1; }
    .spark-label { width: 13; }
    Sparkline { width: 1fr; height: 1; }
    #traffic { height: 3; text-wrap: nowrap; text-overflow: ellipsis; }
    """
    BINDINGS = [
        Binding("q", "quit", "Quit"),
        Binding("p", "toggle_pause", "Pause"),
        Binding("r", "reset_view", "Reset view"),
        Binding("question_mark", "help", "Help", key_display="?"),
    ]

    def __init__(
        self,
        socket_path: Path,
        *,
        interval_s: float = 1.0,
        source: StatsSource | None = None,
        hardware: HardwareSource | None = None,
        state_dir: Path | None = None,
        thresholds: Thresholds = Thresholds(),
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__()
        self.socket_path = socket_path
        self.interval_s = interval_s
        self.source = source or StatsSource(socket_path, timeout_s=max(0.5, min(2.0, 2 * interval_s)))
        self.hardware: HardwareSource = hardware or HardwareMonitor(state_dir or Path("/"))
        self.thresholds = thresholds
        self.clock = clock
        self.tracker = Tracker()
        self.view: View | None = None
        self.models: list[dict[str, Any]] | None = None
        self.report: dict[str, Any] | None = None
        self.sample: HardwareSample | None = None
        self.connected = False
        self.reason = "not contacted yet"
        self.paused = False
        self.refreshes = 0
        self._busy = False

    def compose(self) -> ComposeResult:
        yield Static(id="status")
        with Horizontal(id="row-traffic", classes="row"):
            with Vertical(id="throughput", classes="panel"):
                with Horizontal(classes="spark-row"):
                    yield Static(id="tokens-label", classes="spark-label")
                    yield Sparkline([], id="tokens-spark")
                with Horizontal(classes="spark-row"):
                    yield Static(id="requests-label", classes="spark-label")
                    yield Sparkline([], id="requests-spark")
                yield Static(id="traffic")
            yield Static(id="routes", classes="panel")
        with Horizontal(id="row-money", classes="row"):
            yield Static(id="confidence", classes="panel")
            yield Static(id="money", classes="panel")
            yield Static(id="students", classes="panel")
        with Horizontal(id="row-hardware", classes="row"):
            yield Static(id="gpu", classes="panel")
            yield Static(id="host", classes="panel")
        yield Static(id="alert")
        yield Footer()

    def on_mount(self) -> None:
        titles = {"throughput": "tokens/s · requests/s", "routes": "routes · latency", "confidence": "confidence",
                  "money": "money", "students": "students · cache", "gpu": "GPU", "host": "host"}
        for widget_id, title in titles.items():
            self.query_one(f"#{widget_id}").border_title = title
        self.render_panels()
        self.poll()
        self.set_interval(self.interval_s, self.poll)

    async def on_unmount(self) -> None:
        await self.source.aclose()
        await asyncio.to_thread(self.hardware.close)

    # --- refreshing ------------------------------------------------------------------------------

    def poll(self) -> None:
        """Start one refresh in the background, unless paused or the previous one is still running."""
        if self.paused or self._busy:
            return
        self._busy = True
        self.run_worker(self.refresh_once(), group="refresh", exit_on_error=False)

    async def refresh_once(self) -> None:
        """Read the daemon and the hardware at once, then redraw; errors become status text, never a crash."""
        try:
            (stats, models, reason), sample = await asyncio.gather(
                self._read_daemon(), asyncio.to_thread(self.hardware.sample))
            if self.paused:  # `p` pressed while reading: keep the frozen view
                return
            self.refreshes += 1
            self.sample = sample
            if stats is not None:
                self.view = self.tracker.update(stats, self.clock())
                self.models = models if models is not None else self.models
                self.connected = True
            else:
                if self.connected:
                    self.tracker.disconnected()
                self.connected, self.reason, self.models = False, reason, None
            self.render_panels()
        except Exception as exc:  # noqa: BLE001 - a dashboard must outlive a bug in one panel
            log.exception("dashboard refresh failed")
            self.query_one("#status", Static).update(f"dashboard error: {exc.__class__.__name__}: {exc}")
        finally:
            self._busy = False

    async def _read_daemon(self) -> tuple[StatsSnapshot | None, list | None, str]:
        try:
            stats = await self.source.stats()
        except Unreachable as exc:
            return None, None, exc.reason
        models = None
        if self.models is None or self.refreshes % MODELS_EVERY == 0:
            try:
                models = await self.source.models()
            except Unreachable:
                pass  # stats came through, so the daemon is up; the students panel waits for the next try
        if self.refreshes % REPORT_EVERY == 0:
            try:
                self.report = await self.source.report()
            except Unreachable:
                self.report = None  # an older daemon: the money panel shows no break-even
        return stats, models, ""

    # --- drawing ---------------------------------------------------------------------------------

    def render_panels(self) -> None:
        """Redraw every panel from the current view, models and hardware sample."""
        t = self.thresholds
        view = self.view
        stats = view.stats if view else NO_STATS
        self._set("#status", panels.status_line(str(self.socket_path), connected=self.connected,
                                                paused=self.paused, reason=self.reason,
                                                interval_s=self.interval_s))
        rates = view.rates if view and self.connected else None
        self._set("#tokens-label", panels.traffic_label("tok/s", rates.tokens_per_s if rates else None))
        self._set("#requests-label", panels.traffic_label("req/s", rates.requests_per_s if rates else None))
        self.query_one("#tokens-spark", Sparkline).data = list(view.tokens_history) if view else []
        self.query_one("#requests-spark", Sparkline).data = list(view.requests_history) if view else []
        self._set("#traffic", panels.traffic(view))
        self._set("#routes", panels.routes(view))
        self._set("#confidence", panels.confidence(stats))
        self._set("#money", panels.money(view, t, self.report))
        self._set("#students", panels.students(self.models, stats))
        self._set("#gpu", panels.gpu(self.sample.gpu if self.sample else None, t))
        self._set("#host", panels.host(self.sample.host if self.sample else None, t))
        self._set("#alert", panels.alert_line(alerts(self.sample, stats if self.connected else None, t)))

    def _set(self, selector: str, content: Any) -> None:
        self.query_one(selector, Static).update(content)

    # --- keys ------------------------------------------------------------------------------------

    def action_toggle_pause(self) -> None:
        self.paused = not self.paused
        if not self.paused:
            self.tracker.disconnected()  # a rate across the pause would average it away
            self.poll()
        self.render_panels()

    def action_reset_view(self) -> None:
        view = self.tracker.reset()
        if view is not None:
            self.view = view
        self.render_panels()

    def action_help(self) -> None:
        if not isinstance(self.screen, HelpScreen):
            self.push_screen(HelpScreen())


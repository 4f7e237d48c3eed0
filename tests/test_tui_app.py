"""`athanor top` driven headless with Textual's Pilot: a fake stats server on a real Unix socket,
fake NVML and frozen host readings where the figures must be exact, and snapshots of the main screen."""

from __future__ import annotations

import asyncio
import copy
import socket
import threading
from pathlib import Path
from typing import Any, Awaitable, Callable

import pytest
from textual.widgets import Sparkline, Static

from appliance.server.http import HttpServer, Limits, json_response
from appliance.tui.app import Dashboard, HelpScreen
from appliance.tui.hardware import GpuMonitor, GpuStatus, HardwareMonitor, HardwareSample, HostSample

GIB = 1024 ** 3


def stats_snapshot(uptime: float = 100.0, requests: int = 10, completion_tokens: int = 500, **extra: Any) -> dict:
    """A /v1/stats answer as the daemon writes it."""
    snapshot = {
        "uptime_s": uptime, "requests": requests,
        "by_route": {"cache": 4, "student": 5, "teacher": 1}, "by_status": {"200": requests},
        "prompt_tokens": 2 * completion_tokens, "completion_tokens": completion_tokens, "cancelled": 0,
        "latency_s": {"p50": 0.4, "p95": 2.5},
        "latency_by_route": {"cache": {"p50": 0.004, "p95": 0.009}, "student": {"p50": 0.8, "p95": 1.9},
                             "teacher": {"p50": 2.4, "p95": 3.1}},
        "cost_usd": 0.0123, "saved_usd": 0.456, "degraded": 1, "cache_hit_rate": 0.4,
        "confidence_recent": [0.05, 0.1, 0.15, 0.3, 0.35, 0.5, 0.55, 0.6, 0.7, 0.72, 0.8, 0.9, 0.95],
        "cache": {"entries": 1234, "bytes_on_disk": 5 * 1024 * 1024, "hits": 4, "misses": 6},
        "teacher": {"provider": "gemini", "model": "gemini-2.5-flash", "spent_today": 0.25, "budget": 1.0},
        "confidence_threshold": 0.2,
        "process": {"rss_bytes": 512 * 1024 * 1024},
    }
    snapshot.update(extra)
    return snapshot


MODELS = {"object": "list", "data": [{
    "id": "smollm2-135m", "object": "model", "owned_by": "athanor",
    "athanor": {"path": "/x/SmolLM2-135M-Instruct.Q4_1.gguf", "size_bytes": 97 * 1024 * 1024, "n_params": 134515008,
                "n_ctx": 2048, "description": "llama 135M Q4_1", "quant": "Q4_1", "gpu_offload": False,
                "default": True},
}]}


class FakeDaemon:
    """A real HTTP server on a Unix socket answering /v1/stats and /v1/models with whatever the test sets."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.stats: dict = stats_snapshot()
        self.models: dict = copy.deepcopy(MODELS)
        self.models_status = 200
        self.report: dict | None = None
        """GET /v1/report's answer; None answers 404, as a daemon without the endpoint does."""
        self.stats_calls = 0
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()
        self._server: HttpServer | None = None

    async def _handle(self, request):
        if request.path == "/v1/stats":
            self.stats_calls += 1
            return json_response(200, self.stats)
        if request.path == "/v1/models":
            return json_response(self.models_status, self.models)
        if request.path == "/v1/report" and self.report is not None:
            return json_response(200, self.report)
        return json_response(404, {"error": {"message": "no such endpoint"}})

    def _call(self, coro: Awaitable) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(10)

    def start(self) -> None:
        self.path.unlink(missing_ok=True)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.bind(str(self.path))
        sock.listen(16)
        sock.setblocking(False)
        self._server = HttpServer(self._handle, Limits())
        self._call(self._server.start(sock))

    def stop(self) -> None:
        """Stop as a crashed daemon does: connections dropped, the socket file left behind."""
        if self._server is not None:
            server, self._server = self._server, None

            async def down():
                await server.stop_accepting()
                await server.drain(0)

            self._call(down())

    def close(self) -> None:
        self.stop()
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)
        self._loop.close()


@pytest.fixture
def fake_daemon(tmp_path):
    daemon = FakeDaemon(tmp_path / "athanor.sock")
    daemon.start()
    yield daemon
    daemon.close()


class FakeNvml:
    """pynvml's function names over fixed readings: one H100 whose temperature the test sets."""

    def __init__(self, temp_c: float = 60.0, mem_used: int = 20 * GIB, fail_init: bool = False) -> None:
        self.temp_c = temp_c
        self.mem_used = mem_used
        self.fail_init = fail_init
        self.shutdown = False

    def nvmlInit(self):
        if self.fail_init:
            raise RuntimeError("Driver Not Loaded")

    def nvmlShutdown(self):
        self.shutdown = True

    def nvmlDeviceGetCount(self):
        return 1

    def nvmlDeviceGetHandleByIndex(self, index):
        return ("gpu", index)

    def nvmlDeviceGetName(self, handle):
        return "NVIDIA H100 80GB HBM3"

    def nvmlDeviceGetUtilizationRates(self, handle):
        return type("Utilization", (), {"gpu": 45, "memory": 20})()

    def nvmlDeviceGetMemoryInfo(self, handle):
        return type("Memory", (), {"used": self.mem_used, "total": 80 * GIB, "free": 80 * GIB - self.mem_used})()

    def nvmlDeviceGetTemperature(self, handle, sensor):
        return self.temp_c

    def nvmlDeviceGetPowerUsage(self, handle):
        return 250_000  # milliwatts

    def nvmlDeviceGetEnforcedPowerLimit(self, handle):
        return 700_000

    def nvmlDeviceGetClockInfo(self, handle, clock):
        return {1: 1980, 2: 2619}[clock]


FROZEN_HOST = HostSample(
    cpu_pct=(12.0, 81.0), ram_used_bytes=6 * GIB, ram_total_bytes=16 * GIB, swap_used_bytes=0,
    swap_total_bytes=2 * GIB, disk_path="/var/lib/athanor", disk_used_bytes=120 * GIB, disk_total_bytes=500 * GIB,
    temps_c=(("Package id 0", 55.0),),
)


class FrozenHardware:
    """Fixed host readings; GPUs through the real `GpuMonitor` on a fake NVML."""

    def __init__(self, nvml: FakeNvml | None = None, host: HostSample = FROZEN_HOST) -> None:
        self.gpu = GpuMonitor(nvml or FakeNvml())
        self.host = host

    def sample(self) -> HardwareSample:
        return HardwareSample(host=self.host, gpu=self.gpu.sample())

    def close(self) -> None:
        self.gpu.close()


class ScriptedSource:
    """Stands in for `StatsSource` where a snapshot must be exactly reproducible: answers from a list."""

    def __init__(self, snapshots: list[dict]) -> None:
        self.snapshots = list(snapshots)

    async def stats(self) -> dict:
        return self.snapshots.pop(0) if len(self.snapshots) > 1 else self.snapshots[0]

    async def models(self) -> list[dict]:
        return MODELS["data"]

    async def report(self) -> dict | None:
        return None  # no distillation spend: the money panel shows no break-even

    async def aclose(self) -> None:
        pass


def text(app: Dashboard, widget_id: str) -> str:
    return str(app.screen.query_one(f"#{widget_id}", Static).content) if widget_id == "help" else str(
        app.query_one(f"#{widget_id}", Static).content)


async def settle(app: Dashboard) -> None:
    """Let the refresh started at mount finish, so a test's own `refresh_once` does not race it."""
    await app.workers.wait_for_complete()


async def wait_until(pilot, condition: Callable[[], bool], timeout: float = 10.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not condition():
        if loop.time() > deadline:
            raise AssertionError("condition not met in time")
        await pilot.pause(0.05)


def run(scenario: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(scenario())


def dashboard(path: Path, **kwargs: Any) -> Dashboard:
    kwargs.setdefault("hardware", FrozenHardware())
    kwargs.setdefault("interval_s", 3600)  # the tests refresh by hand unless they test the timer
    return Dashboard(path, **kwargs)


# --- against the fake daemon -------------------------------------------------------------------------

def test_the_money_panel_shows_the_break_even_the_daemon_reports(fake_daemon):
    fake_daemon.report = {"distillation_usd": 0.5, "break_even": "2026-12-15", "break_even_projected": True}

    async def scenario():
        app = dashboard(fake_daemon.path)
        async with app.run_test(size=(100, 24)):
            await settle(app)
            assert "saved $0.46 (97%) break-even ~12-15" in " ".join(text(app, "money").split())
    run(scenario)


def test_shows_rates_routes_money_and_students_from_the_daemon(fake_daemon):
    async def scenario():
        app = dashboard(fake_daemon.path)
        async with app.run_test(size=(80, 24)) as pilot:
            await settle(app)
            assert "athanor" in text(app, "status") and "not reachable" not in text(app, "status")
            assert "–" in text(app, "tokens-label")  # one snapshot: no rate yet
            fake_daemon.stats = stats_snapshot(uptime=102.0, requests=14, completion_tokens=700)
            await app.refresh_once()
            await pilot.pause()
            # 200 tokens and 4 requests over the daemon's own 2 s.
            assert "100" in text(app, "tokens-label")
            assert "2.00" in text(app, "requests-label")
            assert app.query_one("#tokens-spark", Sparkline).data == [100.0]
            routes = " ".join(text(app, "routes").split())
            assert "student 5 50% 800ms 1.90s" in routes and "cache 4 40% 4.0ms 9.0ms" in routes
            assert "all 10 400ms 2.50s" in routes
            assert "requests 14" in text(app, "traffic") and "cache hit 40%" in text(app, "traffic")
            money = text(app, "money")
            assert "today $0.25 of $1.00" in money and "25%" in money and "saved $0.46" in money
            assert "saved $0.46 (97%)" in money  # saved against what the teacher alone would have charged
            students = text(app, "students")
            assert "*smollm2-135m Q4_1 97M" in students
            assert "cache 1,234 · 5.0M" in students and "daemon rss 512M" in students
            confidence = text(app, "confidence")
            assert "below 0.20 23%" in confidence and "n 13" in confidence
    run(scenario)


def test_missing_and_malformed_fields_do_not_crash(fake_daemon):
    async def scenario():
        app = dashboard(fake_daemon.path)
        async with app.run_test(size=(80, 24)) as pilot:
            await settle(app)
            for broken in (
                {},  # an empty object
                {"uptime_s": "soon", "by_route": None, "latency_s": [], "teacher": "gemini"},  # wrong types
                {"requests": 3, "confidence_recent": ["x", None, 0.5], "cache": None, "latency_by_route": {"x": 1}},
            ):
                fake_daemon.stats = broken
                fake_daemon.models = {"data": [None, {"id": "bare"}]}
                app.models = None  # make it read /v1/models again too
                await app.refresh_once()
                await pilot.pause()
                assert "not reachable" not in text(app, "status")
                assert "dashboard error" not in text(app, "status")
            assert "bare" in text(app, "students")
    run(scenario)


def test_a_failing_models_endpoint_leaves_the_rest_of_the_dashboard_working(fake_daemon):
    async def scenario():
        fake_daemon.models_status = 500
        app = dashboard(fake_daemon.path)
        async with app.run_test(size=(80, 24)) as pilot:
            await settle(app)
            await pilot.pause()
            assert app.connected and "students –" in text(app, "students")
            assert "requests 10" in text(app, "traffic")
            fake_daemon.models_status = 200
            await app.refresh_once()  # asks again while it has no list
            await pilot.pause()
            assert "smollm2-135m" in text(app, "students")
    run(scenario)


def test_says_when_the_daemon_goes_away_and_reconnects_when_it_returns(fake_daemon):
    async def scenario():
        app = dashboard(fake_daemon.path, interval_s=0.1)
        async with app.run_test(size=(80, 24)) as pilot:
            await wait_until(pilot, lambda: app.connected)
            fake_daemon.stop()
            await wait_until(pilot, lambda: "not reachable" in text(app, "status"))
            # A poll in flight as the server stops may see the connection closed; the next one is refused.
            await wait_until(pilot, lambda: "connection refused" in text(app, "status"))
            assert "athanor serve" in text(app, "status")
            fake_daemon.path.unlink()
            await wait_until(pilot, lambda: "no socket file" in text(app, "status"))
            fake_daemon.stats = stats_snapshot(uptime=1.0, requests=1, completion_tokens=10)  # a fresh daemon
            fake_daemon.start()
            await wait_until(pilot, lambda: app.connected)
            await wait_until(pilot, lambda: "requests 1 " in text(app, "traffic"))
            assert "not reachable" not in text(app, "status")
    run(scenario)


def test_starts_without_a_daemon(tmp_path):
    async def scenario():
        app = dashboard(tmp_path / "none.sock")
        async with app.run_test(size=(80, 24)) as pilot:
            await settle(app)
            await pilot.pause()
            assert "daemon not reachable" in text(app, "status") and "no socket file" in text(app, "status")
            assert "waiting for the daemon" in text(app, "traffic")
    run(scenario)


def test_keys_pause_reset_help_quit(fake_daemon):
    async def scenario():
        app = dashboard(fake_daemon.path)
        async with app.run_test(size=(80, 24)) as pilot:
            await settle(app)
            fake_daemon.stats = stats_snapshot(uptime=101.0, requests=12, completion_tokens=600)
            await app.refresh_once()
            await pilot.pause()
            assert "requests 12" in text(app, "traffic")

            await pilot.press("r")  # the view starts again from zero; the daemon is not touched
            assert "requests 0" in text(app, "traffic")
            assert app.query_one("#tokens-spark", Sparkline).data == []
            fake_daemon.stats = stats_snapshot(uptime=102.0, requests=15, completion_tokens=650)
            await app.refresh_once()
            await pilot.pause()
            assert "requests 3 " in text(app, "traffic")

            await pilot.press("p")
            assert "PAUSED" in text(app, "status")
            calls = fake_daemon.stats_calls
            app.poll()  # the timer's tick while paused
            await pilot.pause(0.2)
            assert fake_daemon.stats_calls == calls
            await pilot.press("p")
            await settle(app)
            assert "PAUSED" not in text(app, "status") and fake_daemon.stats_calls == calls + 1

            await pilot.press("question_mark")
            assert isinstance(app.screen, HelpScreen)
            assert "reset the view" in text(app, "help")
            await pilot.press("escape")
            assert not isinstance(app.screen, HelpScreen)

            await pilot.press("q")
        assert app.return_code == 0
    run(scenario)


def test_footer_lists_the_keys(fake_daemon):
    async def scenario():
        app = dashboard(fake_daemon.path)
        async with app.run_test(size=(80, 24)) as pilot:
            await pilot.pause()
            footer = {(active.binding.key_display or active.binding.key, active.binding.description)
                      for active in app.active_bindings.values() if active.binding.show}
            assert {("q", "Quit"), ("p", "Pause"), ("r", "Reset view"), ("?", "Help")} <= footer
    run(scenario)


# --- hardware ----------------------------------------------------------------------------------------

def test_hot_gpu_turns_red_and_raises_the_alert(fake_daemon):
    async def scenario():
        nvml = FakeNvml(temp_c=91.0, mem_used=79 * GIB)
        app = dashboard(fake_daemon.path, hardware=FrozenHardware(nvml))
        async with app.run_test(size=(80, 24)) as pilot:
            await settle(app)
            await pilot.pause()
            gpu = text(app, "gpu")
            assert "GPU0 H100 80GB HBM3" in gpu and "util  45%" in gpu and "91°C" in gpu
            assert "79/80G" in gpu and "250/700W" in gpu and "1980/2619MHz" in gpu
            alert = text(app, "alert")
            assert "GPU0 hot: 91°C" in alert and "GPU0 memory 99% full" in alert
            styles = {str(span.style) for span in app.query_one("#gpu", Static).content.spans}
            assert "bold red" in styles
            nvml.temp_c, nvml.mem_used = 50.0, 10 * GIB
            await app.refresh_once()
            await pilot.pause()
            assert text(app, "alert") == "✓ no alerts"
        assert nvml.shutdown  # NVML is shut down with the app
    run(scenario)


def test_real_nvml_on_a_machine_without_an_nvidia_gpu_says_unavailable(fake_daemon, tmp_path):
    probe = GpuMonitor().sample()
    if probe.available:
        pytest.skip("this machine has an NVIDIA GPU")

    async def scenario():
        app = dashboard(fake_daemon.path, hardware=HardwareMonitor(tmp_path))
        async with app.run_test(size=(80, 24)) as pilot:
            await settle(app)
            await pilot.pause()
            assert text(app, "gpu").startswith("GPU unavailable")
            assert "cpu" in text(app, "host") and "disk" in text(app, "host")
            assert "dashboard error" not in text(app, "status")
    run(scenario)


def test_nvml_that_fails_to_start_is_a_reason_not_an_error():
    status = GpuMonitor(FakeNvml(fail_init=True)).sample()
    assert status == GpuStatus(available=False, reason="Driver Not Loaded")


# --- snapshots ---------------------------------------------------------------------------------------

def scripted_dashboard(**kwargs: Any) -> Dashboard:
    """Six refreshes a second apart with fixed traffic, so the sparklines have a shape."""
    tokens = [500, 620, 700, 900, 940, 1100, 1180]
    snapshots = [stats_snapshot(uptime=100.0 + i, requests=10 + 2 * i, completion_tokens=n) for i, n in
                 enumerate(tokens)]
    return Dashboard(Path("/run/athanor/athanor.sock"), interval_s=3600, source=ScriptedSource(snapshots),
                     hardware=kwargs.pop("hardware", FrozenHardware()), clock=lambda: 0.0, **kwargs)


async def _refresh_all(pilot) -> None:
    app = pilot.app
    await settle(app)
    for _ in range(6):
        await app.refresh_once()
    await pilot.pause()


def test_snapshot_main_screen(snap_compare):
    assert snap_compare(scripted_dashboard(), terminal_size=(80, 24), run_before=_refresh_all)


def test_snapshot_hot_gpu_and_paused(snap_compare):
    app = scripted_dashboard(hardware=FrozenHardware(FakeNvml(temp_c=92.0)))
    assert snap_compare(app, press=["p"], terminal_size=(80, 24), run_before=_refresh_all)


def test_snapshot_daemon_unreachable(snap_compare, tmp_path):
    app = Dashboard(tmp_path / "gone.sock", interval_s=3600, hardware=FrozenHardware(), clock=lambda: 0.0)
    app.socket_path = Path("/run/athanor/athanor.sock")  # the shown path, fixed; the real one is a tmp dir

    async def settled(pilot):
        await settle(pilot.app)
        await pilot.pause()

    assert snap_compare(app, terminal_size=(80, 24), run_before=settled)


def test_layout_grows_with_the_terminal(fake_daemon):
    async def scenario():
        app = dashboard(fake_daemon.path)
        async with app.run_test(size=(80, 24)) as pilot:
            await settle(app)
            await pilot.pause()
            assert app.query_one("#alert").region.y == 22  # above the footer, nothing pushed off screen
            await pilot.resize_terminal(120, 40)
            await pilot.pause()
            assert app.query_one("#alert").region.y == 38
            assert app.query_one("#gpu").region.height > 8
    run(scenario)


# --- against the real daemon -------------------------------------------------------------------------

@pytest.mark.e2e
def test_real_daemon_shows_its_student_and_a_routed_answer(daemon):
    from appliance.clients.daemon_client import AthanorClient

    async def scenario():
        app = dashboard(daemon)
        async with app.run_test(size=(80, 24)) as pilot:
            await settle(app)
            assert app.connected, text(app, "status")
            assert "F16" in text(app, "students")  # the embedded SmolLM2-135M, converted to F16 for batching
            assert "daemon rss" in text(app, "students") and "daemon rss –" not in text(app, "students")
            with AthanorClient(daemon) as client:
                await asyncio.to_thread(client.chat, [{"role": "user", "content": "Say hi."}], max_tokens=4)
            await app.refresh_once()
            await pilot.pause()
            student_row = next(line for line in text(app, "routes").splitlines() if line.startswith("student"))
            assert "–" not in student_row  # a count, a share and both latency percentiles
    run(scenario)

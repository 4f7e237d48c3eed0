"""Reads the daemon's read-only endpoints (/v1/stats, /v1/models) over its Unix socket.

Async so the dashboard's UI never waits on the daemon, with a short timeout so a stalled
daemon shows as unreachable within a refresh or two instead of freezing the view.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx

from ..clients.daemon_client import BASE_URL
from ..errors import DaemonUnavailable
from ..protocol.stats import StatsSnapshot


class Unreachable(DaemonUnavailable):
    """The daemon did not answer on the socket, or answered something that is not stats."""

    def __init__(self, socket_path: Path, reason: str) -> None:
        super().__init__(
            f"no daemon answering on {socket_path} ({reason}); start it with `athanor serve` "
            "or point --socket / [server].socket at the right place"
        )
        self.reason = reason


class StatsSource:
    """One keep-alive HTTP client on `socket_path`; every call returns what it read or raises `Unreachable`."""

    def __init__(self, socket_path: Path, timeout_s: float = 2.0) -> None:
        self.socket_path = socket_path
        self._http = httpx.AsyncClient(
            transport=httpx.AsyncHTTPTransport(uds=str(socket_path)), base_url=BASE_URL, timeout=timeout_s
        )

    async def stats(self) -> StatsSnapshot:
        """GET /v1/stats as its record, read leniently (a field of the wrong type reads as missing)."""
        payload = await self._get("/v1/stats")
        if not isinstance(payload, dict):
            raise Unreachable(self.socket_path, "/v1/stats did not return a JSON object")
        return StatsSnapshot.from_json(payload, strict=False)

    async def models(self) -> list[dict[str, Any]]:
        """GET /v1/models' `data` list; entries that are not objects are dropped."""
        payload = await self._get("/v1/models")
        data = payload.get("data") if isinstance(payload, dict) else None
        return [m for m in data if isinstance(m, dict)] if isinstance(data, list) else []

    async def report(self) -> dict[str, Any] | None:
        """GET /v1/report (`athanor report --json`); None when the daemon has no such endpoint (an older one)."""
        payload = await self._get("/v1/report")
        return payload if isinstance(payload, dict) else None

    async def _get(self, path: str) -> Any:
        try:
            response = await self._http.get(path)
        except FileNotFoundError:
            raise Unreachable(self.socket_path, "no socket file") from None
        except ConnectionRefusedError:
            raise Unreachable(self.socket_path, "connection refused") from None
        except httpx.TimeoutException:
            raise Unreachable(self.socket_path, "timed out") from None
        except (httpx.TransportError, OSError) as exc:
            raise Unreachable(self.socket_path, _transport_reason(exc)) from None
        if response.status_code != 200:
            raise Unreachable(self.socket_path, f"{path} answered HTTP {response.status_code}")
        try:
            return response.json()
        except ValueError:
            raise Unreachable(self.socket_path, f"{path} answered with invalid JSON") from None

    async def aclose(self) -> None:
        await self._http.aclose()


def _transport_reason(exc: Exception) -> str:
    # httpx wraps the OS error; its cause says what actually happened (no file, refused, reset).
    cause = exc.__cause__ or exc.__context__
    if isinstance(cause, FileNotFoundError) or "No such file" in str(exc):
        return "no socket file"
    if isinstance(cause, ConnectionRefusedError) or "Connection refused" in str(exc):
        return "connection refused"
    if isinstance(exc, httpx.RemoteProtocolError):  # the daemon went away in the middle of an answer
        return "the daemon closed the connection"
    return exc.__class__.__name__

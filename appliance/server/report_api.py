"""GET /v1/report: `athanor report --json` from the daemon, for the dashboard and for clients that cannot
read the daemon's state folder (the service's is its own user's)."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any, Callable

from ..report.read import read_report, since_timestamp
from .errors import ApiError
from .http import Handler, HttpRequest, HttpResponse, json_response

REPORT_PATH = "/v1/report"
FRESH_S = 30.0
"""A report is reread at most this often: it scans the whole ledger, and the dashboard polls every second."""


class ReportApi:
    """Answers GET /v1/report itself and hands every other request to `inner`."""

    def __init__(self, inner: Handler, state: Path, clock: Callable[[], float] = time.monotonic) -> None:
        self.inner = inner
        self.state = state
        self.clock = clock
        self._cached: dict[str | None, tuple[float, dict[str, Any]]] = {}

    async def __call__(self, request: HttpRequest) -> HttpResponse:
        if (request.path.rstrip("/") or "/") != REPORT_PATH:
            return await self.inner(request)
        try:
            return await self._report(request)
        except ApiError as exc:
            return json_response(exc.status, exc.body(), exc.headers)

    async def _report(self, request: HttpRequest) -> HttpResponse:
        if request.method != "GET":
            raise ApiError(405, f"{request.method} is not allowed on {REPORT_PATH}; use GET", headers=[("allow", "GET")])
        values = request.query.get("since")
        since = values[-1] if values else None
        if since is not None:
            try:
                since_timestamp(since)
            except ValueError as exc:
                raise ApiError(400, str(exc), param="since") from None
        cached = self._cached.get(since)
        if cached is None or self.clock() - cached[0] > FRESH_S:
            report = await asyncio.to_thread(read_report, self.state, since)
            cached = (self.clock(), report.as_dict())
            self._cached = {since: cached}  # one entry: `since` comes from clients
        return json_response(200, cached[1])

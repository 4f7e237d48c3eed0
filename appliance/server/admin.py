"""`POST /v1/admin/reload` in front of the OpenAI API: the daemon's own user or root may hot-reload it.

Why an endpoint rather than a pid file and SIGHUP for `athanor reload`: under socket activation the
listening socket belongs to systemd (SO_PEERCRED on the client's side names pid 1, not the daemon),
and a stale pid file can name an unrelated process. The socket always reaches the right daemon, the
caller's uid (SO_PEERCRED) is checked the way kill(2) would check it, and the caller learns the
outcome: reloaded, or why the new config or model was refused. SIGHUP stays for `systemctl reload`.
"""

from __future__ import annotations

from .errors import ApiError
from .http import Handler, HttpRequest, HttpResponse, json_response
from .reload import Reloader

RELOAD_PATH = "/v1/admin/reload"


class AdminApi:
    """Answers the admin paths itself and hands every other request to `inner`."""

    def __init__(self, inner: Handler, reloader: Reloader, owner_uid: int) -> None:
        self.inner = inner
        self.reloader = reloader
        self.owner_uid = owner_uid

    async def __call__(self, request: HttpRequest) -> HttpResponse:
        if (request.path.rstrip("/") or "/") != RELOAD_PATH:
            return await self.inner(request)
        try:
            return await self.reload(request)
        except ApiError as exc:
            return json_response(exc.status, exc.body(), exc.headers)

    async def reload(self, request: HttpRequest) -> HttpResponse:
        if request.method != "POST":
            raise ApiError(405, f"{request.method} is not allowed on {RELOAD_PATH}; use POST",
                           headers=[("allow", "POST")])
        uid = request.peer.uid if request.peer is not None else None
        if uid not in (0, self.owner_uid):
            raise ApiError(403, f"only the daemon's user (uid {self.owner_uid}) or root may reload it; "
                                "use `sudo athanor reload` or `sudo systemctl reload athanor`",
                           type_="permission_error", code="forbidden")
        outcome = await self.reloader.reload()
        if not outcome.ok:
            raise ApiError(500, outcome.message, type_="server_error", code="reload_failed")
        return json_response(200, outcome.as_dict())

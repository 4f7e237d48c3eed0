"""`athanor cache` over the socket: stats and `why` for every caller, forget and clear for the daemon's
own user or root (as reload is).

`why` answers within the caller's own namespace (its uid, as lookups are), so it cannot read another
user's questions; the daemon's user or root may name any namespace.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import asdict
from typing import Any, Callable

from ..cache import SemanticCache
from .api import namespace_for
from .errors import ApiError
from .http import Handler, HttpRequest, HttpResponse, json_response

STATS_PATH = "/v1/cache/stats"
WHY_PATH = "/v1/cache/why"
FORGET_PATH = "/v1/admin/cache/forget"
CLEAR_PATH = "/v1/admin/cache/clear"


def _body(request: HttpRequest) -> dict[str, Any]:
    try:
        body = json.loads(request.body or b"{}")
    except (ValueError, UnicodeDecodeError) as exc:
        raise ApiError(400, f"the body is not valid JSON: {exc}") from None
    if not isinstance(body, dict):
        raise ApiError(400, "the body must be a JSON object")
    return body


def _text(body: dict[str, Any], name: str) -> str | None:
    value = body.get(name)
    if value is not None and (not isinstance(value, str) or not value.strip()):
        raise ApiError(400, f"'{name}' must be a non-empty string", param=name)
    return value


class CacheApi:
    """Answers the cache paths itself and hands every other request to `inner`."""

    def __init__(self, inner: Handler, cache: Callable[[], SemanticCache | None], owner_uid: int) -> None:
        self.inner = inner
        self.cache = cache
        self.owner_uid = owner_uid
        self.routes = {(STATS_PATH, "GET"): self.stats, (WHY_PATH, "POST"): self.why,
                       (FORGET_PATH, "POST"): self.forget, (CLEAR_PATH, "POST"): self.clear}

    async def __call__(self, request: HttpRequest) -> HttpResponse:
        path = request.path.rstrip("/") or "/"
        if path not in (STATS_PATH, WHY_PATH, FORGET_PATH, CLEAR_PATH):
            return await self.inner(request)
        try:
            handler = self.routes.get((path, request.method))
            if handler is None:
                method = "GET" if path == STATS_PATH else "POST"
                raise ApiError(405, f"{request.method} is not allowed on {path}; use {method}",
                               headers=[("allow", method)])
            cache = self.cache()
            if cache is None:
                raise ApiError(409, "the cache is off ([cache].enabled = false)", code="cache_disabled")
            return await handler(request, cache)
        except ApiError as exc:
            return json_response(exc.status, exc.body(), exc.headers)

    def _is_admin(self, request: HttpRequest) -> bool:
        return request.peer is not None and request.peer.uid in (0, self.owner_uid)

    def _require_admin(self, request: HttpRequest) -> None:
        if not self._is_admin(request):
            raise ApiError(403, f"only the daemon's user (uid {self.owner_uid}) or root may change the cache; "
                                "use `sudo athanor cache ...`", type_="permission_error", code="forbidden")

    async def stats(self, request: HttpRequest, cache: SemanticCache) -> HttpResponse:
        return json_response(200, await asyncio.to_thread(cache.stats))

    async def why(self, request: HttpRequest, cache: SemanticCache) -> HttpResponse:
        body = _body(request)
        question = _text(body, "question")
        if question is None:
            raise ApiError(400, "'question' is required", param="question")
        namespace = _text(body, "namespace")
        if namespace is not None and not self._is_admin(request):
            raise ApiError(403, "only the daemon's user or root may look into another namespace",
                           type_="permission_error", code="forbidden")
        k = body.get("k", 5)
        if not isinstance(k, int) or isinstance(k, bool) or not 1 <= k <= 50:
            raise ApiError(400, "'k' must be an integer from 1 to 50", param="k")
        namespace = namespace or namespace_for(request)
        neighbours = await asyncio.to_thread(cache.why, namespace, question, k)
        return json_response(200, {"namespace": namespace, "question": question,
                                   "uncovered": cache.uncovered_reason(question) or None,
                                   "neighbours": [asdict(n) for n in neighbours]})

    async def forget(self, request: HttpRequest, cache: SemanticCache) -> HttpResponse:
        self._require_admin(request)
        body = _body(request)
        entry_id = body.get("id")
        if entry_id is not None and (not isinstance(entry_id, int) or isinstance(entry_id, bool)):
            raise ApiError(400, "'id' must be an integer", param="id")
        namespace, question = _text(body, "namespace"), _text(body, "question")
        if entry_id is None and namespace is None and question is None:
            raise ApiError(400, "name what to forget: 'id', 'namespace' or 'question'")
        removed = await asyncio.to_thread(cache.forget, entry_id=entry_id, namespace=namespace, question=question)
        return json_response(200, {"removed": removed})

    async def clear(self, request: HttpRequest, cache: SemanticCache) -> HttpResponse:
        self._require_admin(request)
        return json_response(200, {"removed": await asyncio.to_thread(cache.clear)})

"""A small client for the daemon's socket, used by the CLI, the tests and the dashboard."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterable, Iterator

import httpx

from ..errors import AthanorError, DaemonUnavailable

BASE_URL = "http://athanor"


class ApiRequestError(AthanorError):
    """The daemon answered with an error object."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"daemon refused the request ({status}): {message}")
        self.status = status


class AthanorClient:
    """HTTP over the Unix socket at `socket_path`."""

    def __init__(self, socket_path: Path, timeout: float = 600.0) -> None:
        self.socket_path = socket_path
        self._http = httpx.Client(
            transport=httpx.HTTPTransport(uds=str(socket_path)), base_url=BASE_URL, timeout=timeout
        )

    def __enter__(self) -> "AthanorClient":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def _unavailable(self, exc: Exception) -> DaemonUnavailable:
        return DaemonUnavailable(
            f"no daemon answering on {self.socket_path} ({exc.__class__.__name__}); "
            "start it with `athanor serve` or set [server].socket / ATHANOR_SERVER__SOCKET"
        )

    def _request(self, method: str, path: str, **kwargs: Any) -> dict[str, Any]:
        try:
            response = self._http.request(method, path, **kwargs)
        except (httpx.ConnectError, httpx.RemoteProtocolError, FileNotFoundError) as exc:
            raise self._unavailable(exc) from None
        return answer_json(response)

    def health(self) -> dict[str, Any]:
        return self._request("GET", "/healthz")

    def models(self) -> list[dict[str, Any]]:
        models: list[dict[str, Any]] = self._request("GET", "/v1/models")["data"]
        return models

    def stats(self) -> dict[str, Any]:
        return self._request("GET", "/v1/stats")

    def reload(self) -> dict[str, Any]:
        """Have the daemon re-read its config and swap in the new students (its own user or root only)."""
        return self._request("POST", "/v1/admin/reload")

    def cache(self, action: str, **body: Any) -> dict[str, Any]:
        """`stats`, `why`, `forget` or `clear` on the daemon's semantic cache."""
        if action == "stats":
            return self._request("GET", "/v1/cache/stats")
        path = "/v1/cache/why" if action == "why" else f"/v1/admin/cache/{action}"
        return self._request("POST", path, json={k: v for k, v in body.items() if v is not None})

    def chat(self, messages: list[dict[str, Any]], **params: Any) -> dict[str, Any]:
        return self._request("POST", "/v1/chat/completions", json={"messages": messages, **params, "stream": False})

    def stream_chat(self, messages: list[dict[str, Any]], **params: Any) -> Iterator[dict[str, Any]]:
        """Yield the server-sent chunks of a streamed answer."""
        payload = {"messages": messages, **params, "stream": True}
        try:
            with self._http.stream("POST", "/v1/chat/completions", json=payload) as response:
                if response.status_code != 200:
                    response.read()
                    answer_json(response)
                yield from sse_data(response.iter_lines())
        except (httpx.ConnectError, FileNotFoundError) as exc:
            raise self._unavailable(exc) from None


def sse_data(lines: Iterable[str]) -> Iterator[dict[str, Any]]:
    """The JSON payloads of a server-sent event stream's `data:` lines, up to `[DONE]`. Blank lines end
    events and `: ...` comments (the daemon's keep-alives) carry nothing; the space after the colon is
    optional, as the SSE format has it."""
    for line in lines:
        if not line.startswith("data:"):
            continue
        data = line[len("data:"):].removeprefix(" ")
        if data == "[DONE]":
            return
        yield json.loads(data)


def answer_json(response: httpx.Response) -> dict[str, Any]:
    """The JSON body of a daemon answer; an error status raises ApiRequestError with the daemon's message."""
    try:
        payload = response.json()
    except ValueError:
        payload = {}
    if response.status_code >= 400:
        error = payload.get("error") if isinstance(payload, dict) else None
        # OpenAI's shape is {"error": {"message": ...}}; a proxy in between may send a bare string.
        message = error.get("message") if isinstance(error, dict) else (str(error) if error else None)
        raise ApiRequestError(response.status_code, message or response.text[:200])
    if not isinstance(payload, dict):
        raise ApiRequestError(response.status_code, f"the daemon answered with no JSON object: {response.text[:200]}")
    return payload

"""Real HTTP fakes of the teachers' REST APIs, for tests that drive the real clients end to end.

    with FakeGemini(api_key="k") as fake:
        fake.fail(Fault(status=429, retry_after=1))   # the next request gets a 429
        ...  # point [teacher].base_url at fake.base_url
        assert len(fake.requests) == 2

Each fake is a ThreadingHTTPServer on 127.0.0.1 (ephemeral port) in a background thread. A queue of
one-shot `Fault`s scripts misbehaviour; every request is recorded (without its key) for assertions.
"""

from __future__ import annotations

import json
import threading
from collections import deque
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable
from urllib.parse import parse_qsl, urlsplit

# Headers that carry a key: never recorded, so assertions cannot leak them either.
SECRET_HEADERS = frozenset({"authorization", "x-goog-api-key", "api-key"})


@dataclass(frozen=True)
class Fault:
    """One scripted misbehaviour, used up by the next request that passes routing and auth."""

    status: int | None = None
    """Answer with this HTTP error status, in the provider's error shape."""
    retry_after: float | None = None
    """With `status`: a Retry-After header (and Gemini's RetryInfo detail), in seconds."""
    delay: float = 0.0
    """Seconds to wait before answering at all (to trip the client's timeout)."""
    garbage: str | None = None
    """A 200 answer that is no answer: "json" (body not JSON), "empty" (no candidates/choices), "blocked" (refusal)."""
    error_code: str | None = None
    """With `status`: the provider's machine-readable error code (e.g. OpenAI's "insufficient_quota")."""


@dataclass
class RecordedRequest:
    """One request as the fake saw it; the key headers are left out, `authorized` says whether the key matched."""

    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    body: Any
    raw_body: bytes
    authorized: bool = False
    fault: Fault | None = None


@dataclass
class Reply:
    status: int
    body: bytes
    headers: dict[str, str] = field(default_factory=dict)
    content_type: str = "application/json; charset=UTF-8"

    @classmethod
    def json(cls, status: int, payload: Any, headers: dict[str, str] | None = None) -> "Reply":
        return cls(status, json.dumps(payload).encode(), dict(headers or {}))


def count_tokens(text: str) -> int:
    """The fakes' tokenizer: one token per whitespace-separated word (deterministic, easy to predict in tests)."""
    return len(text.split())


def default_answer(prompt: str) -> str:
    return f"teacher answer to: {prompt}"


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, like the real endpoints; every reply has a Content-Length
    server: "_Server"

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base class's name
        pass

    def _serve(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        reply = self.server.fake._dispatch(self.command, self.path, dict(self.headers.items()), raw)
        if reply is None:  # the fake is shutting down mid-delay
            self.close_connection = True
            return
        try:
            self.send_response(reply.status)
            self.send_header("Content-Type", reply.content_type)
            self.send_header("Content-Length", str(len(reply.body)))
            for name, value in reply.headers.items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(reply.body)
        except (BrokenPipeError, ConnectionResetError):
            # The client gave up (a timeout test): nothing to answer.
            self.close_connection = True

    do_POST = do_GET = do_PUT = do_DELETE = _serve


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    fake: "FakeServer"

    def handle_error(self, request: Any, client_address: Any) -> None:
        # Clients hanging up on a delayed answer are expected; anything else is still worth seeing.
        import sys

        if not isinstance(sys.exc_info()[1], (BrokenPipeError, ConnectionResetError, TimeoutError)):
            super().handle_error(request, client_address)


class FakeServer:
    """Shared machinery of the provider fakes; subclasses implement `handle`, `error_reply` and `garbage_reply`."""

    def __init__(self, api_key: str = "test-key", answer: Callable[[str], str] | None = None) -> None:
        self.api_key = api_key
        self.answer: Callable[[str], str] = answer or default_answer
        self.faults: deque[Fault] = deque()
        self.requests: list[RecordedRequest] = []
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle -------------------------------------------------------------------------------
    def start(self) -> "FakeServer":
        """Listen on 127.0.0.1 on a free port and serve from a background thread."""
        self._server = _Server(("127.0.0.1", 0), _Handler)
        self._server.fake = self
        # A short poll interval: shutdown() waits for the loop's next poll, 0.5 s by default, on every test.
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.02}, name=type(self).__name__, daemon=True
        )
        self._thread.start()
        return self

    def close(self) -> None:
        """Stop serving; delayed answers still waiting are dropped."""
        self._stopping.set()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def port(self) -> int:
        assert self._server is not None, "start the fake first"
        return self._server.server_address[1]

    @property
    def url(self) -> str:
        """http://127.0.0.1:PORT"""
        return f"http://127.0.0.1:{self.port}"

    @property
    def base_url(self) -> str:
        """What to put in [teacher].base_url."""
        return self.url

    # -- scripting -------------------------------------------------------------------------------
    def fail(self, *faults: Fault) -> None:
        """Queue one-shot faults; each request that passes routing and auth uses up the next one."""
        with self._lock:
            self.faults.extend(faults)

    def fail_times(self, n: int, **fault: Any) -> None:
        """Queue the same fault `n` times, e.g. `fail_times(3, status=503)`."""
        self.fail(*[Fault(**fault)] * n)

    @property
    def last(self) -> RecordedRequest:
        with self._lock:
            return self.requests[-1]

    # -- serving ---------------------------------------------------------------------------------
    def _dispatch(self, method: str, target: str, headers: dict[str, str], raw: bytes) -> Reply | None:
        parts = urlsplit(target)
        query = dict(parse_qsl(parts.query))
        lowered = {name.lower(): value for name, value in headers.items()}
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            body = None
        recorded = RecordedRequest(
            method=method,
            path=parts.path,
            query={k: v for k, v in query.items() if k != "key"},
            headers={k: v for k, v in lowered.items() if k not in SECRET_HEADERS},
            body=body,
            raw_body=raw,
        )
        with self._lock:
            self.requests.append(recorded)
        routed = self.route(method, parts.path)
        if isinstance(routed, Reply):
            return routed
        auth_error = self.check_auth(lowered, query)
        if auth_error is not None:
            return auth_error
        recorded.authorized = True
        with self._lock:
            fault = self.faults.popleft() if self.faults else None
        recorded.fault = fault
        if fault is not None:
            if fault.delay and self._stopping.wait(fault.delay):
                return None
            if fault.status is not None:
                return self.error_reply(fault.status, fault)
            if fault.garbage is not None:
                return self.garbage_reply(fault.garbage, routed)
        if body is None or not isinstance(body, dict):
            return self.bad_json_reply(raw)
        return self.handle(routed, body)

    # -- provider specifics (subclasses) ---------------------------------------------------------
    def route(self, method: str, path: str) -> Any:
        """Whatever `handle` needs from the path (e.g. the model), or a `Reply` (404) for unknown paths."""
        raise NotImplementedError

    def check_auth(self, headers: dict[str, str], query: dict[str, str]) -> Reply | None:
        raise NotImplementedError

    def handle(self, routed: Any, body: dict[str, Any]) -> Reply:
        raise NotImplementedError

    def error_reply(self, status: int, fault: Fault) -> Reply:
        raise NotImplementedError

    def garbage_reply(self, kind: str, routed: Any) -> Reply:
        raise NotImplementedError

    def bad_json_reply(self, raw: bytes) -> Reply:
        raise NotImplementedError

    @staticmethod
    def html(status: int, title: str) -> Reply:
        """A load balancer's HTML error page, as real 502s look."""
        page = f"<!DOCTYPE html><html><head><title>{title}</title></head><body><h1>{title}</h1></body></html>"
        return Reply(status, page.encode(), content_type="text/html; charset=UTF-8")


# Imported last: the provider modules build on the machinery above.
from .gemini_server import FakeGemini  # noqa: E402
from .openai_server import FakeOpenAI  # noqa: E402

__all__ = ["Fault", "FakeGemini", "FakeOpenAI", "FakeServer", "RecordedRequest", "Reply", "count_tokens"]

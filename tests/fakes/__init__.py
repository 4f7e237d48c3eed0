"""Real HTTP fakes of the teachers' REST APIs, for tests that drive the real clients end to end.

    with FakeGemini(api_key="k") as fake:
        fake.fail(Fault(status=429, retry_after=1))   # the next request gets a 429
        ...  # point [teacher].base_url at fake.base_url
        assert len(fake.requests) == 2

Each fake is a ThreadingHTTPServer on 127.0.0.1 (ephemeral port) in a background thread. A queue of
one-shot `Fault`s scripts misbehaviour; every request is recorded (without its key) for assertions.

Streaming requests (Gemini's `:streamGenerateContent?alt=sse`, OpenAI's `"stream": true`) are answered
with server-sent events over chunked transfer encoding, one event per word of the answer, written as they
go; `chunk_delay` spaces the events out, and `Fault(cut_after=N)` breaks a stream off after N text events:

    with FakeOpenAI(api_key="k", chunk_delay=0.2) as fake:
        fake.fail(Fault(cut_after=2))                 # two words, then the connection drops
        fake.fail(Fault(cut_after=1, status=503))     # one word, then an error event ends the stream
"""

from __future__ import annotations

import json
import re
import socket
import threading
import time
from collections import deque
from dataclasses import dataclass, field, replace
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
    cut_after: int | None = None
    """Streams only: send this many text events, then drop the connection, or with `status` send the
    provider's error event in its place (a failure after the 200 has gone out); 0 cuts before any text."""
    stall: float = 0.0
    """With `cut_after`: seconds of silence before the cut (to trip the client's read timeout mid-stream)."""


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
    finished_at: float | None = None
    """`time.monotonic()` when a streamed answer's last byte was written (None for other answers)."""
    hung_up: threading.Event = field(default_factory=threading.Event)
    """Set when the client closed the connection while a streamed answer was still being written."""


@dataclass
class Reply:
    status: int
    body: bytes
    headers: dict[str, str] = field(default_factory=dict)
    content_type: str = "application/json; charset=UTF-8"

    @classmethod
    def json(cls, status: int, payload: Any, headers: dict[str, str] | None = None) -> "Reply":
        return cls(status, json.dumps(payload).encode(), dict(headers or {}))


@dataclass
class StreamReply:
    """A 200 answer sent as server-sent events, each written (and flushed) as its own HTTP chunk."""

    events: list[tuple[bytes, bool]]
    """Whole events ("data: ...\\n\\n"), each with whether it carries answer text."""
    delay: float = 0.0
    """Seconds between events."""
    headers: dict[str, str] = field(default_factory=dict)
    content_type: str = "text/event-stream"
    cut: bool = False
    """Drop the connection after the events instead of ending the body."""
    stall: float = 0.0
    """Seconds of silence before the cut."""
    record: RecordedRequest | None = None

    def cut_after(self, texts: int, error_event: bytes | None, stall: float = 0.0) -> "StreamReply":
        """This stream up to (not including) its text event number `texts + 1`, then `error_event` or a cut."""
        kept: list[tuple[bytes, bool]] = []
        seen = 0
        for event, has_text in self.events:
            if has_text:
                if seen == texts:
                    break
                seen += 1
            kept.append((event, has_text))
        if error_event is not None:
            kept.append((error_event, False))
        return replace(self, events=kept, cut=error_event is None, stall=stall)


def sse_event(payload: Any, line_end: str = "\n") -> bytes:
    """One `data:` event; non-ASCII is sent as UTF-8, as the real APIs do (U+2028 included)."""
    data = payload if isinstance(payload, str) else json.dumps(payload, ensure_ascii=False)
    return f"data: {data}{line_end}{line_end}".encode()


def split_words(text: str) -> list[str]:
    """The pieces a stream sends: one word each, with the whitespace before it ("a b" -> ["a", " b"])."""
    return [piece for piece in re.split(r"(?<=\S)(?=\s)", text) if piece]


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

    def setup(self) -> None:
        super().setup()
        # A streaming endpoint sends each event at once. Without this, Nagle's algorithm held the first
        # event back until the client acknowledged the headers, which on a reused connection it does only
        # after its delayed-ACK timer (40 ms on Linux): every streamed answer after the first looked 40 ms
        # slower to arrive than a real endpoint's.
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def _serve(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        reply = self.server.fake._dispatch(self.command, self.path, dict(self.headers.items()), raw)
        if reply is None:  # the fake is shutting down mid-delay
            self.close_connection = True
            return
        if isinstance(reply, StreamReply):
            self._stream(reply)
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

    def _stream(self, reply: StreamReply) -> None:
        stopping = self.server.fake._stopping
        try:
            self.send_response(200)
            self.send_header("Content-Type", reply.content_type)
            self.send_header("Transfer-Encoding", "chunked")
            self.send_header("Cache-Control", "no-cache")
            for name, value in reply.headers.items():
                self.send_header(name, value)
            self.end_headers()
            for index, event in enumerate(event for event, _ in reply.events):
                if index and reply.delay and stopping.wait(reply.delay):
                    self.close_connection = True
                    return
                self.wfile.write(b"%x\r\n%s\r\n" % (len(event), event))  # one HTTP chunk per event
                self.wfile.flush()
            if reply.cut:
                # The body ends without its last chunk: the client sees the connection drop mid-answer.
                stopping.wait(reply.stall)
                self.close_connection = True
            else:
                self.wfile.write(b"0\r\n\r\n")
                self.wfile.flush()
            if reply.record is not None:
                reply.record.finished_at = time.monotonic()
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True  # the client stopped reading (it left early, or timed out)
            if reply.record is not None:
                reply.record.hung_up.set()

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

    def __init__(
        self, api_key: str = "test-key", answer: Callable[[str], str] | None = None, chunk_delay: float = 0.0
    ) -> None:
        self.api_key = api_key
        self.answer: Callable[[str], str] = answer or default_answer
        self.chunk_delay = chunk_delay
        """Seconds between the events of a streamed answer."""
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
    def _dispatch(self, method: str, target: str, headers: dict[str, str], raw: bytes) -> Reply | StreamReply | None:
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
        streaming = self.streaming(parts.path, query, body)
        if fault is not None:
            if fault.delay and self._stopping.wait(fault.delay):
                return None
            if fault.status is not None and not (streaming and fault.cut_after is not None):
                return self.error_reply(fault.status, fault)
            if fault.garbage is not None:
                return self.garbage_stream(fault.garbage, routed) if streaming else self.garbage_reply(fault.garbage, routed)
        if body is None or not isinstance(body, dict):
            return self.bad_json_reply(raw)
        reply = self.handle_stream(routed, body) if streaming else self.handle(routed, body)
        if isinstance(reply, StreamReply):
            reply.record = recorded
            if fault is not None and fault.cut_after is not None:
                error = self.stream_error_event(fault.status, fault) if fault.status is not None else None
                reply = reply.cut_after(fault.cut_after, error, fault.stall)
        return reply

    # -- provider specifics (subclasses) ---------------------------------------------------------
    def route(self, method: str, path: str) -> Any:
        """Whatever `handle` needs from the path (e.g. the model), or a `Reply` (404) for unknown paths."""
        raise NotImplementedError

    def check_auth(self, headers: dict[str, str], query: dict[str, str]) -> Reply | None:
        raise NotImplementedError

    def handle(self, routed: Any, body: dict[str, Any]) -> Reply:
        raise NotImplementedError

    def streaming(self, path: str, query: dict[str, str], body: Any) -> bool:
        """Whether the request asks for a streamed answer."""
        raise NotImplementedError

    def handle_stream(self, routed: Any, body: dict[str, Any]) -> Reply | StreamReply:
        raise NotImplementedError

    def stream_error_event(self, status: int, fault: Fault) -> bytes:
        """The event a stream that has begun (status 200) ends with when the provider fails midway."""
        raise NotImplementedError

    def garbage_stream(self, kind: str, routed: Any) -> StreamReply:
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

__all__ = [
    "Fault", "FakeGemini", "FakeOpenAI", "FakeServer", "RecordedRequest", "Reply", "StreamReply", "count_tokens",
    "split_words",
]

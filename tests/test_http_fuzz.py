"""The HTTP server under arbitrary bytes, and the limits that keep one client from holding it.

A fake handler on the real `HttpServer` and a real Unix socket (quick: no model). Property: every
input gets well-formed HTTP responses with no server error, or a closed connection, and the server
answers a good request afterwards.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import socket
import threading
import time
from contextlib import contextmanager

import h11
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from appliance.config import parse_config
from appliance.errors import ConfigError
from appliance.server import http as http_module
from appliance.server.daemon import bind_socket
from appliance.server.http import HttpResponse, HttpServer, Limits, fit_connections_to_fd_limit, json_response

LIMITS = Limits(max_body_bytes=1024, max_head_bytes=4096, header_timeout_s=0.3, idle_timeout_s=1.0,
                max_connections=8)

# RFC 9112 names these two for features a server does not implement (an unknown transfer coding,
# an HTTP version other than 1.x): refusals, not failures.
NOT_IMPLEMENTED = {501, 505}


class Handler:
    """Echoes the request; `/stream` streams 64 KiB chunks until the client goes."""

    def __init__(self) -> None:
        self.calls = 0
        self.stream_closed = threading.Event()

    async def __call__(self, request):
        self.calls += 1
        if request.path == "/stream":
            return HttpResponse(200, stream=self._stream())
        return json_response(200, {"method": request.method, "path": request.path, "size": len(request.body)})

    async def _stream(self):
        try:
            while True:
                yield b"x" * 65536
                await asyncio.sleep(0)
        finally:
            self.stream_closed.set()


@contextmanager
def running(tmp_path, limits: Limits = LIMITS):
    handler = Handler()
    path = tmp_path / "fuzz.sock"
    loop = asyncio.new_event_loop()
    server = HttpServer(handler, limits)
    ready = threading.Event()

    def run():
        asyncio.set_event_loop(loop)
        loop.run_until_complete(server.start(bind_socket(path, 0o600)))
        ready.set()
        loop.run_forever()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    assert ready.wait(5)
    try:
        yield path, handler, server
    finally:
        async def shutdown():
            await server.stop_accepting()
            await server.drain(0)

        asyncio.run_coroutine_threadsafe(shutdown(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(5)
        loop.close()


@pytest.fixture(scope="module")
def fuzz_server(tmp_path_factory):
    with running(tmp_path_factory.mktemp("fuzz")) as served:
        yield served


def send(path, data: bytes, timeout: float = 5.0) -> bytes:
    """Send `data`, close our side, read until the server closes."""
    with socket.socket(socket.AF_UNIX) as sock:
        sock.settimeout(timeout)
        sock.connect(str(path))
        try:
            sock.sendall(data)
            sock.shutdown(socket.SHUT_WR)
        except (BrokenPipeError, ConnectionResetError):
            pass
        chunks = []
        while True:
            try:
                chunk = sock.recv(65536)
            except ConnectionResetError:  # closed with our bytes unread; what it sent came first
                break
            if not chunk:
                break
            chunks.append(chunk)
        return b"".join(chunks)


def responses(raw: bytes) -> list[int]:
    """The statuses of the whole, well-formed HTTP/1.1 responses in `raw`; fails on anything else."""
    statuses = []
    while raw:
        client = h11.Connection(h11.CLIENT)
        client.send(h11.Request(method="GET", target="/", headers=[("Host", "x")]))
        client.send(h11.EndOfMessage())
        client.receive_data(raw)
        client.receive_data(b"")
        while True:
            event = client.next_event()
            assert event is not h11.NEED_DATA, f"response cut short: {raw[:300]!r}"
            if isinstance(event, (h11.InformationalResponse, h11.Response)):
                statuses.append(event.status_code)
            elif isinstance(event, h11.EndOfMessage):
                break
        raw = client.trailing_data[0]
    return statuses


GOOD = b"GET /ok HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"


def check(path, data: bytes, caplog) -> None:
    for status in responses(send(path, data)):
        assert status < 500 or status in NOT_IMPLEMENTED, (status, data[:300])
    assert responses(send(path, GOOD)) == [200]
    # A plausible answer can hide an exception the server only logged.
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], caplog.text[-3000:]


# --- inputs ----------------------------------------------------------------------------------------

SEEDS = [
    GOOD,
    b"GET /a?b=c HTTP/1.1\r\nHost: x\r\nX-Request-Id: abc\r\n\r\nGET /b HTTP/1.1\r\nHost: x\r\n\r\n",
    b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 45\r\n\r\n"
    b'{"messages":[{"role":"user","content":"hi"}]}',
    b"POST /c HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
    b"4\r\nabcd\r\n3;ext=1\r\nefg\r\n0\r\nT: v\r\n\r\n",
    b"POST /d HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\nhello",
    b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n",
]

# Pieces of HTTP that make a random sequence reach deeper than random bytes do.
TOKENS = [
    b"GET", b"POST", b"PUT", b"OPTIONS", b"CONNECT", b"PRI", b" ", b"  ", b"/", b"/ok", b"*", b"?", b"%", b"#",
    b"http://[", b"HTTP/1.1", b"HTTP/1.0", b"HTTP/2.0", b"HTTP/9.9", b"\r\n", b"\n", b"\r", b":", b": ", b"Host",
    b"Content-Length", b"Transfer-Encoding", b"chunked", b"gzip", b"Expect", b"100-continue", b"Connection",
    b"close", b"Upgrade", b"h2c", b"0", b"1", b"5", b"ff", b"99999999999", b"-1", b"\x00", b"\xff", b"\t", b"a" * 100,
    b";", b",", b'{"messages":[]}',
]

http_ish = st.lists(st.sampled_from(TOKENS), max_size=40).map(b"".join)


def _chunked(parts: list[bytes]) -> bytes:
    return b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in parts) + b"0\r\n\r\n"


# Requests assembled from parts, each part valid or not: reaches the handler far more often.
_methods = st.sampled_from([b"GET", b"POST", b"PUT", b"DELETE", b"OPTIONS", b"CONNECT", b"PATCH", b"G\xffT", b""])
_targets = st.sampled_from([b"/", b"/ok", b"*", b"http://[", b"http://[::1/ok", b"http://x/ok", b"//x", b"/%zz",
                            b"/a?b=%ff&&c=", b"x:1", b"/\xff\xfe", b"/" + b"a" * 5000]) | st.binary(max_size=20)
_versions = st.sampled_from([b"HTTP/1.1", b"HTTP/1.0", b"HTTP/2.0", b"HTTP/0.9", b"HTTP/1.11", b"http/1.1", b""])
_names = st.sampled_from([b"Host", b"Content-Length", b"Transfer-Encoding", b"Expect", b"Connection", b"Upgrade",
                          b"X-Request-Id", b"Content-Type", b"Cache-Control", b"X-Athanor-Namespace"])
_values = st.sampled_from([b"x", b"0", b"5", b"-1", b" 3 ", b"chunked", b"gzip, chunked", b"chunked, gzip",
                           b"100-continue", b"close", b"keep-alive", b"h2c", b"9" * 25, b"a" * 5000]) | st.binary(
    max_size=20)
_bodies = (st.binary(max_size=200) | st.lists(st.binary(max_size=40), max_size=4).map(_chunked)
           | st.sampled_from([b"0\r\n\r\n", b"5\r\nab", b"x" * 2000]))
one_request = st.builds(
    lambda method, target, version, headers, body: b"%s %s %s\r\n%s\r\n%s" % (
        method, target, version, b"".join(b"%s: %s\r\n" % header for header in headers), body),
    _methods, _targets, _versions, st.lists(st.tuples(_names | st.binary(min_size=1, max_size=10), _values),
                                             max_size=6), _bodies)
http_requests = st.lists(one_request, min_size=1, max_size=3).map(b"".join)


@st.composite
def mutated(draw) -> bytes:
    data = bytearray(draw(st.sampled_from(SEEDS)))
    for _ in range(draw(st.integers(1, 4))):
        position = draw(st.integers(0, len(data)))
        kind = draw(st.sampled_from(["flip", "insert", "token", "delete", "repeat", "truncate"]))
        if kind == "flip" and position < len(data):
            data[position] ^= 1 << draw(st.integers(0, 7))
        elif kind == "insert":
            data[position:position] = draw(st.binary(min_size=1, max_size=16))
        elif kind == "token":
            data[position:position] = draw(st.sampled_from(TOKENS))
        elif kind == "delete":
            del data[position:position + draw(st.integers(1, 16))]
        elif kind == "repeat":
            piece = data[position:position + draw(st.integers(1, 64))]
            data[position:position] = piece * draw(st.integers(1, 80))
        elif kind == "truncate":
            del data[position:]
    return bytes(data)


FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@FUZZ
@given(data=st.binary(max_size=4096))
def test_arbitrary_bytes(fuzz_server, caplog, data):
    check(fuzz_server[0], data, caplog)


@settings(FUZZ, max_examples=500)
@given(data=http_ish)
def test_sequences_of_http_tokens(fuzz_server, caplog, data):
    check(fuzz_server[0], data, caplog)


@settings(FUZZ, max_examples=1500)
@given(data=http_requests)
def test_requests_assembled_from_good_and_bad_parts(fuzz_server, caplog, data):
    check(fuzz_server[0], data, caplog)


@settings(FUZZ, max_examples=1000)
@given(data=mutated())
def test_mutated_valid_requests(fuzz_server, caplog, data):
    check(fuzz_server[0], data, caplog)


FUZZ_EXAMPLES = 300 + 500 + 1500 + 1000
"""How many inputs the four tests above try per run."""


def test_the_seeds_are_valid(fuzz_server):
    # So that the mutations start from requests that work.
    for seed in SEEDS:
        assert all(status in (100, 200) for status in responses(send(fuzz_server[0], seed))), seed


# --- one client must not hold the server ---------------------------------------------------------


def test_connections_over_the_limit_get_503_and_are_not_read(tmp_path):
    limits = Limits(max_body_bytes=1024, max_head_bytes=4096, header_timeout_s=5, idle_timeout_s=5, max_connections=2)
    with running(tmp_path, limits) as (path, handler, server):
        holders = [socket.socket(socket.AF_UNIX) for _ in range(2)]
        try:
            for sock in holders:
                sock.connect(str(path))
            time.sleep(0.1)
            raw = send(path, GOOD)  # a whole request: refused all the same, unread
            assert responses(raw) == [503]
            head, _, body = raw.partition(b"\r\n\r\n")
            assert b"retry-after: 1" in head and b"connection: close" in head
            error = json.loads(body)["error"]
            assert error["code"] == "too_many_connections" and "[server].max_connections" in error["message"]
            assert handler.calls == 0
            assert server.refused == 1
        finally:
            for sock in holders:
                sock.close()
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and responses(send(path, GOOD)) != [200]:
            time.sleep(0.02)
        assert handler.calls == 1


def test_a_client_that_stops_reading_is_cut_off(tmp_path):
    # Without a deadline on writes, this client would hold its connection, and its slot, for ever.
    with running(tmp_path) as (path, handler, _):
        with socket.socket(socket.AF_UNIX) as sock:
            sock.connect(str(path))
            sock.sendall(b"GET /stream HTTP/1.1\r\nHost: x\r\n\r\n")
            assert handler.stream_closed.wait(LIMITS.idle_timeout_s + 4)


def test_a_client_that_pipelines_without_end_during_an_answer_is_cut_off(tmp_path):
    # Bytes that arrive while an answer is sent are kept for the next request: up to one request's worth.
    with running(tmp_path) as (path, handler, _):
        with socket.socket(socket.AF_UNIX) as sock:
            sock.settimeout(5)
            sock.connect(str(path))
            sock.sendall(b"GET /stream HTTP/1.1\r\nHost: x\r\n\r\n")
            sock.recv(65536)
            sent = 0
            try:
                while sent < 50 << 20 and not handler.stream_closed.is_set():
                    sent += sock.send(b"G" * 65536)
                    sock.recv(1 << 20)  # keep reading the answer, so only the pipelining is at fault
            except (BrokenPipeError, ConnectionResetError, socket.timeout):
                pass
            assert handler.stream_closed.wait(5)
            assert sent < 50 << 20


def test_connect_is_refused_before_the_handler(fuzz_server):
    path, handler, _ = fuzz_server
    calls = handler.calls
    assert responses(send(path, b"CONNECT x:1 HTTP/1.1\r\nHost: x:1\r\n\r\n")) == [405]
    assert handler.calls == calls


def test_head_gets_the_headers_without_a_body_and_keeps_the_connection(fuzz_server):
    raw = send(fuzz_server[0], b"HEAD /a HTTP/1.1\r\nHost: x\r\n\r\n" + GOOD)
    head, _, rest = raw.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200") and b"content-length: " in head
    assert responses(rest) == [200]


# --- the limit and the open-file limit -------------------------------------------------------------


def test_max_connections_is_validated_and_defaults_to_256():
    assert parse_config({}).server.max_connections == 256
    with pytest.raises(ConfigError, match=r"\[server\]\.max_connections"):
        parse_config({"server": {"max_connections": 0}})


@pytest.mark.parametrize(
    "soft, hard, wanted, expected, raised_to",
    [
        # Room enough: nothing changes.
        (100_000, 100_000, 256, 256, None),
        # systemd's default soft limit of 1024 with a high hard one: the soft limit is raised.
        (1024, 524288, 2000, 2000, "needed"),
        # The hard limit is too low: fewer connections, with a warning.
        (300, 300, 256, "fitted", None),
        # Far too low: still one connection.
        (40, 40, 256, 1, None),
    ],
)
def test_max_connections_fits_the_open_file_limit(monkeypatch, caplog, soft, hard, wanted, expected, raised_to):
    limits = {"now": (soft, hard)}
    monkeypatch.setattr(http_module.resource, "getrlimit", lambda _: limits["now"])
    monkeypatch.setattr(http_module.resource, "setrlimit", lambda _, value: limits.update(now=value))
    in_use = len(os.listdir("/proc/self/fd"))
    got = fit_connections_to_fd_limit(wanted)
    if expected == "fitted":
        expected = soft - in_use - 256
    assert abs(got - expected) <= 3  # the count of open files moves a little as the test runs
    if raised_to == "needed":
        assert limits["now"][0] >= wanted + 256 and limits["now"][1] == hard
    else:
        assert limits["now"] == (soft, hard)
    assert ("lowered" in caplog.text) == (got < wanted)

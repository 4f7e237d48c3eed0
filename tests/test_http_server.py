"""The socket-level HTTP server, with raw bytes on a real Unix socket."""

import asyncio
import json
import os
import socket
import threading
import time

import pytest

from appliance.server.daemon import bind_socket
from appliance.server.errors import openai_error
from appliance.server.http import ConnectionStats, HttpResponse, HttpServer, Limits, json_response


class Echo:
    def __init__(self) -> None:
        self.stream_closed = threading.Event()

    async def __call__(self, request):
        if request.path == "/boom":
            raise RuntimeError("handler bug")
        if request.path == "/forever":
            return HttpResponse(200, stream=self._forever())
        return json_response(200, {"path": request.path, "body": request.body.decode(), "uid": request.peer.uid,
                                   "id": request.request_id})

    async def _forever(self):
        try:
            while True:
                yield b"data: tick\n\n"
                await asyncio.sleep(0.01)
        finally:
            self.stream_closed.set()


@pytest.fixture
def server(tmp_path):
    handler = Echo()
    path = tmp_path / "s.sock"
    loop = asyncio.new_event_loop()
    http = HttpServer(handler, Limits(max_body_bytes=1024, max_head_bytes=4096, header_timeout_s=0.5,
                                      idle_timeout_s=2))
    ready = threading.Event()

    def run():
        asyncio.set_event_loop(loop)
        loop.run_until_complete(http.start(bind_socket(path, 0o660)))
        ready.set()
        loop.run_forever()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    ready.wait(5)
    yield path, handler

    async def shutdown():
        await http.stop_accepting()
        await http.drain(0)

    asyncio.run_coroutine_threadsafe(shutdown(), loop).result(10)
    loop.call_soon_threadsafe(loop.stop)
    thread.join(5)
    loop.close()


def exchange(path, data: bytes, read_timeout=5.0) -> bytes:
    with socket.socket(socket.AF_UNIX) as sock:
        sock.settimeout(read_timeout)
        sock.connect(str(path))
        sock.sendall(data)
        chunks = []
        while True:
            try:
                chunk = sock.recv(65536)
            except socket.timeout:
                break
            if not chunk:
                break
            chunks.append(chunk)
        return b"".join(chunks)


def status_of(raw: bytes) -> int:
    return int(raw.split(b" ", 2)[1])


def test_socket_file_has_the_configured_mode(server):
    path, _ = server
    assert oct(os.stat(path).st_mode & 0o777) == oct(0o660)


def test_answers_with_the_callers_uid_and_keeps_the_connection_alive(server):
    path, _ = server
    raw = exchange(path, b"GET /a HTTP/1.1\r\nHost: x\r\n\r\nPOST /b HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n"
                         b"Connection: close\r\n\r\nhi", read_timeout=3)
    assert raw.count(b"HTTP/1.1 200") == 2
    bodies = [json.loads(part.split(b"\r\n\r\n", 1)[1].split(b"HTTP/1.1")[0]) for part in raw.split(b"HTTP/1.1 200")[1:]]
    assert bodies[0]["uid"] == os.getuid()
    assert bodies[1]["body"] == "hi"
    assert bodies[0]["id"] != bodies[1]["id"]


@pytest.mark.parametrize(
    "request_bytes, status",
    [
        # Not HTTP at all.
        (b"hello there\r\n\r\n", 400),
        # A header line without a colon.
        (b"GET / HTTP/1.1\r\nHost: x\r\nbroken header\r\n\r\n", 400),
        # HTTP/1.1 requires Host.
        (b"GET / HTTP/1.1\r\n\r\n", 400),
        # A declared body over the limit is refused before it is read.
        (b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5000\r\n\r\n", 413),
        # A chunked body that grows over the limit is cut off.
        (b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n" + b"400\r\n" + b"a" * 1024 + b"\r\n"
         + b"400\r\n" + b"a" * 1024 + b"\r\n0\r\n\r\n", 413),
        # A head larger than the limit.
        (b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 8000 + b"\r\n\r\n", 431),
    ],
)
def test_malformed_or_oversized_requests_get_a_4xx_and_the_server_goes_on(server, request_bytes, status):
    path, _ = server
    raw = exchange(path, request_bytes)
    assert status_of(raw) == status
    assert b'"error"' in raw
    assert status_of(exchange(path, b"GET /ok HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")) == 200


def test_a_slow_sender_is_timed_out(server):
    path, _ = server
    with socket.socket(socket.AF_UNIX) as sock:
        sock.settimeout(5)
        sock.connect(str(path))
        started = time.monotonic()
        sock.sendall(b"GET / HTTP/1.1\r\n")
        for _ in range(20):  # a header byte every 0.1 s never completes the head
            try:
                sock.sendall(b"X")
            except (BrokenPipeError, ConnectionResetError):
                break
            time.sleep(0.1)
        raw = sock.recv(65536)
        assert status_of(raw) == 408
        assert time.monotonic() - started < 4


def test_a_handler_bug_is_a_500_not_a_dead_server(server):
    path, _ = server
    raw = exchange(path, b"GET /boom HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert status_of(raw) == 500
    assert status_of(exchange(path, b"GET /ok HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")) == 200


def test_a_client_that_leaves_mid_stream_closes_the_stream(server):
    path, handler = server
    with socket.socket(socket.AF_UNIX) as sock:
        sock.connect(str(path))
        sock.sendall(b"GET /forever HTTP/1.1\r\nHost: x\r\n\r\n")
        received = b""
        while b"tick" not in received:
            received += sock.recv(65536)
        assert not handler.stream_closed.is_set()
    assert handler.stream_closed.wait(5)


def test_a_second_daemon_on_a_live_socket_is_refused(server):
    from appliance.errors import AthanorError

    path, _ = server
    with pytest.raises(AthanorError, match="already listening"):
        bind_socket(path, 0o660)


def test_a_stale_socket_file_is_replaced(tmp_path):
    path = tmp_path / "stale.sock"
    old = socket.socket(socket.AF_UNIX)
    old.bind(str(path))
    old.close()  # the file stays, nobody listens
    fresh = bind_socket(path, 0o600)
    fresh.close()
    assert oct(os.stat(path).st_mode & 0o777) == oct(0o600)


def test_expect_100_continue_is_answered_before_the_body(server):
    path, _ = server
    with socket.socket(socket.AF_UNIX) as sock:
        sock.settimeout(5)
        sock.connect(str(path))
        sock.sendall(b"POST /x HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nExpect: 100-continue\r\n\r\n")
        assert sock.recv(65536).startswith(b"HTTP/1.1 100")
        sock.sendall(b"abc")
        received = b""
        while b'"body":"abc"' not in received:
            received += sock.recv(65536)


def test_the_errors_the_server_answers_itself_take_the_injected_shape():
    stats = ConnectionStats(max=2)
    http = HttpServer(Echo(), Limits(max_connections=2), error_payload=openai_error, stats=stats)
    _, _, body = http._busy.partition(b"\r\n\r\n")
    assert json.loads(body)["error"] == {"message": json.loads(body)["error"]["message"], "type": "server_overloaded",
                                         "param": None, "code": "too_many_connections"}
    stats.open, stats.refused = 1, 3
    assert http.connection_stats() == {"open": 1, "max": 2, "refused": 3} and http.refused == 3
    assert openai_error(413, "too big")["error"]["type"] == "invalid_request_error"
    assert openai_error(500, "oops")["error"]["type"] == "server_error"

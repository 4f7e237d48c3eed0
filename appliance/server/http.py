"""A small HTTP/1.1 server for a Unix socket: h11 parses, asyncio moves bytes, a handler answers.

It knows nothing of OpenAI or models. What it guarantees every handler: a bounded request
head and body (431/413), a deadline for slow senders, the caller's uid from SO_PEERCRED, and
that a client who goes away cancels the work done for it (the handler task is cancelled, so
`finally` blocks in streaming generators run and free their slot).
"""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
import socket
import string
import struct
from dataclasses import dataclass, field
from typing import AsyncIterator, Awaitable, Callable
from urllib.parse import parse_qs, urlsplit

import h11

from .errors import error_body

log = logging.getLogger(__name__)

_REASONS = {
    200: b"OK", 400: b"Bad Request", 404: b"Not Found", 405: b"Method Not Allowed", 408: b"Request Timeout",
    413: b"Payload Too Large", 415: b"Unsupported Media Type", 422: b"Unprocessable Entity",
    429: b"Too Many Requests", 431: b"Request Header Fields Too Large", 500: b"Internal Server Error",
    503: b"Service Unavailable",
}


@dataclass(frozen=True)
class Peer:
    pid: int
    uid: int
    gid: int


@dataclass(frozen=True)
class Limits:
    max_body_bytes: int = 1 << 20
    max_head_bytes: int = 32 << 10
    header_timeout_s: float = 10.0
    idle_timeout_s: float = 60.0


@dataclass
class HttpRequest:
    method: str
    target: str
    headers: dict[str, str]
    body: bytes
    peer: Peer | None
    request_id: str

    @property
    def path(self) -> str:
        return urlsplit(self.target).path

    @property
    def query(self) -> dict[str, list[str]]:
        return parse_qs(urlsplit(self.target).query)


@dataclass
class HttpResponse:
    status: int
    body: bytes = b""
    headers: list[tuple[str, str]] = field(default_factory=list)
    stream: AsyncIterator[bytes] | None = None
    """When set, the body is sent chunk by chunk as the iterator yields (SSE)."""


Handler = Callable[[HttpRequest], Awaitable[HttpResponse]]


_REQUEST_ID_CHARS = frozenset(string.ascii_letters + string.digits + "-_.:/+=@")


def request_id_for(headers: dict[str, str]) -> str:
    """The caller's `X-Request-Id` when it is sane (1-64 of `A-Za-z0-9-_.:/+=@`), else a fresh random one.

    Anything else is replaced rather than trusted: the id goes into log lines verbatim.
    """
    given = headers.get("x-request-id", "").strip()
    if 0 < len(given) <= 64 and set(given) <= _REQUEST_ID_CHARS:
        return given
    return secrets.token_hex(8)


def json_response(status: int, payload: object, headers: list[tuple[str, str]] | None = None) -> HttpResponse:
    body = json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode()
    return HttpResponse(status, body, [("content-type", "application/json"), *(headers or [])])


def peer_credentials(sock: socket.socket | None) -> Peer | None:
    """The connecting process's pid/uid/gid (Linux SO_PEERCRED); None where unsupported."""
    if sock is None or not hasattr(socket, "SO_PEERCRED"):
        return None
    try:
        raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    except OSError:
        return None
    return Peer(*struct.unpack("3i", raw))


class _ClientGone(Exception):
    pass


class HttpServer:
    """Serves `handler` on a listening Unix socket."""

    def __init__(self, handler: Handler, limits: Limits) -> None:
        self.handler = handler
        self.limits = limits
        self._connections: set[asyncio.Task] = set()
        self._active_requests = 0
        self._server: asyncio.AbstractServer | None = None

    @property
    def active_requests(self) -> int:
        return self._active_requests

    async def start(self, sock: socket.socket) -> None:
        self._server = await asyncio.start_unix_server(self._connection, sock=sock, limit=self.limits.max_head_bytes)

    async def stop_accepting(self) -> None:
        if self._server is not None:
            self._server.close()

    async def drain(self, timeout: float) -> None:
        """Wait up to `timeout` for in-flight requests, then drop every connection."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while self._active_requests and loop.time() < deadline:
            await asyncio.sleep(0.05)
        for task in list(self._connections):
            task.cancel()
        if self._connections:
            await asyncio.gather(*self._connections, return_exceptions=True)

    # --- one connection ------------------------------------------------------------------------

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._connections.add(task)
        conn = h11.Connection(h11.SERVER, max_incomplete_event_size=self.limits.max_head_bytes)
        peer = peer_credentials(writer.get_extra_info("socket"))
        try:
            while True:
                try:
                    request = await self._read_request(conn, reader, writer, peer)
                except _ClientGone:
                    return
                except h11.RemoteProtocolError as exc:
                    status = exc.error_status_hint
                    if status == 400 and len(conn.trailing_data[0]) >= self.limits.max_head_bytes:
                        status = 431
                    await self._send_error(conn, writer, status, f"malformed HTTP request: {exc}")
                    return
                except TimeoutError:
                    if conn.their_state is h11.IDLE and not conn.trailing_data[0]:
                        return  # idle keep-alive connection: close quietly
                    await self._send_error(conn, writer, 408, "request not received in time")
                    return
                except _TooLarge as exc:
                    await self._send_error(conn, writer, exc.status, str(exc))
                    return
                if request is None:
                    return
                self._active_requests += 1
                try:
                    completed = await self._respond(conn, reader, writer, request)
                finally:
                    self._active_requests -= 1
                if not completed or conn.our_state is h11.MUST_CLOSE or conn.their_state is not h11.DONE:
                    return
                conn.start_next_cycle()
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            self._connections.discard(task)
            writer.close()
            try:
                await writer.wait_closed()
            except (ConnectionError, OSError):
                pass

    async def _receive(self, conn: h11.Connection, reader: asyncio.StreamReader) -> None:
        data = await reader.read(65536)
        if not data and conn.their_state is h11.IDLE and not conn.trailing_data[0]:
            raise _ClientGone()
        conn.receive_data(data)

    async def _read_request(
        self, conn: h11.Connection, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, peer: Peer | None
    ) -> HttpRequest | None:
        """The next request with its whole body, or None when the client closed cleanly."""
        if conn.their_state is h11.IDLE and not conn.trailing_data[0]:
            async with asyncio.timeout(self.limits.idle_timeout_s):
                await self._receive(conn, reader)
        async with asyncio.timeout(self.limits.header_timeout_s):
            head = None
            while head is None:
                event = conn.next_event()
                if event is h11.NEED_DATA:
                    await self._receive(conn, reader)
                elif isinstance(event, h11.ConnectionClosed):
                    return None
                elif isinstance(event, h11.Request):
                    head = event
            head_size = len(head.target) + sum(len(k) + len(v) + 4 for k, v in head.headers)
            if head_size > self.limits.max_head_bytes:
                # h11 only bounds heads that arrive in pieces; a whole one in a single read is checked here.
                raise _TooLarge(f"request head of {head_size} bytes is over the limit of {self.limits.max_head_bytes}",
                                431)
            headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in head.headers}
            declared = headers.get("content-length")
            if declared is not None and declared.isdigit() and int(declared) > self.limits.max_body_bytes:
                raise _TooLarge(f"request body of {declared} bytes is over the limit of {self.limits.max_body_bytes}")
            if conn.they_are_waiting_for_100_continue:
                # curl asks before sending bodies over 1 KiB; without this it stalls for a second.
                await self._write(writer, conn.send(h11.InformationalResponse(status_code=100, headers=[])))
            body = bytearray()
            while True:
                event = conn.next_event()
                if event is h11.NEED_DATA:
                    await self._receive(conn, reader)
                elif isinstance(event, h11.Data):
                    body += event.data
                    if len(body) > self.limits.max_body_bytes:
                        raise _TooLarge(f"request body is over the limit of {self.limits.max_body_bytes} bytes")
                elif isinstance(event, h11.EndOfMessage):
                    break
                elif isinstance(event, h11.ConnectionClosed):
                    return None
        return HttpRequest(
            method=head.method.decode("latin-1"),
            target=head.target.decode("latin-1"),
            headers=headers,
            body=bytes(body),
            peer=peer,
            request_id=request_id_for(headers),
        )

    async def _respond(
        self, conn: h11.Connection, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, request: HttpRequest
    ) -> bool:
        """Run the handler and send its answer; cancel both if the client goes away. True if all was sent."""
        work = asyncio.create_task(self._handle_and_send(conn, writer, request))
        watch = asyncio.create_task(self._watch_for_hangup(conn, reader))
        done, _ = await asyncio.wait({work, watch}, return_when=asyncio.FIRST_COMPLETED)
        if work not in done:
            log.info("%s: client went away, cancelling", request.request_id)
            work.cancel()
        watch.cancel()
        await asyncio.gather(watch, return_exceptions=True)
        try:
            return await work
        except (asyncio.CancelledError, ConnectionError):
            if not asyncio.current_task().cancelling():  # type: ignore[union-attr]
                return False
            raise

    async def _watch_for_hangup(self, conn: h11.Connection, reader: asyncio.StreamReader) -> None:
        """Returns when the client closes its side; bytes of a pipelined next request are kept for later."""
        while True:
            data = await reader.read(65536)
            if not data:
                return
            conn.receive_data(data)

    async def _handle_and_send(self, conn: h11.Connection, writer: asyncio.StreamWriter, request: HttpRequest) -> bool:
        try:
            response = await self.handler(request)
        except Exception:
            log.exception("%s: handler failed", request.request_id)
            response = json_response(500, error_body("internal error; see the daemon's log", "server_error"))
        headers = [("x-request-id", request.request_id), *response.headers]
        if response.stream is None:
            headers.append(("content-length", str(len(response.body))))
        await self._write(writer, conn.send(h11.Response(status_code=response.status, headers=headers,
                                                        reason=_REASONS.get(response.status, b""))))
        if response.stream is None:
            if response.body:
                await self._write(writer, conn.send(h11.Data(data=response.body)))
        else:
            try:
                async for chunk in response.stream:
                    await self._write(writer, conn.send(h11.Data(data=chunk)))
            finally:
                await _aclose(response.stream)
        await self._write(writer, conn.send(h11.EndOfMessage()))
        return True

    async def _write(self, writer: asyncio.StreamWriter, data: bytes | None) -> None:
        if data:
            writer.write(data)
            await writer.drain()

    async def _send_error(self, conn: h11.Connection, writer: asyncio.StreamWriter, status: int, message: str) -> None:
        if conn.our_state not in (h11.IDLE, h11.SEND_RESPONSE):
            return
        body = json.dumps(error_body(message, "invalid_request_error")).encode()
        headers = [("content-type", "application/json"), ("content-length", str(len(body))), ("connection", "close")]
        try:
            await self._write(writer, conn.send(h11.Response(status_code=status, headers=headers,
                                                            reason=_REASONS.get(status, b""))))
            await self._write(writer, conn.send(h11.Data(data=body)))
            await self._write(writer, conn.send(h11.EndOfMessage()))
        except (ConnectionError, h11.LocalProtocolError):
            pass


class _TooLarge(Exception):
    def __init__(self, message: str, status: int = 413) -> None:
        super().__init__(message)
        self.status = status


async def _aclose(stream: AsyncIterator[bytes]) -> None:
    close = getattr(stream, "aclose", None)
    if close is not None:
        await close()

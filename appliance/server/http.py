"""A small HTTP/1.1 server for a Unix socket: h11 parses, asyncio moves bytes, a handler answers.

It knows nothing of OpenAI or models. What it guarantees every handler: a bounded request
head and body (431/413), a deadline for slow senders (408) and for clients that stop reading,
at most `max_connections` connections at once (the rest get 503 unread), the caller's uid from
SO_PEERCRED, and that a client who goes away cancels the work done for it (the handler task is
cancelled, so `finally` blocks in streaming generators run and free their slot).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import resource
import secrets
import socket
import string
import struct
import time
from dataclasses import dataclass, field
from typing import AsyncIterator, Awaitable, Callable
from urllib.parse import parse_qs, urlsplit

import h11

log = logging.getLogger(__name__)

_REASONS = {
    200: b"OK", 400: b"Bad Request", 403: b"Forbidden", 404: b"Not Found", 405: b"Method Not Allowed",
    408: b"Request Timeout",
    413: b"Payload Too Large", 415: b"Unsupported Media Type", 422: b"Unprocessable Entity",
    429: b"Too Many Requests", 431: b"Request Header Fields Too Large", 500: b"Internal Server Error",
    501: b"Not Implemented", 503: b"Service Unavailable", 505: b"HTTP Version Not Supported",
}

# A connection being closed gets this long to flush what is still buffered for it; then it is aborted.
_CLOSE_GRACE_S = 1.0


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
    """From connecting (or the first byte of a later request) to the request's last byte."""
    idle_timeout_s: float = 60.0
    """How long a keep-alive connection may sit idle, and a client may leave its answer unread."""
    max_connections: int = 256
    """Open connections at once; one more gets 503 at once and is closed unread."""
    max_connections_per_user: int = 128
    """Open connections of one uid at once: one local user's flood leaves room for the others."""


@dataclass
class RequestNotes:
    """What an inner layer learns about a request and an outer one reports (the access log prints the route).
    Every copy of a request (`dataclasses.replace` in a middleware) shares its one notes object."""

    route: str | None = None
    """Where the answer came from (cache, student, teacher), once the router has decided."""


@dataclass
class HttpRequest:
    method: str
    target: str
    headers: dict[str, str]
    body: bytes
    peer: Peer | None
    request_id: str
    remote: str | None = None
    """The client's address over TCP ("host:port"); None on the Unix socket, where `peer` says who it is."""
    client: str | None = None
    """Who an API key says is asking over TCP ("key:NAME", set by `KeyAuth`); None on the socket."""
    client_budget_usd: float | None = None
    """That key's daily teacher budget, if it has one."""
    notes: RequestNotes = field(default_factory=RequestNotes)

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

ErrorPayload = Callable[[int, str, str | None], object]
"""(status, message, code) -> the JSON value sent as the body of an error this layer answers itself.

Injected so the API's error shape is the API layer's business: this server only picks status and words.
"""


def plain_error(status: int, message: str, code: str | None = None) -> object:
    """The error body of a server given no `error_payload`."""
    return {"error": {"message": message, "code": code}}


@dataclass
class ConnectionStats:
    """Connection counts an `HttpServer` keeps up to date, for whoever reports them (/v1/stats).

    Created by whoever builds the server, so a reader needs this object and not the server.
    """

    max: int
    open: int = 0
    refused: int = 0
    """Connections turned away with 503 because `max_connections` were open."""

    def snapshot(self) -> dict[str, int]:
        return {"open": self.open, "max": self.max, "refused": self.refused}


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


def _who(writer: asyncio.StreamWriter) -> tuple[Peer | None, str | None, int | str]:
    """(peer credentials, remote address, the key its connections are counted under) of a new connection."""
    sock = writer.get_extra_info("socket")
    if sock is not None and sock.family == socket.AF_UNIX:
        peer = peer_credentials(sock)
        return peer, None, peer.uid if peer is not None else -1
    # Over TCP there are no credentials (SO_PEERCRED there would read as uid 0, root): the client
    # is its address, and an API key says who it is.
    address = writer.get_extra_info("peername") or ("?", 0)
    return None, f"{address[0]}:{address[1]}", f"host:{address[0]}"


class HttpServer:
    """Serves `handler` on a listening Unix socket, and optionally on TCP (`start_tcp`) with the same limits."""

    def __init__(self, handler: Handler, limits: Limits, error_payload: ErrorPayload = plain_error,
                 stats: ConnectionStats | None = None) -> None:
        self.handler = handler
        self.limits = limits
        self.error_payload = error_payload
        self.stats = stats or ConnectionStats(limits.max_connections)
        self._connections: set[asyncio.Task] = set()
        self._active_requests = 0
        self._servers: list[asyncio.AbstractServer] = []
        self._refused_logged_at = -1.0
        self._busy = self._busy_response(f"{limits.max_connections} are open, the limit ([server].max_connections)")
        self._busy_user = self._busy_response(f"you have {limits.max_connections_per_user} open, the limit for one "
                                              "user ([server].max_connections_per_user)")
        self._per_uid: dict[int | str, int] = {}
        """Open connections per uid on the socket, per client host over TCP."""

    @property
    def active_requests(self) -> int:
        return self._active_requests

    @property
    def refused(self) -> int:
        """Connections turned away with 503 because `max_connections` were open."""
        return self.stats.refused

    def connection_stats(self) -> dict[str, int]:
        """Open connections, the limit, and how many were refused for it (for /v1/stats)."""
        return self.stats.snapshot()

    async def start(self, sock: socket.socket) -> None:
        _name_fd_exhaustion(asyncio.get_running_loop())
        self._servers.append(
            await asyncio.start_unix_server(self._connection, sock=sock, limit=self.limits.max_head_bytes))

    async def start_tcp(self, host: str, port: int) -> tuple[str, int]:
        """Listen on TCP as well; returns the bound (host, port) (port 0 picks a free one)."""
        server = await asyncio.start_server(self._connection, host, port, limit=self.limits.max_head_bytes,
                                            reuse_address=True)
        self._servers.append(server)
        bound = server.sockets[0].getsockname()
        return str(bound[0]), int(bound[1])

    async def stop_accepting(self) -> None:
        for server in self._servers:
            server.close()

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
        if len(self._connections) >= self.limits.max_connections:
            await self._refuse(writer, self._busy)
            return
        peer, remote, uid = _who(writer)
        if self._per_uid.get(uid, 0) >= self.limits.max_connections_per_user:
            await self._refuse(writer, self._busy_user)
            return
        self._per_uid[uid] = self._per_uid.get(uid, 0) + 1
        self._connections.add(task)
        self.stats.open = len(self._connections)
        conn = h11.Connection(h11.SERVER, max_incomplete_event_size=self.limits.max_head_bytes)
        first = True
        try:
            while True:
                request = await self._next_request(conn, reader, writer, peer, first, remote)
                if request is None:
                    return
                first = False
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
        except asyncio.CancelledError:
            pass  # drain() at shutdown; ending normally keeps asyncio from logging it as an error
        except Exception:
            log.exception("connection failed; closing it")
        finally:
            await _close(writer)
            self._connections.discard(task)
            self.stats.open = len(self._connections)
            left = self._per_uid.pop(uid) - 1
            if left:
                self._per_uid[uid] = left

    async def _refuse(self, writer: asyncio.StreamWriter, busy: bytes) -> None:
        """Over a connection limit: a 503 without reading a byte of the request, then close."""
        writer.transport.pause_reading()
        self.stats.refused += 1
        now = time.monotonic()
        if now - self._refused_logged_at >= 10.0:
            self._refused_logged_at = now
            log.warning("refusing connections with 503: %d open, limits %d in all and %d per user "
                        "([server].max_connections, max_connections_per_user); %d refused so far",
                        len(self._connections), self.limits.max_connections, self.limits.max_connections_per_user,
                        self.stats.refused)
        try:
            writer.write(busy)
        except (ConnectionError, OSError):
            pass
        await _close(writer)

    async def _receive(self, conn: h11.Connection, reader: asyncio.StreamReader) -> None:
        data = await reader.read(65536)
        if not data and conn.their_state is h11.IDLE and not conn.trailing_data[0]:
            raise _ClientGone()
        conn.receive_data(data)

    async def _next_request(
        self, conn: h11.Connection, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, peer: Peer | None,
        first: bool, remote: str | None,
    ) -> HttpRequest | None:
        """The next request, or None when the connection is to close (an error answered, or the client gone)."""
        try:
            return await self._read_request(conn, reader, writer, peer, first, remote)
        except _ClientGone:
            return None
        except h11.RemoteProtocolError as exc:
            status = exc.error_status_hint
            if status == 400 and len(conn.trailing_data[0]) >= self.limits.max_head_bytes:
                status = 431
            await self._send_error(conn, writer, status, f"malformed HTTP request: {exc}")
        except TimeoutError:
            if conn.their_state is h11.IDLE and not conn.trailing_data[0]:
                return None  # idle keep-alive connection: close quietly
            await self._send_error(conn, writer, 408, "request not received in time")
        except _Refused as exc:
            await self._send_error(conn, writer, exc.status, str(exc))
        return None

    async def _read_request(
        self, conn: h11.Connection, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, peer: Peer | None,
        first: bool = False, remote: str | None = None,
    ) -> HttpRequest | None:
        """The next request with its whole body, or None when the client closed cleanly.

        A new connection's first request must be complete within header_timeout_s of connecting:
        connecting and sending nothing holds one of `max_connections` as surely as a slow head does.
        """
        if not first and conn.their_state is h11.IDLE and not conn.trailing_data[0]:
            async with asyncio.timeout(self.limits.idle_timeout_s):
                await self._receive(conn, reader)
        async with asyncio.timeout(self.limits.header_timeout_s):
            head = await self._read_head(conn, reader)
            if head is None:
                return None
            self._check_request_line(head)
            headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in head.headers}
            target = head.target.decode("latin-1")
            self._check_headers(headers, target)
            if conn.they_are_waiting_for_100_continue:
                # curl asks before sending bodies over 1 KiB; without this it stalls for a second.
                await self._write(writer, conn.send(h11.InformationalResponse(status_code=100, headers=[])))
            body = await self._read_body(conn, reader)
            if body is None:
                return None
        return HttpRequest(
            method=head.method.decode("latin-1"),
            target=target,
            headers=headers,
            body=body,
            peer=peer,
            request_id=request_id_for(headers),
            remote=remote,
        )

    async def _read_head(self, conn: h11.Connection, reader: asyncio.StreamReader) -> h11.Request | None:
        """The request line and headers, or None when the client closed cleanly."""
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                await self._receive(conn, reader)
            elif isinstance(event, h11.ConnectionClosed):
                return None
            elif isinstance(event, h11.Request):
                return event

    def _check_request_line(self, head: h11.Request) -> None:
        """Refuse (`_Refused`) a head too big, or a method or version this server does not serve."""
        head_size = len(head.target) + sum(len(k) + len(v) + 4 for k, v in head.headers)
        if head_size > self.limits.max_head_bytes:
            # h11 only bounds heads that arrive in pieces; a whole one in a single read is checked here.
            raise _Refused(f"request head of {head_size} bytes is over the limit of {self.limits.max_head_bytes}",
                           431)
        if head.method == b"CONNECT":
            # A 2xx would make h11 switch protocols (a tunnel); there is nothing to tunnel to here.
            raise _Refused("CONNECT is not supported; this is an HTTP API, not a proxy", 405)
        if head.http_version not in (b"1.0", b"1.1"):
            # h11 takes any digit.digit; HTTP/2's preface ("PRI * HTTP/2.0") lands here.
            raise _Refused(f"HTTP/{head.http_version.decode()} is not supported; speak HTTP/1.1", 505)

    def _check_headers(self, headers: dict[str, str], target: str) -> None:
        """Refuse (`_Refused`) ambiguous framing, a target that is no URL, or a declared body over the limit."""
        if "content-length" in headers and "transfer-encoding" in headers:
            # RFC 9112 6.3: ambiguous framing (the stuff of request smuggling); refuse and close.
            raise _Refused("both Content-Length and Transfer-Encoding are set; send only one", 400)
        try:
            urlsplit(target)
        except ValueError as exc:
            raise _Refused(f"request target {target[:200]!r} is not a valid URL: {exc}", 400) from None
        declared = headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.limits.max_body_bytes:
            raise _Refused(f"request body of {declared} bytes is over the limit of {self.limits.max_body_bytes}")

    async def _read_body(self, conn: h11.Connection, reader: asyncio.StreamReader) -> bytes | None:
        """The whole body, refused (`_Refused`) once it grows over the limit; None when the client closed."""
        body = bytearray()
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                await self._receive(conn, reader)
            elif isinstance(event, h11.Data):
                body += event.data
                if len(body) > self.limits.max_body_bytes:
                    raise _Refused(f"request body is over the limit of {self.limits.max_body_bytes} bytes")
            elif isinstance(event, h11.EndOfMessage):
                return bytes(body)
            elif isinstance(event, h11.ConnectionClosed):
                return None

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
        """Returns when the client closes its side; bytes of a pipelined next request are kept for later.

        Kept up to one whole request's worth: a client that sends more while its answer is being
        written is treated as gone, or it could fill the daemon's memory during a long answer.
        """
        room = self.limits.max_head_bytes + self.limits.max_body_bytes
        while True:
            data = await reader.read(65536)
            if not data:
                return
            room -= len(data)
            if room < 0:
                log.warning("client sent more than a request's worth (%d bytes) while being answered; closing",
                            self.limits.max_head_bytes + self.limits.max_body_bytes)
                return
            conn.receive_data(data)

    async def _handle_and_send(self, conn: h11.Connection, writer: asyncio.StreamWriter, request: HttpRequest) -> bool:
        try:
            response = await self.handler(request)
        except Exception:
            log.exception("%s: handler failed", request.request_id)
            response = json_response(500, self.error_payload(500, "internal error; see the daemon's log", None))
        headers = [("x-request-id", request.request_id), *response.headers]
        if response.stream is None:
            headers.append(("content-length", str(len(response.body))))
        await self._write(writer, conn.send(h11.Response(status_code=response.status, headers=headers,
                                                        reason=_REASONS.get(response.status, b""))))
        if request.method == "HEAD":  # the headers a GET would get, no body (h11 refuses to send one)
            if response.stream is not None:
                await _aclose(response.stream)
        elif response.stream is None:
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
        """Send `data`; a client that reads none of it for idle_timeout_s is cut off (ConnectionAbortedError).

        Without this deadline a client that stops reading holds its connection, and a streamed
        answer's slot, for ever.
        """
        if data:
            writer.write(data)
            try:
                async with asyncio.timeout(self.limits.idle_timeout_s):
                    await writer.drain()
            except TimeoutError:
                writer.transport.abort()
                raise ConnectionAbortedError(f"client read nothing for {self.limits.idle_timeout_s:g} s") from None

    def _busy_response(self, why: str) -> bytes:
        """The whole 503 a connection over a limit gets, built once."""
        body = json.dumps(self.error_payload(503, f"too many connections: {why}; retry in a second",
                                             "too_many_connections")).encode()
        head = (f"HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\n"
                f"content-length: {len(body)}\r\nretry-after: 1\r\nconnection: close\r\n\r\n")
        return head.encode() + body

    async def _send_error(self, conn: h11.Connection, writer: asyncio.StreamWriter, status: int, message: str) -> None:
        if conn.our_state not in (h11.IDLE, h11.SEND_RESPONSE):
            return
        body = json.dumps(self.error_payload(status, message, None)).encode()
        headers = [("content-type", "application/json"), ("content-length", str(len(body))), ("connection", "close")]
        try:
            await self._write(writer, conn.send(h11.Response(status_code=status, headers=headers,
                                                            reason=_REASONS.get(status, b""))))
            await self._write(writer, conn.send(h11.Data(data=body)))
            await self._write(writer, conn.send(h11.EndOfMessage()))
        except (ConnectionError, h11.LocalProtocolError):
            pass


class _Refused(Exception):
    """A request refused before its handler runs: answered with `status` and the connection closed."""

    def __init__(self, message: str, status: int = 413) -> None:
        super().__init__(message)
        self.status = status


async def _close(writer: asyncio.StreamWriter) -> None:
    """Close, letting buffered bytes go out for a moment; abort if the client is not reading them."""
    writer.close()
    try:
        async with asyncio.timeout(_CLOSE_GRACE_S):
            await writer.wait_closed()
    except TimeoutError:
        writer.transport.abort()
    except (ConnectionError, OSError, asyncio.CancelledError):
        pass


_ACCEPT_EXHAUSTED = "socket.accept() out of system resource"


def _name_fd_exhaustion(loop: asyncio.AbstractEventLoop) -> None:
    """Make asyncio's note on EMFILE at accept() one line that names the fix.

    asyncio survives running out of file descriptors itself: it stops accepting for a second and
    tries again (clients wait in the listen backlog meanwhile). It reports that to the loop's
    exception handler with a traceback, once for each accept() it still tries in that pass (up to
    100 a second); this makes it one warning every 10 s at most.
    """
    previous = loop.get_exception_handler()
    last_logged = -1e9
    unlogged = 0

    def handler(loop: asyncio.AbstractEventLoop, context: dict) -> None:
        nonlocal last_logged, unlogged
        if context.get("message") == _ACCEPT_EXHAUSTED:
            unlogged += 1
            now = time.monotonic()
            if now - last_logged >= 10.0:
                log.warning("cannot accept connections (%s, %d times); retrying each second. Lower "
                            "[server].max_connections or raise the open-file limit (LimitNOFILE=)",
                            context.get("exception"), unlogged)
                last_logged, unlogged = now, 0
        elif previous is not None:
            previous(loop, context)
        else:
            loop.default_exception_handler(context)

    loop.set_exception_handler(handler)


def fit_connections_to_fd_limit(wanted: int, reserve: int = 256) -> int:
    """`wanted` connections, or fewer when the open-file limit (RLIMIT_NOFILE) cannot hold them.

    The soft limit is raised towards the hard one first, as systemd expects of services that need
    more than 1024 files. `reserve` keeps room for the files the daemon has open now and opens later
    (models, databases, teacher connections) and for sockets asyncio accepts in one pass before the
    503 closes them. If the limit is still short, fewer connections are allowed and a warning says
    so: refusing with 503 is better than running out of descriptors.
    """
    try:
        in_use = len(os.listdir("/proc/self/fd"))
    except OSError:
        in_use = 64
    needed = wanted + in_use + reserve
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < needed:
        raised = needed if hard == resource.RLIM_INFINITY else min(hard, needed)
        if raised > soft:
            try:
                resource.setrlimit(resource.RLIMIT_NOFILE, (raised, hard))
                soft = raised
            except (ValueError, OSError):
                pass
    if soft == resource.RLIM_INFINITY or soft >= needed:
        return wanted
    fitted = max(1, soft - in_use - reserve)
    log.warning("[server].max_connections lowered from %d to %d: the open-file limit is %d and %d files are open; "
                "raise LimitNOFILE= (or ulimit -n) to allow more", wanted, fitted, soft, in_use)
    return fitted


async def _aclose(stream: AsyncIterator[bytes]) -> None:
    close = getattr(stream, "aclose", None)
    if close is not None:
        await close()

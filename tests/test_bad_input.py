"""Bad input at the real daemon's socket: each gets its precise status (or a closed connection),
and the daemon goes on answering.

`BAD_INPUTS` is the battery: raw bytes, sent whole over the session daemon's socket, each followed
by a real chat completion that must still get 200. The scenarios after it need time or many
sockets: slow senders, clients that leave, a connection flood, a process out of file descriptors.
"""

from __future__ import annotations

import json
import os
import re
import resource
import select
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import ROOT, shared_models_dir, start_daemon, stop_daemon, wait_for_socket

pytestmark = pytest.mark.e2e

MAX_BODY = 1 << 20  # [server].max_body_bytes's default, which the session daemon keeps
MAX_HEAD = 32 << 10  # Limits.max_head_bytes
N_CTX = 2048  # the embedded student's context


# --- raw HTTP ------------------------------------------------------------------------------------


def http(method: str, path: str, body: bytes = b"", headers: list[tuple[str, str]] | None = None,
         length: bool = True) -> bytes:
    """One request, Connection: close, Host given unless `headers` brings its own head lines."""
    lines = [f"{method} {path} HTTP/1.1".encode(), b"Host: athanor", b"Connection: close"]
    lines += [f"{k}: {v}".encode("latin-1") if isinstance(v, str) else k.encode() + b": " + v
              for k, v in (headers or [])]
    if length and (body or method == "POST"):
        lines.append(b"Content-Length: %d" % len(body))
    return b"\r\n".join(lines) + b"\r\n\r\n" + body


def chat(payload: object) -> bytes:
    body = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    return http("POST", "/v1/chat/completions", body, [("Content-Type", "application/json")])


HI = [{"role": "user", "content": "Say hi."}]


def ask(**fields: object) -> bytes:
    """A valid short chat request with `fields` changed."""
    return chat({"messages": HI, "max_tokens": 1, **fields})


@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> dict:
        return json.loads(self.body)


def parse(raw: bytes, head_only: bool = False) -> Reply:
    """One whole HTTP/1.1 response; fails on anything malformed or cut short."""
    head, sep, body = raw.partition(b"\r\n\r\n")
    assert sep, f"no complete response head in {raw[:200]!r}"
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    match = re.fullmatch(r"HTTP/1\.1 (\d{3}) [^\r\n]*", status_line)
    assert match, f"bad status line {status_line!r}"
    headers = {}
    for line in header_lines:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    if not head_only and "content-length" in headers:
        assert len(body) == int(headers["content-length"]), f"body cut short: {raw[:300]!r}"
    return Reply(int(match.group(1)), headers, body)


def exchange(path: Path, data: bytes, timeout: float = 30.0, half_close: bool = False) -> bytes:
    """Send `data`, read until the daemon closes. A daemon that closes first may break our send."""
    with socket.socket(socket.AF_UNIX) as sock:
        sock.settimeout(timeout)
        sock.connect(str(path))
        try:
            sock.sendall(data)
            if half_close:
                sock.shutdown(socket.SHUT_WR)
        except (BrokenPipeError, ConnectionResetError):
            pass
        return read_all(sock)


def read_all(sock: socket.socket) -> bytes:
    chunks = []
    while True:
        try:
            chunk = sock.recv(65536)
        except ConnectionResetError:  # Linux: the daemon closed with our bytes unread; what it sent came first
            break
        if not chunk:
            break
        chunks.append(chunk)
    return b"".join(chunks)


def assert_serves(path: Path) -> None:
    """A real chat completion (one token from the student) still gets 200."""
    reply = parse(exchange(path, ask(temperature=0)))
    assert reply.status == 200, reply.body
    assert reply.json()["choices"][0]["finish_reason"] in ("length", "stop")


# --- the battery --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Bad:
    id: str
    raw: bytes
    status: int
    param: str | None = None
    code: str | None = None
    half_close: bool = False
    words: str = ""
    """A fragment the error message must hold, where the status alone does not tell the causes apart."""


def nested(depth: int) -> bytes:
    """`messages` as a valid request whose `user` field nests `depth` lists deep."""
    return b'{"messages":[{"role":"user","content":"hi"}],"user":' + b"[" * depth + b"]" * depth + b"}"


def big_json(size: int) -> bytes:
    """A valid request padded with spaces to exactly `size` bytes."""
    body = json.dumps({"messages": HI, "max_tokens": 1}).encode()
    return body[:-1] + b" " * (size - len(body)) + b"}"


def chunked(*chunks: bytes) -> bytes:
    return b"".join(b"%x\r\n%s\r\n" % (len(c), c) for c in chunks) + b"0\r\n\r\n"


CHUNKED = [("Transfer-Encoding", "chunked")]

BAD_INPUTS: list[Bad] = [
    # --- not HTTP, or broken HTTP -----------------------------------------------------------------
    Bad("not-http", b"hello there\r\n\r\n", 400),
    Bad("binary-garbage", bytes(range(256)) + b"\r\n\r\n", 400),
    Bad("tls-client-hello", bytes.fromhex("160301020001") + b"\x00" * 64 + b"\r\n\r\n", 400),
    # An HTTP/0.9-style request line: no version.
    Bad("request-line-without-version", b"GET /healthz\r\n\r\n", 400),
    Bad("request-line-extra-field", b"GET /healthz HTTP/1.1 extra\r\nHost: a\r\n\r\n", 400),
    Bad("lowercase-http-version", b"GET /healthz http/1.1\r\nHost: a\r\n\r\n", 400),
    # h11 takes any digit.digit version; the daemon speaks 1.0 and 1.1 only.
    Bad("http-2.0-request-line", b"GET /healthz HTTP/2.0\r\nHost: a\r\n\r\n", 505),
    Bad("http2-preface", b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", 505),
    Bad("header-without-colon", b"GET /healthz HTTP/1.1\r\nHost: a\r\nbroken header\r\n\r\n", 400),
    Bad("space-in-header-name", b"GET /healthz HTTP/1.1\r\nHost: a\r\nBad Name: x\r\n\r\n", 400),
    Bad("space-before-colon", b"GET /healthz HTTP/1.1\r\nHost: a\r\nX-A : x\r\n\r\n", 400),
    Bad("nul-in-header-value", b"GET /healthz HTTP/1.1\r\nHost: a\r\nX-A: a\x00b\r\n\r\n", 400),
    Bad("bare-cr-in-header-value", b"GET /healthz HTTP/1.1\r\nHost: a\r\nX-A: a\rb\r\n\r\n", 400),
    Bad("invalid-utf8-in-header-name", b"GET /healthz HTTP/1.1\r\nHost: a\r\nX-\xff\xfe: a\r\n\r\n", 400),
    Bad("missing-host", b"GET /healthz HTTP/1.1\r\n\r\n", 400),
    Bad("content-length-not-a-number", http("POST", "/v1/chat/completions", b"{}", [("Content-Length", "abc")],
                                               length=False), 400),
    Bad("content-length-negative", http("POST", "/v1/chat/completions", b"{}", [("Content-Length", "-1")],
                                        length=False), 400),
    Bad("content-lengths-disagree", http("POST", "/v1/chat/completions", b"{}",
                                         [("Content-Length", "2"), ("Content-Length", "3")], length=False), 400),
    # Both framings at once: the stuff of request smuggling.
    Bad("content-length-and-chunked", http("POST", "/v1/chat/completions", chunked(b"{}"),
                                           [("Content-Length", "2"), *CHUNKED], length=False), 400,
        words="both Content-Length and Transfer-Encoding"),
    # RFC 9112 6.1: an unknown transfer coding is 501 Not Implemented (h11's answer), not a client error.
    Bad("transfer-encoding-gzip", http("POST", "/v1/chat/completions", b"{}",
                                       [("Transfer-Encoding", "gzip")], length=False), 501),
    Bad("bad-chunk-size", http("POST", "/v1/chat/completions", b"zz\r\n{}\r\n0\r\n\r\n", CHUNKED, length=False), 400),
    # urlsplit() raises on an unclosed IPv6 bracket; that was a 500.
    Bad("target-unclosed-ipv6-bracket", b"GET http://[::1/healthz HTTP/1.1\r\nHost: a\r\n\r\n", 400),
    Bad("head-over-max-head-bytes", http("GET", "/healthz", headers=[("X-Big", "a" * (MAX_HEAD + 1))]), 431),
    Bad("thousands-of-headers", http("GET", "/healthz", headers=[(f"X-{i}", "v") for i in range(5000)]), 431),
    Bad("target-over-max-head-bytes", http("GET", "/" + "a" * (MAX_HEAD + 1)), 431),
    # --- routes -----------------------------------------------------------------------------------
    Bad("unknown-path", http("GET", "/v1/nothing"), 404, code="not_found"),
    Bad("asterisk-target", b"OPTIONS * HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n", 404),
    # A 2xx to CONNECT would switch h11 into tunnel mode; it is refused before any route.
    Bad("connect-method", b"CONNECT athanor:80 HTTP/1.1\r\nHost: athanor:80\r\n\r\n", 405, words="CONNECT"),
    Bad("get-on-chat-completions", http("GET", "/v1/chat/completions"), 405),
    Bad("delete-on-healthz", http("DELETE", "/healthz"), 405),
    Bad("head-on-chat-completions", http("HEAD", "/v1/chat/completions"), 405),
    Bad("get-on-admin-reload", http("GET", "/v1/admin/reload"), 405),
    Bad("unknown-model", ask(model="no-such-model"), 404, "model", "model_not_found"),
    # A namespace header may not climb out of the caller's own namespace.
    Bad("namespace-header-with-slash", chat({"messages": HI, "max_tokens": 1}).replace(
        b"Content-Type", b"X-Athanor-Namespace: ../0\r\nContent-Type"), 400, "x-athanor-namespace"),
    # --- bodies: size and framing -----------------------------------------------------------------
    Bad("declared-body-over-limit", http("POST", "/v1/chat/completions", headers=[
        ("Content-Length", str(MAX_BODY + 1))], length=False), 413),
    Bad("declared-body-a-petabyte", http("POST", "/v1/chat/completions", headers=[
        ("Content-Length", str(10**15))], length=False), 413),
    # h11 refuses Content-Length values of over 20 digits outright.
    Bad("declared-body-30-digits", http("POST", "/v1/chat/completions", headers=[
        ("Content-Length", "9" * 30)], length=False), 400),
    Bad("chunked-body-over-limit", http("POST", "/v1/chat/completions", chunked(*[b" " * 65536] * 17), CHUNKED,
                                        length=False), 413),
    # One chunk that declares 4 MiB: cut off once the bytes received pass the limit.
    Bad("chunked-one-huge-chunk", http("POST", "/v1/chat/completions",
                                       b"%x\r\n" % (MAX_BODY * 4) + b" " * (MAX_BODY + 2), CHUNKED, length=False), 413),
    # No 100 Continue for a body that would be refused anyway.
    Bad("expect-continue-over-limit", http("POST", "/v1/chat/completions", headers=[
        ("Expect", "100-continue"), ("Content-Length", str(MAX_BODY + 1))], length=False), 413),
    Bad("body-shorter-than-declared", http("POST", "/v1/chat/completions", b"{}", [("Content-Length", "10")],
                                           length=False), 400, half_close=True),
    Bad("chunked-body-cut-short", http("POST", "/v1/chat/completions", b"10\r\n{}", CHUNKED, length=False), 400,
        half_close=True),
    Bad("empty-body", chat(b""), 400),
    # --- JSON -------------------------------------------------------------------------------------
    Bad("invalid-json", chat(b'{"messages": [}'), 400),
    Bad("truncated-json", chat(b'{"messages": [{"role": "user", "content": "hi"'), 400),
    Bad("json-trailing-garbage", chat(json.dumps({"messages": HI}).encode() + b" x"), 400),
    Bad("json-single-quotes", chat(b"{'messages': []}"), 400),
    Bad("json-array", chat(b"[]"), 400),
    Bad("json-null", chat(b"null"), 400),
    Bad("json-number", chat(b"42"), 400),
    Bad("json-string", chat(b'"messages"'), 400),
    Bad("invalid-utf8-in-body", chat(b'{"messages":[{"role":"user","content":"\xff\xfe"}]}'), 400),
    Bad("utf16-body", chat(json.dumps({"messages": HI}).encode("utf-16")), 400),
    # Valid JSON, invalid Unicode: was a 500 from the tokenizer's .encode().
    Bad("lone-surrogate-in-content", chat(b'{"messages":[{"role":"user","content":"a\\ud800b"}]}'), 400,
        "messages.0.content"),
    Bad("lone-surrogate-in-model", chat(b'{"messages":[{"role":"user","content":"a"}],"model":"\\udfff"}'), 400,
        "model"),
    Bad("lone-surrogate-in-stop", chat(b'{"messages":[{"role":"user","content":"a"}],"stop":["\\ud83d"]}'), 400,
        "stop.0"),
    # Python refuses to parse integers of over 4300 digits with a ValueError: was a 500.
    Bad("integer-of-5000-digits", chat(b'{"messages":[{"role":"user","content":"a"}],"seed":' + b"9" * 5000 + b"}"),
        400),
    Bad("json-nested-33-levels", chat(nested(32)), 400),
    Bad("json-nested-100000-levels", chat(nested(100_000)), 400),
    Bad("json-NaN-temperature", chat(b'{"messages":[{"role":"user","content":"a"}],"temperature":NaN}'), 400,
        "temperature"),
    Bad("json-Infinity-temperature", chat(b'{"messages":[{"role":"user","content":"a"}],"temperature":Infinity}'),
        400, "temperature"),
    Bad("json-minus-Infinity-top-p", chat(b'{"messages":[{"role":"user","content":"a"}],"top_p":-Infinity}'),
        400, "top_p"),
    # --- wrong types and values, field by field ---------------------------------------------------
    Bad("messages-missing", chat({"max_tokens": 1}), 400, "messages"),
    Bad("messages-null", chat({"messages": None}), 400, "messages"),
    Bad("messages-string", chat({"messages": "hi"}), 400, "messages"),
    Bad("messages-object", chat({"messages": {"role": "user", "content": "hi"}}), 400, "messages"),
    Bad("messages-empty", chat({"messages": []}), 400, "messages"),
    Bad("message-not-object", chat({"messages": ["hi"]}), 400, "messages.0"),
    Bad("role-missing", chat({"messages": [{"content": "hi"}]}), 400, "messages.0.role"),
    Bad("role-unknown", chat({"messages": [{"role": "wizard", "content": "hi"}]}), 400, "messages.0.role"),
    Bad("role-number", chat({"messages": [{"role": 1, "content": "hi"}]}), 400, "messages.0.role"),
    Bad("only-assistant-messages", chat({"messages": [{"role": "assistant", "content": "hi"}]}), 400),
    Bad("content-number", chat({"messages": [{"role": "user", "content": 5}]}), 400, "messages.0.content"),
    Bad("content-object", chat({"messages": [{"role": "user", "content": {"text": "hi"}}]}), 400,
        "messages.0.content"),
    Bad("content-image-part", chat({"messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": "data:,"}}]}]}), 400, "messages.0.content.0.type"),
    # The param names the field the client sent, not pydantic's union member ("content.list[TextPart]").
    Bad("content-text-part-number", chat({"messages": [{"role": "user", "content": [{"type": "text", "text": 5}]}]}),
        400, "messages.0.content.0.text"),
    Bad("name-number", ask(messages=[{"role": "user", "content": "hi", "name": 5}]), 400, "messages.0.name"),
    Bad("model-number", ask(model=5), 400, "model"),
    Bad("max-tokens-string", ask(max_tokens="5"), 400, "max_tokens"),
    Bad("max-tokens-float", ask(max_tokens=1.5), 400, "max_tokens"),
    Bad("max-tokens-bool", ask(max_tokens=True), 400, "max_tokens"),
    Bad("max-tokens-minus-1", ask(max_tokens=-1), 400, "max_tokens"),
    Bad("max-tokens-0", ask(max_tokens=0), 400, "max_tokens"),
    Bad("max-tokens-10e12", ask(max_tokens=10**12), 400, "max_tokens", "context_length_exceeded"),
    Bad("max-tokens-the-whole-context", ask(max_tokens=N_CTX), 400, "max_tokens", "context_length_exceeded"),
    Bad("max-completion-tokens-0", ask(max_completion_tokens=0), 400, "max_completion_tokens"),
    Bad("prompt-over-the-context", chat({"messages": [{"role": "user", "content": "hello " * 5000}]}), 400,
        "messages", "context_length_exceeded"),
    Bad("temperature-string", ask(temperature="hot"), 400, "temperature"),
    Bad("temperature-minus-1", ask(temperature=-1), 400, "temperature"),
    Bad("temperature-1e9", ask(temperature=1e9), 400, "temperature"),
    Bad("top-p-5", ask(top_p=5), 400, "top_p"),
    Bad("top-p-0", ask(top_p=0), 400, "top_p"),
    Bad("top-p-string", ask(top_p="all"), 400, "top_p"),
    Bad("stop-number", ask(stop=5), 400, "stop"),
    Bad("stop-list-of-numbers", ask(stop=[1]), 400, "stop.0"),
    Bad("stop-five-sequences", ask(stop=["a", "b", "c", "d", "e"]), 400),
    Bad("seed-string", ask(seed="42"), 400, "seed"),
    Bad("seed-float", ask(seed=1.5), 400, "seed"),
    Bad("seed-2-to-the-64", ask(seed=2**64), 400, "seed"),
    Bad("stream-string", ask(stream="yes"), 400, "stream"),
    Bad("stream-number", ask(stream=1), 400, "stream"),
    Bad("stream-options-string", ask(stream=True, stream_options="usage"), 400, "stream_options"),
    Bad("stream-options-include-usage-string", ask(stream=True, stream_options={"include_usage": "yes"}), 400,
        "stream_options.include_usage"),
    Bad("logprobs-string", ask(logprobs="yes"), 400, "logprobs"),
    Bad("top-logprobs-21", ask(logprobs=True, top_logprobs=21), 400, "top_logprobs"),
    Bad("top-logprobs-minus-1", ask(logprobs=True, top_logprobs=-1), 400, "top_logprobs"),
    Bad("top-logprobs-string", ask(logprobs=True, top_logprobs="5"), 400, "top_logprobs"),
    Bad("top-logprobs-without-logprobs", ask(top_logprobs=5), 400),
    Bad("n-2", ask(n=2), 400, "n", "unsupported_value"),
    Bad("n-0", ask(n=0), 400, "n"),
    Bad("n-string", ask(n="1"), 400, "n"),
    Bad("user-number", ask(user=5), 400, "user"),
    Bad("frequency-penalty-3", ask(frequency_penalty=3), 400, "frequency_penalty"),
    Bad("presence-penalty-string", ask(presence_penalty="some"), 400, "presence_penalty"),
    Bad("logit-bias-word-key", ask(logit_bias={"hello": -100}), 400, "logit_bias"),
    Bad("logit-bias-minus-1000", ask(logit_bias={"5": -1000}), 400, "logit_bias.5"),
    # Token ids are the student's own: one past its vocabulary (SmolLM2's 49152) would index past the logits.
    Bad("logit-bias-past-the-vocabulary", ask(logit_bias={"49152": -100}), 400, "logit_bias", "invalid_value",
        words="outside the vocabulary"),
    # --- fields not acted on: a 400 naming them, never silently ignored --------------------------
    Bad("unknown-field", ask(foo={"bar": [1, 2]}), 400, "foo", "unknown_parameter", words="supported: model"),
    Bad("tool-choice-without-tools", ask(tool_choice="required"), 400, None, "invalid_value", words="needs tools"),
    Bad("functions", ask(functions=[{"name": "f"}]), 400, "functions", "unsupported_parameter"),
    Bad("response-format-schema-without-type", ask(response_format={"type": "text", "json_schema": {"name": "x"}}),
        400, "response_format", "invalid_value", words='goes with type "json_schema"'),
    Bad("message-name", ask(messages=[{"role": "user", "content": "hi", "name": "alice"}]), 400, "messages.0.name",
        "unsupported_parameter"),
    # --- odd but acceptable: served ---------------------------------------------------------------
    # Fields that cannot change the answer, and nulls, which carry nothing.
    Bad("harmless-fields", ask(user="u", metadata={"a": "b"}, store=False, parallel_tool_calls=True, n=1,
                               response_format={"type": "text"}, tools=None, tool_choice=None), 200),
    Bad("penalties-and-logit-bias", ask(frequency_penalty=1.5, presence_penalty=-0.5, logit_bias={"0": -100}), 200),
    # obs-text (bytes >= 0x80) is legal in header values; they are read as latin-1.
    Bad("invalid-utf8-in-header-value", http("GET", "/healthz", headers=[("X-Anything", b"\xff\xfe\xc3")]), 200),
    Bad("junk-request-id", http("GET", "/healthz", headers=[("X-Request-Id", "a b\tc;" * 40)]), 200),
    Bad("body-of-exactly-max-body-bytes", chat(big_json(MAX_BODY)), 200),
    Bad("chunked-body", http("POST", "/v1/chat/completions", chunked(*[bytes([b]) for b in ask().split(
        b"\r\n\r\n", 1)[1]]), CHUNKED, length=False), 200),
    Bad("seed-minus-1", ask(seed=-1), 200),
    Bad("empty-stop-strings", ask(stop=["", ""]), 200),
    Bad("http-1.0-without-host", b"GET /healthz HTTP/1.0\r\n\r\n", 200),
    Bad("absolute-form-target", b"GET http://athanor/healthz HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n", 200),
]


def _check(reply: Reply, case: Bad) -> None:
    assert reply.status == case.status, f"{case.id}: {reply.status} {reply.body[:300]!r}"
    if reply.status >= 400 and not case.raw.startswith(b"HEAD "):  # HEAD: the headers alone
        error = reply.json()["error"]
        assert error["message"], case.id
        if case.param is not None:
            assert error["param"] == case.param, error
        if case.code is not None:
            assert error["code"] == case.code, error
        assert case.words in error["message"], error


@pytest.mark.parametrize("case", BAD_INPUTS, ids=[case.id for case in BAD_INPUTS])
def test_bad_input_gets_its_status_and_the_daemon_goes_on(daemon, case):
    raw = exchange(daemon, case.raw, half_close=case.half_close)
    _check(parse(raw, head_only=case.raw.startswith(b"HEAD ")), case)
    assert_serves(daemon)


def test_the_battery_has_no_duplicates():
    assert len({case.id for case in BAD_INPUTS}) == len(BAD_INPUTS)
    assert len({case.raw for case in BAD_INPUTS}) == len(BAD_INPUTS)


# --- scenarios on the session daemon --------------------------------------------------------------


def test_head_is_answered_without_a_body_and_the_connection_stays_usable(daemon):
    # h11 refuses to send a body after HEAD: the response used to die mid-way with a traceback.
    with socket.socket(socket.AF_UNIX) as sock:
        sock.settimeout(10)
        sock.connect(str(daemon))
        sock.sendall(b"HEAD /healthz HTTP/1.1\r\nHost: a\r\n\r\nGET /healthz HTTP/1.1\r\nHost: a\r\n"
                     b"Connection: close\r\n\r\n")
        raw = read_all(sock)
    head, _, rest = raw.partition(b"\r\n\r\n")
    assert parse(head + b"\r\n\r\n", head_only=True).status == 405
    assert parse(rest).status == 200


def test_a_client_leaving_mid_body_costs_nothing(daemon):
    with socket.socket(socket.AF_UNIX) as sock:
        sock.connect(str(daemon))
        sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: a\r\nContent-Length: 1000\r\n\r\n"
                     b'{"messages": [')
    assert_serves(daemon)


def _busy(path: Path) -> int:
    return parse(exchange(path, http("GET", "/healthz"))).json()["busy"]


def test_a_client_leaving_mid_stream_frees_the_student(daemon):
    with socket.socket(socket.AF_UNIX) as sock:
        sock.settimeout(30)
        sock.connect(str(daemon))
        sock.sendall(ask(stream=True, max_tokens=1000, temperature=2.0, seed=1, messages=[
            {"role": "user", "content": "Write a very long story about a dragon."}]))
        received = b""
        while received.count(b"data: ") < 3:
            received += sock.recv(65536)
        assert b" 200 " in received.split(b"\r\n", 1)[0]
        assert b"[DONE]" not in received and _busy(daemon) == 1  # still generating when we leave
    deadline = time.monotonic() + 10
    while _busy(daemon) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _busy(daemon) == 0
    assert_serves(daemon)


def test_a_monster_prompt_does_not_stall_other_clients(daemon):
    # ~700 KB of short messages: llama.cpp takes seconds to tokenize the markup of 12,000 messages.
    # That ran on the event loop, and every other client waited for it.
    monster = chat({"messages": [{"role": "user", "content": "a"}] * 12_000, "max_tokens": 1})
    done: dict[str, float] = {}

    def send_monster():
        done["reply"] = parse(exchange(daemon, monster)).status
        done["monster"] = time.monotonic()

    thread = threading.Thread(target=send_monster)
    thread.start()
    time.sleep(0.3)  # the monster is being tokenized now
    assert parse(exchange(daemon, http("GET", "/healthz"))).status == 200
    healthz_done = time.monotonic()
    thread.join(60)
    assert done["reply"] == 400  # context_length_exceeded
    assert healthz_done < done["monster"], "the health check waited for the monster prompt's tokenization"


# --- a daemon of its own: small limits, and its log is read --------------------------------------


GUARDED = {
    "ATHANOR_SERVER__MAX_CONNECTIONS": "16",
    "ATHANOR_SERVER__HEADER_TIMEOUT_S": "1",
    "ATHANOR_SERVER__IDLE_TIMEOUT_S": "5",
    "ATHANOR_CACHE__ENABLED": "false",
    "ATHANOR_STUDENT__PARALLEL": "2",
    "ATHANOR_STUDENT__N_THREADS": "1",  # a core left for the event loop and the test's clients
}


class LogReader:
    """A daemon's output: its log file (conftest's start_daemon), or its pipe read as it comes, so a
    chatty daemon never blocks on a full pipe."""

    def __init__(self, process: subprocess.Popen) -> None:
        self.lines: list[str] = []
        self._log = getattr(process, "log_path", None)
        self._thread = None
        if self._log is None:
            self._thread = threading.Thread(target=lambda: self.lines.extend(process.stdout), daemon=True)
            self._thread.start()

    def text(self) -> str:
        if self._log is not None:
            return self._log.read_text()
        self._thread.join(10)
        return "".join(self.lines)


@pytest.fixture(scope="module")
def guarded(tmp_path_factory):
    """A daemon with max_connections 16 and a 1 s header timeout; its log must hold no traceback."""
    process, socket_path = start_daemon(tmp_path_factory.mktemp("guarded-home"), env=GUARDED)
    output = LogReader(process)
    yield socket_path
    stop_daemon(process)
    log = output.text()
    assert "Traceback" not in log, log[-5000:]
    assert "ERROR" not in log, log[-5000:]


def test_the_whole_battery_leaves_no_traceback_in_the_log(guarded):
    # Every case again, on a daemon whose log the fixture reads at the end: a client may see a
    # plausible answer while the daemon logs an exception (as HEAD did).
    for case in BAD_INPUTS:
        exchange(guarded, case.raw, half_close=case.half_close)
    assert_serves(guarded)


def test_a_slowloris_is_cut_off_while_others_are_served(guarded):
    outcome: dict[str, object] = {}

    def slowloris():
        with socket.socket(socket.AF_UNIX) as sock:
            sock.settimeout(10)
            sock.connect(str(guarded))
            started = time.monotonic()
            sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\n")
            while time.monotonic() - started < 5:
                try:
                    sock.sendall(b"X")  # a header byte every 0.1 s never completes the head
                except (BrokenPipeError, ConnectionResetError):
                    break
                if select.select([sock], [], [], 0.1)[0]:
                    break  # the daemon answered
            outcome["raw"] = read_all(sock)
            outcome["after_s"] = time.monotonic() - started

    thread = threading.Thread(target=slowloris)
    thread.start()
    time.sleep(0.2)
    assert_serves(guarded)  # meanwhile, another client gets its answer
    thread.join(10)
    assert parse(outcome["raw"]).status == 408
    assert outcome["after_s"] < 2.5  # header_timeout_s is 1


def test_a_silent_connection_is_closed_after_header_timeout_not_idle_timeout(guarded):
    # Connecting and sending nothing holds a connection slot as well as a slow head does.
    with socket.socket(socket.AF_UNIX) as sock:
        sock.settimeout(10)
        sock.connect(str(guarded))
        started = time.monotonic()
        assert read_all(sock) == b""
    assert time.monotonic() - started < 3  # idle_timeout_s is 5


def test_a_body_sent_too_slowly_is_cut_off(guarded):
    with socket.socket(socket.AF_UNIX) as sock:
        sock.settimeout(10)
        sock.connect(str(guarded))
        started = time.monotonic()
        sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: a\r\nContent-Length: 100\r\n\r\n{")
        raw = read_all(sock)
    assert parse(raw).status == 408
    assert time.monotonic() - started < 3


def test_a_connection_flood_gets_503_and_the_daemon_recovers(guarded):
    holders = []
    try:
        for _ in range(16):  # the limit, each mid-way through a request head
            sock = socket.socket(socket.AF_UNIX)
            sock.settimeout(10)
            sock.connect(str(guarded))
            sock.sendall(b"GET /healthz HTTP/1.1\r\n")
            holders.append(sock)
        time.sleep(0.2)  # all 16 accepted
        replies = []
        for _ in range(40):
            # Garbage, which a read would answer with 400: the 503 shows it was not read. (All 40 come
            # before the holders' 1 s header deadline frees a slot, or some would be 400s.)
            replies.append(exchange(guarded, b"\x00garbage\r\n\r\n", timeout=5))
        for raw in replies:
            reply = parse(raw)
            assert reply.status == 503, raw
            assert reply.headers["retry-after"] == "1"
            assert reply.headers["connection"] == "close"
            error = reply.json()["error"]
            assert error["code"] == "too_many_connections" and "max_connections" in error["message"]
    finally:
        for sock in holders:
            sock.close()
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:  # the holders' slots are freed as the daemon sees them close
        if parse(exchange(guarded, http("GET", "/healthz"))).status == 200:
            break
        time.sleep(0.05)
    assert_serves(guarded)
    stats = parse(exchange(guarded, http("GET", "/v1/stats"))).json()["connections"]
    assert stats["refused"] >= 40 and stats["max"] == 16 and 1 <= stats["open"] <= 16


# --- out of file descriptors ---------------------------------------------------------------------


def test_running_out_of_file_descriptors_does_not_stop_the_accept_loop(tmp_path):
    # The daemon uses ~10 descriptors; with 40 it has room for ~30 connections. asyncio meets
    # EMFILE at accept() by pausing accepts for 1 s; the daemon lowers max_connections to fit
    # the limit and says so, and names the fix when accept() runs out anyway.
    home = tmp_path / "home"
    home.mkdir()
    socket_path = home / "run" / "athanor.sock"
    env = {k: v for k, v in os.environ.items() if not k.startswith("ATHANOR_")}
    env.update({"ATHANOR_HOME": str(home), "ATHANOR_MODELS_DIR": str(shared_models_dir()), **GUARDED, "ATHANOR_SERVER__MAX_CONNECTIONS": "256"})

    def limit_files():
        resource.setrlimit(resource.RLIMIT_NOFILE, (40, 40))

    process = subprocess.Popen([sys.executable, "-m", "appliance.cli", "serve"], cwd=ROOT, env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, preexec_fn=limit_files)
    clients = []
    try:
        wait_for_socket(socket_path, process)
        output = LogReader(process)
        for _ in range(100):  # all wait in the listen backlog (128) until accepted
            sock = socket.socket(socket.AF_UNIX)
            sock.settimeout(15)
            sock.connect(str(socket_path))
            clients.append(sock)
        statuses = []
        for sock in clients:
            raw = read_all(sock)
            statuses.append(parse(raw).status if raw else None)
        # One slot, held by a client that sends nothing (closed after header_timeout_s); the rest 503.
        assert statuses.count(503) >= 95, statuses
        assert set(statuses) <= {503, None}, statuses
        assert_serves(socket_path)
        assert process.poll() is None
    finally:
        for sock in clients:
            sock.close()
        stop_daemon(process)
    log = output.text()
    assert "[server].max_connections lowered from 256 to 1" in log, log
    assert "cannot accept connections" in log and "LimitNOFILE" in log, log
    assert "Traceback" not in log, log

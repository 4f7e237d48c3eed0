"""The OpenAI chat-completions wire format: request validation and answer shapes (pure, no I/O)."""

from __future__ import annotations

import json
import time
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from ..engine.types import TokenEvent
from .errors import ApiError

MAX_JSON_DEPTH = 32


class _Strict(BaseModel):
    # Unknown fields are ignored, as OpenAI-compatible servers do, so newer clients still work.
    model_config = ConfigDict(extra="ignore", strict=True)


class TextPart(_Strict):
    type: Literal["text"]
    text: str


class ChatMessage(_Strict):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[TextPart] | None = None
    name: str | None = None

    def text(self) -> str:
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "".join(part.text for part in self.content)


class StreamOptions(_Strict):
    include_usage: bool = False


class ChatCompletionRequest(_Strict):
    model: str | None = None
    messages: list[ChatMessage] = Field(min_length=1)
    max_tokens: int | None = Field(default=None, ge=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    temperature: float = Field(default=1.0, ge=0.0, le=2.0)
    top_p: float = Field(default=1.0, gt=0.0, le=1.0)
    stop: str | list[str] | None = None
    seed: int | None = Field(default=None, ge=-(2**63), lt=2**64)
    stream: bool = False
    stream_options: StreamOptions | None = None
    logprobs: bool = False
    top_logprobs: int | None = Field(default=None, ge=0, le=20)
    n: int = Field(default=1, ge=1, le=1)
    user: str | None = None

    @model_validator(mode="after")
    def _check(self) -> "ChatCompletionRequest":
        if self.top_logprobs and not self.logprobs:
            raise ValueError("top_logprobs needs logprobs: true")
        if isinstance(self.stop, list) and len(self.stop) > 4:
            raise ValueError("stop takes at most 4 sequences")
        if not any(m.role in ("user", "system", "developer") for m in self.messages):
            raise ValueError("messages need at least one user, system or developer message")
        return self

    @property
    def stops(self) -> tuple[str, ...]:
        if self.stop is None:
            return ()
        stops = (self.stop,) if isinstance(self.stop, str) else tuple(self.stop)
        return tuple(s for s in stops if s)

    @property
    def answer_limit(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens

    def chat(self) -> list[dict[str, str]]:
        """Messages as the chat template wants them."""
        return [{"role": m.role if m.role != "developer" else "system", "content": m.text()} for m in self.messages]


def _depth(value: Any, limit: int) -> int:
    """Nesting depth of parsed JSON, stopping early past `limit`."""
    stack = [(value, 1)]
    deepest = 0
    while stack:
        item, depth = stack.pop()
        deepest = max(deepest, depth)
        if deepest > limit:
            return deepest
        if isinstance(item, dict):
            stack.extend((v, depth + 1) for v in item.values())
        elif isinstance(item, list):
            stack.extend((v, depth + 1) for v in item)
    return deepest


def _unpaired_surrogate(value: Any) -> str | None:
    """The path (`messages.0.content`) of the first string holding a lone UTF-16 surrogate, if any.

    JSON lets `"\\ud800"` through, Python decodes it, and the first `.encode()` downstream (the
    tokenizer, a log line) would fail: such strings are refused at the edge instead.
    """
    stack: list[tuple[Any, str]] = [(value, "")]
    while stack:
        item, path = stack.pop()
        if isinstance(item, str):
            if not item.isascii():
                try:
                    item.encode()
                except UnicodeEncodeError:
                    return path or "body"
        elif isinstance(item, dict):
            for key, child in item.items():
                stack.append((key, path or "body"))
                stack.append((child, f"{path}.{key}" if path else key))
        elif isinstance(item, list):
            stack.extend((child, f"{path}.{index}" if path else str(index)) for index, child in enumerate(item))
    return None


def parse_json_body(body: bytes) -> Any:
    """Decode a request body; any problem is a 400 that says what is wrong."""
    if not body:
        raise ApiError(400, "request body is empty; send a JSON object")
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ApiError(400, f"request body is not valid UTF-8 (byte {exc.start})") from None
    try:
        data = json.loads(text)
    except RecursionError:
        raise ApiError(400, f"JSON nested deeper than {MAX_JSON_DEPTH} levels") from None
    except json.JSONDecodeError as exc:
        raise ApiError(400, f"invalid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}") from None
    except ValueError as exc:  # an integer of more than 4300 digits (Python's int_max_str_digits)
        raise ApiError(400, f"invalid JSON: {exc}".split("; use sys.")[0]) from None
    if _depth(data, MAX_JSON_DEPTH) > MAX_JSON_DEPTH:
        raise ApiError(400, f"JSON nested deeper than {MAX_JSON_DEPTH} levels")
    where = _unpaired_surrogate(data)
    if where is not None:
        raise ApiError(400, f"{where}: holds an unpaired UTF-16 surrogate escape (such as \\ud800), which is not "
                            "valid Unicode; send characters as UTF-8 or as a surrogate pair", param=where,
                       code="invalid_value")
    return data


def parse_chat_request(body: bytes) -> ChatCompletionRequest:
    """Bytes to a validated request, or an `ApiError` naming the offending parameter."""
    data = parse_json_body(body)
    if not isinstance(data, dict):
        raise ApiError(400, "request body must be a JSON object")
    try:
        return ChatCompletionRequest.model_validate(data)
    except ValidationError as exc:
        param, message = _describe(exc.errors(), data)
        raise ApiError(400, f"{param}: {message}" if param else message, param=param, code="invalid_value") from None


def _data_path(error: Any, data: Any) -> tuple[Any, ...]:
    """An error's location in the request's own terms: without the union members pydantic adds
    (`stop.str`, `messages.0.content.list[TextPart].0.text`), which name no field a client sent."""
    path: list[Any] = []
    node = data
    loc = error["loc"]
    for index, part in enumerate(loc):
        if isinstance(node, dict) and part in node:
            node = node[part]
        elif isinstance(node, list) and isinstance(part, int) and 0 <= part < len(node):
            node = node[part]
        elif not (error["type"] == "missing" and index == len(loc) - 1):
            continue  # a union member's name
        path.append(part)
    return tuple(path)


def _describe(errors: list[Any], data: Any) -> tuple[str | None, str]:
    """The parameter and message of the most specific error; a value no member of a union took
    gets each member's complaint ("a valid string; or a valid list")."""
    paths = [_data_path(error, data) for error in errors]
    deepest = max(paths, key=len)
    messages = []
    for error, path in zip(errors, paths):
        if path == deepest:
            message = "required" if error["type"] == "missing" else error["msg"].removeprefix("Value error, ")
            if message not in messages:
                messages.append(message)
    param = ".".join(str(part) for part in deepest) or None
    return param, "; or ".join(messages)


# --- answers --------------------------------------------------------------------------------


def token_logprob(event: TokenEvent) -> dict[str, Any]:
    return {
        "token": event.text,
        "logprob": event.logprob,
        "bytes": list(event.raw),
        "top_logprobs": [{"token": t.token, "logprob": t.logprob, "bytes": list(t.raw)} for t in event.top],
    }


def usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


def completion_body(
    completion_id: str,
    model: str,
    text: str,
    finish_reason: str,
    prompt_tokens: int,
    completion_tokens: int,
    tokens: list[TokenEvent],
    with_logprobs: bool,
    extra: dict[str, Any],
    created: int | None = None,
) -> dict[str, Any]:
    """A `chat.completion` object with Athanor's provenance fields (`route`, ...) beside the standard ones."""
    return {
        "id": completion_id,
        "object": "chat.completion",
        "created": created or int(time.time()),
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": text},
                "logprobs": {"content": [token_logprob(t) for t in tokens]} if with_logprobs else None,
                "finish_reason": finish_reason,
            }
        ],
        "usage": usage(prompt_tokens, completion_tokens),
        **extra,
    }


def chunk_body(
    completion_id: str,
    model: str,
    created: int,
    delta: dict[str, Any] | None,
    finish_reason: str | None = None,
    tokens: list[TokenEvent] | None = None,
    extra: dict[str, Any] | None = None,
    usage_block: dict[str, int] | None = None,
) -> dict[str, Any]:
    """One `chat.completion.chunk`; `delta=None` makes the usage-only chunk of stream_options.include_usage."""
    choices = []
    if delta is not None:
        choices.append({
            "index": 0,
            "delta": delta,
            "logprobs": {"content": [token_logprob(t) for t in tokens]} if tokens is not None else None,
            "finish_reason": finish_reason,
        })
    body: dict[str, Any] = {
        "id": completion_id,
        "object": "chat.completion.chunk",
        "created": created,
        "model": model,
        "choices": choices,
        **(extra or {}),
    }
    if usage_block is not None:
        body["usage"] = usage_block
    return body


def sse(payload: dict[str, Any] | str) -> bytes:
    data = payload if isinstance(payload, str) else json.dumps(payload, ensure_ascii=False, separators=(",", ":"))
    return f"data: {data}\n\n".encode()


class ChunkWriter:
    """SSE chunks of one streamed answer. Content chunks, one per token, are the hot path: their
    fixed JSON around the text is rendered once, so each token costs one `json.dumps` of its text."""

    def __init__(self, completion_id: str, model: str, extra: dict[str, Any], created: int | None = None) -> None:
        self.completion_id = completion_id
        self.model = model
        self.created = created or int(time.time())
        self.extra = extra
        head = json.dumps(chunk_body(completion_id, model, self.created, {"content": "\0"}, extra=extra),
                          ensure_ascii=False, separators=(",", ":"))
        before, after = head.split('"\\u0000"')
        self._before = b"data: " + before.encode()
        self._after = after.encode() + b"\n\n"

    def content(self, text: str, tokens: list[TokenEvent] | None = None) -> bytes:
        if tokens is not None:
            return sse(chunk_body(self.completion_id, self.model, self.created, {"content": text}, tokens=tokens,
                                  extra=self.extra))
        return self._before + json.dumps(text, ensure_ascii=False).encode() + self._after

    def role(self) -> bytes:
        return sse(chunk_body(self.completion_id, self.model, self.created, {"role": "assistant", "content": ""},
                              extra=self.extra))

    def finish(self, reason: str, extra: dict[str, Any]) -> bytes:
        return sse(chunk_body(self.completion_id, self.model, self.created, {}, finish_reason=reason, extra=extra))

    def usage(self, prompt_tokens: int, completion_tokens: int, extra: dict[str, Any]) -> bytes:
        return sse(chunk_body(self.completion_id, self.model, self.created, None, extra=extra,
                              usage_block=usage(prompt_tokens, completion_tokens)))

"""The OpenAI chat-completions wire format: request validation and answer shapes (pure, no I/O)."""

from __future__ import annotations

import json
import re
import time
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from ..engine.types import JsonFormat, TokenEvent
from .tools import FunctionSpec, ToolCall, call_format, instructions, render_history_call
from .errors import ApiError

MAX_JSON_DEPTH = 32


class _Strict(BaseModel):
    # Nothing a client sends is ignored: a field the daemon does not act on is refused (see
    # `refuse_unsupported`, which words the refusal; "forbid" is the backstop for nested objects).
    model_config = ConfigDict(extra="forbid", strict=True)


class TextPart(_Strict):
    type: Literal["text"]
    text: str


class FunctionCallWire(_Strict):
    name: str
    arguments: str


class ToolCallWire(_Strict):
    id: str
    type: Literal["function"]
    function: FunctionCallWire


class ChatMessage(_Strict):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[TextPart] | None = None
    tool_calls: list[ToolCallWire] | None = None
    """An earlier assistant turn's calls (the client echoes them back in the history)."""
    tool_call_id: str | None = None
    """A tool message: which call it answers."""

    def text(self) -> str:
        if self.tool_calls:
            # The model sees its own earlier calls as the JSON it wrote for them.
            return "\n".join(filter(None, (self._content(), render_history_call(
                [c.model_dump() for c in self.tool_calls]))))
        return self._content()

    def _content(self) -> str:
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "".join(part.text for part in self.content)


class FunctionDefinition(_Strict):
    name: str = Field(pattern=r"^[A-Za-z0-9_-]{1,64}$")
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None
    """Accepted: a required call is held to `parameters` by the grammar whatever this says."""


class ToolDefinition(_Strict):
    type: Literal["function"]
    function: FunctionDefinition


class NamedFunction(_Strict):
    name: str


class NamedToolChoice(_Strict):
    type: Literal["function"]
    function: NamedFunction


class StreamOptions(_Strict):
    include_usage: bool = False
    include_obfuscation: bool | None = None
    """Accepted, no effect: OpenAI pads chunks against length side channels on a network; this is a local socket."""


class JsonSchemaSpec(_Strict):
    name: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_-]+$")
    description: str | None = None
    schema_: dict[str, Any] | None = Field(default=None, alias="schema")
    strict: bool | None = None
    """Accepted: the grammar holds every answer to the schema whatever this says."""


class ResponseFormat(_Strict):
    type: Literal["text", "json_object", "json_schema"]
    json_schema: JsonSchemaSpec | None = None

    @model_validator(mode="after")
    def _schema_with_its_type(self) -> "ResponseFormat":
        if (self.type == "json_schema") != (self.json_schema is not None):
            raise ValueError('json_schema goes with type "json_schema", and only with it')
        constraint = self.json_format()
        if constraint is not None and constraint.schema is not None:
            # Refused here, as a 400 before any decoding, when the grammar converter cannot express it.
            try:
                constraint.grammar()
            except Exception as exc:  # the converter raises plain exceptions (KeyError, ValueError, ...)
                raise ValueError(f"json_schema.schema cannot be turned into a grammar ({type(exc).__name__}: "
                                 f"{exc}); simplify the schema or ask for json_object") from None
        return self

    def json_format(self) -> JsonFormat | None:
        """The engine's JSON constraint; None for text."""
        if self.type == "text":
            return None
        if self.json_schema is None or self.json_schema.schema_ is None:
            return JsonFormat(name=self.json_schema.name if self.json_schema else None)
        return JsonFormat(json.dumps(self.json_schema.schema_, sort_keys=True), self.json_schema.name)


MAX_LOGIT_BIAS = 1024
"""Entries one request's logit_bias may hold."""


class SamplingRequest(_Strict):
    """The fields chat and text completions share: model, sampling, streaming."""

    model: str | None = None
    max_tokens: int | None = Field(default=None, ge=1)
    temperature: float = Field(default=1.0, ge=0.0, le=2.0)
    top_p: float = Field(default=1.0, gt=0.0, le=1.0)
    stop: str | list[str] | None = None
    seed: int | None = Field(default=None, ge=-(2**63), lt=2**64)
    stream: bool = False
    stream_options: StreamOptions | None = None
    n: int = Field(default=1, ge=1, le=1)
    frequency_penalty: float = Field(default=0.0, ge=-2.0, le=2.0)
    presence_penalty: float = Field(default=0.0, ge=-2.0, le=2.0)
    logit_bias: dict[str, Annotated[float, Field(ge=-100.0, le=100.0)]] | None = None
    user: str | None = None

    @field_validator("logit_bias")
    @classmethod
    def _token_ids(cls, value: dict[str, float] | None) -> dict[str, float] | None:
        return check_logit_bias(value)

    @property
    def stops(self) -> tuple[str, ...]:
        if self.stop is None:
            return ()
        stops = (self.stop,) if isinstance(self.stop, str) else tuple(self.stop)
        return tuple(s for s in stops if s)

    @property
    def biases(self) -> tuple[tuple[int, float], ...]:
        """logit_bias as (token id, bias) pairs in token order."""
        return tuple(sorted((int(k), float(v)) for k, v in (self.logit_bias or {}).items()))

    @property
    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)


class ChatCompletionRequest(SamplingRequest):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    logprobs: bool = False
    top_logprobs: int | None = Field(default=None, ge=0, le=20)
    response_format: ResponseFormat | None = None
    tools: list[ToolDefinition] | None = Field(default=None, max_length=128)
    tool_choice: Literal["none", "auto", "required"] | NamedToolChoice | None = None
    # Accepted without effect on the answer (see HARMLESS), as is `user`.
    safety_identifier: str | None = None
    metadata: dict[str, str] | None = None
    store: bool | None = None
    prompt_cache_key: str | None = None
    parallel_tool_calls: bool | None = None
    service_tier: str | None = None
    modalities: list[str] | None = None

    @model_validator(mode="after")
    def _check(self) -> "ChatCompletionRequest":
        if self.top_logprobs and not self.logprobs:
            raise ValueError("top_logprobs needs logprobs: true")
        if isinstance(self.stop, list) and len(self.stop) > 4:
            raise ValueError("stop takes at most 4 sequences")
        if not any(m.role in ("user", "system", "developer") for m in self.messages):
            raise ValueError("messages need at least one user, system or developer message")
        names = [t.function.name for t in self.tools or []]
        if len(set(names)) != len(names):
            raise ValueError("tools: two functions have the same name")
        if self.tool_choice not in (None, "none") and not names:
            raise ValueError("tool_choice needs tools to choose from")
        if isinstance(self.tool_choice, NamedToolChoice) and self.tool_choice.function.name not in names:
            raise ValueError(f"tool_choice names {self.tool_choice.function.name!r}, which is not among the tools")
        if self.tool_mode != "none" and self.response_format is not None and self.response_format.type != "text":
            raise ValueError("tools and a JSON response_format cannot both hold the answer; ask for one")
        for function in (t.function for t in self.tools or []):
            if function.parameters is not None:
                try:
                    JsonFormat(json.dumps(function.parameters, sort_keys=True)).grammar()
                except Exception as exc:  # the converter raises plain exceptions for what it cannot express
                    raise ValueError(f"tools: the parameters of {function.name!r} cannot be turned into a grammar "
                                     f"({type(exc).__name__}: {exc})") from None
        return self

    @property
    def tool_mode(self) -> str:
        """none (no tools offered), auto, required, or the name of the one function to call."""
        if not self.tools or self.tool_choice == "none":
            return "none"
        if isinstance(self.tool_choice, NamedToolChoice):
            return "function:" + self.tool_choice.function.name
        return self.tool_choice or "auto"

    def functions(self) -> list[FunctionSpec]:
        return [FunctionSpec(t.function.name, t.function.description, t.function.parameters)
                for t in self.tools or []]

    def output_format(self) -> JsonFormat | None:
        """What holds the answer: a required call's schema, the response format's, or nothing."""
        mode = self.tool_mode
        if mode == "required":
            return call_format(self.functions())
        if mode.startswith("function:"):
            return call_format(self.functions(), mode.removeprefix("function:"))
        return self.response_format.json_format() if self.response_format else None

    @property
    def answer_limit(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens

    def chat(self) -> list[dict[str, str]]:
        """Messages as the chat template wants them, after a system message offering the tools, if any."""
        messages = [{"role": m.role if m.role != "developer" else "system", "content": m.text()} for m in self.messages]
        mode = self.tool_mode
        if mode == "none":
            return messages
        required = None if mode == "auto" else "" if mode == "required" else mode.removeprefix("function:")
        offer = {"role": "system", "content": instructions(self.functions(), required)}
        if messages[0]["role"] == "system":  # one system turn: templates often keep only the first
            return [{"role": "system", "content": messages[0]["content"] + "\n\n" + offer["content"]}, *messages[1:]]
        return [offer, *messages]


_TOKEN_ID = re.compile(r"(0|[1-9][0-9]{0,8})")  # below 2**31: a llama_token

# --- what is refused, and why -----------------------------------------------------------------------
#
# A request field quietly ignored is worse than a visible 400: the client believes it got what it
# asked for. So every field is one of three kinds, and anything else is an unknown field (a 400 too;
# it is most often a misspelt one, `temprature`).
#
# IMPLEMENTED: each acts as OpenAI documents it.
IMPLEMENTED = (
    "model", "messages", "max_tokens", "max_completion_tokens", "temperature", "top_p", "stop", "seed",
    "stream", "stream_options", "logprobs", "top_logprobs", "n", "frequency_penalty", "presence_penalty",
    "logit_bias", "response_format", "tools", "tool_choice",
)
# HARMLESS: accepted, validated for type, and not acted on, because acting on them would not change
# the answer. Each with why:
HARMLESS = {
    "user": "an end-user id for the provider's abuse monitoring; Athanor knows its callers by uid "
            "(SO_PEERCRED) and answers the same whoever is named",
    "safety_identifier": "OpenAI's successor to `user`: the same reasoning",
    "metadata": "tags for OpenAI's stored-completions dashboard; they do not reach the model",
    "store": "false (or null) asks for nothing; true is refused: Athanor keeps no retrievable copy of a "
             "completion (its semantic cache is not OpenAI's stored-completions API)",
    "prompt_cache_key": "a routing hint for OpenAI's prompt cache; Athanor reuses shared prompt prefixes "
                        "by itself, and the answer is the same with or without it",
    "parallel_tool_calls": "an answer makes at most one call, which both true and false allow",
    "service_tier": '"auto" or "default": the one tier there is; any other tier is refused',
    "modalities": '["text"]: the one output there is; anything else (audio) is refused',
}
# Nested, accepted the same way: stream_options.include_obfuscation (padding against network side
# channels; this is a local socket). Message fields of OpenAI's own answers that a client may echo
# back in its history (`refusal`, `tool_calls`, `annotations`, ...) are accepted when null or empty,
# as is any known-but-unsupported field: a null carries nothing, so nothing is dropped.
#
# UNSUPPORTED: known, refused, with what to do instead.
UNSUPPORTED = {
    "functions": "the deprecated form of tools: send tools and tool_choice",
    "function_call": "the deprecated form of tool_choice: send tools and tool_choice",
    "audio": "this daemon answers in text only",
    "prediction": "predicted outputs are not implemented",
    "web_search_options": "the student answers offline, without web search",
    "reasoning_effort": "the student is not a reasoning model",
    "verbosity": "ask for a short or long answer in the prompt, or set max_tokens",
}
_MESSAGE_FIELDS = ("role", "content", "tool_calls", "tool_call_id")
_MESSAGE_UNSUPPORTED = {
    "name": "the student's chat template has no place for a participant name, so it could not reach the "
            'model; write it into the content instead ("Alice: ...")',
    "function_call": "the deprecated form of tool_calls: send tool_calls",
    "audio": "this daemon reads and writes text only",
    "refusal": "put the text in content",
    "annotations": "annotations are OpenAI's own output",
}


def _empty(value: Any) -> bool:
    return value is None or value == [] or value == {}


def _supported_list() -> str:
    return (f"supported: {', '.join(IMPLEMENTED)}; accepted without effect on the answer: "
            f"{', '.join(HARMLESS)}")


def _refused(param: str, message: str, code: str) -> ApiError:
    return ApiError(400, f"{param}: {message}", param=param, code=code)


def refuse_unsupported(data: dict[str, Any]) -> dict[str, Any]:
    """`data` without the fields that carry nothing (a null `tools`), or an `ApiError` naming the first
    field the daemon does not act on: unknown, known but unsupported, or a value not supported (n > 1,
    `response_format: json_object`, ...)."""
    cleaned: dict[str, Any] = {}
    for key, value in data.items():
        if key in UNSUPPORTED:
            if _empty(value):
                continue
            raise _refused(key, f"not supported ({UNSUPPORTED[key]}); {_supported_list()}", "unsupported_parameter")
        if key not in IMPLEMENTED and key not in HARMLESS:
            raise _refused(key, f"unknown parameter; {_supported_list()}", "unknown_parameter")
        cleaned[key] = value
    _refuse_values(cleaned)
    messages = cleaned.get("messages")
    if isinstance(messages, list):
        cleaned["messages"] = [_clean_message(m, i) if isinstance(m, dict) else m for i, m in enumerate(messages)]
    return cleaned


def _refuse_values(data: dict[str, Any]) -> None:
    n = data.get("n")
    if type(n) is int and n > 1:
        raise _refused("n", f"{n} choices per request are not supported, only 1; send {n} requests "
                            "(with different seeds) instead", "unsupported_value")
    if data.get("store") is True:
        raise _refused("store", "true is not supported: Athanor keeps no retrievable copy of a completion; "
                       "send false or leave it out", "unsupported_value")
    tier = data.get("service_tier")
    if isinstance(tier, str) and tier not in ("auto", "default"):
        raise _refused("service_tier", f"{tier!r} is not supported: there is one tier, \"default\" (or \"auto\")",
                       "unsupported_value")
    modalities = data.get("modalities")
    if isinstance(modalities, list) and any(m != "text" for m in modalities):
        raise _refused("modalities", 'only ["text"] is supported; this daemon answers in text', "unsupported_value")


def _clean_message(message: dict[str, Any], index: int) -> dict[str, Any]:
    cleaned = {}
    for key, value in message.items():
        param = f"messages.{index}.{key}"
        if key in _MESSAGE_UNSUPPORTED:
            if _empty(value):
                continue
            raise _refused(param, f"not supported ({_MESSAGE_UNSUPPORTED[key]})", "unsupported_parameter")
        if key not in _MESSAGE_FIELDS:
            raise _refused(param, "unknown message field; a message takes role and content (and tool_calls or "
                                  "tool_call_id)", "unknown_parameter")
        cleaned[key] = value
    return cleaned


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
    data = refuse_unsupported(data)
    try:
        return ChatCompletionRequest.model_validate(data)
    except ValidationError as exc:
        param, message, code = _describe(exc.errors(), data)
        raise ApiError(400, f"{param}: {message}" if param else message, param=param, code=code) from None


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


def _describe(errors: list[Any], data: Any) -> tuple[str | None, str, str]:
    """The parameter, message and code of the most specific error; a value no member of a union took
    gets each member's complaint ("a valid string; or a valid list")."""
    paths = [_data_path(error, data) for error in errors]
    deepest = max(paths, key=len)
    messages = []
    code = "invalid_value"
    for error, path in zip(errors, paths):
        if path == deepest:
            if error["type"] == "missing":
                message = "required"
            elif error["type"] == "extra_forbidden":  # a nested field `refuse_unsupported` does not know
                message, code = "unknown parameter, not supported here", "unknown_parameter"
            else:
                message = error["msg"].removeprefix("Value error, ")
            if message not in messages:
                messages.append(message)
    param = ".".join(str(part) for part in deepest) or None
    return param, "; or ".join(messages), code


# --- answers --------------------------------------------------------------------------------


def token_logprob(event: TokenEvent) -> dict[str, Any]:
    return {
        "token": event.text,
        "logprob": event.logprob,
        "bytes": list(event.raw),
        "top_logprobs": [{"token": t.token, "logprob": t.logprob, "bytes": list(t.raw)} for t in event.top],
    }


def check_logit_bias(value: dict[str, float] | None) -> dict[str, float] | None:
    """logit_bias's keys must be token ids (decimal strings), at most `MAX_LOGIT_BIAS` of them."""
    if value is None:
        return None
    if len(value) > MAX_LOGIT_BIAS:
        raise ValueError(f"at most {MAX_LOGIT_BIAS} entries")
    for key in value:
        if not _TOKEN_ID.fullmatch(key):
            raise ValueError(f"key {key!r} is not a token id; keys are the student's token ids as decimal "
                             'strings, such as {"1234": -100}')
    return value


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
    tool_call: ToolCall | None = None,
) -> dict[str, Any]:
    """A `chat.completion` object with Athanor's provenance fields (`route`, ...) beside the standard ones;
    with `tool_call`, the answer is that call (content null, finish_reason tool_calls)."""
    message: dict[str, Any] = {"role": "assistant", "content": text}
    if tool_call is not None:
        message = {"role": "assistant", "content": None, "tool_calls": [tool_call.as_dict()]}
        finish_reason = "tool_calls"
    return {
        "id": completion_id,
        "object": "chat.completion",
        "created": created or int(time.time()),
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": message,
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

    def tool_call(self, call: ToolCall) -> bytes:
        return sse(chunk_body(self.completion_id, self.model, self.created, {"tool_calls": [call.as_dict(0)]},
                              extra=self.extra))

    def role(self) -> bytes:
        return sse(chunk_body(self.completion_id, self.model, self.created, {"role": "assistant", "content": ""},
                              extra=self.extra))

    def finish(self, reason: str, extra: dict[str, Any]) -> bytes:
        return sse(chunk_body(self.completion_id, self.model, self.created, {}, finish_reason=reason, extra=extra))

    def usage(self, prompt_tokens: int, completion_tokens: int, extra: dict[str, Any]) -> bytes:
        return sse(chunk_body(self.completion_id, self.model, self.created, None, extra=extra,
                              usage_block=usage(prompt_tokens, completion_tokens)))

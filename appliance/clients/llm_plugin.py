"""`llm -m athanor "..."`: Simon Willison's `llm` (CLI and library) asking the local daemon over its socket.

Registered by the `llm` entry point in pyproject.toml. llm imports every plugin on each of its commands, so
nothing heavy is imported here and the Athanor config is read only when a prompt runs.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path
from typing import Any, Iterator, cast

import httpx
import llm
from llm.parts import TextPart
from pydantic import Field

from .daemon_client import ApiRequestError, answer_json, sse_data

SOCKET_ENV = "ATHANOR_SOCKET"
START_HINT = "start it with `athanor serve` (installed as a service: `sudo systemctl start athanor.socket`)"
# Whatever the daemon adds beside OpenAI's own fields is where the answer came from (route, confidence...).
_OPENAI_FIELDS = frozenset({"id", "object", "created", "model", "choices", "usage", "system_fingerprint",
                            "service_tier"})
# A plain answer sends nothing until it is complete, and an escalated one waits for the teacher.
_TIMEOUT = httpx.Timeout(600.0, connect=10.0)
_SAMPLING = ("model", "temperature", "max_tokens", "top_p", "seed")


@llm.hookimpl
def register_models(register: Any) -> None:
    register(Athanor())


class Athanor(llm.Model):
    model_id = "athanor"
    can_stream = True

    class Options(llm.Options):
        temperature: float | None = Field(default=None, ge=0.0, le=2.0,
                                          description="Sampling temperature; 0 answers greedily")
        max_tokens: int | None = Field(default=None, ge=1, description="Most tokens in the answer (default: the daemon's)")
        top_p: float | None = Field(default=None, gt=0.0, le=1.0, description="Nucleus sampling: the top tokens' mass")
        seed: int | None = Field(default=None, description="Sampling seed, for repeatable answers")
        model: str | None = Field(default=None, description="Which student answers (`athanor models`); default: the daemon's")
        socket: str | None = Field(default=None, description=f"The daemon's Unix socket (default: ${SOCKET_ENV}, "
                                                              "else [server].socket of the Athanor config)")

    def __str__(self) -> str:
        return f"Athanor: {self.model_id}"

    def execute(self, prompt: llm.Prompt, stream: bool, response: llm.Response,
                conversation: llm.Conversation | None) -> Iterator[str]:
        options = cast(Athanor.Options, prompt.options)
        socket_path = resolve_socket(options.socket)
        payload: dict[str, Any] = {"messages": chat_messages(prompt), "stream": stream}
        for name in _SAMPLING:
            value = getattr(options, name)
            if value is not None:
                payload[name] = value
        if stream:
            payload["stream_options"] = {"include_usage": True}
        transport = httpx.HTTPTransport(uds=str(socket_path))
        with httpx.Client(transport=transport, base_url="http://athanor", timeout=_TIMEOUT) as client:
            try:
                if stream:
                    yield from _streamed(client, payload, response)
                else:
                    yield _answered(client, payload, response)
            except httpx.ConnectError as exc:
                raise llm.ModelError(_unreachable(socket_path, exc)) from None
            except httpx.TimeoutException:
                raise llm.ModelError(f"the Athanor daemon on {socket_path} gave no answer within "
                                     f"{_TIMEOUT.read:.0f} s") from None
            except httpx.TransportError as exc:
                raise llm.ModelError(f"the Athanor daemon on {socket_path} broke off the answer "
                                     f"({exc.__class__.__name__}: {exc}); `journalctl -u athanor` or its "
                                     "log says why") from None


def resolve_socket(option: str | None) -> Path:
    """The `socket` option, else $ATHANOR_SOCKET, else the socket the Athanor config names (which
    ATHANOR_CONFIG and ATHANOR_SERVER__SOCKET steer as they do for `athanor ask`)."""
    chosen = option or os.environ.get(SOCKET_ENV)
    if chosen:
        return Path(chosen).expanduser()
    from ..config import load_config
    from ..errors import AthanorError

    try:
        return load_config(None).server.socket
    except AthanorError as exc:
        raise llm.ModelError(f"{exc} (or name the socket: -o socket PATH, or ${SOCKET_ENV})") from None


def chat_messages(prompt: llm.Prompt) -> list[dict[str, str]]:
    """The exchange so far as OpenAI messages. `prompt.messages` is the whole chain llm means the model to
    see, history included: also for `llm -c`, whose earlier turns are read back from llm's log and never
    appear in `conversation.responses`."""
    messages: list[dict[str, str]] = []
    current_system = None
    for message in prompt.messages:
        # Reasoning, tool and attachment parts never arise: this model claims none of those abilities.
        text = "".join(part.text for part in message.parts if isinstance(part, TextPart))
        if message.role not in ("system", "user", "assistant") or (not text and message.role != "assistant"):
            continue
        if message.role == "system":
            if text == current_system:
                continue
            current_system = text
        messages.append({"role": message.role, "content": text})
    # On later turns llm carries the first turn's system prompt forward and drops a new one (`llm -c -s`):
    # the new one still goes in, just before the question it came with.
    if prompt.system and prompt.system != current_system:
        at = len(messages) - 1 if messages and messages[-1]["role"] == "user" else len(messages)
        messages.insert(at, {"role": "system", "content": prompt.system})
    return messages


def _answered(client: httpx.Client, payload: dict[str, Any], response: llm.Response) -> str:
    body = _checked_answer(client.post("/v1/chat/completions", json=payload))
    _record(response, body, body.get("usage"), body["choices"][0].get("finish_reason"))
    return body["choices"][0]["message"].get("content") or ""


def _streamed(client: httpx.Client, payload: dict[str, Any], response: llm.Response) -> Iterator[str]:
    last: dict[str, Any] = {}
    usage = finish_reason = None
    with client.stream("POST", "/v1/chat/completions", json=payload) as answer:
        if answer.status_code >= 400:
            answer.read()
            _checked_answer(answer)
        for chunk in sse_data(answer.iter_lines()):
            if "error" in chunk:
                raise llm.ModelError(f"Athanor daemon: {chunk['error'].get('message', chunk['error'])}")
            last = chunk
            usage = chunk.get("usage") or usage
            for choice in chunk.get("choices", []):
                finish_reason = choice.get("finish_reason") or finish_reason
                content = (choice.get("delta") or {}).get("content")
                if content:
                    yield content
    # The last chunks carry the whole provenance; the first ones only the route.
    _record(response, last, usage, finish_reason)


def _record(response: llm.Response, body: dict[str, Any], usage: dict[str, int] | None, finish_reason: str | None) -> None:
    """Provenance into `response_json` (kept in llm's log), tokens into its usage columns."""
    response.response_json = {
        "id": body.get("id"), "model": body.get("model"), "finish_reason": finish_reason,
        **{key: value for key, value in body.items() if key not in _OPENAI_FIELDS},
    }
    # Both arrived in llm releases after the plugin API: older ones simply go without.
    if usage and hasattr(response, "set_usage"):
        response.set_usage(input=usage.get("prompt_tokens"), output=usage.get("completion_tokens"))
    if body.get("model") and hasattr(response, "set_resolved_model"):
        response.set_resolved_model(body["model"])


def _checked_answer(answer: httpx.Response) -> dict[str, Any]:
    """The answer's JSON, or the daemon's refusal (read as `athanor ask` reads it) as llm's error."""
    try:
        return answer_json(answer)
    except ApiRequestError as exc:
        raise llm.ModelError(f"Athanor {exc}") from None


def _unreachable(socket_path: Path, exc: httpx.ConnectError) -> str:
    # The OSError that says why lies two links down: httpx's error wraps httpcore's, which wraps it.
    cause: BaseException | None = exc
    while cause is not None and not isinstance(cause, OSError):
        cause = cause.__cause__ or cause.__context__
    if isinstance(cause, PermissionError):
        return (f"permission denied on the Athanor socket {socket_path}: join its group "
                "(`sudo usermod -aG athanor $USER`, then log in again)")
    refused = cause is not None and cause.errno == errno.ECONNREFUSED
    state = "a stale socket, nobody listening" if refused else "no daemon answering"
    return (f"no Athanor daemon on {socket_path} ({state}): {START_HINT}; or point -o socket / "
            f"${SOCKET_ENV} at the socket it uses")

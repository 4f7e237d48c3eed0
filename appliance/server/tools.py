"""Tool calling for students whose chat templates know nothing of tools (pure).

The tools are described to the model in a system message, with how to call one: answer with only a JSON
object `{"name": ..., "arguments": {...}}`. With `tool_choice` "required" or a named function, llama.cpp's
grammar sampler holds the answer to exactly such an object, its arguments to the function's own JSON
schema, so the call always parses; with "auto" the model may answer in words, and an answer that is such
an object is returned as the call. An escalated question reaches the teacher with the same system message
and, when a call is required, the same JSON schema as a response format, so its answer parses the same way.
"""

from __future__ import annotations

import json
import secrets
from dataclasses import dataclass
from typing import Any, Sequence

from ..engine.types import JsonFormat


@dataclass(frozen=True)
class FunctionSpec:
    name: str
    description: str | None
    parameters: dict[str, Any] | None


@dataclass(frozen=True)
class ToolCall:
    id: str
    name: str
    arguments: str
    """The arguments as a JSON text, as OpenAI returns them."""

    def as_dict(self, index: int | None = None) -> dict[str, Any]:
        call: dict[str, Any] = {"id": self.id, "type": "function",
                                "function": {"name": self.name, "arguments": self.arguments}}
        return call if index is None else {"index": index, **call}


def instructions(functions: Sequence[FunctionSpec], required: str | None) -> str:
    """The system message that offers the tools. `required`: "" for any tool, a name for that one, None when
    the model may also answer in words."""
    listed = json.dumps([{"name": f.name, **({"description": f.description} if f.description else {}),
                          "parameters": f.parameters or {"type": "object", "properties": {}}} for f in functions],
                        ensure_ascii=False)
    how = 'To call a function, answer with only a JSON object: {"name": "<function name>", "arguments": {...}}.'
    if required is None:
        when = "Call one when it helps answer; otherwise answer in words."
    elif required:
        when = f"Call the function {required} now."
    else:
        when = "Call one of them now."
    return f"You can call these functions:\n{listed}\n{how} {when}"


def call_format(functions: Sequence[FunctionSpec], only: str | None = None) -> JsonFormat:
    """The JSON schema a required call must follow: one of the functions by name, with its arguments."""
    chosen = [f for f in functions if only is None or f.name == only]
    options = [{"type": "object", "additionalProperties": False, "required": ["name", "arguments"],
                "properties": {"name": {"const": f.name},
                               "arguments": f.parameters or {"type": "object"}}} for f in chosen]
    schema = options[0] if len(options) == 1 else {"anyOf": options}
    return JsonFormat(json.dumps(schema, sort_keys=True), "tool_call")


def parse_call(text: str, functions: Sequence[FunctionSpec]) -> ToolCall | None:
    """The call `text` makes, or None when it is not a call of one of `functions` (then it is an answer)."""
    stripped = text.strip()
    if stripped.startswith("```"):  # a model that fences its JSON
        stripped = stripped.strip("`").removeprefix("json").strip()
    try:
        value = json.loads(stripped)
    except ValueError:
        return None
    if not isinstance(value, dict) or set(value) != {"name", "arguments"}:
        return None
    names = {f.name for f in functions}
    if value["name"] not in names or not isinstance(value["arguments"], dict):
        return None
    return ToolCall(f"call_{secrets.token_hex(12)}", value["name"],
                    json.dumps(value["arguments"], ensure_ascii=False))


def render_history_call(calls: Sequence[dict[str, Any]]) -> str:
    """An earlier assistant turn's tool calls as the text the model would have written for them."""
    return "\n".join(json.dumps({"name": c["function"]["name"], "arguments": _arguments(c["function"]["arguments"])},
                                ensure_ascii=False) for c in calls)


def _arguments(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return text

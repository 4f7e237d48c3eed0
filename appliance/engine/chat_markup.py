"""Keeping a caller's text out of the chat markup.

A chat template writes control tokens (`<|im_start|>`, `<|im_end|>`) around each message. If the
rendered prompt is tokenized as one string, the same text typed *inside* a message becomes real
control tokens too: a user could close their turn and open a fake system turn. The helpers here
tokenize the template's own text with special tokens parsed and each message's text without.

Pure: rendering and the two tokenizers are passed in, so every engine can use them.
"""

from __future__ import annotations

from typing import Any, Callable, Iterable, Sequence

Render = Callable[[list[dict[str, Any]]], str]
Tokenize = Callable[[str], list[int]]

# Private-use characters: never produced by a template, and not whitespace, so `trim` leaves them be.
_MARK = "\ue000{}\ue001"


def chat_tokens(render: Render, messages: list[dict[str, Any]], markup: Tokenize, plain: Tokenize,
                specials: Sequence[str]) -> list[int]:
    """The prompt's tokens, with chat markup typed inside a message kept as text.

    `specials` are the texts the markup tokenizer turns into special tokens. A chat that holds
    none of them is rendered and tokenized as one string (what llama.cpp's server does, so
    ordinary prompts are unchanged); otherwise `literal_chat_tokens`, or `neutralize` where the
    template rewrites contents.
    """
    contents = [str(m.get("content") or "") for m in messages]
    if not any(special in text for text in contents for special in specials):
        return markup(render(messages))
    tokens = literal_chat_tokens(render, [{**m, "content": c} for m, c in zip(messages, contents)], markup, plain)
    if tokens is None:
        tokens = markup(render([{**m, "content": neutralize(c, specials)} for m, c in zip(messages, contents)]))
    return tokens


def literal_chat_tokens(render: Render, messages: list[dict[str, Any]], markup: Tokenize, plain: Tokenize) -> list[int] | None:
    """The chat's tokens with the template parsed for special tokens and every message's content not.

    Returns None when the template does not copy each content verbatim and in order (it dropped,
    repeated or changed one); the caller must then fall back to `neutralize`.
    """
    marks = [_MARK.format(i) for i in range(len(messages))]
    rendered = render([{**message, "content": mark} for message, mark in zip(messages, marks)])
    tokens: list[int] = []
    pos = 0
    for message, mark in zip(messages, marks):
        at = rendered.find(mark, pos)
        if at < 0 or rendered.find(mark, at + len(mark)) >= 0:
            return None
        if at > pos:
            tokens += markup(rendered[pos:at])
        tokens += plain(message["content"])
        pos = at + len(mark)
    if pos < len(rendered):
        tokens += markup(rendered[pos:])
    return tokens


def neutralize(text: str, specials: Iterable[str]) -> str:
    """`text` with each special token's text broken by a zero-width space after its first character,
    so that it can only be read as ordinary characters (the fallback for templates that rewrite content)."""
    for special in sorted(specials, key=len, reverse=True):
        if len(special) > 1 and special in text:
            text = text.replace(special, special[0] + "\u200b" + special[1:])
    return text


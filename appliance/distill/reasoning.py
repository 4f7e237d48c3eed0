"""The teacher's reasoning: how it is asked for and how it is split from the answer (pure)."""

from __future__ import annotations

import re

OPEN, CLOSE = "<thinking>", "</thinking>"
INSTRUCTION = (
    "Before answering, reason step by step inside <thinking>...</thinking>. "
    "After </thinking>, give only the final answer."
)
_BLOCK = re.compile(r"<thinking>(.*?)</thinking>", re.DOTALL | re.IGNORECASE)


def split_reasoning(text: str) -> tuple[str | None, str]:
    """(reasoning, answer) from a reply that may wrap its reasoning in `<thinking>…</thinking>`.

    Several blocks are joined; an unclosed block (a cut reply) is all reasoning and no answer;
    a reply with no block is all answer.
    """
    blocks = [m.strip() for m in _BLOCK.findall(text)]
    rest = _BLOCK.sub("", text)
    lowered = rest.lower()
    if OPEN in lowered:
        start = lowered.index(OPEN)
        blocks.append(rest[start + len(OPEN):].strip())
        rest = rest[:start]
    reasoning = "\n\n".join(b for b in blocks if b) or None
    return reasoning, rest.strip()


def join_reasoning(reasoning: str | None, answer: str) -> str:
    """The reply a student learns when it is taught to reason too."""
    return f"{OPEN}{reasoning}{CLOSE}\n{answer}" if reasoning else answer

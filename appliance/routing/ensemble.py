"""Role ensembles (pure): one question asked of the student under several role prompts, their claims compared.

The hybrid architecture the design's source describes runs local role models in parallel and lets the
cloud model integrate their drafts. Here the roles are system prompts over the same student, decoded
together in one batch. When the drafts claim the same thing, the plain answer is served; when they
disagree, the teacher sees the drafts and writes the final answer.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

from ..cache.segment import has_han
from .grading import _norm, _numbers, _yes_no


VOTE_SHARE = "vote_share"
"""The ensemble router's feature beside the served draft's signals: the share of answers that back it."""


@dataclass(frozen=True)
class Role:
    name: str
    english: str
    chinese: str

    def prompt(self, question: str) -> str:
        """The role's system prompt, in the question's language: the small student follows its own
        language's instructions far better than a switch between two."""
        return self.chinese if has_han(question) else self.english


DEFAULT_ROLES: tuple[Role, ...] = (
    Role("direct", "Answer with the answer only, in a few words.", "只用几个字直接给出答案。"),
    Role("expert", "You are a careful expert. Answer the question accurately and briefly.",
         "你是一位严谨的专家。请准确、简短地回答问题。"),
    Role("cautious", "Answer the question. If you are not sure, say that you are not sure.",
         "回答问题。如果不确定，请直接说不确定。"),
)


def claim(text: str) -> str:
    """What an answer claims, for comparing drafts: its last number, its yes/no, or its first words."""
    numbers = _numbers(_norm(text))
    if numbers:
        return f"n:{numbers[-1]:g}"
    yes_no = _yes_no(text)
    if yes_no:
        return yes_no
    return " ".join(_norm(text).split()[:6])


@dataclass(frozen=True)
class Verdict:
    claims: tuple[str, ...]
    agreement: float
    """Share of the role drafts that claim what the plain answer claims (1.0: all agree)."""

    def agrees(self, quorum: float) -> bool:
        return self.agreement >= quorum


def verdict(plain: str, drafts: Sequence[str]) -> Verdict:
    """How far the role drafts back the plain answer, the one that would be served."""
    mine = claim(plain)
    claims = tuple(claim(d) for d in drafts)
    agreement = sum(c == mine for c in claims) / len(claims) if claims else 0.0
    return Verdict(claims, agreement)


@dataclass(frozen=True)
class Majority:
    index: int
    """Which answer to serve: the first (the plain answer before the roles) that makes the top claim."""
    share: float
    """Share of all the answers that make it (1.0: unanimous)."""
    claims: tuple[str, ...]


def majority(answers: Sequence[str]) -> Majority:
    """The claim most answers make, ties to the earlier answer; on the routing benchmark serving it beat
    serving the plain answer on the dev half and again on the test half (scripts/bench_ensemble.py)."""
    claims = tuple(claim(a) for a in answers)
    counts: dict[str, int] = {}
    for c in claims:
        counts[c] = counts.get(c, 0) + 1
    top = max(counts.values())
    index = next(i for i, c in enumerate(claims) if counts[c] == top)
    return Majority(index, top / len(claims), claims)


def _before_system(messages: Sequence[dict[str, Any]], text: str) -> list[dict[str, Any]]:
    """The conversation with `text` as its system prompt, ahead of any system prompt of the caller's."""
    first = messages[0] if messages else None
    if first is not None and first.get("role") in ("system", "developer") and isinstance(first.get("content"), str):
        return [{**first, "content": f"{text}\n\n{first['content']}"}, *messages[1:]]
    return [{"role": "system", "content": text}, *messages]


def with_role(messages: Sequence[dict[str, Any]], role: Role, question: str) -> list[dict[str, Any]]:
    """The conversation as one role sees it."""
    return _before_system(messages, role.prompt(question))


def integration_messages(messages: Sequence[dict[str, Any]], question: str,
                         drafts: Sequence[str]) -> list[dict[str, Any]]:
    """What the teacher is asked when the drafts disagree: the conversation, with the local drafts to weigh.

    The drafts go in as context, not as instructions, and the teacher is told they may all be wrong:
    the student disagreeing with itself is exactly when its drafts are least to be trusted.
    """
    listed = "\n".join(f"{n}. {' '.join(d.split())}" for n, d in enumerate(drafts, 1))
    if has_han(question):
        note = (f"一个本地小模型对用户的最后一个问题给出了以下几个互相矛盾的草稿答案，可能全都是错的：\n{listed}\n"
                "请直接写出正确的最终答案，不要提及这些草稿。")
    else:
        note = (f"A small local model wrote these drafts for the user's last question; they disagree and may "
                f"all be wrong:\n{listed}\nWrite the correct final answer directly, without mentioning the drafts.")
    return _before_system(messages, note)

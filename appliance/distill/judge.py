"""A second model as judge: vets harvested answers, and grades open answers in `athanor evaluate`."""

from __future__ import annotations

import re

from ..teacher import Teacher, TeacherError, TeacherParams
from .records import Record

_VET = (
    "You check answers written by an AI assistant before they are used as training data.\n"
    "{persona}Question:\n{prompt}\n\nAnswer:\n{answer}\n\n"
    "Reply PASS if the answer is correct, complete and responsive, otherwise FAIL: <one short reason>."
)
_GRADE = (
    "Grade a candidate answer against a reference answer to the same question.\n"
    "Question:\n{prompt}\n\nReference answer:\n{reference}\n\nCandidate answer:\n{answer}\n\n"
    "How correct and complete is the candidate, compared with the reference, from 0 (wrong) to 10 "
    "(as good as the reference)? Reply with the number only."
)
_NUMBER = re.compile(r"(\d+(?:\.\d+)?)")
_PARAMS = TeacherParams(max_tokens=256, temperature=0.0)


def parse_verdict(text: str) -> str | None:
    """None for PASS; the judge's reason for FAIL (or for an answer that is neither)."""
    first = text.strip().splitlines()[0].strip() if text.strip() else ""
    if first.upper().startswith("PASS"):
        return None
    if first.upper().startswith("FAIL"):
        return first[4:].lstrip(" :-").strip() or "failed"
    return f"unreadable verdict {first[:60]!r}"


def parse_grade(text: str) -> float | None:
    """The judge's 0-10 grade scaled to 0-1, or None if the reply holds no number."""
    match = _NUMBER.search(text)
    if match is None:
        return None
    return max(0.0, min(10.0, float(match.group(1)))) / 10.0


async def vet(judge: Teacher, record: Record) -> str | None:
    """The judge's reason to drop `record`, or None to keep it; a judge that fails keeps it (and says so)."""
    persona = f"The assistant was told: {record.role}\n" if record.role else ""
    prompt = _VET.format(persona=persona, prompt=record.prompt, answer=record.answer)
    try:
        answer = await judge.complete([{"role": "user", "content": prompt}], _PARAMS)
    except TeacherError:
        return None
    return parse_verdict(answer.text)


async def grade(judge: Teacher, prompt: str, reference: str, answer: str) -> float | None:
    """How well `answer` matches `reference`, 0-1, by the judge; None when the judge cannot say."""
    text = _GRADE.format(prompt=prompt, reference=reference, answer=answer)
    try:
        reply = await judge.complete([{"role": "user", "content": text}], _PARAMS)
    except TeacherError:
        return None
    return parse_grade(reply.text)

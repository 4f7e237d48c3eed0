"""The hard questions kept for later: answers the student was unsure of and no teacher answered.

The daemon logs them in the distillation log as `pending` (the teacher was off, failing or over its
budget); `athanor harvest --from-log` asks the teacher now, within its budget, and appends each answer
to the same log as an ordinary teacher record, which `retrain` then learns from.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Callable, Iterable

from ..teacher.base import BudgetExceeded, Teacher, TeacherAnswer, TeacherError, TeacherParams


def question_key(messages: Any) -> str | None:
    """One string per distinct conversation (None when the entry holds none)."""
    if not isinstance(messages, list) or not messages:
        return None
    return json.dumps(messages, sort_keys=True, ensure_ascii=False)


def pending_entry(messages: list[dict[str, Any]], reason: str | None, student: dict[str, Any]) -> dict[str, Any]:
    """The log line for an unsure answer served without a teacher's."""
    return {"messages": messages, "pending": {"reason": reason or "student unsure"}, "student": student}


def teacher_entry(messages: list[dict[str, Any]], answer: TeacherAnswer, student: dict[str, Any] | None,
                  **extra: Any) -> dict[str, Any]:
    """The log line for a teacher's answer (what `retrain` learns from)."""
    return {"messages": messages,
            "teacher": {"model": answer.model, "text": answer.text, "input_tokens": answer.input_tokens,
                        "output_tokens": answer.output_tokens, "cost_usd": answer.cost_usd},
            "student": student, **extra}


def answered(entry: dict[str, Any]) -> bool:
    teacher = entry.get("teacher")
    return isinstance(teacher, dict) and bool(teacher.get("text"))


def pending_entries(entries: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """Pending questions no teacher record answers anywhere in the log, each once (its latest entry)."""
    waiting: dict[str, dict[str, Any]] = {}
    done: set[str] = set()
    for entry in entries:
        key = question_key(entry.get("messages"))
        if key is None:
            continue
        if answered(entry):
            done.add(key)
        elif entry.get("pending"):
            waiting[key] = entry
    return [entry for key, entry in waiting.items() if key not in done]


@dataclass
class LabelReport:
    labelled: int = 0
    failed: int = 0
    left: int = 0
    spent_usd: float = 0.0
    stopped: str | None = None
    """Why labelling stopped before the end (the budget), None when it went through."""


async def label_pending(entries: list[dict[str, Any]], teacher: Teacher, append: Callable[[dict[str, Any]], None],
                        params: TeacherParams, on_item: Callable[[], None] = lambda: None) -> LabelReport:
    """Ask `teacher` each pending question in turn and `append` its answer as a teacher record; stop at the
    budget (the rest stay pending), skip a question the teacher fails on (it stays pending too)."""
    report = LabelReport()
    for index, entry in enumerate(entries):
        try:
            answer = await teacher.complete(entry["messages"], params)
        except BudgetExceeded as exc:
            report.stopped, report.left = str(exc), len(entries) - index
            break
        except TeacherError:
            report.failed += 1
            on_item()
            continue
        append(teacher_entry(entry["messages"], answer, entry.get("student"), labelled_later=True))
        report.labelled += 1
        report.spent_usd += answer.cost_usd
        on_item()
    return report

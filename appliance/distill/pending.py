"""The hard questions kept for later: answers the student was unsure of and no teacher answered.

The daemon logs them in the distillation log as `pending` (the teacher was off, failing or over its
budget); `athanor harvest --from-log` asks the teacher now, within its budget, and appends each answer
to the same log as an ordinary teacher record, which `retrain` then learns from.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterable

from ..protocol.log_entry import LogEntry, pending_entry, teacher_entry
from ..teacher.base import BudgetExceeded, Teacher, TeacherError, TeacherParams

__all__ = ["LabelReport", "label_pending", "pending_entries", "pending_entry", "teacher_entry"]


def pending_entries(entries: Iterable[LogEntry]) -> list[LogEntry]:
    """Pending questions no teacher record answers anywhere in the log, each once (its latest entry)."""
    waiting: dict[str, LogEntry] = {}
    done: set[str] = set()
    for entry in entries:
        key = entry.key()
        if entry.answered:
            done.add(key)
        elif entry.pending is not None:
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


async def label_pending(entries: list[LogEntry], teacher: Teacher, append: Callable[[LogEntry], None],
                        params: TeacherParams, on_item: Callable[[], None] = lambda: None) -> LabelReport:
    """Ask `teacher` each pending question in turn and `append` its answer as a teacher record; stop at the
    budget (the rest stay pending), skip a question the teacher fails on (it stays pending too)."""
    report = LabelReport()
    for index, entry in enumerate(entries):
        try:
            answer = await teacher.complete(list(entry.messages), params)
        except BudgetExceeded as exc:
            report.stopped, report.left = str(exc), len(entries) - index
            break
        except TeacherError:
            report.failed += 1
            on_item()
            continue
        append(teacher_entry(entry.messages, answer, entry.student, labelled_later=True))
        report.labelled += 1
        report.spent_usd += answer.cost_usd
        on_item()
    return report

"""One line of the distillation log as a typed record: the daemon and `harvest --from-log` write it,
`retrain`, `harvest --from-log` and `router refit` read it.

The JSON shape is the one the log has always had (`messages`, `teacher`, `student`, `pending`), so
logs written before these types existed read the same. A line that is not an entry (torn, hand-edited,
another program's) reads as None and is skipped by the readers, never half-used.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Mapping, Protocol, Sequence


@dataclass(frozen=True)
class TeacherTake:
    """The teacher's answer: what `retrain` learns from."""

    text: str
    model: str = ""
    input_tokens: int = 0
    output_tokens: int = 0
    cost_usd: float = 0.0

    def to_json(self) -> dict[str, Any]:
        return {"model": self.model, "text": self.text, "input_tokens": self.input_tokens,
                "output_tokens": self.output_tokens, "cost_usd": self.cost_usd}

    @classmethod
    def from_json(cls, data: Any) -> TeacherTake | None:
        if not isinstance(data, Mapping) or not isinstance(data.get("text"), str):
            return None
        return cls(text=data["text"], model=str(data.get("model") or ""),
                   input_tokens=_int(data.get("input_tokens")), output_tokens=_int(data.get("output_tokens")),
                   cost_usd=_float(data.get("cost_usd")))


@dataclass(frozen=True)
class StudentTake:
    """The student's answer to the same question, with the signals the router saw (`router refit`'s
    features; the teacher's answer beside it is the label)."""

    text: str
    model: str = ""
    version: str | None = None
    confidence: dict[str, float | int | str] = field(default_factory=dict)
    """How sure it was, as `Confidence.as_dict()` wrote it."""
    signals: dict[str, float] | None = None
    early_signals: dict[str, float] | None = None
    """The same signals of the answer's first `[routing].hold_tokens` tokens (the early router's features)."""
    partial: bool = False
    """Escalated after its first tokens: not the whole answer, so no label for the router."""

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {"model": self.model, "version": self.version, "text": self.text,
                                "confidence": self.confidence}
        if self.signals is not None:
            data["signals"] = self.signals
        if self.early_signals is not None:
            data["early_signals"] = self.early_signals
        if self.partial:
            data["partial"] = True
        return data

    @classmethod
    def from_json(cls, data: Any) -> StudentTake | None:
        if not isinstance(data, Mapping):
            return None
        signals, early = data.get("signals"), data.get("early_signals")
        numbers = _numbers(signals) if isinstance(signals, Mapping) else None
        version = data.get("version")
        return cls(text=str(data.get("text") or ""), model=str(data.get("model") or ""),
                   version=str(version) if version is not None else None,
                   confidence=_scalars(data.get("confidence")),
                   signals=numbers, early_signals=_numbers(early) if isinstance(early, Mapping) else None,
                   partial=bool(data.get("partial")))


@dataclass(frozen=True)
class LogEntry:
    """A question and what became of it: a teacher's answer, or `pending` (served without one)."""

    messages: tuple[dict[str, str], ...]
    teacher: TeacherTake | None = None
    student: StudentTake | None = None
    pending: str | None = None
    """Why the teacher did not answer (off, failing, over budget); `harvest --from-log` asks it later."""
    labelled_later: bool = False
    ts: float | None = None

    @property
    def answered(self) -> bool:
        return self.teacher is not None and bool(self.teacher.text)

    @property
    def question(self) -> str:
        """The last user message (what the cache, the router and the drift check look at)."""
        users = [m["content"] for m in self.messages if m.get("role") == "user"]
        return users[-1] if users else ""

    def key(self) -> str:
        """One string per distinct conversation."""
        return json.dumps(list(self.messages), sort_keys=True, ensure_ascii=False)

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {"messages": list(self.messages)}
        if self.ts is not None:
            data["ts"] = self.ts
        if self.teacher is not None:
            data["teacher"] = self.teacher.to_json()
        if self.pending is not None:
            data["pending"] = {"reason": self.pending}
        data["student"] = self.student.to_json() if self.student is not None else None
        if self.labelled_later:
            data["labelled_later"] = True
        return data

    @classmethod
    def from_json(cls, data: Any) -> LogEntry | None:
        """The entry a log line holds, or None when it holds no conversation."""
        if not isinstance(data, Mapping):
            return None
        raw = data.get("messages")
        if not isinstance(raw, list) or not raw:
            return None
        messages = []
        for message in raw:
            if not isinstance(message, Mapping) or not isinstance(message.get("role"), str):
                return None
            messages.append({"role": message["role"], "content": str(message.get("content") or "")})
        pending = data.get("pending")
        reason = (str(pending.get("reason") or "student unsure") if isinstance(pending, Mapping)
                  else "student unsure" if pending else None)
        ts = data.get("ts")
        return cls(messages=tuple(messages), teacher=TeacherTake.from_json(data.get("teacher")),
                   student=StudentTake.from_json(data.get("student")), pending=reason,
                   labelled_later=bool(data.get("labelled_later")),
                   ts=float(ts) if isinstance(ts, (int, float)) else None)


class TeacherUsage(Protocol):
    """What a teacher's answer carries into the log (`teacher.base.TeacherAnswer` is one)."""

    @property
    def text(self) -> str: ...

    @property
    def model(self) -> str: ...

    @property
    def input_tokens(self) -> int: ...

    @property
    def output_tokens(self) -> int: ...

    @property
    def cost_usd(self) -> float: ...


def pending_entry(messages: Sequence[Mapping[str, Any]], reason: str | None, student: StudentTake) -> LogEntry:
    """The log line for an unsure answer served without a teacher's."""
    return LogEntry(messages=_messages(messages), pending=reason or "student unsure", student=student)


def teacher_entry(messages: Sequence[Mapping[str, Any]], answer: TeacherUsage, student: StudentTake | None,
                  labelled_later: bool = False) -> LogEntry:
    """The log line for a teacher's answer (what `retrain` learns from)."""
    return LogEntry(messages=_messages(messages),
                    teacher=TeacherTake(text=answer.text, model=answer.model, input_tokens=answer.input_tokens,
                                        output_tokens=answer.output_tokens, cost_usd=answer.cost_usd),
                    student=student, labelled_later=labelled_later)


def _messages(messages: Sequence[Mapping[str, Any]]) -> tuple[dict[str, str], ...]:
    return tuple({"role": str(m.get("role")), "content": str(m.get("content") or "")} for m in messages)


def _int(value: Any) -> int:
    try:
        return int(value or 0)
    except (TypeError, ValueError):
        return 0


def _float(value: Any) -> float:
    try:
        return float(value or 0.0)
    except (TypeError, ValueError):
        return 0.0


def _scalars(data: Any) -> dict[str, float | int | str]:
    if not isinstance(data, Mapping):
        return {}
    return {str(k): v for k, v in data.items() if isinstance(v, (int, float, str)) and not isinstance(v, bool)}


def _numbers(data: Mapping[str, Any]) -> dict[str, float]:
    out: dict[str, float] = {}
    for name, value in data.items():
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            out[str(name)] = float(value)
    return out

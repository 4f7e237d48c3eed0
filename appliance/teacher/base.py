"""What every teacher client returns and raises; the router knows only this module."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from ..errors import AthanorError


@dataclass(frozen=True)
class TeacherParams:
    max_tokens: int
    temperature: float = 1.0
    top_p: float = 1.0
    stop: tuple[str, ...] = ()
    seed: int | None = None


@dataclass(frozen=True)
class TeacherAnswer:
    text: str
    model: str
    input_tokens: int
    output_tokens: int
    cost_usd: float
    latency_s: float
    finish_reason: str = "stop"


class TeacherError(AthanorError):
    """The teacher could not answer (down, timing out, refusing, or garbage); the student's answer stands."""


class BudgetExceeded(TeacherError):
    """Today's teacher spend cap is reached."""


class Teacher(Protocol):
    name: str

    async def complete(self, messages: list[dict[str, str]], params: TeacherParams) -> TeacherAnswer:
        """One chat answer; raises TeacherError after its retries are spent."""
        ...

    def estimate_cost(self, input_tokens: int, output_tokens: int) -> float:
        """USD the teacher would charge for this many tokens (for `saved_usd`)."""
        ...

    async def aclose(self) -> None: ...

"""What every teacher client returns and raises; the router knows only this module."""

from __future__ import annotations

from dataclasses import dataclass
from typing import AsyncGenerator, Protocol

from ..engine.types import JsonFormat
from ..errors import AthanorError


@dataclass(frozen=True)
class TeacherParams:
    max_tokens: int
    temperature: float = 1.0
    top_p: float = 1.0
    stop: tuple[str, ...] = ()
    seed: int | None = None
    json_format: JsonFormat | None = None
    """The answer must be JSON (of this schema): the teacher is asked in its own API's terms."""


@dataclass(frozen=True)
class TeacherAnswer:
    text: str
    model: str
    input_tokens: int
    output_tokens: int
    cost_usd: float
    latency_s: float
    finish_reason: str = "stop"


@dataclass(frozen=True)
class TeacherChunk:
    """One piece of a streamed answer: a text delta, or (last of all) the finished answer.

    Every chunk but the last carries non-empty `text` and `answer=None`; the last carries `text=""` and
    the `TeacherAnswer` (whole text, usage, cost, finish reason, model, latency), recorded in the ledger once.
    """

    text: str = ""
    answer: TeacherAnswer | None = None

    @property
    def final(self) -> bool:
        return self.answer is not None


class TeacherError(AthanorError):
    """The teacher could not answer (down, timing out, refusing, or garbage); the student's answer stands."""


class BudgetExceeded(TeacherError):
    """Today's teacher spend cap is reached."""


class Teacher(Protocol):
    name: str

    async def complete(self, messages: list[dict[str, str]], params: TeacherParams) -> TeacherAnswer:
        """One chat answer; raises TeacherError after its retries are spent."""
        ...

    def stream(self, messages: list[dict[str, str]], params: TeacherParams) -> AsyncGenerator[TeacherChunk, None]:
        """One chat answer as it is written (an async generator: `async for chunk in teacher.stream(...)`).

        Text deltas come in order, then one final chunk with the `TeacherAnswer`. The budget is checked
        before anything is sent (`BudgetExceeded`); failures are retried only until the first text chunk
        is out; after that a failure raises `TeacherError`, since the text so far was already passed on.
        Close the generator (`aclose()`) when leaving early, so the connection is released at once.
        """
        ...

    def estimate_cost(self, input_tokens: int, output_tokens: int) -> float:
        """USD the teacher would charge for this many tokens (for `saved_usd`)."""
        ...

    async def aclose(self) -> None: ...

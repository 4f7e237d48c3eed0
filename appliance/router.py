"""Where an answer comes from. For now every request goes to a student; the cache and the
teacher slot in here later, and every answer already says which route it took."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import AsyncIterator, Literal

from .engine.llama import LlamaEngine, ModelInfo
from .engine.scheduler import Job, Scheduler
from .engine.text import TextAssembler
from .engine.types import Completion, SamplingParams, TokenEvent
from .errors import AthanorError

RouteName = Literal["cache", "student", "teacher"]


class UnknownModel(AthanorError):
    def __init__(self, name: str, known: list[str]) -> None:
        super().__init__(f"model {name!r} is not loaded; loaded: {', '.join(known)} (see GET /v1/models)")
        self.name = name


class PromptTooLong(AthanorError):
    def __init__(self, prompt_tokens: int, max_tokens: int, n_ctx: int) -> None:
        super().__init__(
            f"this request needs {prompt_tokens} prompt + {max_tokens} answer tokens, "
            f"over the model's context of {n_ctx}; shorten the messages or lower max_tokens"
        )


@dataclass(frozen=True)
class ChatRequest:
    """A chat request as the router sees it, free of any wire format."""

    messages: list[dict[str, str]]
    params: SamplingParams
    model: str | None = None
    max_tokens_given: bool = False


@dataclass
class Student:
    name: str
    engine: LlamaEngine
    scheduler: Scheduler

    @property
    def info(self) -> ModelInfo:
        return self.engine.info


@dataclass
class Delta:
    """Text released so far and the tokens that released it."""

    text: str
    tokens: list[TokenEvent]


@dataclass
class Answer:
    """The finished answer and where it came from."""

    model: str
    route: RouteName
    completion: Completion
    queued_s: float
    elapsed_s: float
    extra: dict = field(default_factory=dict)

    def provenance(self) -> dict:
        return {"route": self.route, **self.extra}


class Router:
    """Picks the student a request names (or the default) and streams its answer."""

    def __init__(self, students: dict[str, Student], default: str) -> None:
        self.students = students
        self.default = default

    def student(self, name: str | None) -> Student:
        key = name or self.default
        if key not in self.students:
            raise UnknownModel(key, sorted(self.students))
        return self.students[key]

    def prepare(self, request: ChatRequest) -> tuple[Student, list[int], SamplingParams]:
        """Render and tokenize the prompt and fit max_tokens to the context (raises PromptTooLong)."""
        student = self.student(request.model)
        prompt = student.engine.chat_prompt(request.messages)
        n_ctx = student.info.n_ctx
        params = request.params
        room = n_ctx - len(prompt)
        if room < 1 or (request.max_tokens_given and params.max_tokens > room):
            raise PromptTooLong(len(prompt), params.max_tokens, n_ctx)
        if params.max_tokens > room:
            params = SamplingParams(**{**params.__dict__, "max_tokens": room})
        return student, prompt, params

    def start(self, request: ChatRequest, stream: bool = True) -> "Run":
        """Admit a request (raising UnknownModel, PromptTooLong or Overloaded at once) and return its run.

        `stream=False` when nobody reads the deltas as they come: the tokens then arrive in one piece.
        """
        student, prompt, params = self.prepare(request)
        return Run(student, prompt, params, student.scheduler.submit(prompt, params, stream))


class Run:
    """One admitted request: iterate `events()` for text deltas, then one `Answer`."""

    def __init__(self, student: Student, prompt: list[int], params: SamplingParams, job: Job) -> None:
        self.student = student
        self.prompt = prompt
        self.params = params
        self.job = job
        self.started = time.monotonic()

    async def events(self) -> AsyncIterator[Delta | Answer]:
        job = self.job
        assembler = TextAssembler(self.params.stop)
        tokens: list[TokenEvent] = []
        pending: list[TokenEvent] = []
        try:
            async for token in job.tokens():
                delta = assembler.feed(token)
                tokens.append(token)
                pending.append(token)
                if delta.text:
                    yield Delta(delta.text, pending)
                    pending = []
                if assembler.stopped:
                    break
            tail = assembler.finish()
            if tail.text or pending:
                yield Delta(tail.text, pending)
        finally:
            # Whether we stopped early, failed or the client left: the slot is freed now.
            job.cancel()
        finish = "stop" if assembler.stopped else (job.finish_reason or "stop")
        yield Answer(
            model=self.student.name,
            route="student",
            completion=Completion(assembler.text, finish, len(self.prompt), tokens),
            queued_s=(job.started_at or self.started) - job.enqueued_at,
            elapsed_s=time.monotonic() - self.started,
        )

"""Where an answer comes from: the semantic cache, else the student, else (when the student is
unsure and a teacher is configured and within budget) the teacher. Every answer says which."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field, replace
from typing import Any, Callable

from ..cache import CacheKey, SemanticCache, normalize_prompt
from ..cache.store import TEACHER_VERSION
from ..engine.scheduler import Closed, Job
from ..engine.types import SamplingParams
from ..protocol.distill_log import DistillLog
from ..storage.health import StorageHealth
from ..storage.ledger import AnswerLedger
from ..teacher.base import Teacher
from ..teacher.limits import PayerLedgers
from .decide import explores, keeps_nothing, needs_outcomes, pre_route_probability
from .ensemble import DEFAULT_ROLES, with_role
from .learned import LogisticRouter
from .outcomes import PastOutcomes
from .records import (Answer, ChatRequest, Delta, EnsembleVote, PromptTooLong, RouteName, Student, UnknownModel,
                      last_user_text, params_key)
from .runs import CachedRun, EnsembleRun, PreRoutedRun, Run, StudentRun

__all__ = ["Answer", "ChatRequest", "Delta", "EnsembleVote", "PromptTooLong", "RouteName", "Router", "Routing", "Run",
           "Student", "UnknownModel", "last_user_text", "params_key"]

log = logging.getLogger(__name__)


@dataclass
class Routing:
    """What the router needs beyond the students; every part is optional."""

    confidence_threshold: float = 0.2
    confidence_quantile: float = 0.1
    policy: LogisticRouter | None = None
    """A fitted router over the answer's signals; None routes by the quantile rule alone."""
    pre_policy: LogisticRouter | None = None
    """A router over the question alone: below its threshold the teacher answers before any decode."""
    past_outcomes: PastOutcomes | None = None
    """How the student fared on past questions, for a pre-router fitted with the nearest ones' record."""
    early_policy: LogisticRouter | None = None
    """A router over the first `hold_tokens` tokens: escalate at once, or stream the student live."""
    hold_tokens: int = 8
    explore_share: float = 0.1
    """When the router keeps nothing: the share of questions the student still answers first (`explores`)."""
    mode: str = "single"
    """"ensemble": the role drafts are decoded beside the plain answer and the majority decides (EnsembleRun)."""
    ensemble_policy: LogisticRouter | None = None
    """A router over the served draft's signals and its vote share; None keeps only unanimous drafts."""
    cache: SemanticCache | None = None
    teacher: Teacher | None = None
    distill_log: DistillLog | None = None
    ledger: AnswerLedger | None = None
    """Every answer's route, tokens, spend and saving, for `athanor report`."""
    price: Callable[[int, int], float] | None = None
    """What the teacher would charge for (input, output) tokens: the basis of `saved_usd`."""
    payers: PayerLedgers | None = None
    """Teacher spend per API key, for keys with a daily budget of their own."""
    storage: StorageHealth = field(default_factory=StorageHealth)
    """Write failures of the cache, distillation log and spend ledger (shared with them)."""


class Router:
    """Picks the student a request names (or the default) and routes the request."""

    def __init__(self, students: dict[str, Student], default: str, routing: Routing | None = None) -> None:
        self.students = students
        self.default = default
        self.routing = routing or Routing()

    def student(self, name: str | None) -> Student:
        key = name or self.default
        if key not in self.students:
            raise UnknownModel(key, sorted(self.students))
        return self.students[key]

    # What the API reports about the router, so that it need not reach into `routing` or the schedulers.

    def loads(self) -> list[tuple[str, dict[str, int | float | None]]]:
        """Each student's name and its scheduler's figures (running, waiting, batching, prompt reuse)."""
        return [(s.name, s.scheduler.stats()) for s in self.students.values()]

    def queue_depth(self) -> tuple[int, int]:
        """(requests waiting, requests being decoded) over every student."""
        students = self.students.values()
        return sum(s.scheduler.waiting for s in students), sum(s.scheduler.busy for s in students)

    def cache_stats(self) -> dict[str, Any] | None:
        """The semantic cache's figures (reads SQLite: call it off the event loop); None without a cache."""
        return self.routing.cache.stats() if self.routing.cache is not None else None

    @property
    def has_cache(self) -> bool:
        return self.routing.cache is not None

    @property
    def teacher(self) -> Teacher | None:
        return self.routing.teacher

    @property
    def confidence_threshold(self) -> float:
        return self.routing.confidence_threshold

    def storage(self) -> dict[str, Any]:
        """Which stores can still be written (`StorageHealth.snapshot`)."""
        return self.routing.storage.snapshot()

    def replace_students(self, students: dict[str, Student], default: str) -> dict[str, Student]:
        """Serve `students` from now on (hot reload); returns the old ones for the caller to retire.

        Requests already admitted keep the student they started with and finish on it.
        """
        if default not in students:
            raise UnknownModel(default, sorted(students))
        old, self.students, self.default = self.students, students, default
        return old

    def prepare(self, request: ChatRequest) -> tuple[Student, list[int], SamplingParams]:
        """Render and tokenize the prompt and fit max_tokens to the context (raises PromptTooLong)."""
        student = self.student(request.model)
        if request.raw_prompt is not None:
            prompt = student.engine.tokenize(request.raw_prompt)
        else:
            prompt = student.engine.chat_prompt(request.messages)
        n_ctx = student.info.n_ctx
        params = request.params
        room = n_ctx - len(prompt)
        if room < 1 or (request.max_tokens_given and params.max_tokens > room):
            raise PromptTooLong(len(prompt), params.max_tokens, n_ctx)
        if params.max_tokens > room:
            params = replace(params, max_tokens=room)
        return student, prompt, params

    def saved(self, prompt_tokens: int, completion_tokens: int) -> float:
        price = self.routing.price
        return price(prompt_tokens, completion_tokens) if price else 0.0

    async def start(self, request: ChatRequest, stream: bool = True) -> "Run":
        """Admit a request: raises UnknownModel, PromptTooLong or Overloaded before anything is sent.

        `stream=False` when nobody reads the deltas as they come: the tokens then arrive in one piece.
        """
        try:
            return await self._start(request, stream)
        except Closed:
            # A reload retired the student while this request awaited the cache: the new one takes it.
            return await self._start(request, stream)

    async def _start(self, request: ChatRequest, stream: bool) -> "Run":
        # In a thread: a 1 MiB body of many short messages takes llama.cpp seconds to tokenize
        # (special-token parsing grows with their count), which would stall every other client.
        student, prompt, params = await asyncio.to_thread(self.prepare, request)
        if request.raw_prompt is not None:
            job = student.scheduler.submit(prompt, params, stream=stream)
            return StudentRun(self, student, prompt, params, job, request, None, "", False)
        cache = self.routing.cache
        key = None
        prompt_text = ""
        if cache is not None:
            key = CacheKey(request.namespace, student.version, params_key(params), also_serves=(TEACHER_VERSION,))
            prompt_text = normalize_prompt(request.messages)
            if request.cache_read:
                hit = await asyncio.to_thread(cache.lookup, key, prompt_text)
                if hit is not None:
                    return CachedRun(self, student, prompt, hit)
        # With a teacher the student's answer is held back until its confidence is known: for the first
        # tokens when an early router decides from them, else to its end.
        # logit_bias names the student's token ids, which mean nothing to a teacher: no escalation then.
        hold = self.routing.teacher is not None and not params.logit_bias
        pre = self.routing.pre_policy
        exploring = False
        if hold and pre is not None:
            question = last_user_text(request.messages)
            vector = None
            if cache is not None and needs_outcomes(pre):
                vector = await asyncio.to_thread(cache.embed, question)
            p_right = pre_route_probability(pre, question, self.routing.past_outcomes, vector)
            if p_right < pre.threshold:
                # The question alone says the student will likely fail: the teacher, before any decode.
                return PreRoutedRun(self, student, prompt, params, request, key, prompt_text, p_right, stream)
        if hold and self.routing.mode == "single" and keeps_nothing(self.routing.policy):
            # No answer of this student would be kept: decoding one first only delays the teacher's. A share
            # is still answered in full, for the teacher's verdicts that `router refit` learns from.
            exploring = explores(last_user_text(request.messages), self.routing.explore_share)
            if not exploring:
                return PreRoutedRun(self, student, prompt, params, request, key, prompt_text, 0.0, stream,
                                    method="router keeps none")
        if self.routing.mode == "ensemble" and not params.logit_bias:
            return await self._start_ensemble(student, prompt, params, request, key, prompt_text)
        # An explored answer is held to its end: escalating after the first tokens would log only those.
        early = hold and self.routing.early_policy is not None and not exploring
        job = student.scheduler.submit(prompt, params, stream=stream and (not hold or early))
        return StudentRun(self, student, prompt, params, job, request, key, prompt_text, hold)


    async def _start_ensemble(self, student: Student, prompt: list[int], params: SamplingParams, request: ChatRequest,
                              key: CacheKey | None, prompt_text: str) -> "EnsembleRun":
        """The plain prompt and each role's, submitted together so that the scheduler decodes them in one batch."""
        question = last_user_text(request.messages)

        def role_prompts() -> list[list[int]]:
            return [student.engine.chat_prompt(with_role(request.messages, role, question)) for role in DEFAULT_ROLES]

        prompts = [prompt, *await asyncio.to_thread(role_prompts)]
        n_ctx = student.info.n_ctx
        jobs: list[Job] = []
        try:
            for tokens in prompts:
                room = n_ctx - len(tokens)
                if room < 1:
                    raise PromptTooLong(len(tokens), params.max_tokens, n_ctx)
                jobs.append(student.scheduler.submit(tokens, replace(params, max_tokens=min(params.max_tokens, room)),
                                                     stream=False))
        except BaseException:
            for job in jobs:
                job.cancel()
            raise
        return EnsembleRun(self, student, prompt, params, jobs, request, key, prompt_text)
